//! `FaultyStore`: a store that fails on command, for testing what the engine
//! does when the disk does (full, I/O errors, corrupt data).
//!
//! It wraps a real store and passes everything through until told to fail
//! appends or loads; it also counts loads, so tests can see a document is
//! loaded once however many connections race for it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;

use crate::{
    Corruption, DocDump, DocInfo, DocMeta, DocName, DocumentStore, LogEntry, NewSnapshot,
    Quarantined, RetentionPolicy, Snapshot, SnapshotInfo, StorageError, StoredDoc, WebhookDelivery,
};

#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    fail_appends: AtomicBool,
    fail_loads: AtomicBool,
    loads: AtomicUsize,
}

impl<S: DocumentStore> FaultyStore<S> {
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
        if self.fail_appends.load(Ordering::SeqCst) {
            return Err(StorageError::Io {
                action: "appending to the update log",
                reason: "No space left on device (injected fault)".into(),
            });
        }
        self.inner.append(doc, meta, entries).await
    }

    async fn compact(&self, doc: &DocName, s: NewSnapshot, keep: u64) -> Result<u64, StorageError> {
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

    async fn list(&self) -> Result<Vec<DocName>, StorageError> {
        self.inner.list().await
    }

    async fn info(&self, doc: &DocName) -> Result<Option<DocInfo>, StorageError> {
        self.inner.info(doc).await
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

    async fn dump(&self, doc: &DocName) -> Result<Option<DocDump>, StorageError> {
        self.inner.dump(doc).await
    }

    async fn restore_dump(&self, dump: DocDump) -> Result<(), StorageError> {
        self.inner.restore_dump(dump).await
    }

    async fn verify(&self) -> Result<Vec<Corruption>, StorageError> {
        self.inner.verify().await
    }

    async fn quarantine(&self, doc: &DocName, parts: &[Quarantined]) -> Result<(), StorageError> {
        if self.fail_appends.load(Ordering::SeqCst) {
            return Err(StorageError::Io {
                action: "setting changes aside",
                reason: "No space left on device (injected fault)".into(),
            });
        }
        self.inner.quarantine(doc, parts).await
    }

    async fn quarantined(&self, doc: &DocName) -> Result<Vec<Quarantined>, StorageError> {
        self.inner.quarantined(doc).await
    }

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
