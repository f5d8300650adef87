//! `StorageError`: everything that can go wrong reading or writing documents.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "the data directory {path} is in use by another weft process; stop it, \
         or talk to it through its HTTP API instead"
    )]
    Locked { path: PathBuf },

    #[error("could not open the data directory {path}: {reason}")]
    Open { path: PathBuf, reason: String },

    #[error("storage I/O failed while {action}: {reason}")]
    Io {
        action: &'static str,
        reason: String,
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
    Encode { kind: &'static str, reason: String },

    #[error(
        "could not connect to Redis{target}: {reason}; check --redis and that Redis is running"
    )]
    Connect {
        /// ` at host:port`, or empty when the URL did not parse; never the
        /// URL itself, which may hold a password.
        target: String,
        reason: String,
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

    #[error("{0} is not available with this storage backend (cluster mode); use the embedded store for it")]
    Unsupported(&'static str),
}
