//! `SledStore`: the embedded default store, one sled database per data directory.
//!
//! Layout: four trees keyed by `name 0x00 …` (names never contain NUL):
//! - `meta`:           `name`                  → document metadata; written
//!   with the document's first changes (in one transaction), so a name that
//!   was only loaded has none, and a document exists exactly when it has
//!   metadata
//! - `log`:            `name 0x00 seq (BE u64)` → one logged change
//! - `snapshots`:      `name 0x00 id (BE u64)`  → one snapshot (ids count up per
//!   document, so the last is the newest)
//! - `snapshot_index`: same keys               → the snapshot without its state
//! - `webhooks`:       `id (BE u64)`            → a queued change notification
//! - `quarantine`:     `name 0x00 0 seq` (a change) or `name 0x00 1 id` (a
//!   snapshot), each BE u64 → a stored part that no longer replays
//!
//! sled calls can block on disk, so each operation is one closure over the
//! store that [`SledStore::run`] runs on tokio's blocking pool under a
//! deadline ([`DiskGuard`]). A write that fails or misses its deadline, or
//! that would leave the disk with less free space than a floor
//! ([`SpaceFloor`]), marks the store failed: writes are refused at once,
//! reads go on, and
//! [`SledStore::recover`] tells when it takes writes again, or that it
//! never will in this process (sled 0.34 keeps a write error until the
//! database is reopened).
//!
//! It is the only writer of its data directory, so it plays every role,
//! [`Replication`] with the answer that there are no other processes.
//! Beside this file: `journal.rs` (what makes an append durable),
//! `durable.rs` (what makes sled's flush durable), `restoring.rs` (names
//! a backup is being restored into), `space.rs` (the free space kept so
//! that sled's writes do not meet a full disk), `health.rs` (coming back
//! after a failed write), `verify.rs` (`weft verify`), `webhooks.rs` (the
//! webhook outbox) and the unit tests.

mod durable;
mod health;
mod journal;
mod restoring;
mod space;
#[cfg(test)]
mod tests;
mod verify;
mod webhooks;

pub use health::Recovery;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::disk_guard::{DiskGuard, Op};
use crate::unstored::Unstored;
use durable::Durable;
use health::READINESS_BUDGET;
use journal::{Journal, Tree, Write};
use restoring::Restoring;
use space::SpaceFloor;

use crate::record::{
    self, LogRecord, MetaRecord, QuarantineRecord, SnapshotIndexRecord, SnapshotRecord,
    SCHEMA_VERSION,
};
use crate::{
    Archive, ArchiveRestore, Catalogue, Corruption, DocDump, DocHead, DocInfo, DocMeta, DocName,
    DocumentStore, Followed, LogEntry, LogRetention, NewSnapshot, PeerEvent, Quarantined,
    Replication, RetentionPolicy, Snapshot, SnapshotInfo, StorageError, StoredDoc,
};

/// How long a sled call may take by default before the store counts as failed.
pub const DEFAULT_STORAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A document store in a sled database.
#[derive(Debug, Clone)]
pub struct SledStore {
    dir: PathBuf,
    guard: Arc<DiskGuard>,
    space: Arc<SpaceFloor>,
    unstored: Arc<Unstored>,
    restoring: Arc<Restoring>,
    db: sled::Db,
    journal: Arc<Journal>,
    meta: sled::Tree,
    log: sled::Tree,
    snapshots: sled::Tree,
    snapshot_index: sled::Tree,
    webhooks: sled::Tree,
    quarantine: sled::Tree,
}

