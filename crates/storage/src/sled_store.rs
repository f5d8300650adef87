//! `SledStore`: the embedded default store, one sled database per data directory.
//!
//! Layout: three trees keyed by `name 0x00 …` (names never contain NUL):
//! - `meta`:      `name`                  → document metadata
//! - `log`:       `name 0x00 seq (BE u64)` → one logged change
//! - `snapshots`: `name 0x00 id (BE u64)`  → one snapshot (ids increase, so the last is newest)
//!
//! sled calls can block on disk, so each operation runs on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::record::{self, LogRecord, MetaRecord, SnapshotRecord, SCHEMA_VERSION};
use crate::{
    DocMeta, DocName, DocumentStore, LogEntry, NewSnapshot, Snapshot, StorageError, StoredDoc,
};

/// How many snapshots per document are kept; older ones are pruned on compaction.
const SNAPSHOT_HISTORY: usize = 20;

/// A document store in a sled database.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    meta: sled::Tree,
    log: sled::Tree,
    snapshots: sled::Tree,
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
            db,
        })
    }

    /// Writes and flushes a no-op record: proves the disk accepts writes.
    pub async fn check_writable(&self) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking("checking the store is writable", move || {
            db.insert("weft:probe", &now_ms().to_be_bytes()[..])?;
            db.flush()?;
            Ok(())
        })
        .await
    }

    fn load_now(&self, doc: &DocName) -> Result<StoredDoc, StorageError> {
        let meta = match self
            .meta
            .get(doc.as_str())
            .map_err(io("reading metadata"))?
        {
            Some(bytes) => {
                let r: MetaRecord = record::decode(doc.as_str(), &bytes)?;
                DocMeta {
                    incarnation: r.incarnation,
                    created_at_ms: r.created_at_ms,
                }
            }
            None => {
                let meta = DocMeta {
                    incarnation: random_u64()?,
                    created_at_ms: now_ms(),
                };
                let rec = MetaRecord {
                    version: SCHEMA_VERSION,
                    incarnation: meta.incarnation,
                    created_at_ms: meta.created_at_ms,
                };
                self.meta
                    .insert(doc.as_str(), record::encode(&rec)?)
                    .map_err(io("writing metadata"))?;
                meta
            }
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
        let mut entries = Vec::new();
        for item in self.log.range(start..=end).take(limit) {
            let (k, v) = item.map_err(io("reading the update log"))?;
            let seq = suffix_u64(&k);
            let label = format!("{doc}#{seq}");
            let r: LogRecord = record::decode(&label, &v)?;
            entries.push(LogEntry {
                seq,
                at_ms: r.at_ms,
                update: r.update,
            });
        }
        Ok(entries)
    }

    fn append_now(&self, doc: &DocName, entries: &[LogEntry]) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let rec = LogRecord {
                version: SCHEMA_VERSION,
                at_ms: entry.at_ms,
                update: entry.update.clone(),
            };
            batch.insert(key(doc, entry.seq), record::encode(&rec)?);
        }
        self.log
            .apply_batch(batch)
            .map_err(io("appending to the update log"))?;
        self.db.flush().map_err(io("flushing the update log"))?;
        Ok(())
    }

    fn compact_now(
        &self,
        doc: &DocName,
        snapshot: NewSnapshot,
        keep_log_tail: u64,
    ) -> Result<u64, StorageError> {
        let id = self
            .db
            .generate_id()
            .map_err(io("allocating a snapshot id"))?;
        let rec = SnapshotRecord {
            version: SCHEMA_VERSION,
            seq: snapshot.seq,
            taken_at_ms: snapshot.taken_at_ms,
            reason: snapshot.reason,
            state: snapshot.state,
        };
        self.snapshots
            .insert(key(doc, id), record::encode(&rec)?)
            .map_err(io("writing a snapshot"))?;
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

        let old: Vec<sled::IVec> = self
            .snapshots
            .scan_prefix(prefix(doc))
            .keys()
            .collect::<Result<_, _>>()
            .map_err(io("listing snapshots"))?;
        if old.len() > SNAPSHOT_HISTORY {
            let mut batch = sled::Batch::default();
            for k in &old[..old.len() - SNAPSHOT_HISTORY] {
                batch.remove(k.clone());
            }
            self.snapshots
                .apply_batch(batch)
                .map_err(io("pruning snapshots"))?;
        }
        Ok(id)
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
    async fn load(&self, doc: &DocName) -> Result<StoredDoc, StorageError> {
        let (store, doc) = (self.clone(), doc.clone());
        blocking("loading a document", move || store.load_now(&doc)).await
    }

    async fn append(&self, doc: &DocName, entries: &[LogEntry]) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (store, doc, entries) = (self.clone(), doc.clone(), entries.to_vec());
        blocking("appending changes", move || {
            store.append_now(&doc, &entries)
        })
        .await
    }

    async fn compact(
        &self,
        doc: &DocName,
        snapshot: NewSnapshot,
        keep_log_tail: u64,
    ) -> Result<u64, StorageError> {
        let (store, doc) = (self.clone(), doc.clone());
        blocking("compacting a document", move || {
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
        blocking("reading the update log", move || {
            store.read_log_now(&doc, after, limit)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<DocName>, StorageError> {
        let store = self.clone();
        blocking("listing documents", move || store.list_now()).await
    }
}

async fn blocking<T, F>(action: &'static str, f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Io {
            action,
            reason: format!("storage task failed: {e}"),
        })?
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

fn decode_snapshot(doc: &DocName, key: &[u8], value: &[u8]) -> Result<Snapshot, StorageError> {
    let id = suffix_u64(key);
    let r: SnapshotRecord = record::decode(&format!("{doc}@{id}"), value)?;
    Ok(Snapshot {
        id,
        seq: r.seq,
        taken_at_ms: r.taken_at_ms,
        reason: r.reason,
        state: r.state,
    })
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

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SnapshotReason;

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

    #[tokio::test]
    async fn appended_changes_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let incarnation = {
            let store = SledStore::open(dir.path()).expect("open");
            let loaded = store.load(&doc("a")).await.expect("load");
            assert_eq!(loaded.last_seq(), 0);
            store
                .append(&doc("a"), &[entry(1), entry(2)])
                .await
                .expect("append");
            store.append(&doc("b"), &[entry(1)]).await.expect("append");
            loaded.meta.incarnation
        };
        let store = SledStore::open(dir.path()).expect("reopen");
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
        store.append(&d, &entries).await.expect("append");
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
    async fn snapshot_history_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let d = doc("h");
        for seq in 0..(SNAPSHOT_HISTORY as u64 + 5) {
            let snap = NewSnapshot {
                seq,
                taken_at_ms: seq,
                reason: SnapshotReason::Manual,
                state: vec![],
            };
            store.compact(&d, snap, 0).await.expect("compact");
        }
        assert_eq!(
            store.snapshots.scan_prefix(prefix(&d)).count(),
            SNAPSHOT_HISTORY
        );
        let newest = store
            .load(&d)
            .await
            .expect("load")
            .snapshot
            .expect("snapshot");
        assert_eq!(newest.seq, SNAPSHOT_HISTORY as u64 + 4);
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
    async fn corrupt_log_records_fail_loading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let d = doc("bad");
        store.append(&d, &[entry(1)]).await.expect("append");
        store.log.insert(key(&d, 2), &[0xc1][..]).expect("insert");
        let err = store.load(&d).await.expect_err("must fail");
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }

    #[tokio::test]
    async fn list_names_every_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        for n in ["b", "a"] {
            store.load(&doc(n)).await.expect("load");
        }
        assert_eq!(store.list().await.expect("list"), vec![doc("a"), doc("b")]);
    }
}
