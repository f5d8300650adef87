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
//! sled calls can block on disk, so each operation runs on tokio's blocking
//! pool under a deadline ([`DiskGuard`]). A write that fails or misses its
//! deadline marks the store failed: writes are refused at once, reads go on,
//! and [`SledStore::recover`] tells when it takes writes again, or that it
//! never will in this process (sled 0.34 keeps a write error until the
//! database is reopened).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::completeness::{self, DocRecords};
use crate::disk_guard::{DiskGuard, Op};
use crate::unstored::Unstored;

use crate::record::{
    self, LogRecord, MetaRecord, QuarantineRecord, SnapshotIndexRecord, SnapshotRecord,
    WebhookRecord, SCHEMA_VERSION,
};
use crate::{
    Corruption, DocDump, DocInfo, DocMeta, DocName, DocumentStore, LogEntry, NewSnapshot,
    Quarantined, RetentionPolicy, Snapshot, SnapshotInfo, StorageError, StoredDoc, WebhookDelivery,
};

/// How long a sled call may take by default before the store counts as failed.
pub const DEFAULT_STORAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a readiness check waits for the store to take a write.
const READINESS_BUDGET: Duration = Duration::from_secs(1);

/// Free space the disk must have again before a store that cannot recover
/// in-process asks to be restarted (a restart into a full disk would only
/// fail again).
const RESTART_HEADROOM: u64 = 8 * 1024 * 1024;

/// Where a failed store stands; see [`SledStore::recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// It had not failed.
    Healthy,
    /// It takes writes again.
    Recovered,
    /// It still does not take writes, and neither does the disk (full,
    /// stuck): wait.
    Failed(String),
    /// The disk takes writes and has room again, but the store still fails:
    /// sled keeps a write error until the database is reopened, so only a
    /// restart of the process brings it back.
    RestartNeeded(String),
}

