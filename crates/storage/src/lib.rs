//! weft-storage: where documents live on disk.
//!
//! A document is a compacted [`Snapshot`] plus an update log of the changes
//! after it, each under its sequence number. The [`DocumentStore`] trait is the
//! whole interface the document engine sees; [`SledStore`] is the embedded
//! default and [`RedisStore`] the shared store of a cluster. This is the only
//! crate that names sled or Redis.
//!
//! A document exists once a change to it has been stored (or a backup
//! restore wrote it): loading a name that was never written stores nothing
//! and answers an empty document with fresh metadata, which the first
//! [`append`](DocumentStore::append) stores together with its changes. So
//! reading, following or joining unknown names never leaves documents
//! behind.

pub mod archive;
mod completeness;
mod disk_guard;
mod doc_name;
mod error;
mod faulty;
mod record;
mod redis_store;
mod retention;
mod sled_store;
mod unstored;

use async_trait::async_trait;

pub use doc_name::{DocName, InvalidDocName, MAX_DOC_NAME_LEN};
pub use error::StorageError;
pub use faulty::FaultyStore;
pub use record::{
    DocMeta, LogEntry, Quarantined, Snapshot, SnapshotInfo, SnapshotReason, SCHEMA_VERSION,
};
pub use redis_store::RedisStore;
pub use retention::RetentionPolicy;
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

/// Durable storage for documents.
///
/// Implementations must make [`append`](DocumentStore::append) durable before
/// it returns: the engine broadcasts a change only after that.
#[async_trait]
pub trait DocumentStore: Send + Sync + std::fmt::Debug + 'static {
    /// Loads a document. One that was never written loads empty, with
    /// fresh metadata (`exists: false`), and nothing is stored for it.
    async fn load(&self, doc: &DocName) -> Result<StoredDoc, StorageError>;

    /// Appends changes (in increasing `seq` order) and returns once they are
    /// on disk. Changes that arrive together share one flush. `meta` is what
    /// the caller loaded: the first append of a document stores it in the
    /// same write, which creates the document. Refuses with
    /// [`StorageError::Recreated`] when the stored document has another
    /// incarnation (it was deleted or created anew meanwhile: reload), and,
    /// in a store shared by several nodes, with [`StorageError::Conflict`]
    /// when another node already used the first sequence number.
    async fn append(
        &self,
        doc: &DocName,
        meta: &DocMeta,
        entries: &[LogEntry],
    ) -> Result<(), StorageError>;

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

    /// A document's facts, or `None` if it is not stored.
    async fn info(&self, doc: &DocName) -> Result<Option<DocInfo>, StorageError>;

    /// A document's snapshot history, oldest first.
    async fn list_snapshots(&self, doc: &DocName) -> Result<Vec<SnapshotInfo>, StorageError>;

    /// One snapshot with its state.
    async fn get_snapshot(&self, doc: &DocName, id: u64) -> Result<Option<Snapshot>, StorageError>;

    /// Drops the snapshots `policy` does not keep; returns how many went.
    async fn prune_snapshots(
        &self,
        doc: &DocName,
        policy: RetentionPolicy,
        now_ms: u64,
    ) -> Result<usize, StorageError>;

    /// Removes a document and its history; `false` if there was none.
    async fn delete(&self, doc: &DocName) -> Result<bool, StorageError>;

    /// Everything stored about a document, or `None`.
    async fn dump(&self, doc: &DocName) -> Result<Option<DocDump>, StorageError>;

    /// Stores a dumped document as it was (ids, sequence numbers,
    /// incarnation). Refuses to overwrite a document that exists.
    async fn restore_dump(&self, dump: DocDump) -> Result<(), StorageError>;

    /// Decodes every record; returns those that do not decode.
    async fn verify(&self) -> Result<Vec<Corruption>, StorageError>;

    /// Keeps stored changes (or snapshots) that no longer replay, set
    /// aside with why and when, durably. Setting the same change (or
    /// snapshot) aside again replaces its record.
    async fn quarantine(&self, doc: &DocName, parts: &[Quarantined]) -> Result<(), StorageError>;

    /// What was set aside of a document: changes by sequence number, then
    /// snapshots by id.
    async fn quarantined(&self, doc: &DocName) -> Result<Vec<Quarantined>, StorageError>;

    /// Queues webhook deliveries durably (flushed before returning).
    async fn enqueue_webhooks(&self, deliveries: &[WebhookDelivery]) -> Result<(), StorageError>;

    /// Queued deliveries for `url`, oldest first, with their ids.
    async fn webhook_queue(
        &self,
        url: &str,
        limit: usize,
    ) -> Result<Vec<(u64, WebhookDelivery)>, StorageError>;

    /// Removes a delivered notification from the queue.
    async fn ack_webhook(&self, id: u64) -> Result<(), StorageError>;

    /// Proves the store takes writes right now (for readiness checks).
    async fn check_writable(&self) -> Result<(), StorageError>;

    /// Changes other processes append to the document after `after`, in
    /// order, as they are stored; `None` for a store only this process
    /// writes (the embedded one).
    async fn watch(
        &self,
        _doc: &DocName,
        _after: u64,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<Vec<LogEntry>>>, StorageError> {
        Ok(None)
    }

    /// Sends an awareness update to the other processes serving `doc`.
    async fn publish_presence(&self, _doc: &DocName, _update: &[u8]) -> Result<(), StorageError> {
        Ok(())
    }

    /// Asks the other processes serving `doc` for the presence their own
    /// connections own (each answers with [`answer_presence`]); returns how
    /// many will answer. 0 when there are no other processes.
    ///
    /// [`answer_presence`]: DocumentStore::answer_presence
    async fn ask_presence(&self, _doc: &DocName) -> Result<usize, StorageError> {
        Ok(0)
    }

    /// Answers [`PeerEvent::PresenceWanted`] from process `asker` with this
    /// process's own presence (an awareness update, possibly empty).
    async fn answer_presence(
        &self,
        _doc: &DocName,
        _asker: u64,
        _update: &[u8],
    ) -> Result<(), StorageError> {
        Ok(())
    }

    /// What the other processes serving `doc` announce: their presence, and
    /// the document's deletion. `None` when there are no other processes.
    async fn watch_peers(
        &self,
        _doc: &DocName,
    ) -> Result<Option<tokio::sync::mpsc::Receiver<PeerEvent>>, StorageError> {
        Ok(None)
    }
}

/// Something another process said about a document (cluster mode).
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
