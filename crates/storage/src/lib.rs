//! weft-storage: where documents live on disk.
//!
//! A document is a compacted [`Snapshot`] plus an update log of the changes
//! after it, each under its sequence number. What a store does is said by
//! one trait per role (`roles.rs`): [`DocumentStore`] (a document's log and
//! snapshots), [`Catalogue`], [`Archive`] and [`ArchiveRestore`],
//! [`WebhookOutbox`], [`Replication`]; the engine sees an [`EngineStore`].
//! [`SledStore`] is the embedded default and plays every role;
//! [`RedisStore`], the shared store of a cluster, takes neither restores nor
//! webhooks. This is the only crate that names sled or Redis.
//!
//! A document exists once a change to it has been stored (or a backup
//! restore wrote it): loading a name that was never written stores nothing
//! and answers an empty document with fresh metadata, which the first
//! [`append`](DocumentStore::append) stores together with its changes. So
//! reading, following or joining unknown names never leaves documents
//! behind.

pub mod archive;
mod clock;
mod completeness;
mod disk_guard;
mod doc_name;
mod error;
#[cfg(feature = "test-util")]
mod faulty;
mod record;
mod redis_store;
mod retention;
mod roles;
mod sled_store;
mod unstored;

pub use doc_name::{DocName, InvalidDocName, MAX_DOC_NAME_LEN};
pub use error::{Cause, StorageError};
#[cfg(feature = "test-util")]
pub use faulty::FaultyStore;
pub use record::{
    DocMeta, LogEntry, Provenance, Quarantined, Snapshot, SnapshotInfo, SnapshotReason,
    SCHEMA_VERSION,
};
pub use redis_store::RedisStore;
pub use retention::{LogRetention, RetentionPolicy};
pub use roles::{
    Archive, ArchiveRestore, Catalogue, DocumentStore, EngineStore, Replication, WebhookOutbox,
};
pub use sled_store::{Recovery, SledStore, DEFAULT_STORAGE_TIMEOUT};

/// What a document looks like on disk when it is loaded.
#[derive(Debug, Clone)]
pub struct StoredDoc {
    /// The stored metadata; for a document that does not exist yet, the
    /// metadata its first append will store.
    pub meta: DocMeta,
    /// Whether the store holds the document (false: it was never written,
    /// and `snapshot` and `log` are empty).
    pub exists: bool,
    /// The newest snapshot, if one was ever taken.
    pub snapshot: Option<Snapshot>,
    /// Every logged change after the snapshot, oldest first.
    pub log: Vec<LogEntry>,
}

impl StoredDoc {
    /// The sequence number of the newest change the document holds (0: none).
    pub fn last_seq(&self) -> u64 {
        let snapshot_seq = self.snapshot.as_ref().map_or(0, |s| s.seq);
        self.log
            .last()
            .map_or(snapshot_seq, |e| e.seq.max(snapshot_seq))
    }
}

/// What an operator sees of a stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocInfo {
    pub name: DocName,
    pub meta: DocMeta,
    /// The newest change's sequence number (0: none).
    pub last_seq: u64,
    /// When the newest change was accepted, if any is known.
    pub last_change_ms: Option<u64>,
    /// Bytes on disk: the newest snapshot plus the logged changes.
    pub size_bytes: u64,
    pub snapshots: usize,
    /// Memory the store holds for the document, where it can tell (Redis:
    /// `MEMORY USAGE` of every key of the document, snapshot history,
    /// log tail and metadata included); `None` for the embedded store.
    pub held_bytes: Option<u64>,
}

/// Which document a name holds now, and how far its history goes: what
/// reading history needs, without adding up the log as [`DocInfo`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocHead {
    pub meta: DocMeta,
    /// The newest change's sequence number (0: none).
    pub last_seq: u64,
}

/// Everything stored about one document, for backups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocDump {
    pub name: DocName,
    pub meta: DocMeta,
    /// Oldest first.
    pub snapshots: Vec<Snapshot>,
    /// Oldest first.
    pub log: Vec<LogEntry>,
}

/// A record that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// Which record (document and sequence number or snapshot id).
    pub location: String,
    pub problem: String,
}

/// A snapshot to be stored; the store assigns its id.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub seq: u64,
    pub taken_at_ms: u64,
    pub reason: SnapshotReason,
    pub state: Vec<u8>,
}

/// Something another process said about a document (cluster mode).
/// What following a document's log in a shared store brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// Changes other processes stored, in order.
    Changes(Vec<LogEntry>),
    /// Another process deleted the document (heard from the store when the
    /// word itself was missed). Nothing more follows.
    Deleted,
    /// The stored history is no longer the one this process follows (the
    /// store came back without it, went back to an older state, or the
    /// document was deleted and created anew): what this process holds
    /// may be in no store. Reload, and have the clients resync. Nothing
    /// more follows.
    Lost(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// An awareness update (y-protocols encoding) from its connections.
    Presence(Vec<u8>),
    /// Process `asker` has just loaded the document and wants everyone's
    /// presence: answer with `answer_presence`.
    PresenceWanted { asker: u64 },
    /// An answer to this process's `ask_presence`: another process's
    /// presence, as for `Presence`.
    PresenceAnswer(Vec<u8>),
    /// The document was deleted: whoever has it open lets it go.
    Deleted,
    /// A stateless message from one of its Hocuspocus connections, as the
    /// frame the others are sent: for this process's Hocuspocus
    /// connections to the document. Ephemeral, like presence.
    Stateless(Vec<u8>),
}

/// A change notification waiting to be sent to a webhook.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebhookDelivery {
    pub url: String,
    pub doc: String,
    /// The newest change the notification covers.
    pub last_seq: u64,
    pub incarnation: u64,
    pub first_change_ms: u64,
    pub last_change_ms: u64,
}