/// A document store in a sled database.
#[derive(Debug, Clone)]
pub struct SledStore {
    dir: PathBuf,
    guard: Arc<DiskGuard>,
    unstored: Arc<Unstored>,
    db: sled::Db,
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
        let path = dir.as_ref().to_path_buf();
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|e| open_error(&path, e))?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|e| StorageError::Open {
                path: path.clone(),
                reason: e.to_string(),
            })
        };
        Ok(SledStore {
            meta: tree("meta")?,
            log: tree("log")?,
            snapshots: tree("snapshots")?,
            snapshot_index: tree("snapshot_index")?,
            webhooks: tree("webhooks")?,
            quarantine: tree("quarantine")?,
            db,
            guard: Arc::new(DiskGuard::new(DEFAULT_STORAGE_TIMEOUT)),
            unstored: Arc::new(Unstored::default()),
            dir: path,
        })
    }

    /// The same store, whose sled calls may each take at most `timeout`
    /// (whole-store scans longer) before the store counts as failed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.guard = Arc::new(DiskGuard::new(timeout));
        self
    }

    /// Writes and flushes a no-op record within the storage timeout:
    /// proves the disk accepts writes (at startup).
    pub async fn check_disk_writable(&self) -> Result<(), StorageError> {
        self.probe_writes(self.guard.timeout()).await
    }

    /// Why the store is not taking writes, if it is not.
    pub fn failure(&self) -> Option<String> {
        self.guard.failure().map(|f| f.reason)
    }

    /// Checks whether a failed store takes writes again (and if so, marks
    /// it healthy), or whether it needs the process restarted. Cheap to call
    /// every second: one check of each kind runs at a time.
    pub async fn recover(&self) -> Recovery {
        let Some(failure) = self.guard.failure() else {
            return Recovery::Healthy;
        };
        let still = match self.probe_writes(READINESS_BUDGET).await {
            Ok(()) => {
                self.guard.recovered();
                tracing::info!(after = ?failure.since.elapsed(), "the store takes writes again");
                return Recovery::Recovered;
            }
            Err(e) => e,
        };
        // A write still waiting may yet finish, as on a disk that was
        // frozen or slow: give it the storage timeout.
        let waiting = matches!(still, StorageError::Timeout { .. })
            && self.guard.probe.running_for() < self.guard.timeout();
        if waiting || self.disk_has_room().await.is_err() {
            return Recovery::Failed(failure.reason);
        }
        Recovery::RestartNeeded(format!(
            "{}; the disk takes writes again but the store still fails ({still})",
            failure.reason
        ))
    }

    /// One write-and-flush probe at a time, waited for at most `budget`.
    async fn probe_writes(&self, budget: Duration) -> Result<(), StorageError> {
        let db = self.db.clone();
        self.guard
            .probe
            .run(budget, "checking the store takes writes", move || {
                db.insert("weft:probe", &now_ms().to_be_bytes()[..])
                    .map_err(io("checking the store takes writes"))?;
                db.flush().map_err(io("checking the store takes writes"))?;
                Ok(())
            })
            .await
    }

    /// Whether the data directory's disk has room for a restart and takes
    /// a small durable write, outside sled.
    async fn disk_has_room(&self) -> Result<(), StorageError> {
        const ACTION: &str = "checking the disk has room";
        let dir = self.dir.clone();
        self.guard
            .disk_check
            .run(self.guard.timeout(), ACTION, move || {
                let fail = |reason: String| StorageError::Io {
                    action: ACTION,
                    reason,
                };
                let free = fs2::available_space(&dir).map_err(|e| fail(e.to_string()))?;
                if free < RESTART_HEADROOM {
                    return Err(fail(format!("{free} bytes free")));
                }
                let path = dir.join("weft-space-probe");
                let mut file = std::fs::File::create(&path).map_err(|e| fail(e.to_string()))?;
                let written = file.write_all(&[0; 4096]).and_then(|()| file.sync_all());
                let _ = std::fs::remove_file(&path);
                written.map_err(|e| fail(e.to_string()))
            })
            .await
    }

    fn load_now(&self, doc: &DocName) -> Result<StoredDoc, StorageError> {
        let Some(meta) = self.read_meta(doc)? else {
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
        let snapshot = match self
            .snapshots
            .scan_prefix(prefix(doc))
            .next_back()
            .transpose()
            .map_err(io("reading snapshots"))?
        {
            Some((key, value)) => Some(decode_snapshot(doc, &key, &value)?),
            None => None,
        };
        let after = snapshot.as_ref().map_or(0, |s| s.seq);
        let log = self.read_log_now(doc, after, usize::MAX)?;
        Ok(StoredDoc {
            meta,
            exists: true,
            snapshot,
            log,
        })
    }

    fn read_log_now(
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

    fn append_now(
        &self,
        doc: &DocName,
        meta: &DocMeta,
        entries: &[LogEntry],
    ) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(key(doc, entry.seq), record::encode(&LogRecord::of(entry))?);
        }
        // Entries of a failed append that this one does not overwrite go.
        if let Some(unstored) = self.unstored.range(doc) {
            let last = entries.last().map_or(0, |e| e.seq);
            for seq in unstored.filter(|&seq| seq > last) {
                batch.remove(key(doc, seq));
            }
        }
        match self.read_meta(doc)? {
            Some(stored) if stored.incarnation == meta.incarnation => {
                self.log
                    .apply_batch(batch)
                    .map_err(io("appending to the update log"))?
            }
            Some(_) => return Err(StorageError::Recreated(doc.to_string())),
            // Deleted under someone who had loaded it with changes.
            None if entries.first().is_some_and(|e| e.seq != 1) => {
                return Err(StorageError::Recreated(doc.to_string()))
            }
            None => self.create(doc, meta, &batch)?,
        }
        self.db.flush().map_err(io("flushing the update log"))?;
        Ok(())
    }

    /// A document's first append: its metadata and its first changes in one
    /// transaction, so it never exists without them (nor they without it).
    fn create(
        &self,
        doc: &DocName,
        meta: &DocMeta,
        batch: &sled::Batch,
    ) -> Result<(), StorageError> {
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
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(())) => Err(StorageError::Recreated(doc.to_string())),
            Err(TransactionError::Storage(e)) => Err(io("creating a document")(e)),
        }
    }

    fn compact_now(
        &self,
        doc: &DocName,
        snapshot: NewSnapshot,
        keep_log_tail: u64,
    ) -> Result<u64, StorageError> {
        let id = self.last_snapshot_id(doc)? + 1;
        self.put_snapshot(
            doc,
            &Snapshot {
                id,
                seq: snapshot.seq,
                taken_at_ms: snapshot.taken_at_ms,
                reason: snapshot.reason,
                state: snapshot.state,
            },
        )?;
        // The snapshot must be on disk before the log entries it replaces go.
        self.db.flush().map_err(io("flushing a snapshot"))?;

        let drop_through = snapshot.seq.saturating_sub(keep_log_tail);
        if drop_through > 0 {
            let mut batch = sled::Batch::default();
            for k in self.log.range(key(doc, 0)..=key(doc, drop_through)).keys() {
                batch.remove(k.map_err(io("compacting the update log"))?);
            }
            self.log
                .apply_batch(batch)
                .map_err(io("compacting the update log"))?;
        }
        Ok(id)
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

    fn list_snapshots_now(&self, doc: &DocName) -> Result<Vec<SnapshotInfo>, StorageError> {
        let mut out = Vec::new();
        for item in self.snapshot_index.scan_prefix(prefix(doc)) {
            let (k, v) = item.map_err(io("listing snapshots"))?;
            let id = suffix_u64(&k);
            let r: SnapshotIndexRecord = record::decode(&format!("{doc}@{id}"), &v)?;
            out.push(r.into_info(id));
        }
        Ok(out)
    }

    fn get_snapshot_now(&self, doc: &DocName, id: u64) -> Result<Option<Snapshot>, StorageError> {
        let k = key(doc, id);
        match self.snapshots.get(&k).map_err(io("reading a snapshot"))? {
            Some(v) => decode_snapshot(doc, &k, &v).map(Some),
            None => Ok(None),
        }
    }

    fn prune_now(
        &self,
        doc: &DocName,
        policy: RetentionPolicy,
        now_ms: u64,
    ) -> Result<usize, StorageError> {
        let all = self.list_snapshots_now(doc)?;
        let keep = policy.keep(&all, now_ms);
        let mut snapshots = sled::Batch::default();
        let mut index = sled::Batch::default();
        let mut removed = 0;
        for s in all.iter().filter(|s| !keep.contains(&s.id)) {
            snapshots.remove(key(doc, s.id));
            index.remove(key(doc, s.id));
            removed += 1;
        }
        self.snapshots
            .apply_batch(snapshots)
            .map_err(io("pruning snapshots"))?;
        self.snapshot_index
            .apply_batch(index)
            .map_err(io("pruning snapshots"))?;
        Ok(removed)
    }

    fn info_now(&self, doc: &DocName) -> Result<Option<DocInfo>, StorageError> {
        let Some(meta) = self.read_meta(doc)? else {
            return Ok(None);
        };
        let snapshots = self.list_snapshots_now(doc)?;
        let newest = snapshots.last();
        let mut size_bytes = newest.map_or(0, |s| s.size);
        let mut last_log: Option<(u64, sled::IVec)> = None;
        for item in self.log.scan_prefix(prefix(doc)) {
            let (k, v) = item.map_err(io("reading the update log"))?;
            let seq = suffix_u64(&k);
            if self.unstored.hides(doc, seq) {
                continue;
            }
            size_bytes += v.len() as u64;
            last_log = Some((seq, v));
        }
        let (mut last_seq, mut last_change_ms) =
            (newest.map_or(0, |s| s.seq), newest.map(|s| s.taken_at_ms));
        if let Some((seq, v)) = last_log {
            if seq >= last_seq {
                let r: LogRecord = record::decode(&format!("{doc}#{seq}"), &v)?;
                last_seq = seq;
                last_change_ms = Some(r.at_ms);
            }
        }
        Ok(Some(DocInfo {
            name: doc.clone(),
            meta,
            last_seq,
            last_change_ms,
            size_bytes,
            snapshots: snapshots.len(),
        }))
    }

    fn delete_now(&self, doc: &DocName) -> Result<bool, StorageError> {
        let existed = self
            .meta
            .remove(doc.as_str())
            .map_err(io("deleting a document"))?
            .is_some();
        for tree in [
            &self.log,
            &self.snapshots,
            &self.snapshot_index,
            &self.quarantine,
        ] {
            let mut batch = sled::Batch::default();
            for k in tree.scan_prefix(prefix(doc)).keys() {
                batch.remove(k.map_err(io("deleting a document"))?);
            }
            tree.apply_batch(batch).map_err(io("deleting a document"))?;
        }
        self.db.flush().map_err(io("flushing a deletion"))?;
        self.unstored.cleared(doc);
        Ok(existed)
    }

    fn dump_now(&self, doc: &DocName) -> Result<Option<DocDump>, StorageError> {
        let Some(meta) = self.read_meta(doc)? else {
            return Ok(None);
        };
        let mut snapshots = Vec::new();
        for item in self.snapshots.scan_prefix(prefix(doc)) {
            let (k, v) = item.map_err(io("reading snapshots"))?;
            snapshots.push(decode_snapshot(doc, &k, &v)?);
        }
        Ok(Some(DocDump {
            name: doc.clone(),
            meta,
            snapshots,
            log: self.read_log_now(doc, 0, usize::MAX)?,
        }))
    }

    fn restore_dump_now(&self, dump: DocDump) -> Result<(), StorageError> {
        let doc = &dump.name;
        if self.read_meta(doc)?.is_some() {
            return Err(StorageError::AlreadyExists(doc.to_string()));
        }
        for snapshot in &dump.snapshots {
            self.put_snapshot(doc, snapshot)?;
        }
        let mut batch = sled::Batch::default();
        for entry in &dump.log {
            batch.insert(key(doc, entry.seq), record::encode(&LogRecord::of(entry))?);
        }
        self.log
            .apply_batch(batch)
            .map_err(io("restoring the update log"))?;
        // Metadata last: a document only exists once all of it is there.
        let meta = MetaRecord {
            version: SCHEMA_VERSION,
            incarnation: dump.meta.incarnation,
            created_at_ms: dump.meta.created_at_ms,
        };
        self.meta
            .insert(doc.as_str(), record::encode(&meta)?)
            .map_err(io("restoring metadata"))?;
        self.db
            .flush()
            .map_err(io("flushing a restored document"))?;
        Ok(())
    }

    fn verify_now(&self) -> Result<Vec<Corruption>, StorageError> {
        let mut found = Vec::new();
        verify_tree::<MetaRecord>(&self.meta, &mut found, |k| {
            format!("{} (metadata)", String::from_utf8_lossy(k))
        })?;
        verify_tree::<LogRecord>(&self.log, &mut found, |k| {
            format!("{}#{}", key_name(k), suffix_u64(k))
        })?;
        verify_tree::<SnapshotRecord>(&self.snapshots, &mut found, |k| {
            format!("{} snapshot {}", key_name(k), suffix_u64(k))
        })?;
        verify_tree::<SnapshotIndexRecord>(&self.snapshot_index, &mut found, |k| {
            format!("{} snapshot {} (index)", key_name(k), suffix_u64(k))
        })?;
        verify_tree::<WebhookRecord>(&self.webhooks, &mut found, |k| {
            format!("webhook {}", suffix_u64(k))
        })?;
        for doc in self.names_in_any_tree()? {
            found.extend(completeness::check(&self.records_of(&doc)?));
        }
        verify_tree::<QuarantineRecord>(&self.quarantine, &mut found, |k| {
            format!("{} quarantined #{}", key_name(k), suffix_u64(k))
        })?;
        Ok(found)
    }

    /// Every document name that any tree has records for, sorted.
    fn names_in_any_tree(&self) -> Result<std::collections::BTreeSet<String>, StorageError> {
        let mut names = std::collections::BTreeSet::new();
        for k in self.meta.iter().keys() {
            names.insert(String::from_utf8_lossy(&k.map_err(io("verifying"))?).into_owned());
        }
        for tree in [&self.log, &self.snapshots, &self.snapshot_index] {
            // Keys are grouped by name: skip from one name to the next.
            let mut last: Option<String> = None;
            for k in tree.iter().keys() {
                let name = key_name(&k.map_err(io("verifying"))?);
                if last.as_ref() != Some(&name) {
                    names.insert(name.clone());
                    last = Some(name);
                }
            }
        }
        Ok(names)
    }

    /// What `verify` needs of one document's records; what does not decode
    /// (reported already) is left out.
    fn records_of(&self, name: &str) -> Result<DocRecords, StorageError> {
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        let mut snapshots = Some(Vec::new());
        for item in self.snapshots.scan_prefix(&prefix) {
            let (k, v) = item.map_err(io("verifying"))?;
            let id = suffix_u64(&k);
            match record::decode::<SnapshotRecord>(name, &v) {
                Ok(r) => {
                    let snapshot = r.into_snapshot(id);
                    if let Some(all) = snapshots.as_mut() {
                        all.push(SnapshotInfo {
                            id,
                            seq: snapshot.seq,
                            taken_at_ms: snapshot.taken_at_ms,
                            reason: snapshot.reason,
                            size: snapshot.state.len() as u64,
                        });
                    }
                }
                Err(_) => snapshots = None,
            }
        }
        let mut index = Some(Vec::new());
        for item in self.snapshot_index.scan_prefix(&prefix) {
            let (k, v) = item.map_err(io("verifying"))?;
            let id = suffix_u64(&k);
            match record::decode::<SnapshotIndexRecord>(name, &v) {
                Ok(r) => {
                    if let Some(all) = index.as_mut() {
                        all.push(r.into_info(id));
                    }
                }
                Err(_) => index = None,
            }
        }
        let mut log = Vec::new();
        for k in self.log.scan_prefix(&prefix).keys() {
            log.push(suffix_u64(&k.map_err(io("verifying"))?));
        }
        Ok(DocRecords {
            doc: name.to_owned(),
            has_meta: self.meta.contains_key(name).map_err(io("verifying"))?,
            snapshots,
            index,
            head: None,
            log: Some(log),
            last_seq: None,
        })
    }

    fn quarantine_now(&self, doc: &DocName, parts: &[Quarantined]) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for part in parts {
            batch.insert(
                quarantine_key(doc, part),
                record::encode(&QuarantineRecord::of(part))?,
            );
        }
        self.quarantine
            .apply_batch(batch)
            .map_err(io("setting changes aside"))?;
        self.db.flush().map_err(io("flushing changes set aside"))?;
        Ok(())
    }

    fn quarantined_now(&self, doc: &DocName) -> Result<Vec<Quarantined>, StorageError> {
        let mut out = Vec::new();
        for item in self.quarantine.scan_prefix(prefix(doc)) {
            let (k, v) = item.map_err(io("reading changes set aside"))?;
            let label = format!("{doc} quarantined #{}", suffix_u64(&k));
            let r: QuarantineRecord = record::decode(&label, &v)?;
            out.push(r.into_part());
        }
        Ok(out)
    }

    fn list_now(&self) -> Result<Vec<DocName>, StorageError> {
        let mut names = Vec::new();
        for k in self.meta.iter().keys() {
            let k = k.map_err(io("listing documents"))?;
            let name = String::from_utf8_lossy(&k).into_owned();
            // A name that fails validation was not written by weft; skip it.
            if let Ok(name) = DocName::new(name) {
                names.push(name);
            }
        }
        Ok(names)
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
        let checked = self.probe_writes(READINESS_BUDGET).await;
        if let Err(e @ StorageError::Io { .. }) = &checked {
            self.guard.fail(e.to_string());
        }
        checked
    }

    async fn load(&self, doc: &DocName) -> Result<StoredDoc, StorageError> {
        let (store, doc) = (self.clone(), doc.clone());
        self.guard
            .run(Op::Read, "loading a document", move || store.load_now(&doc))
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
        let (store, name, meta, entries) = (self.clone(), doc.clone(), *meta, entries.to_vec());
        let appended = self
            .guard
            .run(Op::Write, "appending changes", move || {
                store.append_now(&name, &meta, &entries)
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
        keep_log_tail: u64,
    ) -> Result<u64, StorageError> {
        let (store, doc) = (self.clone(), doc.clone());
        self.guard
            .run(Op::Write, "compacting a document", move || {
                store.compact_now(&doc, snapshot, keep_log_tail)
            })
            .await
    }

    async fn read_log(
        &self,
        doc: &DocName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let (store, doc) = (self.clone(), doc.clone());
        self.guard
            .run(Op::Read, "reading the update log", move || {
                store.read_log_now(&doc, after, limit)
            })
            .await
    }

    async fn list(&self) -> Result<Vec<DocName>, StorageError> {
        let store = self.clone();
        self.guard
            .run(Op::Scan, "listing documents", move || store.list_now())
            .await
    }

    async fn info(&self, doc: &DocName) -> Result<Option<DocInfo>, StorageError> {
        let (store, doc) = (self.clone(), doc.clone());
        self.guard
            .run(Op::Read, "reading document facts", move || {
                store.info_now(&doc)
            })
            .await
    }

    async fn list_snapshots(&self, doc: &DocName) -> Result<Vec<SnapshotInfo>, StorageError> {
        let (store, doc) = (self.clone(), doc.clone());
        self.guard
            .run(Op::Read, "listing snapshots", move || {
                store.list_snapshots_now(&doc)
            })
            .await
    }

    async fn get_snapshot(&self, doc: &DocName, id: u64) -> Result<Option<Snapshot>, StorageError> {
        let (store, doc) = (self.clone(), doc.clone());
        self.guard
            .run(Op::Read, "reading a snapshot", move || {
                store.get_snapshot_now(&doc, id)
            })
            .await
    }

    async fn prune_snapshots(
        &self,
        doc: &DocName,
        policy: RetentionPolicy,
        now_ms: u64,
    ) -> Result<usize, StorageError> {
        let (store, doc) = (self.clone(), doc.clone());
        self.guard
            .run(Op::Write, "pruning snapshots", move || {
                store.prune_now(&doc, policy, now_ms)
            })
            .await
    }

    async fn delete(&self, doc: &DocName) -> Result<bool, StorageError> {
        let (store, doc) = (self.clone(), doc.clone());
        self.guard
            .run(Op::Write, "deleting a document", move || {
                store.delete_now(&doc)
            })
            .await
    }

    async fn dump(&self, doc: &DocName) -> Result<Option<DocDump>, StorageError> {
        let (store, doc) = (self.clone(), doc.clone());
        self.guard
            .run(Op::Scan, "reading a document", move || store.dump_now(&doc))
            .await
    }

    async fn restore_dump(&self, dump: DocDump) -> Result<(), StorageError> {
        let store = self.clone();
        self.guard
            .run(Op::BulkWrite, "restoring a document", move || {
                store.restore_dump_now(dump)
            })
            .await
    }

    async fn verify(&self) -> Result<Vec<Corruption>, StorageError> {
        let store = self.clone();
        self.guard
            .run(Op::Scan, "verifying the store", move || store.verify_now())
            .await
    }

    async fn quarantine(&self, doc: &DocName, parts: &[Quarantined]) -> Result<(), StorageError> {
        let (store, doc, parts) = (self.clone(), doc.clone(), parts.to_vec());
        self.guard
            .run(Op::Write, "setting changes aside", move || {
                store.quarantine_now(&doc, &parts)
            })
            .await
    }

    async fn quarantined(&self, doc: &DocName) -> Result<Vec<Quarantined>, StorageError> {
        let (store, doc) = (self.clone(), doc.clone());
        self.guard
            .run(Op::Read, "reading changes set aside", move || {
                store.quarantined_now(&doc)
            })
            .await
    }

    async fn enqueue_webhooks(&self, deliveries: &[WebhookDelivery]) -> Result<(), StorageError> {
        let (store, deliveries) = (self.clone(), deliveries.to_vec());
        self.guard
            .run(Op::Write, "queueing webhooks", move || {
                let mut batch = sled::Batch::default();
                for delivery in deliveries {
                    let id = store.db.generate_id().map_err(io("queueing webhooks"))?;
                    let rec = WebhookRecord {
                        version: SCHEMA_VERSION,
                        delivery,
                    };
                    batch.insert(&id.to_be_bytes()[..], record::encode(&rec)?);
                }
                store
                    .webhooks
                    .apply_batch(batch)
                    .map_err(io("queueing webhooks"))?;
                store.db.flush().map_err(io("flushing the webhook queue"))?;
                Ok(())
            })
            .await
    }

    async fn webhook_queue(
        &self,
        url: &str,
        limit: usize,
    ) -> Result<Vec<(u64, WebhookDelivery)>, StorageError> {
        let (store, url) = (self.clone(), url.to_owned());
        self.guard
            .run(Op::Read, "reading the webhook queue", move || {
                let mut out = Vec::new();
                for item in store.webhooks.iter() {
                    let (k, v) = item.map_err(io("reading the webhook queue"))?;
                    let id = suffix_u64(&k);
                    let rec: WebhookRecord = record::decode(&format!("webhook {id}"), &v)?;
                    if rec.delivery.url == url {
                        out.push((id, rec.delivery));
                        if out.len() == limit {
                            break;
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn ack_webhook(&self, id: u64) -> Result<(), StorageError> {
        let store = self.clone();
        self.guard
            .run(Op::Write, "acknowledging a webhook", move || {
                store
                    .webhooks
                    .remove(&id.to_be_bytes()[..])
                    .map_err(io("acknowledging a webhook"))?;
                store.db.flush().map_err(io("flushing the webhook queue"))?;
                Ok(())
            })
            .await
    }
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        StorageError::Io {
            action: "using the store",
            reason: e.to_string(),
        }
    }
}

fn io(action: &'static str) -> impl Fn(sled::Error) -> StorageError {
    move |e| StorageError::Io {
        action,
        reason: e.to_string(),
    }
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

/// Decodes every record of `tree` as `R`; what fails goes into `found`,
/// named by `label` from its key.
fn verify_tree<R: record::Versioned>(
    tree: &sled::Tree,
    found: &mut Vec<Corruption>,
    label: impl Fn(&[u8]) -> String,
) -> Result<(), StorageError> {
    for item in tree.iter() {
        let (k, v) = item.map_err(io("verifying"))?;
        let location = label(&k);
        if let Err(e) = record::decode::<R>(&location, &v) {
            found.push(Corruption {
                location,
                problem: e.to_string(),
            });
        }
    }
    Ok(())
}

/// The document name at the start of a `name 0x00 n` key.
fn key_name(key: &[u8]) -> String {
    let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
    String::from_utf8_lossy(&key[..end]).into_owned()
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

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SnapshotReason;

    /// Opens the store again once the previous handle has let go of its
    /// lock: the last blocking call of a dropped store may still be
    /// finishing on the blocking pool (bounded: 5 s).
    async fn reopen(dir: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match SledStore::open(dir) {
                Err(StorageError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other.expect("reopen"),
            }
        }
    }

    fn doc(name: &str) -> DocName {
        DocName::new(name).expect("valid name")
    }

    fn entry(seq: u64) -> LogEntry {
        LogEntry {
            seq,
            at_ms: 1000 + seq,
            update: vec![seq as u8; 3],
        }
    }

    /// Appends as a room does: under the metadata the document loads with.
    async fn append(store: &SledStore, d: &DocName, entries: &[LogEntry]) {
        let meta = store.load(d).await.expect("load").meta;
        store.append(d, &meta, entries).await.expect("append");
    }

    #[tokio::test]
    async fn appended_changes_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let incarnation = {
            let store = SledStore::open(dir.path()).expect("open");
            let loaded = store.load(&doc("a")).await.expect("load");
            assert_eq!(loaded.last_seq(), 0);
            store
                .append(&doc("a"), &loaded.meta, &[entry(1), entry(2)])
                .await
                .expect("append");
            append(&store, &doc("b"), &[entry(1)]).await;
            loaded.meta.incarnation
        };
        let store = reopen(dir.path()).await;
        let loaded = store.load(&doc("a")).await.expect("load");
        assert_eq!(loaded.meta.incarnation, incarnation);
        assert_eq!(loaded.log, vec![entry(1), entry(2)]);
        assert_eq!(loaded.last_seq(), 2);
        // Documents never see each other's entries, even with prefix names.
        assert_eq!(
            store.load(&doc("b")).await.expect("load").log,
            vec![entry(1)]
        );
        assert!(store.load(&doc("ab")).await.expect("load").log.is_empty());
    }

    #[tokio::test]
    async fn compaction_keeps_the_tail_and_the_sequence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let d = doc("c");
        let entries: Vec<_> = (1..=10).map(entry).collect();
        append(&store, &d, &entries).await;
        let snap = NewSnapshot {
            seq: 8,
            taken_at_ms: 5,
            reason: SnapshotReason::Periodic,
            state: vec![9, 9],
        };
        store.compact(&d, snap, 3).await.expect("compact");

        let loaded = store.load(&d).await.expect("load");
        let snapshot = loaded.snapshot.clone().expect("snapshot");
        assert_eq!((snapshot.seq, snapshot.state), (8, vec![9, 9]));
        assert_eq!(loaded.log, vec![entry(9), entry(10)]);
        assert_eq!(loaded.last_seq(), 10);
        // Entries 6..=8 stay for replay; 1..=5 are gone.
        let tail = store.read_log(&d, 0, 100).await.expect("read");
        assert_eq!(tail.first().map(|e| e.seq), Some(6));
        assert_eq!(
            store.read_log(&d, 7, 2).await.expect("read"),
            vec![entry(8), entry(9)]
        );
    }

    #[tokio::test]
    async fn history_lists_prunes_dumps_and_restores() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let d = doc("h");
        append(&store, &d, &[entry(1), entry(2)]).await;
        for seq in 1..=25u64 {
            let snap = NewSnapshot {
                seq,
                taken_at_ms: seq,
                reason: SnapshotReason::Manual,
                state: vec![seq as u8],
            };
            assert_eq!(store.compact(&d, snap, 100).await.expect("compact"), seq);
        }
        let listed = store.list_snapshots(&d).await.expect("list");
        assert_eq!(listed.len(), 25);
        assert_eq!((listed[24].id, listed[24].size), (25, 1));
        let third = store
            .get_snapshot(&d, 3)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(third.state, vec![3]);

        let policy = RetentionPolicy {
            keep_last: 20,
            hourly_for: std::time::Duration::ZERO,
            daily_for: std::time::Duration::ZERO,
        };
        assert_eq!(
            store
                .prune_snapshots(&d, policy, 1_000_000)
                .await
                .expect("prune"),
            5
        );
        let left = store.list_snapshots(&d).await.expect("list");
        assert_eq!(left.first().map(|s| s.id), Some(6));
        assert!(store.get_snapshot(&d, 3).await.expect("get").is_none());

        let info = store.info(&d).await.expect("info").expect("exists");
        assert_eq!((info.last_seq, info.snapshots), (25, 20));
        assert!(store.info(&doc("nope")).await.expect("info").is_none());

        let dump = store.dump(&d).await.expect("dump").expect("exists");
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = SledStore::open(other_dir.path()).expect("open");
        other.restore_dump(dump.clone()).await.expect("restore");
        assert_eq!(other.dump(&d).await.expect("dump"), Some(dump.clone()));
        assert!(matches!(
            other.restore_dump(dump).await,
            Err(StorageError::AlreadyExists(_))
        ));
        // New snapshots continue after the restored ids.
        let snap = NewSnapshot {
            seq: 26,
            taken_at_ms: 26,
            reason: SnapshotReason::Periodic,
            state: vec![],
        };
        assert_eq!(other.compact(&d, snap, 100).await.expect("compact"), 26);

        assert!(store.delete(&d).await.expect("delete"));
        assert!(store.info(&d).await.expect("info").is_none());
        assert!(store.read_log(&d, 0, 10).await.expect("read").is_empty());
        assert!(store.list_snapshots(&d).await.expect("list").is_empty());
        assert!(!store.delete(&d).await.expect("delete"));
    }

    #[tokio::test]
    async fn a_second_opener_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = SledStore::open(dir.path()).expect("open");
        // flock locks belong to the open file, so a second open in the same
        // process conflicts exactly as another process would.
        let err = SledStore::open(dir.path()).expect_err("second open must fail");
        assert!(matches!(err, StorageError::Locked { .. }), "{err}");
    }

    #[tokio::test]
    async fn corrupt_log_records_fail_loading_and_verification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let d = doc("bad");
        append(&store, &d, &[entry(1)]).await;
        assert!(store.verify().await.expect("verify").is_empty());
        store.log.insert(key(&d, 2), &[0xc1][..]).expect("insert");
        let err = store.load(&d).await.expect_err("must fail");
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        let found = store.verify().await.expect("verify");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].location, "bad#2");
    }

    #[tokio::test]
    async fn quarantined_changes_are_kept_listed_and_deleted_with_their_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let d = doc("q");
        store.load(&d).await.expect("load creates the document");
        let part = |seq: u64, snapshot: Option<u64>| Quarantined {
            seq,
            snapshot,
            changed_at_ms: seq,
            quarantined_at_ms: 77,
            reason: format!("part {seq} does not replay"),
            update: vec![seq as u8; 4],
        };
        store
            .quarantine(&d, &[part(7, Some(1)), part(9, None), part(3, None)])
            .await
            .expect("quarantine");
        // Again: replaced, not doubled.
        store
            .quarantine(&d, &[part(9, None)])
            .await
            .expect("quarantine");
        assert_eq!(
            store.quarantined(&d).await.expect("list"),
            vec![part(3, None), part(9, None), part(7, Some(1))]
        );
        assert!(store
            .quarantined(&doc("qq"))
            .await
            .expect("list")
            .is_empty());
        assert!(store.verify().await.expect("verify").is_empty());
        drop(store);
        let store = SledStore::open(dir.path()).expect("reopen");
        assert_eq!(store.quarantined(&d).await.expect("list").len(), 3);
        store.delete(&d).await.expect("delete");
        assert!(store.quarantined(&d).await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn list_names_every_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        for n in ["b", "a"] {
            append(&store, &doc(n), &[entry(1)]).await;
        }
        assert_eq!(store.list().await.expect("list"), vec![doc("a"), doc("b")]);
    }

    #[tokio::test]
    async fn loading_an_unknown_document_stores_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path()).expect("open");
            for i in 0..50 {
                let loaded = store.load(&doc(&format!("ghost-{i}"))).await.expect("load");
                assert!(!loaded.exists);
                assert_eq!((loaded.last_seq(), loaded.log.len()), (0, 0));
            }
            assert!(store.list().await.expect("list").is_empty());
            assert!(store.info(&doc("ghost-1")).await.expect("info").is_none());
            assert!(store.dump(&doc("ghost-1")).await.expect("dump").is_none());
        }
        let store = reopen(dir.path()).await;
        assert!(store.list().await.expect("list").is_empty());
        assert!(store.meta.is_empty(), "no metadata was written");
    }

    #[tokio::test]
    async fn documents_an_earlier_version_created_by_loading_them_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = doc("legacy");
        let meta = DocMeta {
            incarnation: 42,
            created_at_ms: 7,
        };
        {
            // What loading a name used to write: metadata, and no changes.
            let store = SledStore::open(dir.path()).expect("open");
            let rec = MetaRecord {
                version: SCHEMA_VERSION,
                incarnation: meta.incarnation,
                created_at_ms: meta.created_at_ms,
            };
            let bytes = record::encode(&rec).expect("encode");
            store.meta.insert(d.as_str(), bytes).expect("insert");
        }
        let store = reopen(dir.path()).await;
        assert_eq!(store.list().await.expect("list"), vec![d.clone()]);
        let loaded = store.load(&d).await.expect("load");
        assert!(loaded.exists);
        assert_eq!(loaded.meta, meta);
        store
            .append(&d, &loaded.meta, &[entry(1)])
            .await
            .expect("appends under the stored incarnation");
        assert_eq!(store.load(&d).await.expect("load").log, vec![entry(1)]);
    }

    #[tokio::test]
    async fn the_first_append_stores_the_metadata_it_was_loaded_with() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = doc("born");
        let meta = {
            let store = SledStore::open(dir.path()).expect("open");
            let loaded = store.load(&d).await.expect("load");
            store
                .append(&d, &loaded.meta, &[entry(1)])
                .await
                .expect("the first append creates it");
            assert_eq!(store.list().await.expect("list"), vec![d.clone()]);
            let info = store.info(&d).await.expect("info").expect("exists");
            assert_eq!(info.meta, loaded.meta);
            // Someone holding another incarnation (from before a delete, or
            // a restore meanwhile) is refused, whether or not it exists.
            let other = DocMeta {
                incarnation: loaded.meta.incarnation ^ 1,
                ..loaded.meta
            };
            assert!(matches!(
                store.append(&d, &other, &[entry(2)]).await,
                Err(StorageError::Recreated(_))
            ));
            loaded.meta
        };
        let store = reopen(dir.path()).await;
        let loaded = store.load(&d).await.expect("load");
        assert!(loaded.exists);
        assert_eq!(loaded.meta, meta, "same incarnation and creation time");
        assert_eq!(loaded.log, vec![entry(1)]);
    }
}
