//! What a store does, one trait per role.
//!
//! - [`DocumentStore`]: a document's log and snapshots (what the engine
//!   reads and writes), what was quarantined, and whether the store takes
//!   writes;
//! - [`Catalogue`]: which documents exist;
//! - [`Archive`]: whole documents out (backups) and a check of every
//!   record; [`ArchiveRestore`]: whole documents back in;
//! - [`WebhookOutbox`]: change notifications waiting to be sent;
//! - [`Replication`]: what the other processes sharing the store do.
//!
//! [`SledStore`](crate::SledStore) plays every role, with the
//! single-process answer to [`Replication`] (there are no other
//! processes); [`RedisStore`](crate::RedisStore) plays all but
//! [`ArchiveRestore`] and [`WebhookOutbox`], so handing it to a part that
//! needs those does not compile. [`EngineStore`] is the roles the document
//! engine needs.
//!
//! ```
//! use std::sync::Arc;
//! use weft_storage::{ArchiveRestore, SledStore, WebhookOutbox};
//! fn roles(store: SledStore) -> (Arc<dyn WebhookOutbox>, Arc<dyn ArchiveRestore>) {
//!     let store = Arc::new(store);
//!     (store.clone(), store)
//! }
//! ```
//!
//! ```compile_fail
//! use std::sync::Arc;
//! use weft_storage::{RedisStore, WebhookOutbox};
//! fn roles(store: RedisStore) -> Arc<dyn WebhookOutbox> {
//!     Arc::new(store) // Redis keeps no webhook queue
//! }
//! ```
//!
//! ```compile_fail
//! use std::sync::Arc;
//! use weft_storage::{ArchiveRestore, RedisStore};
//! fn roles(store: RedisStore) -> Arc<dyn ArchiveRestore> {
//!     Arc::new(store) // Redis takes no backup restores
//! }
//! ```

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::{
    Corruption, DocDump, DocHead, DocInfo, DocMeta, DocName, Followed, LogEntry, LogRetention,
    NewSnapshot, PeerEvent, Quarantined, RetentionPolicy, Snapshot, SnapshotInfo, StorageError,
    StoredDoc, WebhookDelivery,
};

/// A document's changes and snapshots.
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

    /// Stores `snapshot` durably, then drops the log entries `keep` no
    /// longer keeps (the snapshot's `taken_at_ms` is the time it judges
    /// by). Returns the snapshot's id.
    async fn compact(
        &self,
        doc: &DocName,
        snapshot: NewSnapshot,
        keep: LogRetention,
    ) -> Result<u64, StorageError>;

    /// Logged changes with `seq > after`, oldest first, at most `limit`.
    async fn read_log(
        &self,
        doc: &DocName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StorageError>;

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

    /// Keeps stored changes (or snapshots) that no longer replay, set
    /// aside with why and when, durably. Setting the same change (or
    /// snapshot) aside again replaces its record.
    async fn quarantine(&self, doc: &DocName, parts: &[Quarantined]) -> Result<(), StorageError>;

    /// What was set aside of a document: changes by sequence number, then
    /// snapshots by id.
    async fn quarantined(&self, doc: &DocName) -> Result<Vec<Quarantined>, StorageError>;

    /// Proves the store takes writes right now (for readiness checks).
    async fn check_writable(&self) -> Result<(), StorageError>;
}

/// Which documents the store holds.
#[async_trait]
pub trait Catalogue: Send + Sync + std::fmt::Debug + 'static {
    /// Every stored document, in name order.
    async fn list(&self) -> Result<Vec<DocName>, StorageError>;

    /// A document's facts, or `None` if it is not stored.
    async fn info(&self, doc: &DocName) -> Result<Option<DocInfo>, StorageError>;

    /// A document's metadata and newest sequence number, or `None` if it
    /// is not stored. Stores answer it without reading the log; this
    /// default asks [`info`](Catalogue::info).
    async fn head(&self, doc: &DocName) -> Result<Option<DocHead>, StorageError> {
        Ok(self.info(doc).await?.map(|info| DocHead {
            meta: info.meta,
            last_seq: info.last_seq,
        }))
    }
}

/// Whole documents out, and a check of every record: backups and
/// `weft verify`.
#[async_trait]
pub trait Archive: Send + Sync + std::fmt::Debug + 'static {
    /// Everything stored about a document, or `None`.
    async fn dump(&self, doc: &DocName) -> Result<Option<DocDump>, StorageError>;

    /// Decodes every record; returns those that do not decode.
    async fn verify(&self) -> Result<Vec<Corruption>, StorageError>;
}

/// Whole documents back in, as they were dumped: restoring a backup.
#[async_trait]
pub trait ArchiveRestore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a dumped document as it was (ids, sequence numbers,
    /// incarnation). Refuses to overwrite a document that exists.
    async fn restore_dump(&self, dump: DocDump) -> Result<(), StorageError>;
}

/// Change notifications waiting to be sent to webhooks, kept durably so
/// that a restart loses none.
#[async_trait]
pub trait WebhookOutbox: Send + Sync + std::fmt::Debug + 'static {
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
}

/// What the other processes sharing the store do with a document: the
/// changes they append, their presence, its deletion. A store only this
/// process writes answers that there are none.
#[async_trait]
pub trait Replication: Send + Sync + std::fmt::Debug + 'static {
    /// Changes other processes append to the document after `after`, in
    /// order, as they are stored, as long as the stored history is the one
    /// of incarnation `meta` that reached `after`; `None` when there are no
    /// other processes.
    async fn watch(
        &self,
        doc: &DocName,
        meta: &DocMeta,
        after: u64,
    ) -> Result<Option<mpsc::Receiver<Followed>>, StorageError>;

    /// What the other processes serving `doc` announce: their presence, and
    /// the document's deletion. `None` when there are no other processes.
    async fn watch_peers(
        &self,
        doc: &DocName,
    ) -> Result<Option<mpsc::Receiver<PeerEvent>>, StorageError>;

    /// Sends an awareness update to the other processes serving `doc`.
    async fn publish_presence(&self, doc: &DocName, update: &[u8]) -> Result<(), StorageError>;

    /// Sends a stateless message's frame to the other processes serving
    /// `doc` ([`PeerEvent::Stateless`]).
    async fn publish_stateless(&self, doc: &DocName, frame: &[u8]) -> Result<(), StorageError>;

    /// Asks the other processes serving `doc` for the presence their own
    /// connections own (each answers with [`answer_presence`]); returns how
    /// many will answer. 0 when there are no other processes.
    ///
    /// [`answer_presence`]: Replication::answer_presence
    async fn ask_presence(&self, doc: &DocName) -> Result<usize, StorageError>;

    /// Answers [`PeerEvent::PresenceWanted`] from process `asker` with this
    /// process's own presence (an awareness update, possibly empty).
    async fn answer_presence(
        &self,
        doc: &DocName,
        asker: u64,
        update: &[u8],
    ) -> Result<(), StorageError>;
}

/// What the document engine needs of a store: its documents, which of them
/// exist, and what other processes sharing it do. Every store that plays
/// those three roles is one.
pub trait EngineStore: DocumentStore + Catalogue + Replication {}

impl<S: DocumentStore + Catalogue + Replication + ?Sized> EngineStore for S {}
