//! weft-storage: where documents live on disk.
//!
//! A document is a compacted [`Snapshot`] plus an update log of the changes
//! after it, each under its sequence number. The [`DocumentStore`] trait is the
//! whole interface the document engine sees; [`SledStore`] is the embedded
//! default. This is the only crate that names sled.

mod doc_name;
mod error;
mod record;
mod sled_store;

use async_trait::async_trait;

pub use doc_name::{DocName, InvalidDocName, MAX_DOC_NAME_LEN};
pub use error::StorageError;
pub use record::{DocMeta, LogEntry, Snapshot, SnapshotReason, SCHEMA_VERSION};
pub use sled_store::SledStore;

/// What a document looks like on disk when it is loaded.
#[derive(Debug, Clone)]
pub struct StoredDoc {
    pub meta: DocMeta,
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

/// A snapshot to be stored; the store assigns its id.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub seq: u64,
    pub taken_at_ms: u64,
    pub reason: SnapshotReason,
    pub state: Vec<u8>,
}

/// Durable storage for documents.
///
/// Implementations must make [`append`](DocumentStore::append) durable before
/// it returns: the engine broadcasts a change only after that.
#[async_trait]
pub trait DocumentStore: Send + Sync + std::fmt::Debug + 'static {
    /// Loads a document, creating its metadata if it has never been stored.
    async fn load(&self, doc: &DocName) -> Result<StoredDoc, StorageError>;

    /// Appends changes (in increasing `seq` order) and returns once they are
    /// on disk. Changes that arrive together share one flush.
    async fn append(&self, doc: &DocName, entries: &[LogEntry]) -> Result<(), StorageError>;

    /// Stores `snapshot` durably, then drops log entries more than
    /// `keep_log_tail` changes older than it. Returns the snapshot's id.
    async fn compact(
        &self,
        doc: &DocName,
        snapshot: NewSnapshot,
        keep_log_tail: u64,
    ) -> Result<u64, StorageError>;

    /// Logged changes with `seq > after`, oldest first, at most `limit`.
    async fn read_log(
        &self,
        doc: &DocName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StorageError>;

    /// Every stored document, in name order.
    async fn list(&self) -> Result<Vec<DocName>, StorageError>;
}
