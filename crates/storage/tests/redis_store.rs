//! `RedisStore` against a real `redis-server` on loopback: conditional
//! appends, compaction that never moves the head back, the lease, and
//! following the log.

mod support;

use std::net::TcpListener;
use std::time::Duration;

use support::redis_server::RedisServer;

use weft_storage::{
    Archive, Catalogue, DocName, DocumentStore, Followed, LogEntry, LogRetention, NewSnapshot,
    PeerEvent, Quarantined, RedisStore, Replication, RetentionPolicy, SnapshotReason, StorageError,
};

/// A store on `redis`, as one node would open it.
async fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::connect(&redis.url()).await.expect("connects")
}

fn entry(seq: u64) -> LogEntry {
    LogEntry {
        seq,
        at_ms: 1_000 + seq,
        update: vec![seq as u8; 3],
        by: weft_storage::Provenance::new(Some(format!("author-{seq}")), "ws"),
    }
}

fn snapshot(seq: u64) -> NewSnapshot {
    NewSnapshot {
        seq,
        taken_at_ms: 5,
        reason: SnapshotReason::Periodic,
        state: vec![seq as u8],
    }
}

#[tokio::test]
async fn two_nodes_never_store_two_changes_under_one_number() {
    let redis = RedisServer::start();
    let (a, b) = (store(&redis).await, store(&redis).await);
    let doc = DocName::new("numbers").expect("name");
    let loaded_a = a.load(&doc).await.expect("loads");
    let loaded_b = b.load(&doc).await.expect("loads");
    assert_eq!(
        loaded_a.meta, loaded_b.meta,
        "one incarnation for every node"
    );
    let meta = loaded_a.meta;

    a.append(&doc, &meta, &[entry(1), entry(2)])
        .await
        .expect("first");
    // B still thinks the document is empty, and has a change of its own.
    let bs = LogEntry {
        update: vec![0xb; 3],
        ..entry(1)
    };
    match b.append(&doc, &meta, &[bs]).await {
        Err(StorageError::Conflict { last_seq }) => assert_eq!(last_seq, 2),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // An append refused for numbers that already hold exactly its changes
    // (it ran before its connection dropped, and was sent again) stored
    // them: it succeeds.
    b.append(&doc, &meta, &[entry(1), entry(2)])
        .await
        .expect("what is stored is stored");
    b.append(&doc, &meta, &[entry(3)])
        .await
        .expect("after catching up");
    let log = a.read_log(&doc, 0, usize::MAX).await.expect("reads");
    assert_eq!(log, vec![entry(1), entry(2), entry(3)]);
    assert_eq!(a.read_log(&doc, 1, 1).await.expect("reads"), vec![entry(2)]);
}

#[tokio::test]
async fn a_name_only_loaded_is_not_stored_and_its_first_append_creates_it() {
    let redis = RedisServer::start();
    let (a, b) = (store(&redis).await, store(&redis).await);
    let doc = DocName::new("unborn").expect("name");
    let (loaded_a, loaded_b) = (
        a.load(&doc).await.expect("loads"),
        b.load(&doc).await.expect("loads"),
    );
    assert!(!loaded_a.exists && !loaded_b.exists);
    assert_eq!(
        loaded_a.meta, loaded_b.meta,
        "nodes agree before anyone writes"
    );
    for node in [&a, &b] {
        assert!(node.list().await.expect("lists").is_empty());
        assert!(node.info(&doc).await.expect("info").is_none());
        assert!(node.dump(&doc).await.expect("dump").is_none());
    }

    b.append(&doc, &loaded_b.meta, &[entry(1)])
        .await
        .expect("the first append creates it");
    assert_eq!(a.list().await.expect("lists"), vec![doc.clone()]);
    let info = a.info(&doc).await.expect("info").expect("exists");
    assert_eq!((info.meta, info.last_seq), (loaded_a.meta, 1));
    let again = a.load(&doc).await.expect("loads");
    assert!(again.exists);
    assert_eq!(again.meta, loaded_a.meta);
}

#[tokio::test]
async fn an_append_under_another_incarnation_is_refused() {
    let redis = RedisServer::start();
    let (a, b) = (store(&redis).await, store(&redis).await);
    let doc = DocName::new("twice").expect("name");
    let old = a.load(&doc).await.expect("loads").meta;
    // The name is deleted (or its provisional metadata expires) and B
    // creates it anew; A still holds the old incarnation.
    a.delete(&doc).await.expect("deletes");
    let new = b.load(&doc).await.expect("loads").meta;
    assert_ne!(old.incarnation, new.incarnation);
    b.append(&doc, &new, &[entry(1)]).await.expect("creates");
    assert!(matches!(
        a.append(&doc, &old, &[entry(1)]).await,
        Err(StorageError::Recreated(_))
    ));
    // Deleted under a node that had written to it: refused too, not
    // renumbered into whatever comes next.
    b.delete(&doc).await.expect("deletes");
    assert!(matches!(
        b.append(&doc, &new, &[entry(2)]).await,
        Err(StorageError::Recreated(_))
    ));
    assert!(b.list().await.expect("lists").is_empty());
    assert_eq!(b.read_log(&doc, 0, 10).await.expect("reads"), vec![]);
}

#[tokio::test]
async fn compaction_keeps_the_history_window_behind_the_tail() {
    let redis = RedisServer::start();
    let store = store(&redis).await;
    let doc = DocName::new("window").expect("name");
    let meta = store.load(&doc).await.expect("loads").meta;
    let all: Vec<LogEntry> = (1..=30).map(entry).collect();
    store.append(&doc, &meta, &all).await.expect("appends");
    let day = 24 * 3600 * 1000;
    let month = LogRetention {
        keep_tail: 2,
        keep_for: Duration::from_secs(30 * 24 * 3600),
    };
    let at = |seq, taken_at_ms| NewSnapshot {
        taken_at_ms,
        ..snapshot(seq)
    };
    // The snapshot at 10 has left the window by the third compaction; the
    // one at 20 has not, so the changes after 10 stay.
    for (seq, taken) in [(10, 60 * day), (20, 75 * day), (30, 100 * day)] {
        store
            .compact(&doc, at(seq, taken), month)
            .await
            .expect("compacts");
    }
    let log = store.read_log(&doc, 0, usize::MAX).await.expect("reads");
    assert_eq!(log.first().map(|e| e.seq), Some(11));
    assert_eq!(log.len(), 20);
    let head = store.head(&doc).await.expect("head").expect("stored");
    assert_eq!((head.last_seq, head.meta), (30, meta));
    let never = DocName::new("never-written").expect("name");
    assert_eq!(store.head(&never).await.expect("head"), None);
}

#[tokio::test]
async fn compaction_trims_to_a_tail_and_a_lagging_snapshot_does_not_move_the_head_back() {
    let redis = RedisServer::start();
    let store = store(&redis).await;
    let doc = DocName::new("compact").expect("name");
    let meta = store.load(&doc).await.expect("loads").meta;
    let all: Vec<LogEntry> = (1..=30).map(entry).collect();
    store.append(&doc, &meta, &all).await.expect("appends");

    store
        .compact(&doc, snapshot(20), LogRetention::tail(5))
        .await
        .expect("compacts");
    let log = store.read_log(&doc, 0, usize::MAX).await.expect("reads");
    assert_eq!(
        log.first().map(|e| e.seq),
        Some(16),
        "5 behind the snapshot kept"
    );
    // A node that lags behind snapshots at 10: stored, but not the head.
    store
        .compact(&doc, snapshot(10), LogRetention::tail(5))
        .await
        .expect("compacts");
    let loaded = store.load(&doc).await.expect("loads");
    assert_eq!(loaded.snapshot.as_ref().map(|s| s.seq), Some(20));
    assert_eq!(loaded.log.first().map(|e| e.seq), Some(21));
    assert_eq!(loaded.last_seq(), 30);
    assert_eq!(store.list_snapshots(&doc).await.expect("lists").len(), 2);
    // Keeping only the newest id would drop the head (seq 20, id 1) in
    // favour of the lagging snapshot (seq 10, id 2): the head stays.
    let keep_one = RetentionPolicy {
        keep_last: 1,
        hourly_for: Duration::ZERO,
        daily_for: Duration::ZERO,
        every_changes: 0,
        history_window: Duration::ZERO,
    };
    assert_eq!(
        store
            .prune_snapshots(&doc, keep_one, 10_000)
            .await
            .expect("prunes"),
        0
    );
    let info = store.info(&doc).await.expect("info").expect("stored");
    assert_eq!((info.snapshots, info.last_seq), (2, 30));
    assert_eq!(store.load(&doc).await.expect("still loads").last_seq(), 30);
    assert_eq!(store.list().await.expect("lists"), vec![doc.clone()]);
    assert!(store.delete(&doc).await.expect("deletes"));
    assert!(store.list().await.expect("lists").is_empty());
}

#[tokio::test]
async fn a_node_that_asks_for_presence_hears_each_other_nodes_answer() {
    let redis = RedisServer::start();
    let (a, b, c) = (
        store(&redis).await,
        store(&redis).await,
        store(&redis).await,
    );
    let doc = DocName::new("handshake").expect("name");
    let mut heard = Vec::new();
    for node in [&a, &b, &c] {
        heard.push(
            node.watch_peers(&doc)
                .await
                .expect("subscribes")
                .expect("pubsub"),
        );
    }
    let [by_a, by_b, by_c] = &mut heard[..] else {
        unreachable!()
    };
    async fn next(rx: &mut tokio::sync::mpsc::Receiver<PeerEvent>) -> PeerEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("in time")
            .expect("open")
    }

    assert_eq!(
        c.ask_presence(&doc).await.expect("asks"),
        2,
        "A and B will answer; C does not count itself"
    );
    let PeerEvent::PresenceWanted { asker } = next(by_a).await else {
        panic!("A hears the question");
    };
    assert_eq!(next(by_b).await, PeerEvent::PresenceWanted { asker });
    a.answer_presence(&doc, asker, b"from a")
        .await
        .expect("answers");
    b.answer_presence(&doc, asker, b"from b")
        .await
        .expect("answers");

    // The asker hears both as answers; the others hear them as presence.
    let mut answers = vec![next(by_c).await, next(by_c).await];
    answers.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        answers,
        vec![
            PeerEvent::PresenceAnswer(b"from a".to_vec()),
            PeerEvent::PresenceAnswer(b"from b".to_vec())
        ]
    );
    assert_eq!(next(by_a).await, PeerEvent::Presence(b"from b".to_vec()));
    assert_eq!(next(by_b).await, PeerEvent::Presence(b"from a".to_vec()));
}

