//! `StorageError`: everything that can go wrong reading or writing documents.
//!
//! A failure that comes from an error of sled, Redis, the file system or
//! MessagePack keeps that error as its [`source`](std::error::Error::source);
//! the message already says what it said, so a report that prints the
//! chain of sources repeats it.

use std::path::PathBuf;

/// The error underneath a storage failure (sled's, Redis', the file
/// system's, MessagePack's), kept as it is.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "the data directory {path} is in use by another weft process; stop it, \
         or talk to it through its HTTP API instead"
    )]
    Locked { path: PathBuf },

    #[error("could not open the data directory {path}: {reason}")]
    Open {
        path: PathBuf,
        reason: String,
        #[source]
        source: Cause,
    },

    /// Storage failed for a reason known only as text (a check's outcome
    /// shared by several callers, a fault injected by a test).
    #[error("storage I/O failed while {action}: {reason}")]
    Io {
        action: &'static str,
        reason: String,
    },

    /// The store's backend (sled, Redis, the file system) failed: the same
    /// message as [`Io`](StorageError::Io), with the backend's error kept.
    #[error("storage I/O failed while {action}: {reason}")]
    Backend {
        action: &'static str,
        reason: String,
        #[source]
        source: Cause,
    },

    #[error("storage did not finish {action} within {after:?}: the disk is stuck or very slow")]
    Timeout {
        action: &'static str,
        after: std::time::Duration,
    },

    #[error("the store is not taking writes ({action}) since an earlier failure: {reason}")]
    Unavailable {
        action: &'static str,
        reason: String,
    },

    #[error("{kind} at {key} is corrupt ({reason}); run `weft verify` and restore from a backup")]
    Corrupt {
        kind: &'static str,
        key: String,
        reason: String,
        /// The decoder's error, when a record did not decode.
        #[source]
        source: Option<Cause>,
    },

    #[error(
        "{kind} at {key} has schema version {found}, newer than this weft understands \
         ({}); upgrade weft",
        crate::SCHEMA_VERSION
    )]
    NewerSchema {
        kind: &'static str,
        key: String,
        found: u16,
    },

    #[error("document {0} already exists in this store; restore into an empty data directory")]
    AlreadyExists(String),

    #[error("not a weft backup archive: {0}")]
    BadArchive(String),

    #[error("could not encode {kind}: {reason}")]
    Encode {
        kind: &'static str,
        reason: String,
        #[source]
        source: Cause,
    },

    #[error("Redis{target} is not safe for weft's documents: {reason}")]
    UnsafeRedis {
        /// ` at host:port`, never the URL.
        target: String,
        reason: String,
    },

    #[error(
        "could not connect to Redis{target}: {reason}; check --redis and that Redis is running"
    )]
    Connect {
        /// ` at host:port`, or empty when the URL did not parse; never the
        /// URL itself, which may hold a password.
        target: String,
        reason: String,
        /// Redis' error, when it gave one.
        #[source]
        source: Option<Cause>,
    },

    #[error(
        "document {0} was deleted or created anew meanwhile (its incarnation changed); \
         reload it"
    )]
    Recreated(String),

    #[error("another node stored change {last_seq} first; catch up and retry")]
    Conflict { last_seq: u64 },

    #[error("{0}; try again shortly")]
    Busy(&'static str),

    /// Refused because the data directory's disk has less free space than
    /// the store keeps (see `sled_store/space.rs`); the store takes no
    /// writes until there is more.
    #[error(
        "the server's disk is nearly full ({action} refused); writes resume once space \
         is freed on it"
    )]
    DiskFull { action: &'static str },

    /// Refused because this write would not fit in the free space the disk
    /// has above that floor; smaller writes still go.
    #[error(
        "the server's disk has too little free space for this write ({action}, {bytes} \
         bytes); try a smaller change, or again later"
    )]
    NoRoom { action: &'static str, bytes: u64 },
}

impl StorageError {
    /// Whether the store could not be reached or could not answer for now
    /// (the next attempt may well succeed), as opposed to holding something
    /// wrong or unreadable.
    pub fn is_unavailability(&self) -> bool {
        matches!(
            self,
            StorageError::Io { .. }
                | StorageError::Backend { .. }
                | StorageError::Timeout { .. }
                | StorageError::Unavailable { .. }
                | StorageError::Connect { .. }
                | StorageError::Busy(_)
                | StorageError::DiskFull { .. }
                | StorageError::NoRoom { .. }
        )
    }

    /// The backend failed while doing `action`; its message is the reason.
    pub(crate) fn backend(
        action: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StorageError::Backend {
            action,
            reason: e.to_string(),
            source: Box::new(e),
        }
    }
}