impl SledStore {
    /// Opens (creating if needed) the database in `dir`. Fails at once, rather
    /// than waiting, when another process holds it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(dir.as_ref(), sled::Config::new())
    }

    /// Opens with sled configured as `config` (its path set here).
    fn open_with(dir: &Path, config: sled::Config) -> Result<Self, StorageError> {
        let path = dir.to_path_buf();
        let db = config
            .path(&path)
            .open()
            .map_err(|e| open_error(&path, e))?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|e| StorageError::Open {
                path: path.clone(),
                reason: e.to_string(),
                source: Box::new(e),
            })
        };
        let (meta, log) = (tree("meta")?, tree("log")?);
        let opened = |doing: &str, e: std::io::Error| StorageError::Open {
            path: path.clone(),
            reason: format!("{doing}: {e}"),
            source: Box::new(e),
        };
        let durable = Durable::open(&path).map_err(|e| opened("syncing sled's files", e))?;
        let space = SpaceFloor::of(&path).map_err(|e| opened("reading the disk's size", e))?;
        let journal = Journal::open(&path, db.clone(), durable, [&meta, &log])
            .map_err(|e| opened("replaying the journal", e))?;
        Ok(SledStore {
            meta,
            log,
            snapshots: tree("snapshots")?,
            snapshot_index: tree("snapshot_index")?,
            webhooks: tree("webhooks")?,
            quarantine: tree("quarantine")?,
            journal: Arc::new(journal),
            db,
            guard: Arc::new(DiskGuard::new(DEFAULT_STORAGE_TIMEOUT)),
            space: Arc::new(space),
            unstored: Arc::new(Unstored::default()),
            restoring: Arc::new(Restoring::default()),
            dir: path,
        })
    }

    /// The same store, whose sled calls may each take at most `timeout`
    /// (whole-store scans longer) before the store counts as failed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.guard = Arc::new(DiskGuard::new(timeout));
        self
    }

    /// Runs one operation, `f` over this store, on the blocking pool and
    /// waits for it at most `op`'s deadline (see [`DiskGuard`]). A write is
    /// refused if it would leave less than the floor free ([`SpaceFloor`]).
    async fn run<T, F>(&self, op: Op, action: &'static str, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&SledStore) -> Result<T, StorageError> + Send + 'static,
    {
        self.run_writing(op, action, 0, f).await
    }

    /// [`run`](Self::run) for an operation that writes about `bytes`.
    async fn run_writing<T, F>(
        &self,
        op: Op,
        action: &'static str,
        bytes: u64,
        f: F,
    ) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&SledStore) -> Result<T, StorageError> + Send + 'static,
    {
        let store = self.clone();
        self.guard
            .run(op, action, move || {
                if op.writes() {
                    store.space.admit(action, bytes)?;
                }
                f(&store)
            })
            .await
    }

    /// Flushes the database and returns once what it flushed is on stable
    /// storage (see `durable.rs`); `action` names the write in an error.
    fn flush(&self, action: &'static str) -> Result<(), StorageError> {
        self.journal
            .flush_sled()
            .map_err(|e| StorageError::backend(action, e))
    }

    /// Takes the journal's lock, as every write to `log` or `meta` must
    /// (see `journal.rs`).
    fn journal(&self, action: &'static str) -> Result<journal::Held<'_>, StorageError> {
        self.journal
            .lock()
            .map_err(|e| StorageError::backend(action, e))
    }

    /// Under the journal's lock: makes everything so far durable in sled,
    /// so that what follows may remove what appends wrote.
    fn checkpoint(
        &self,
        held: &mut journal::Held<'_>,
        action: &'static str,
    ) -> Result<(), StorageError> {
        held.checkpoint()
            .map_err(|e| StorageError::backend(action, e))
    }

    /// Logged changes with `seq > after`, oldest first, at most `limit`,
    /// without those of a failed append.
    fn log_after(
        &self,
        doc: &DocName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let start = key(doc, after.saturating_add(1));
        let end = key(doc, u64::MAX);
        let unstored = self.unstored.range(doc);
        let mut entries = Vec::new();
        for item in self.log.range(start..=end) {
            if entries.len() == limit {
                break;
            }
            let (k, v) = item.map_err(io("reading the update log"))?;
            let seq = suffix_u64(&k);
            if unstored.as_ref().is_some_and(|r| r.contains(&seq)) {
                continue;
            }
            let label = format!("{doc}#{seq}");
            let r: LogRecord = record::decode(&label, &v)?;
            entries.push(r.into_entry(seq));
        }
        Ok(entries)
    }

    /// A document's first append: its metadata and its first changes in one
    /// transaction, so it never exists without them (nor they without it).
    /// Returns the metadata's write, for the journal.
    fn create(
        &self,
        doc: &DocName,
        meta: &DocMeta,
        batch: &sled::Batch,
    ) -> Result<Write, StorageError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;

        let record = record::encode(&MetaRecord {
            version: SCHEMA_VERSION,
            incarnation: meta.incarnation,
            created_at_ms: meta.created_at_ms,
        })?;
        let created = (&self.meta, &self.log).transaction(|(metas, log)| {
            if metas.get(doc.as_str())?.is_some() {
                // Restored from a backup meanwhile: not this incarnation.
                return Err(ConflictableTransactionError::Abort(()));
            }
            metas.insert(doc.as_str(), record.as_slice())?;
            log.apply_batch(batch)?;
            Ok(())
        });
        match created {
            Ok(()) => Ok(Write::set(Tree::Meta, doc.as_str().into(), record)),
            Err(TransactionError::Abort(())) => Err(StorageError::Recreated(doc.to_string())),
            Err(TransactionError::Storage(e)) => Err(io("creating a document")(e)),
        }
    }

    /// Under the journal's lock: applies an append's `writes` to sled (in
    /// memory) if the document is still the one it loaded, and writes them
    /// to the journal; returns the journal's ticket for them.
    fn apply_and_record(
        &self,
        doc: &DocName,
        meta: &DocMeta,
        first: u64,
        mut writes: Vec<Write>,
    ) -> Result<u64, StorageError> {
        let mut held = self.journal("appending changes")?;
        match self.read_meta(doc)? {
            Some(stored) if stored.incarnation == meta.incarnation => {
                self.apply_to_log(&writes)?;
            }
            Some(_) => return Err(StorageError::Recreated(doc.to_string())),
            // Deleted under someone who had loaded it with changes, or
            // being restored from a backup.
            None if first != 1 || self.restoring.holds(doc) => {
                return Err(StorageError::Recreated(doc.to_string()))
            }
            None => writes.push(self.create(doc, meta, &batch_of(&writes))?),
        }
        held.record(&writes)
            .map_err(|e| StorageError::backend("writing the journal", e))
    }

    /// Applies an append's writes to the `log` tree. A single write (a
    /// change on its own, as most are) is one insert: a sled batch would
    /// write sled's log buffer out before and after it (a `pwrite` and a
    /// waited `sync_file_range` each), competing with the journal's sync
    /// for the disk. Several are one batch, so that sled, which may flush
    /// any time, never keeps part of an append whose journal record was
    /// never written (a failed append, or a crash before its record).
    fn apply_to_log(&self, writes: &[Write]) -> Result<(), StorageError> {
        let applied = match writes {
            [Write {
                value: Some(value),
                key,
                ..
            }] => self.log.insert(&key[..], &value[..]).map(drop),
            _ => self.log.apply_batch(batch_of(writes)),
        };
        applied.map_err(io("appending to the update log"))
    }

    /// Removes a document, its metadata and every record of it, in one
    /// sled transaction: a crash leaves it whole or gone, never records
    /// without metadata (which a later document of the name would take
    /// for its own). Returns whether it had metadata.
    fn remove_whole(&self, doc: &DocName) -> Result<bool, StorageError> {
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        use sled::Transactional;
        use std::convert::Infallible;

        let parts = [
            &self.log,
            &self.snapshots,
            &self.snapshot_index,
            &self.quarantine,
        ];
        let mut batches: [sled::Batch; 4] = Default::default();
        for (tree, batch) in parts.iter().zip(&mut batches) {
            for k in tree.scan_prefix(prefix(doc)).keys() {
                batch.remove(k.map_err(io("deleting a document"))?);
            }
        }
        let [log, snapshots, index, quarantine] = parts;
        let removed = (&self.meta, log, snapshots, index, quarantine).transaction(|trees| {
            let (meta, log, snapshots, index, quarantine) = trees;
            let existed = meta.remove(doc.as_str())?.is_some();
            for (tree, batch) in [log, snapshots, index, quarantine]
                .into_iter()
                .zip(&batches)
            {
                tree.apply_batch(batch)?;
            }
            Ok::<_, ConflictableTransactionError<Infallible>>(existed)
        });
        match removed {
            Ok(existed) => Ok(existed),
            Err(TransactionError::Abort(never)) => match never {},
            Err(TransactionError::Storage(e)) => Err(io("deleting a document")(e)),
        }
    }

    fn last_snapshot_id(&self, doc: &DocName) -> Result<u64, StorageError> {
        Ok(self
            .snapshot_index
            .scan_prefix(prefix(doc))
            .keys()
            .next_back()
            .transpose()
            .map_err(io("reading snapshots"))?
            .map_or(0, |k| suffix_u64(&k)))
    }

    fn put_snapshot(&self, doc: &DocName, snapshot: &Snapshot) -> Result<(), StorageError> {
        let k = key(doc, snapshot.id);
        let index = SnapshotIndexRecord::of(snapshot);
        self.snapshots
            .insert(k.clone(), record::encode(&SnapshotRecord::of(snapshot))?)
            .map_err(io("writing a snapshot"))?;
        self.snapshot_index
            .insert(k, record::encode(&index)?)
            .map_err(io("writing a snapshot"))?;
        Ok(())
    }

    fn read_meta(&self, doc: &DocName) -> Result<Option<DocMeta>, StorageError> {
        let Some(bytes) = self
            .meta
            .get(doc.as_str())
            .map_err(io("reading metadata"))?
        else {
            return Ok(None);
        };
        let r: MetaRecord = record::decode(doc.as_str(), &bytes)?;
        Ok(Some(DocMeta {
            incarnation: r.incarnation,
            created_at_ms: r.created_at_ms,
        }))
    }

    /// A document's snapshot history from the index, oldest first.
    fn snapshot_infos(&self, doc: &DocName) -> Result<Vec<SnapshotInfo>, StorageError> {
        let mut out = Vec::new();
        for item in self.snapshot_index.scan_prefix(prefix(doc)) {
            let (k, v) = item.map_err(io("listing snapshots"))?;
            let id = suffix_u64(&k);
            let r: SnapshotIndexRecord = record::decode(&format!("{doc}@{id}"), &v)?;
            out.push(r.into_info(id));
        }
        Ok(out)
    }
}