#[tokio::test]
async fn verify_names_records_that_vanished() {
    let redis = RedisServer::start();
    let store = store(&redis).await;
    let doc = DocName::new("ledger").expect("name");
    let loaded = store.load(&doc).await.expect("loads");
    let all: Vec<LogEntry> = (1..=12).map(entry).collect();
    store
        .append(&doc, &loaded.meta, &all)
        .await
        .expect("appends");
    store
        .compact(&doc, snapshot(6), LogRetention::tail(5))
        .await
        .expect("compacts");
    store
        .compact(&doc, snapshot(8), LogRetention::tail(5))
        .await
        .expect("compacts");
    assert_eq!(store.verify().await.expect("verifies"), vec![]);

    // Records vanish: the older snapshot's state, and a change after the head.
    let client = redis::Client::open(redis.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let removed: (i64, i64) = redis::pipe()
        .cmd("HDEL")
        .arg("weft:{ledger}:snapshots")
        .arg(1)
        .cmd("XDEL")
        .arg("weft:{ledger}:log")
        .arg("0-10")
        .query_async(&mut conn)
        .await
        .expect("removes");
    assert_eq!(removed, (1, 1));
    let found = store.verify().await.expect("verifies");
    let locations: Vec<&str> = found.iter().map(|c| c.location.as_str()).collect();
    assert_eq!(
        locations,
        vec!["ledger snapshot 1", "ledger#10"],
        "{found:?}"
    );
    assert!(
        found[1].problem.contains("after snapshot 2 (change 8)"),
        "{}",
        found[1].problem
    );

    // The newest change vanishing shows too: the store keeps its number.
    let _: i64 = redis::cmd("XDEL")
        .arg("weft:{ledger}:log")
        .arg("0-12")
        .query_async(&mut conn)
        .await
        .expect("removes");
    let found = store.verify().await.expect("verifies");
    assert!(found.iter().any(|c| c.location == "ledger#12"), "{found:?}");
}

#[tokio::test]
async fn another_nodes_changes_presence_and_deletion_arrive_and_skip_their_sender() {
    let redis = RedisServer::start();
    let (a, b) = (store(&redis).await, store(&redis).await);
    let doc = DocName::new("follow").expect("name");
    let meta = a.load(&doc).await.expect("loads").meta;
    a.append(&doc, &meta, &[entry(1)]).await.expect("appends");
    let mut follow = b
        .watch(&doc, &meta, 1)
        .await
        .expect("watches")
        .expect("a shared store");
    let mut heard_by_b = b
        .watch_peers(&doc)
        .await
        .expect("subscribes")
        .expect("pubsub");
    let mut heard_by_a = a
        .watch_peers(&doc)
        .await
        .expect("subscribes")
        .expect("pubsub");

    a.append(&doc, &meta, &[entry(2), entry(3)])
        .await
        .expect("appends");
    let mut got = Vec::new();
    while got.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), follow.recv())
            .await
            .expect("in time")
            .expect("open");
        match batch {
            Followed::Changes(batch) => got.extend(batch),
            lost => panic!("{lost:?}"),
        }
    }
    assert_eq!(got, vec![entry(2), entry(3)], "only what came after 1");

    // The subscription is live once a message gets through; retry until then.
    let mut heard = None;
    for _ in 0..100 {
        a.publish_presence(&doc, b"cursor")
            .await
            .expect("publishes");
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(100), heard_by_b.recv()).await
        {
            heard = Some(m);
            break;
        }
    }
    assert_eq!(heard, Some(PeerEvent::Presence(b"cursor".to_vec())));
    // Now B speaks: the first thing A hears must be B, not its own cursors.
    let mut heard = None;
    for _ in 0..100 {
        b.publish_presence(&doc, b"from b")
            .await
            .expect("publishes");
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(100), heard_by_a.recv()).await
        {
            heard = Some(m);
            break;
        }
    }
    assert_eq!(
        heard,
        Some(PeerEvent::Presence(b"from b".to_vec())),
        "a node does not hear itself"
    );

    // B deletes the document: A hears it (after any presence still queued).
    assert!(b.delete(&doc).await.expect("deletes"));
    let deleted = async {
        while let Some(event) = heard_by_a.recv().await {
            if event == PeerEvent::Deleted {
                return true;
            }
        }
        false
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), deleted)
            .await
            .expect("in time"),
        "A heard the deletion"
    );
}

