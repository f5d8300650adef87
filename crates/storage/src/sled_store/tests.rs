//! The embedded store's unit tests: durability across reopening, compaction,
//! history, locking, corruption, quarantine, and documents that exist only
//! once written.

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
        by: crate::Provenance::new(Some("tester".into()), "ws"),
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
    store
        .compact(&d, snap, LogRetention::tail(3))
        .await
        .expect("compact");

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
async fn the_head_is_the_newest_change_without_reading_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    let d = doc("head");
    assert_eq!(store.head(&d).await.expect("head"), None);
    append(&store, &d, &(1..=5).map(entry).collect::<Vec<_>>()).await;
    let snap = NewSnapshot {
        seq: 5,
        taken_at_ms: 5,
        reason: SnapshotReason::Periodic,
        state: vec![1],
    };
    // Everything behind the snapshot trimmed: the snapshot says how far.
    store
        .compact(&d, snap, LogRetention::tail(0))
        .await
        .expect("compact");
    let head = store.head(&d).await.expect("head").expect("stored");
    let info = store.info(&d).await.expect("info").expect("stored");
    assert_eq!((head.last_seq, &head.meta), (5, &info.meta));
    append(&store, &d, &[entry(6)]).await;
    assert_eq!(
        store.head(&d).await.expect("head").map(|h| h.last_seq),
        Some(6)
    );
}

#[tokio::test]
async fn compaction_keeps_the_history_window_behind_the_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    let d = doc("w");
    append(&store, &d, &(1..=30).map(entry).collect::<Vec<_>>()).await;
    let day = 24 * 3600 * 1000;
    let month = LogRetention {
        keep_tail: 2,
        keep_for: Duration::from_secs(30 * 24 * 3600),
    };
    let snap = |seq, taken_at_ms| NewSnapshot {
        seq,
        taken_at_ms,
        reason: SnapshotReason::Periodic,
        state: vec![1],
    };
    // Taken 40 days ago, the snapshot at 10 is outside the window by now;
    // the one at 20 is inside it, so the changes between them stay.
    store
        .compact(&d, snap(10, 60 * day), month)
        .await
        .expect("compact");
    store
        .compact(&d, snap(20, 75 * day), month)
        .await
        .expect("compact");
    store
        .compact(&d, snap(30, 100 * day), month)
        .await
        .expect("compact");
    let kept = store.read_log(&d, 0, 100).await.expect("read");
    assert_eq!(kept.first().map(|e| e.seq), Some(11));
    assert_eq!(kept.len(), 20);
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
        assert_eq!(
            store
                .compact(&d, snap, LogRetention::tail(100))
                .await
                .expect("compact"),
            seq
        );
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
        every_changes: 0,
        history_window: Duration::ZERO,
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
    assert_eq!(
        other
            .compact(&d, snap, LogRetention::tail(100))
            .await
            .expect("compact"),
        26
    );

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

/// A store whose sled writes nothing until flushed, as one may have
/// written nothing yet when the machine stops.
fn open_unflushed(dir: &Path) -> SledStore {
    SledStore::open_with(dir, sled::Config::new().flush_every_ms(None)).expect("open")
}

/// What a crash would leave of `from`: its files as they are now (a
/// process killed leaves what it wrote, and nothing it only held).
fn crash_image(from: &Path) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        for item in std::fs::read_dir(from).expect("list") {
            let item = item.expect("entry");
            let target = to.join(item.file_name());
            if item.file_type().expect("type").is_dir() {
                std::fs::create_dir(&target).expect("mkdir");
                copy(&item.path(), &target);
            } else {
                std::fs::copy(item.path(), &target).expect("copy");
            }
        }
    }
    let image = tempfile::tempdir().expect("tempdir");
    copy(from, image.path());
    image
}

#[tokio::test]
async fn acknowledged_appends_survive_a_crash_through_the_journal_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_unflushed(dir.path());
    let (a, b) = (doc("crash-a"), doc("crash-b"));
    append(&store, &a, &[entry(1), entry(2)]).await;
    append(&store, &b, &[entry(1)]).await;
    append(&store, &a, &[entry(3)]).await;

    let image = crash_image(dir.path());
    let recovered = SledStore::open(image.path()).expect("opens the crash image");
    let loaded = recovered.load(&a).await.expect("load");
    assert!(loaded.exists, "the document's creation was replayed");
    assert_eq!(loaded.log, vec![entry(1), entry(2), entry(3)]);
    assert_eq!(recovered.load(&b).await.expect("load").log, vec![entry(1)]);
    drop(recovered);

    // Replayed once and checkpointed: a second crash loses nothing either.
    let again = crash_image(image.path());
    let reopened = SledStore::open(again.path()).expect("opens");
    assert_eq!(reopened.load(&a).await.expect("load").log.len(), 3);
}

#[tokio::test]
async fn a_deletion_is_never_undone_by_replaying_the_appends_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_unflushed(dir.path());
    let (gone, kept) = (doc("gone"), doc("kept"));
    append(&store, &gone, &[entry(1), entry(2)]).await;
    assert!(store.delete(&gone).await.expect("delete"));
    append(&store, &kept, &[entry(1)]).await;

    let image = crash_image(dir.path());
    let recovered = SledStore::open(image.path()).expect("opens the crash image");
    let loaded = recovered.load(&gone).await.expect("load");
    assert!(!loaded.exists, "the deleted document came back");
    assert!(loaded.log.is_empty());
    assert_eq!(recovered.list().await.expect("list"), vec![kept]);
}

#[tokio::test]
async fn compaction_checkpoints_so_the_entries_it_drops_stay_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_unflushed(dir.path());
    let d = doc("compacted");
    append(&store, &d, &(1..=6).map(entry).collect::<Vec<_>>()).await;
    let snapshot = NewSnapshot {
        seq: 6,
        taken_at_ms: 5,
        reason: SnapshotReason::Periodic,
        state: vec![6],
    };
    store
        .compact(&d, snapshot, LogRetention::tail(0))
        .await
        .expect("compact");
    // Flushed by a later write that sled carries itself (a webhook would do).
    store.flush("test").expect("flush");
    append(&store, &d, &[entry(7)]).await;

    let image = crash_image(dir.path());
    let recovered = SledStore::open(image.path()).expect("opens the crash image");
    let dump = recovered.dump(&d).await.expect("dump").expect("exists");
    let seqs: Vec<u64> = dump.log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![7], "entries the snapshot replaced came back");
    assert_eq!(dump.snapshots.len(), 1);
}

#[tokio::test]
async fn no_append_creates_a_document_while_a_backup_is_restored_into_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path()).expect("open");
    let d = doc("restoring");
    let meta = store.load(&d).await.expect("load").meta;
    let claim = store.restoring.claim(&d).expect("claimed");
    assert!(store.restoring.claim(&d).is_none(), "one restore at a time");
    let refused = store.append(&d, &meta, &[entry(1)]).await;
    assert!(
        matches!(refused, Err(StorageError::Recreated(_))),
        "{refused:?}"
    );
    assert!(!store.load(&d).await.expect("load").exists);

    drop(claim);
    store
        .append(&d, &meta, &[entry(1)])
        .await
        .expect("appends once let go");
    assert_eq!(store.load(&d).await.expect("load").log, vec![entry(1)]);
}