#[async_trait]
impl DocumentStore for SledStore {
    /// For readiness: refused at once when the store has failed, else one
    /// write-and-flush probe at a time, waited for at most a second.
    async fn check_writable(&self) -> Result<(), StorageError> {
        if let Some(failure) = self.guard.failure() {
            return Err(StorageError::Unavailable {
                action: "checking the store takes writes",
                reason: failure.reason,
            });
        }
        let checked = self.probe_writes(READINESS_BUDGET, false).await;
        if let Err(e @ (StorageError::Io { .. } | StorageError::DiskFull { .. })) = &checked {
            self.guard.fail(e.to_string());
        }
        checked
    }

    async fn load(&self, doc: &DocName) -> Result<StoredDoc, StorageError> {
        let doc = doc.clone();
        self.run(Op::Read, "loading a document", move |store| {
            let Some(meta) = store.read_meta(&doc)? else {
                // Never written: nothing is stored until its first append.
                return Ok(StoredDoc {
                    meta: DocMeta {
                        incarnation: random_u64()?,
                        created_at_ms: now_ms(),
                    },
                    exists: false,
                    snapshot: None,
                    log: Vec::new(),
                });
            };
            let snapshot = match store
                .snapshots
                .scan_prefix(prefix(&doc))
                .next_back()
                .transpose()
                .map_err(io("reading snapshots"))?
            {
                Some((key, value)) => Some(decode_snapshot(&doc, &key, &value)?),
                None => None,
            };
            let after = snapshot.as_ref().map_or(0, |snap| snap.seq);
            let log = store.log_after(&doc, after, usize::MAX)?;
            Ok(StoredDoc {
                meta,
                exists: true,
                snapshot,
                log,
            })
        })
        .await
    }