#[tokio::test]
async fn quarantined_changes_are_kept_listed_and_deleted_with_their_document() {
    let redis = RedisServer::start();
    let (a, b) = (store(&redis).await, store(&redis).await);
    let doc = DocName::new("quarantine").expect("name");
    a.load(&doc).await.expect("loads");
    let part = |seq: u64, snapshot: Option<u64>| Quarantined {
        seq,
        snapshot,
        changed_at_ms: seq,
        quarantined_at_ms: 77,
        reason: format!("part {seq} does not replay"),
        update: vec![seq as u8; 4],
    };
    a.quarantine(&doc, &[part(12, Some(1)), part(10, None), part(3, None)])
        .await
        .expect("sets aside");
    // Another node sets the same change aside: replaced, not doubled.
    b.quarantine(&doc, &[part(10, None)])
        .await
        .expect("sets aside");
    assert_eq!(
        b.quarantined(&doc).await.expect("lists"),
        vec![part(3, None), part(10, None), part(12, Some(1))]
    );
    assert!(a.verify().await.expect("verifies").is_empty());
    assert!(a.delete(&doc).await.expect("deletes"));
    assert!(a.quarantined(&doc).await.expect("lists").is_empty());
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let err = RedisStore::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .expect_err("nothing listens there");
    assert!(err.to_string().contains("cannot reach Redis"), "{err}");
    let err = RedisStore::connect("not a url").await.expect_err("bad URL");
    assert!(err.to_string().contains("bad Redis URL"), "{err}");
    // The URL may carry a password: errors name the address only.
    let err = RedisStore::connect(&format!("redis://:hunter2@127.0.0.1:{port}"))
        .await
        .expect_err("nothing listens there");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

/// The clients `redis` has connected, not counting the one asking.
async fn connected_clients(redis: &RedisServer) -> usize {
    let client = redis::Client::open(redis.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .expect("lists");
    list.lines().count() - 1
}

/// Waits until `rx` has every change up to `last`.
async fn follow_until(rx: &mut tokio::sync::mpsc::Receiver<Followed>, last: u64) {
    let mut newest = 0;
    while newest < last {
        let followed = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the change arrives in time")
            .expect("still followed");
        let Followed::Changes(batch) = followed else {
            panic!("{followed:?}");
        };
        newest = batch.last().map_or(newest, |e| e.seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_follows_hundreds_of_documents_on_two_connections_and_across_a_restart() {
    const DOCS: usize = 300;
    let mut redis = RedisServer::start();
    let writer = store(&redis).await;
    let node = store(&redis).await;
    // Each store: its command connection, and its bus's subscription,
    // which connects in the background.
    let started = std::time::Instant::now();
    let mut alone = connected_clients(&redis).await;
    while alone < 4 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        alone = connected_clients(&redis).await;
    }
    assert_eq!(alone, 4, "two stores hold two connections each");
    let docs: Vec<DocName> = (0..DOCS)
        .map(|i| DocName::new(format!("many-{i}")).expect("name"))
        .collect();
    let mut metas = Vec::new();
    let mut followed = Vec::new();
    for doc in &docs {
        let meta = writer.load(doc).await.expect("loads").meta;
        let peers = node
            .watch_peers(doc)
            .await
            .expect("listens")
            .expect("shared");
        let log = node
            .watch(doc, &meta, 0)
            .await
            .expect("follows")
            .expect("shared");
        metas.push(meta);
        followed.push((peers, log));
    }
    assert_eq!(
        connected_clients(&redis).await,
        alone,
        "following {DOCS} documents opened no connection"
    );
    assert_eq!(node.subscribed_channels(), DOCS);

    for (i, doc) in docs.iter().enumerate() {
        writer
            .append(doc, &metas[i], &[entry(1)])
            .await
            .expect("appends");
    }
    for (_, log) in &mut followed {
        follow_until(log, 1).await;
    }

    // Redis dies and comes back with its data: every follower carries on
    // from where it was, whatever was appended while it could not hear.
    redis.restart();
    let mut appended = 0;
    for (i, doc) in docs.iter().enumerate() {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while writer.append(doc, &metas[i], &[entry(2)]).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "Redis never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        appended += 1;
    }
    assert_eq!(appended, DOCS);
    for (_, log) in &mut followed {
        follow_until(log, 2).await;
    }
    assert!(connected_clients(&redis).await <= alone);

    // Rooms that go let their channels go.
    followed.truncate(DOCS / 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.subscribed_channels() != DOCS / 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "channels never let go"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Shutting down ends the node's subscription (its command connection
    // goes with the store) and every follower: their rooms hear the end.
    let before = connected_clients(&redis).await;
    node.shut_down().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while connected_clients(&redis).await != before - 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the subscription outlived shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (_, log) in &mut followed {
        assert_eq!(log.recv().await, None, "a follower outlived shutdown");
    }
}

/// Makes `redis` full: its memory in use over `maxmemory`, under
/// `noeviction`, so that it refuses every write that needs memory.
async fn fill_up(redis: &RedisServer) {
    let client = redis::Client::open(redis.url()).expect("url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let filler = vec![b'x'; 16 * 1024];
    for i in 0..32 {
        let _: () = redis::cmd("SET")
            .arg(format!("filler-{i}"))
            .arg(&filler)
            .query_async(&mut conn)
            .await
            .expect("fills");
    }
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .expect("info");
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used - 256 * 1024)
        .query_async(&mut conn)
        .await
        .expect("sets maxmemory");
    let refused: redis::RedisResult<()> = redis::cmd("SET")
        .arg("one-more")
        .arg(&filler)
        .query_async(&mut conn)
        .await;
    assert_eq!(
        refused.map_err(|e| e.code().map(str::to_owned)),
        Err(Some("OOM".into()))
    );
}

#[tokio::test]
async fn a_full_redis_refuses_writes_and_still_loads_every_document() {
    let redis = RedisServer::start();
    let node = store(&redis).await;
    let doc = DocName::new("stored").expect("name");
    let meta = node.load(&doc).await.expect("loads").meta;
    node.append(&doc, &meta, &[entry(1), entry(2)])
        .await
        .expect("appends");
    let never = DocName::new("never-written").expect("name");
    node.load(&never).await.expect("loads");

    fill_up(&redis).await;
    let refused = node.append(&doc, &meta, &[entry(3)]).await;
    assert!(
        refused.is_err(),
        "a full Redis takes no change: {refused:?}"
    );

    // On this node and on one that starts now.
    for reader in [node, store(&redis).await] {
        let loaded = reader.load(&doc).await.expect("a stored document loads");
        assert_eq!(loaded.meta, meta);
        assert_eq!(loaded.log, vec![entry(1), entry(2)]);
        assert!(loaded.exists);
        let fresh = reader
            .load(&DocName::new("brand-new").expect("name"))
            .await
            .expect("a new name loads, empty");
        assert!(!fresh.exists && fresh.log.is_empty());
        reader.load(&never).await.expect("a provisional name loads");
    }
}

#[tokio::test]
async fn a_stored_document_missing_some_keys_is_refused_never_served_empty() {
    let redis = RedisServer::start();
    let node = store(&redis).await;
    let client = redis::Client::open(redis.url()).expect("url");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let mut stored = Vec::new();
    for name in ["no-meta", "no-seq", "no-log"] {
        let doc = DocName::new(name).expect("name");
        let meta = node.load(&doc).await.expect("loads").meta;
        node.append(&doc, &meta, &[entry(1), entry(2), entry(3)])
            .await
            .expect("appends");
        stored.push((doc, meta));
    }
    for key in [
        "weft:{no-meta}:meta",
        "weft:{no-seq}:seq",
        "weft:{no-log}:log",
    ] {
        let _: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut raw)
            .await
            .expect("deletes");
    }

    for (name, missing) in [("no-meta", "meta"), ("no-seq", "seq"), ("no-log", "log")] {
        let doc = DocName::new(name).expect("name");
        match node.load(&doc).await {
            Err(e @ StorageError::Corrupt { .. }) => {
                let said = e.to_string();
                assert!(
                    said.contains(&format!("weft:{{{name}}}:{missing}")),
                    "{said}"
                );
                assert!(said.contains("weft verify"), "{said}");
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }
    // A node that had the document loaded, writing on: refused, not a
    // conflict it would retry for ever.
    let (doc, meta) = &stored[1];
    let appended = node.append(doc, meta, &[entry(4)]).await;
    assert!(
        matches!(&appended, Err(StorageError::Corrupt { .. })),
        "{appended:?}"
    );
    // Each is still listed, whichever key it lost, so `weft verify`
    // reports it.
    let listed: Vec<String> = node
        .list()
        .await
        .expect("lists")
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(listed, ["no-log", "no-meta", "no-seq"]);
}

/// Waits until `rx` says the history it followed is lost.
async fn until_lost(rx: &mut tokio::sync::mpsc::Receiver<Followed>) -> String {
    loop {
        let followed = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("in time")
            .expect("says why before it ends");
        if let Followed::Lost(reason) = followed {
            assert!(rx.recv().await.is_none(), "nothing follows a loss");
            return reason;
        }
    }
}

#[tokio::test]
async fn a_follower_says_when_the_stored_history_is_not_the_one_it_followed() {
    let redis = RedisServer::start();
    let (a, b) = (store(&redis).await, store(&redis).await);
    let client = redis::Client::open(redis.url()).expect("url");
    let mut raw = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");

    // Redis comes back empty; a node writes the name anew.
    let doc = DocName::new("wiped").expect("name");
    let meta = a.load(&doc).await.expect("loads").meta;
    a.append(&doc, &meta, &[entry(1), entry(2), entry(3)])
        .await
        .expect("appends");
    let mut followed = b
        .watch(&doc, &meta, 3)
        .await
        .expect("follows")
        .expect("shared");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut raw)
        .await
        .expect("flushes");
    let anew = a.load(&doc).await.expect("loads").meta;
    assert_ne!(anew.incarnation, meta.incarnation);
    a.append(&doc, &anew, &[entry(1)]).await.expect("appends");
    // Whichever it read first: no metadata, or another incarnation's.
    let reason = until_lost(&mut followed).await;
    assert!(
        reason.contains("another incarnation") || reason.contains("metadata is gone"),
        "{reason}"
    );

    // Redis goes back to an older state of the same document.
    let doc = DocName::new("rewound").expect("name");
    let meta = a.load(&doc).await.expect("loads").meta;
    let five: Vec<LogEntry> = (1..=5).map(entry).collect();
    a.append(&doc, &meta, &five).await.expect("appends");
    let mut followed = b
        .watch(&doc, &meta, 5)
        .await
        .expect("follows")
        .expect("shared");
    // (A stream remembers its top id; an older state has none past 2.)
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg("weft:{rewound}:log")
        .ignore()
        .cmd("SET")
        .arg("weft:{rewound}:seq")
        .arg(2)
        .ignore()
        .query_async(&mut raw)
        .await
        .expect("rewinds");
    a.append(&doc, &meta, &[entry(3)]).await.expect("appends");
    let reason = until_lost(&mut followed).await;
    assert!(
        reason.contains("but this node followed it to 5"),
        "{reason}"
    );

    // Deleted while this node did not hear it, and written anew: the
    // follower says deleted, not lost (nothing is to be sent back).
    let doc = DocName::new("deleted-unheard").expect("name");
    let meta = a.load(&doc).await.expect("loads").meta;
    a.append(&doc, &meta, &[entry(1)]).await.expect("appends");
    let mut followed = b
        .watch(&doc, &meta, 1)
        .await
        .expect("follows")
        .expect("shared");
    assert!(a.delete(&doc).await.expect("deletes"));
    let anew = a.load(&doc).await.expect("loads").meta;
    a.append(&doc, &anew, &[entry(1)]).await.expect("appends");
    let heard = tokio::time::timeout(Duration::from_secs(10), followed.recv())
        .await
        .expect("in time");
    assert_eq!(heard, Some(Followed::Deleted));
}

#[tokio::test]
async fn a_documents_info_says_what_redis_holds_for_it() {
    let redis = RedisServer::start();
    let node = store(&redis).await;
    let doc = DocName::new("measured").expect("name");
    let meta = node.load(&doc).await.expect("loads").meta;
    let big = LogEntry {
        update: vec![7; 64 * 1024],
        ..entry(1)
    };
    node.append(&doc, &meta, &[big]).await.expect("appends");
    let info = node.info(&doc).await.expect("reads").expect("stored");
    let held = info.held_bytes.expect("Redis tells");
    // The change itself, and the keys around it, but not wildly more.
    assert!(
        (64 * 1024..256 * 1024).contains(&held),
        "{held} bytes held for a 64 KiB change"
    );
}
