//! `FaultyStore`: a store that fails on command, for testing what the engine
//! does when the disk does (full, I/O errors, corrupt data). Built only
//! with the `test-util` feature, which the crates above enable for their
//! tests.
//!
//! It wraps a real store and passes everything through until told to fail
//! appends or loads; it also counts loads, so tests can see a document is
//! loaded once however many connections race for it. It plays each role
//! the store it wraps plays.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::{
    Archive, ArchiveRestore, Catalogue, Corruption, DocDump, DocInfo, DocMeta, DocName,
    DocumentStore, Followed, LogEntry, LogRetention, NewSnapshot, PeerEvent, Quarantined,
    Replication, RetentionPolicy, Snapshot, SnapshotInfo, StorageError, StoredDoc, WebhookDelivery,
    WebhookOutbox,
};

#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    fail_appends: AtomicBool,
    fail_loads: AtomicBool,
    loads: AtomicUsize,
}

impl<S> FaultyStore<S> {
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            fail_appends: AtomicBool::new(false),
            fail_loads: AtomicBool::new(false),
            loads: AtomicUsize::new(0),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// From now on, appends fail as a full disk would.
    pub fn fail_appends(&self, fail: bool) {
        self.fail_appends.store(fail, Ordering::SeqCst);
    }

    /// From now on, loads fail as corrupt data would.
    pub fn fail_loads(&self, fail: bool) {
        self.fail_loads.store(fail, Ordering::SeqCst);
    }

    /// How many loads were asked for.
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// A full disk, as a write that was told to fail sees it.
    fn full_disk(&self, action: &'static str) -> Result<(), StorageError> {
        if self.fail_appends.load(Ordering::SeqCst) {
            return Err(StorageError::Io {
                action,
                reason: "No space left on device (injected fault)".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl<S: DocumentStore> DocumentStore for FaultyStore<S> {
    async fn check_writable(&self) -> Result<(), StorageError> {
        self.inner.check_writable().await
    }

    async fn load(&self, doc: &DocName) -> Result<StoredDoc, StorageError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        if self.fail_loads.load(Ordering::SeqCst) {
            return Err(StorageError::Corrupt {
                kind: "log record",
                key: format!("{doc}#1"),
                reason: "injected fault".into(),
                source: None,
            });
        }
        self.inner.load(doc).await
    }

    async fn append(
        &self,
        doc: &DocName,
        meta: &DocMeta,
        entries: &[LogEntry],
    ) -> Result<(), StorageError> {
        self.full_disk("appending to the update log")?;
        self.inner.append(doc, meta, entries).await
    }

    async fn compact(
        &self,
        doc: &DocName,
        s: NewSnapshot,
        keep: LogRetention,
    ) -> Result<u64, StorageError> {
        self.inner.compact(doc, s, keep).await
    }

    async fn read_log(
        &self,
        doc: &DocName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StorageError> {
        self.inner.read_log(doc, after, limit).await
    }

    async fn list_snapshots(&self, doc: &DocName) -> Result<Vec<SnapshotInfo>, StorageError> {
        self.inner.list_snapshots(doc).await
    }

    async fn get_snapshot(&self, doc: &DocName, id: u64) -> Result<Option<Snapshot>, StorageError> {
        self.inner.get_snapshot(doc, id).await
    }

    async fn prune_snapshots(
        &self,
        doc: &DocName,
        p: RetentionPolicy,
        now: u64,
    ) -> Result<usize, StorageError> {
        self.inner.prune_snapshots(doc, p, now).await
    }

    async fn delete(&self, doc: &DocName) -> Result<bool, StorageError> {
        self.inner.delete(doc).await
    }

    async fn quarantine(&self, doc: &DocName, parts: &[Quarantined]) -> Result<(), StorageError> {
        self.full_disk("setting changes aside")?;
        self.inner.quarantine(doc, parts).await
    }

    async fn quarantined(&self, doc: &DocName) -> Result<Vec<Quarantined>, StorageError> {
        self.inner.quarantined(doc).await
    }
}

#[async_trait]
impl<S: Catalogue> Catalogue for FaultyStore<S> {
    async fn list(&self) -> Result<Vec<DocName>, StorageError> {
        self.inner.list().await
    }

    async fn info(&self, doc: &DocName) -> Result<Option<DocInfo>, StorageError> {
        self.inner.info(doc).await
    }
}

#[async_trait]
impl<S: Archive> Archive for FaultyStore<S> {
    async fn dump(&self, doc: &DocName) -> Result<Option<DocDump>, StorageError> {
        self.inner.dump(doc).await
    }

    async fn verify(&self) -> Result<Vec<Corruption>, StorageError> {
        self.inner.verify().await
    }
}

#[async_trait]
impl<S: ArchiveRestore> ArchiveRestore for FaultyStore<S> {
    async fn restore_dump(&self, dump: DocDump) -> Result<(), StorageError> {
        self.inner.restore_dump(dump).await
    }
}

#[async_trait]
impl<S: WebhookOutbox> WebhookOutbox for FaultyStore<S> {
    async fn enqueue_webhooks(&self, d: &[WebhookDelivery]) -> Result<(), StorageError> {
        self.inner.enqueue_webhooks(d).await
    }

    async fn webhook_queue(
        &self,
        url: &str,
        limit: usize,
    ) -> Result<Vec<(u64, WebhookDelivery)>, StorageError> {
        self.inner.webhook_queue(url, limit).await
    }

    async fn ack_webhook(&self, id: u64) -> Result<(), StorageError> {
        self.inner.ack_webhook(id).await
    }
}

#[async_trait]
impl<S: Replication> Replication for FaultyStore<S> {
    async fn watch(
        &self,
        doc: &DocName,
        meta: &DocMeta,
        after: u64,
    ) -> Result<Option<mpsc::Receiver<Followed>>, StorageError> {
        self.inner.watch(doc, meta, after).await
    }

    async fn watch_peers(
        &self,
        doc: &DocName,
    ) -> Result<Option<mpsc::Receiver<PeerEvent>>, StorageError> {
        self.inner.watch_peers(doc).await
    }

    async fn publish_presence(&self, doc: &DocName, update: &[u8]) -> Result<(), StorageError> {
        self.inner.publish_presence(doc, update).await
    }

    async fn publish_stateless(&self, doc: &DocName, frame: &[u8]) -> Result<(), StorageError> {
        self.inner.publish_stateless(doc, frame).await
    }

    async fn ask_presence(&self, doc: &DocName) -> Result<usize, StorageError> {
        self.inner.ask_presence(doc).await
    }

    async fn answer_presence(
        &self,
        doc: &DocName,
        asker: u64,
        update: &[u8],
    ) -> Result<(), StorageError> {
        self.inner.answer_presence(doc, asker, update).await
    }
}