    async fn append(
        &self,
        doc: &DocName,
        meta: &DocMeta,
        entries: &[LogEntry],
    ) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (first, last) = (entries[0].seq, entries[entries.len() - 1].seq);
        let bytes = entries.iter().map(|e| e.update.len() as u64).sum();
        let (name, meta, entries) = (doc.clone(), *meta, entries.to_vec());
        let appended = self
            .run_writing(Op::Write, "appending changes", bytes, move |store| {
                let mut writes = Vec::with_capacity(entries.len());
                for entry in &entries {
                    let value = record::encode(&LogRecord::of(entry))?;
                    writes.push(Write::set(Tree::Log, key(&name, entry.seq), value));
                }
                // Entries of a failed append that this one does not overwrite go.
                if let Some(unstored) = store.unstored.range(&name) {
                    for seq in unstored.filter(|&seq| seq > last) {
                        writes.push(Write::remove(Tree::Log, key(&name, seq)));
                    }
                }
                let ticket = store.apply_and_record(&name, &meta, first, writes)?;
                store
                    .journal
                    .sync(ticket)
                    .map_err(|e| StorageError::backend("syncing the journal", e))
            })
            .await;
        match &appended {
            Ok(()) => self.unstored.cleared(doc),
            // sled may hold the batch in memory without it being durable.
            Err(_) => self.unstored.failed(doc, first, last),
        }
        appended
    }

    async fn compact(
        &self,
        doc: &DocName,
        snapshot: NewSnapshot,
        keep: LogRetention,
    ) -> Result<u64, StorageError> {
        let doc = doc.clone();
        let bytes = snapshot.state.len() as u64;
        self.run_writing(Op::Write, "compacting a document", bytes, move |store| {
            let mut held = store.journal("compacting a document")?;
            let id = store.last_snapshot_id(&doc)? + 1;
            store.put_snapshot(
                &doc,
                &Snapshot {
                    id,
                    seq: snapshot.seq,
                    taken_at_ms: snapshot.taken_at_ms,
                    reason: snapshot.reason,
                    state: snapshot.state,
                },
            )?;
            // The snapshot must be on disk before the log entries it replaces
            // go, and so must every journaled append, before they go.
            store.checkpoint(&mut held, "flushing a snapshot")?;

            let snapshots = store.snapshot_infos(&doc)?;
            let drop_through = keep.drop_through(snapshot.seq, &snapshots, snapshot.taken_at_ms);
            if drop_through > 0 {
                let mut batch = sled::Batch::default();
                for k in store
                    .log
                    .range(key(&doc, 0)..=key(&doc, drop_through))
                    .keys()
                {
                    batch.remove(k.map_err(io("compacting the update log"))?);
                }
                store
                    .log
                    .apply_batch(batch)
                    .map_err(io("compacting the update log"))?;
            }
            Ok(id)
        })
        .await
    }

    async fn read_log(
        &self,
        doc: &DocName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let doc = doc.clone();
        self.run(Op::Read, "reading the update log", move |store| {
            store.log_after(&doc, after, limit)
        })
        .await
    }

    async fn list_snapshots(&self, doc: &DocName) -> Result<Vec<SnapshotInfo>, StorageError> {
        let doc = doc.clone();
        self.run(Op::Read, "listing snapshots", move |store| {
            store.snapshot_infos(&doc)
        })
        .await
    }

    async fn get_snapshot(&self, doc: &DocName, id: u64) -> Result<Option<Snapshot>, StorageError> {
        let doc = doc.clone();
        self.run(Op::Read, "reading a snapshot", move |store| {
            let k = key(&doc, id);
            match store.snapshots.get(&k).map_err(io("reading a snapshot"))? {
                Some(v) => decode_snapshot(&doc, &k, &v).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn prune_snapshots(
        &self,
        doc: &DocName,
        policy: RetentionPolicy,
        now_ms: u64,
    ) -> Result<usize, StorageError> {
        let doc = doc.clone();
        self.run(Op::Write, "pruning snapshots", move |store| {
            let all = store.snapshot_infos(&doc)?;
            let keep = policy.keep(&all, now_ms);
            let mut snapshots = sled::Batch::default();
            let mut index = sled::Batch::default();
            let mut removed = 0;
            for snapshot in all.iter().filter(|snap| !keep.contains(&snap.id)) {
                snapshots.remove(key(&doc, snapshot.id));
                index.remove(key(&doc, snapshot.id));
                removed += 1;
            }
            store
                .snapshots
                .apply_batch(snapshots)
                .map_err(io("pruning snapshots"))?;
            store
                .snapshot_index
                .apply_batch(index)
                .map_err(io("pruning snapshots"))?;
            Ok(removed)
        })
        .await
    }

    async fn delete(&self, doc: &DocName) -> Result<bool, StorageError> {
        let doc = doc.clone();
        self.run(Op::Write, "deleting a document", move |store| {
            let mut held = store.journal("deleting a document")?;
            store.checkpoint(&mut held, "deleting a document")?;
            let existed = store.remove_whole(&doc)?;
            store.flush("flushing a deletion")?;
            store.unstored.cleared(&doc);
            Ok(existed)
        })
        .await
    }

    async fn quarantine(&self, doc: &DocName, parts: &[Quarantined]) -> Result<(), StorageError> {
        let (doc, parts) = (doc.clone(), parts.to_vec());
        self.run(Op::Write, "setting changes aside", move |store| {
            let mut batch = sled::Batch::default();
            for part in &parts {
                batch.insert(
                    quarantine_key(&doc, part),
                    record::encode(&QuarantineRecord::of(part))?,
                );
            }
            store
                .quarantine
                .apply_batch(batch)
                .map_err(io("setting changes aside"))?;
            store.flush("flushing changes set aside")?;
            Ok(())
        })
        .await
    }

    async fn quarantined(&self, doc: &DocName) -> Result<Vec<Quarantined>, StorageError> {
        let doc = doc.clone();
        self.run(Op::Read, "reading changes set aside", move |store| {
            let mut out = Vec::new();
            for item in store.quarantine.scan_prefix(prefix(&doc)) {
                let (k, v) = item.map_err(io("reading changes set aside"))?;
                let label = format!("{doc} quarantined #{}", suffix_u64(&k));
                let r: QuarantineRecord = record::decode(&label, &v)?;
                out.push(r.into_part());
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Catalogue for SledStore {
    async fn list(&self) -> Result<Vec<DocName>, StorageError> {
        self.run(Op::Scan, "listing documents", |store| {
            let mut names = Vec::new();
            for k in store.meta.iter().keys() {
                let k = k.map_err(io("listing documents"))?;
                let name = String::from_utf8_lossy(&k).into_owned();
                // A name that fails validation was not written by weft; skip it.
                if let Ok(name) = DocName::new(name) {
                    names.push(name);
                }
            }
            Ok(names)
        })
        .await
    }

    /// The metadata, and the newest change: the log's last key (not one a
    /// failed flush hides) or the newest snapshot's, whichever is newer.
    async fn head(&self, doc: &DocName) -> Result<Option<DocHead>, StorageError> {
        let doc = doc.clone();
        self.run(Op::Read, "reading document facts", move |store| {
            let Some(meta) = store.read_meta(&doc)? else {
                return Ok(None);
            };
            let mut last_seq = store
                .snapshot_infos(&doc)?
                .iter()
                .map(|s| s.seq)
                .max()
                .unwrap_or(0);
            for k in store.log.scan_prefix(prefix(&doc)).keys().rev() {
                let seq = suffix_u64(&k.map_err(io("reading the update log"))?);
                if !store.unstored.hides(&doc, seq) {
                    last_seq = last_seq.max(seq);
                    break;
                }
            }
            Ok(Some(DocHead { meta, last_seq }))
        })
        .await
    }

    async fn info(&self, doc: &DocName) -> Result<Option<DocInfo>, StorageError> {
        let doc = doc.clone();
        self.run(Op::Read, "reading document facts", move |store| {
            let Some(meta) = store.read_meta(&doc)? else {
                return Ok(None);
            };
            let snapshots = store.snapshot_infos(&doc)?;
            let newest = snapshots.last();
            let mut size_bytes = newest.map_or(0, |snap| snap.size);
            let mut last_log: Option<(u64, sled::IVec)> = None;
            for item in store.log.scan_prefix(prefix(&doc)) {
                let (k, v) = item.map_err(io("reading the update log"))?;
                let seq = suffix_u64(&k);
                if store.unstored.hides(&doc, seq) {
                    continue;
                }
                size_bytes += v.len() as u64;
                last_log = Some((seq, v));
            }
            let (mut last_seq, mut last_change_ms) = (
                newest.map_or(0, |snap| snap.seq),
                newest.map(|snap| snap.taken_at_ms),
            );
            if let Some((seq, v)) = last_log {
                if seq >= last_seq {
                    let r: LogRecord = record::decode(&format!("{doc}#{seq}"), &v)?;
                    last_seq = seq;
                    last_change_ms = Some(r.at_ms);
                }
            }
            Ok(Some(DocInfo {
                name: doc,
                meta,
                last_seq,
                last_change_ms,
                size_bytes,
                snapshots: snapshots.len(),
                held_bytes: None,
            }))
        })
        .await
    }
}

#[async_trait]
impl Archive for SledStore {
    async fn dump(&self, doc: &DocName) -> Result<Option<DocDump>, StorageError> {
        let doc = doc.clone();
        self.run(Op::Scan, "reading a document", move |store| {
            let Some(meta) = store.read_meta(&doc)? else {
                return Ok(None);
            };
            let mut snapshots = Vec::new();
            for item in store.snapshots.scan_prefix(prefix(&doc)) {
                let (k, v) = item.map_err(io("reading snapshots"))?;
                snapshots.push(decode_snapshot(&doc, &k, &v)?);
            }
            let log = store.log_after(&doc, 0, usize::MAX)?;
            Ok(Some(DocDump {
                name: doc,
                meta,
                snapshots,
                log,
            }))
        })
        .await
    }

    async fn verify(&self) -> Result<Vec<Corruption>, StorageError> {
        self.run(Op::Scan, "verifying the store", |store| store.verify_all())
            .await
    }
}

#[async_trait]
impl ArchiveRestore for SledStore {
    async fn restore_dump(&self, dump: DocDump) -> Result<(), StorageError> {
        let bytes = dump
            .snapshots
            .iter()
            .map(|s| s.state.len() as u64)
            .sum::<u64>()
            + dump.log.iter().map(|e| e.update.len() as u64).sum::<u64>();
        self.run_writing(Op::BulkWrite, "restoring a document", bytes, move |store| {
            let doc = &dump.name;
            // No append may create the document meanwhile (checked under
            // the journal's lock, as appends create documents), and no
            // other document's append waits for the restore.
            let _claim = {
                let _held = store.journal("restoring a document")?;
                if store.read_meta(doc)?.is_some() {
                    return Err(StorageError::AlreadyExists(doc.to_string()));
                }
                store
                    .restoring
                    .claim(doc)
                    .ok_or_else(|| StorageError::AlreadyExists(doc.to_string()))?
            };
            for snapshot in &dump.snapshots {
                store.put_snapshot(doc, snapshot)?;
            }
            let mut batch = sled::Batch::default();
            for entry in &dump.log {
                batch.insert(key(doc, entry.seq), record::encode(&LogRecord::of(entry))?);
            }
            store
                .log
                .apply_batch(batch)
                .map_err(io("restoring the update log"))?;
            // Metadata last: a document only exists once all of it is there.
            let meta = MetaRecord {
                version: SCHEMA_VERSION,
                incarnation: dump.meta.incarnation,
                created_at_ms: dump.meta.created_at_ms,
            };
            store
                .meta
                .insert(doc.as_str(), record::encode(&meta)?)
                .map_err(io("restoring metadata"))?;
            store.flush("flushing a restored document")?;
            Ok(())
        })
        .await
    }
}

/// The data directory has one writer, this process: nobody else appends,
/// announces presence or deletes.
#[async_trait]
impl Replication for SledStore {
    async fn watch(
        &self,
        _doc: &DocName,
        _meta: &DocMeta,
        _after: u64,
    ) -> Result<Option<mpsc::Receiver<Followed>>, StorageError> {
        Ok(None)
    }

    async fn watch_peers(
        &self,
        _doc: &DocName,
    ) -> Result<Option<mpsc::Receiver<PeerEvent>>, StorageError> {
        Ok(None)
    }

    async fn publish_presence(&self, _doc: &DocName, _update: &[u8]) -> Result<(), StorageError> {
        Ok(())
    }

    async fn publish_stateless(&self, _doc: &DocName, _frame: &[u8]) -> Result<(), StorageError> {
        Ok(())
    }

    async fn ask_presence(&self, _doc: &DocName) -> Result<usize, StorageError> {
        Ok(0)
    }

    async fn answer_presence(
        &self,
        _doc: &DocName,
        _asker: u64,
        _update: &[u8],
    ) -> Result<(), StorageError> {
        Ok(())
    }
}

/// `writes` (all to one tree) as one sled batch.
fn batch_of(writes: &[Write]) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for w in writes {
        match &w.value {
            Some(value) => batch.insert(&w.key[..], &value[..]),
            None => batch.remove(&w.key[..]),
        }
    }
    batch
}

fn io(action: &'static str) -> impl Fn(sled::Error) -> StorageError {
    move |e| StorageError::backend(action, e)
}

fn open_error(path: &Path, e: sled::Error) -> StorageError {
    let reason = e.to_string();
    if reason.contains("could not acquire lock") {
        StorageError::Locked {
            path: PathBuf::from(path),
        }
    } else {
        StorageError::Open {
            path: PathBuf::from(path),
            reason,
            source: Box::new(e),
        }
    }
}

/// A change's key sorts before every snapshot's, each by its number.
fn quarantine_key(doc: &DocName, part: &Quarantined) -> Vec<u8> {
    let (kind, n) = match part.snapshot {
        None => (0u8, part.seq),
        Some(id) => (1u8, id),
    };
    let mut k = prefix(doc);
    k.push(kind);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn decode_snapshot(doc: &DocName, key: &[u8], value: &[u8]) -> Result<Snapshot, StorageError> {
    let id = suffix_u64(key);
    let r: SnapshotRecord = record::decode(&format!("{doc}@{id}"), value)?;
    Ok(r.into_snapshot(id))
}

fn prefix(doc: &DocName) -> Vec<u8> {
    let mut p = Vec::with_capacity(doc.as_str().len() + 9);
    p.extend_from_slice(doc.as_str().as_bytes());
    p.push(0);
    p
}

fn key(doc: &DocName, n: u64) -> Vec<u8> {
    let mut k = prefix(doc);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The big-endian u64 at the end of a `name 0x00 n` key.
fn suffix_u64(key: &[u8]) -> u64 {
    let mut n = [0u8; 8];
    if key.len() >= 8 {
        n.copy_from_slice(&key[key.len() - 8..]);
    }
    u64::from_be_bytes(n)
}

fn random_u64() -> Result<u64, StorageError> {
    getrandom::u64().map_err(|e| StorageError::Io {
        action: "drawing a document incarnation id",
        reason: e.to_string(),
    })
}
