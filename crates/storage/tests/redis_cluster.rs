//! `RedisStore` on a real Redis Cluster while a document's slot moves to
//! another shard (one that serves slots, or one just added that serves
//! none): one node reads and writes that document, and other documents
//! keep the same connections busy, as a node serving many documents does.

#[path = "support/redis_cluster.rs"]
mod redis_cluster;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis_cluster::RedisCluster;
use weft_storage::{DocMeta, DocName, DocumentStore, LogEntry, Provenance, RedisStore};

fn key(doc: &str, what: &str) -> String {
    format!("weft:{{{doc}}}:{what}")
}

fn entry(seq: u64) -> LogEntry {
    LogEntry {
        seq,
        at_ms: 1_000 + seq,
        update: vec![seq as u8; 3],
        by: Provenance::new(None, "ws"),
    }
}

/// Appends to `doc` one change at a time until `done`; every append must
/// succeed. Returns how many were stored, or the first failure.
async fn keep_appending(
    store: RedisStore,
    (doc, meta): (DocName, DocMeta),
    done: Arc<AtomicBool>,
) -> Result<u64, String> {
    let mut seq = 0;
    while !done.load(Ordering::Relaxed) {
        seq += 1;
        let appended = store.append(&doc, &meta, &[entry(seq)]).await;
        appended.map_err(|e| format!("appending {seq} to {doc}: {e}"))?;
    }
    Ok(seq)
}

/// Reads `doc`'s whole log until `done`; every read must succeed and
/// hold a gapless run of changes from the first.
async fn keep_reading(
    store: RedisStore,
    doc: DocName,
    done: Arc<AtomicBool>,
) -> Result<u64, String> {
    let mut reads = 0;
    while !done.load(Ordering::Relaxed) {
        let log = store.read_log(&doc, 0, usize::MAX).await;
        let log = log.map_err(|e| format!("reading {doc}: {e}"))?;
        let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
        let gapless: Vec<u64> = (1..=seqs.len() as u64).collect();
        if seqs != gapless {
            return Err(format!("{doc}'s log has gaps: {seqs:?}"));
        }
        reads += 1;
    }
    Ok(reads)
}

/// Document names whose keys live on shard `shard`.
fn names_on(cluster: &RedisCluster, shard: usize, prefix: &str, count: usize) -> Vec<DocName> {
    (0..1000)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|name| cluster.owner_of(cluster.slot_of(&key(name, "log"))) == shard)
        .take(count)
        .map(|name| DocName::new(name).expect("a name"))
        .collect()
}

/// How long each step of a slot move lasts: longer than `RedisStore`
/// retries a command turned away (about a second), so that only following
/// the `ASK` itself gets a command through while the keys are on the new
/// shard and the slot is not yet its own.
const STEP: Duration = Duration::from_millis(1500);

/// Moves `moving`'s slot to shard `to` while one writer and readers work on
/// that document and writers on `others` keep the same connections busy;
/// every read and write must succeed, and the document's log must end
/// with everything its writer was told is stored.
async fn move_under_load(cluster: RedisCluster, to: usize, others: Vec<DocName>) {
    let urls: Vec<String> = cluster.urls().split(',').map(str::to_owned).collect();
    let store = RedisStore::connect_cluster(&urls).await.expect("connects");
    let moving = DocName::new("moving").expect("a name");
    let slot = cluster.slot_of(&key(moving.as_str(), "log"));

    // Loaded before the move: a load reads several keys at once, which
    // Redis refuses (TRYAGAIN) while their slot is half-moved, and whoever
    // asked tries again; appends and reads of the log are one script each.
    let mut loaded = Vec::new();
    for doc in std::iter::once(moving.clone()).chain(others) {
        let meta = store.load(&doc).await.expect("loads").meta;
        loaded.push((doc, meta));
    }
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = loaded
        .into_iter()
        .map(|doc| tokio::spawn(keep_appending(store.clone(), doc, done.clone())))
        .collect();
    let readers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(keep_reading(store.clone(), moving.clone(), done.clone())))
        .collect();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.move_slot(slot, to, || std::thread::sleep(STEP));
        cluster
    })
    .await
    .expect("the slot moved");
    done.store(true, Ordering::Relaxed);

    let mut stored = Vec::new();
    for task in writers {
        let appended = task.await.expect("a writer");
        stored.push(appended.expect("every append succeeds"));
    }
    for task in readers {
        let reads = task.await.expect("a reader").expect("every read succeeds");
        assert!(reads > 0, "reads went on throughout the move");
    }
    assert_eq!(cluster.owner_of(slot), to);
    let log = store.read_log(&moving, 0, usize::MAX).await.expect("reads");
    let expected: Vec<LogEntry> = (1..=stored[0]).map(entry).collect();
    assert_eq!(log, expected);
    store.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moving_under_busy_connections_fails_no_read_or_write() {
    let cluster = RedisCluster::start();
    let from = cluster.owner_of(cluster.slot_of(&key("moving", "log")));
    let to = (from + 1) % 3;
    let mut others = names_on(&cluster, to, "busy-to", 4);
    others.extend(names_on(&cluster, from, "busy-from", 2));
    move_under_load(cluster, to, others).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moving_to_a_new_primary_fails_no_read_or_write() {
    let mut cluster = RedisCluster::start();
    let from = cluster.owner_of(cluster.slot_of(&key("moving", "log")));
    let mut others = names_on(&cluster, from, "busy-from", 3);
    others.extend(names_on(&cluster, (from + 1) % 3, "busy-else", 3));
    let to = cluster.add_empty_primary();
    move_under_load(cluster, to, others).await;
}
