//! The engine end to end, without sockets: rooms over a real sled store (and
//! a store that fails or counts on purpose), driven through `Session`s.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;
use weft_storage::{
    Catalogue, DocMeta, DocName, DocumentStore, FaultyStore, LogEntry, LogRetention, NewSnapshot,
    SledStore, SnapshotReason,
};
use weft_sync::protocol::{decode_frame, decode_update, Inbound};
use weft_sync::{Access, Clock, CloseReason, EngineConfig, Rooms, Session, SystemClock};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

const WAIT: Duration = Duration::from_secs(10);

type TestStore = FaultyStore<SledStore>;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<TestStore>,
    rooms: Rooms,
}

fn fixture(config: EngineConfig) -> Fixture {
    fixture_with_clock(config, Arc::new(SystemClock))
}

fn fixture_with_clock(config: EngineConfig, clock: Arc<dyn Clock>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(FaultyStore::new(SledStore::open(dir.path()).expect("open")));
    let rooms = Rooms::new(store.clone(), config, clock);
    Fixture {
        _dir: dir,
        store,
        rooms,
    }
}

fn name(s: &str) -> DocName {
    DocName::new(s).expect("valid")
}

fn edit(doc: &Doc, s: &str) -> Inbound {
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    let len = text.len(&txn);
    text.insert(&mut txn, len, s);
    Inbound::Update(decode_update(&txn.encode_update_v1()).expect("valid"))
}

async fn next(session: &mut Session) -> Inbound {
    let frame = timeout(WAIT, session.recv())
        .await
        .expect("a frame in time")
        .expect("session open");
    decode_frame(&frame).expect("valid frame").remove(0)
}

/// Reads frames until an update arrives, applying it to `doc`.
async fn next_update_into(session: &mut Session, doc: &Doc) {
    loop {
        if let Inbound::Update(u) = next(session).await {
            doc.transact_mut().apply_update(u.update).expect("applies");
            return;
        }
    }
}

fn text(doc: &Doc) -> String {
    doc.get_or_insert_text("t").get_string(&doc.transact())
}

/// Reads `reader`'s updates into a document until its text is `want`
/// (a writer's updates in one batch arrive as one change), failing if the
/// reader is closed first.
async fn read_text_until(mut reader: Session, want: String) {
    let seen = Doc::new();
    while text(&seen) != want {
        match timeout(WAIT, reader.recv()).await.expect("a frame in time") {
            Ok(frame) => {
                for message in decode_frame(&frame).expect("valid frame") {
                    if let Inbound::Update(u) = message {
                        seen.transact_mut().apply_update(u.update).expect("applies");
                    }
                }
            }
            Err(reason) => panic!(
                "reader closed after {} of {} characters: {reason:?}",
                text(&seen).len(),
                want.len()
            ),
        }
    }
}

#[tokio::test]
async fn an_update_reaches_the_others_only_after_it_is_stored() {
    let f = fixture(EngineConfig::default());
    let doc = name("d");
    let mut a = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    let mut b = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    assert!(matches!(next(&mut a).await, Inbound::SyncStep1(_)));
    assert!(matches!(next(&mut b).await, Inbound::SyncStep1(_)));

    let writer = Doc::new();
    a.send(vec![edit(&writer, "hello")], 0).await.expect("send");
    let reader = Doc::new();
    next_update_into(&mut b, &reader).await;
    assert_eq!(text(&reader), "hello");
    // By the time b saw it, it was on disk.
    let log = f.store.inner().read_log(&doc, 0, 10).await.expect("read");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].seq, 1);
    // The sender is not sent its own change back.
    a.send(vec![Inbound::SyncStep1(StateVector::default())], 0)
        .await
        .expect("send");
    assert!(
        matches!(next(&mut a).await, Inbound::Update(_)),
        "step 2, not an echo"
    );
}

#[tokio::test]
async fn racing_joins_load_the_document_once() {
    let f = fixture(EngineConfig::default());
    let doc = name("race");
    let joins = (0..50).map(|_| {
        let (rooms, doc) = (f.rooms.clone(), doc.clone());
        async move { rooms.join(&doc, Access::ReadWrite, None).await }
    });
    let sessions = futures_join_all(joins).await;
    assert_eq!(sessions.len(), 50);
    assert_eq!(f.store.loads(), 1);
}

async fn futures_join_all<F, T, E>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: std::fmt::Debug + Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task").expect("join"));
    }
    out
}

#[tokio::test]
async fn a_failed_append_is_never_broadcast_and_the_document_rolls_back() {
    let f = fixture(EngineConfig::default());
    let doc = name("faulty");
    let mut a = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    let mut b = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    next(&mut a).await;
    next(&mut b).await;
    let writer = Doc::new();
    a.send(vec![edit(&writer, "kept ")], 0).await.expect("send");
    let reader = Doc::new();
    next_update_into(&mut b, &reader).await;

    f.store.fail_appends(true);
    a.send(vec![edit(&writer, "lost")], 0).await.expect("send");
    for s in [&mut a, &mut b] {
        let reason = loop {
            match timeout(WAIT, s.recv()).await.expect("closed in time") {
                Ok(frame) => assert!(
                    !matches!(decode_frame(&frame).expect("valid")[0], Inbound::Update(_)),
                    "the unstored change must not be delivered"
                ),
                Err(reason) => break reason,
            }
        };
        assert!(
            matches!(reason, CloseReason::StorageFailure(_)),
            "{reason:?}"
        );
    }

    // While the disk still fails, reads keep being served.
    let read = f.rooms.read(&doc, None).await.expect("reads still work");
    let fresh = Doc::new();
    fresh
        .transact_mut()
        .apply_update(Update::decode_v1(&read.update).expect("valid"))
        .expect("applies");
    assert_eq!(text(&fresh), "kept ");
    let mut viewer = f
        .rooms
        .follow(&doc, None)
        .await
        .expect("viewers still join");
    let opening = timeout(WAIT, viewer.recv())
        .await
        .expect("in time")
        .expect("open");
    assert!(opening.starts_with(b"event: snapshot"));

    f.store.fail_appends(false);
    let mut c = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    next(&mut c).await;
    c.send(vec![Inbound::SyncStep1(StateVector::default())], 0)
        .await
        .expect("send");
    let fresh = Doc::new();
    next_update_into(&mut c, &fresh).await;
    assert_eq!(text(&fresh), "kept ");
}

#[tokio::test]
async fn a_failed_append_closes_the_writers_and_keeps_the_readers() {
    let f = fixture(EngineConfig::default());
    let doc = name("readers");
    let mut writer_session = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    let mut reader = f
        .rooms
        .join(&doc, Access::ReadOnly, None)
        .await
        .expect("join");
    next(&mut writer_session).await;
    next(&mut reader).await;
    let mut viewer = f.rooms.follow(&doc, None).await.expect("follow");
    let opening = timeout(WAIT, viewer.recv())
        .await
        .expect("in time")
        .expect("open");
    assert!(opening.starts_with(b"event: snapshot"));

    let writer = Doc::new();
    let seen = Doc::new();
    writer_session
        .send(vec![edit(&writer, "kept ")], 0)
        .await
        .expect("send");
    next_update_into(&mut reader, &seen).await;

    f.store.fail_appends(true);
    writer_session
        .send(vec![edit(&writer, "lost")], 0)
        .await
        .expect("send");
    let reason = loop {
        match timeout(WAIT, writer_session.recv())
            .await
            .expect("closed in time")
        {
            Ok(_) => {}
            Err(reason) => break reason,
        }
    };
    assert!(
        matches!(reason, CloseReason::StorageFailure(_)),
        "{reason:?}"
    );

    // The readers stayed, and get the next change stored.
    f.store.fail_appends(false);
    let mut second = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    next(&mut second).await;
    second
        .send(vec![edit(&Doc::new(), "after")], 0)
        .await
        .expect("send");
    next_update_into(&mut reader, &seen).await;
    let shown = text(&seen);
    assert!(
        shown.contains("kept ") && shown.contains("after"),
        "{shown}"
    );
    assert!(!shown.contains("lost"), "{shown}");
    let event = loop {
        let frame = timeout(WAIT, viewer.recv())
            .await
            .expect("in time")
            .expect("the viewer stays open");
        if frame.starts_with(b"event: update") {
            break frame;
        }
    };
    assert!(event.starts_with(b"event: update"));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_not_skipped() {
    let f = fixture(EngineConfig {
        outbound_queue: 8,
        ..EngineConfig::default()
    });
    let doc = name("slow");
    let writer_session = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    let mut slow = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    let writer = Doc::new();
    for i in 0..20 {
        writer_session
            .send(vec![edit(&writer, &i.to_string())], 0)
            .await
            .expect("send");
        // The room answers in order: once it has answered this, it has
        // handled (and tried to deliver) the change while `slow` read
        // nothing. Each change in a batch of its own is a frame of its own
        // (a writer's updates in one batch are sent as one change).
        f.rooms.stats(&doc).await.expect("room loaded");
    }
    let mut frames = 0;
    let reason = loop {
        match timeout(WAIT, slow.recv()).await.expect("closed in time") {
            Ok(_) => frames += 1,
            Err(reason) => break reason,
        }
    };
    assert_eq!(reason, CloseReason::TooSlow);
    // What it had not taken went with it (it resyncs when it reconnects),
    // rather than wait in memory for a reader that may never read.
    assert_eq!(frames, 0, "{frames} frames");
}

#[tokio::test]
async fn a_burst_from_a_fast_writer_does_not_make_a_reader_that_keeps_up_look_slow() {
    let f = fixture(EngineConfig {
        outbound_queue: 8,
        ..EngineConfig::default()
    });
    let doc = name("burst");
    let writer_session = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    let reader = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    // The reader reads all the time; the writer sends 200 changes without
    // waiting, so they queue up and the room takes them in batches.
    let reading = tokio::spawn(read_text_until(
        reader,
        (0..200).map(|i| format!("{i} ")).collect(),
    ));
    let writer = Doc::new();
    for i in 0..200 {
        writer_session
            .send(vec![edit(&writer, &format!("{i} "))], 0)
            .await
            .expect("send");
    }
    reading.await.expect("reader");
}

#[tokio::test]
async fn a_burst_of_large_changes_does_not_make_a_reader_that_keeps_up_look_slow() {
    let f = fixture(EngineConfig {
        outbound_queue_bytes: 64 * 1024,
        ..EngineConfig::default()
    });
    let doc = name("large-burst");
    let writer_session = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    let reader = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    // As above, but each change is 4 KiB: 200 of them would be 800 KiB,
    // far more than the reader's 64 KiB, if the room took them in at once.
    let reading = tokio::spawn(read_text_until(reader, "abcd".repeat(1024).repeat(200)));
    let writer = Doc::new();
    let chunk = "abcd".repeat(1024);
    for _ in 0..200 {
        writer_session
            .send(vec![edit(&writer, &chunk)], chunk.len())
            .await
            .expect("send");
    }
    reading.await.expect("reader");
}

#[tokio::test]
async fn an_idle_document_is_snapshotted_and_unloaded() {
    let f = fixture(EngineConfig {
        unload_grace: Duration::from_millis(50),
        ..EngineConfig::default()
    });
    let doc = name("idle");
    {
        let s = f
            .rooms
            .join(&doc, Access::ReadWrite, None)
            .await
            .expect("join");
        s.send(vec![edit(&Doc::new(), "x")], 0).await.expect("send");
    }
    timeout(WAIT, async {
        while f.rooms.is_loaded(&doc) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("unloaded within the bound");
    let stored = f.store.inner().load(&doc).await.expect("load");
    let snapshot = stored.snapshot.expect("an idle snapshot");
    assert_eq!((snapshot.seq, snapshot.reason), (1, SnapshotReason::Idle));
    // Joining again loads it afresh, with its content.
    let mut s = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("rejoin");
    next(&mut s).await;
    s.send(vec![Inbound::SyncStep1(StateVector::default())], 0)
        .await
        .expect("send");
    let fresh = Doc::new();
    next_update_into(&mut s, &fresh).await;
    assert_eq!(text(&fresh), "x");
    assert_eq!(f.store.loads(), 2);
}

#[tokio::test]
async fn shutdown_stores_what_was_sent_and_closes_sessions() {
    let f = fixture(EngineConfig::default());
    let doc = name("bye");
    let mut s = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    let writer = Doc::new();
    for i in 0..10 {
        s.send(vec![edit(&writer, &i.to_string())], 0)
            .await
            .expect("send");
    }
    timeout(WAIT, f.rooms.shut_down())
        .await
        .expect("stops in time");
    let reason = loop {
        match s.recv().await {
            Ok(_) => continue,
            Err(r) => break r,
        }
    };
    assert_eq!(reason, CloseReason::ShuttingDown);
    let stored = f.store.inner().load(&doc).await.expect("load");
    // Ten updates, stored as one to ten changes (those the room took in
    // one batch are one change); the text below shows none is missing.
    assert!(
        (1..=10).contains(&stored.last_seq()),
        "{}",
        stored.last_seq()
    );
    let snapshot = stored.snapshot.expect("shutdown snapshot");
    assert_eq!(snapshot.reason, SnapshotReason::Shutdown);
    let check = Doc::new();
    check
        .transact_mut()
        .apply_update(Update::decode_v1(&snapshot.state).expect("valid"))
        .expect("applies");
    assert_eq!(text(&check), "0123456789");
    assert!(f.rooms.join(&doc, Access::ReadWrite, None).await.is_err());
}

#[tokio::test]
async fn snapshots_every_n_changes_and_trims_the_log_behind_a_tail() {
    let f = fixture(EngineConfig {
        snapshot_every: 5,
        keep_log_tail: 3,
        history_retention: Duration::ZERO,
        ..EngineConfig::default()
    });
    let doc = name("periodic");
    let mut s = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    next(&mut s).await;
    let writer = Doc::new();
    for i in 0..12 {
        s.send(vec![edit(&writer, &i.to_string())], 0)
            .await
            .expect("send");
        // One change per batch: the presence echo marks each as handled.
        s.send(vec![Inbound::AwarenessQuery], 0)
            .await
            .expect("send");
        assert!(matches!(next(&mut s).await, Inbound::Awareness(_)));
    }
    let stored = f.store.inner().load(&doc).await.expect("load");
    let snapshot = stored.snapshot.clone().expect("periodic snapshot");
    assert_eq!(
        (snapshot.seq, snapshot.reason),
        (10, SnapshotReason::Periodic)
    );
    assert_eq!(stored.last_seq(), 12);
    let log = f.store.inner().read_log(&doc, 0, 100).await.expect("read");
    assert_eq!(
        log.first().map(|e| e.seq),
        Some(8),
        "3 changes kept behind the snapshot"
    );
}

#[tokio::test]
async fn a_document_that_fails_to_load_refuses_joins_and_is_not_overwritten() {
    let f = fixture(EngineConfig::default());
    let doc = name("broken");
    {
        let s = f
            .rooms
            .join(&doc, Access::ReadWrite, None)
            .await
            .expect("join");
        s.send(vec![edit(&Doc::new(), "precious")], 0)
            .await
            .expect("send");
    }
    timeout(WAIT, f.rooms.shut_down()).await.expect("stops");
    let before = f.store.inner().load(&doc).await.expect("load");

    let rooms = Rooms::new(
        f.store.clone(),
        EngineConfig::default(),
        Arc::new(SystemClock),
    );
    f.store.fail_loads(true);
    let err = rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect_err("load fails");
    assert!(
        matches!(err, weft_sync::RoomError::LoadFailed(_)),
        "{err:?}"
    );
    assert!(!rooms.is_loaded(&doc));
    f.store.fail_loads(false);
    let after = f.store.inner().load(&doc).await.expect("load");
    assert_eq!(after.last_seq(), before.last_seq());
    assert_eq!(after.snapshot, before.snapshot);
    // Once the store reads again, the document loads with its content.
    let mut s = rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    next(&mut s).await;
    s.send(vec![Inbound::SyncStep1(StateVector::default())], 0)
        .await
        .expect("send");
    let fresh = Doc::new();
    next_update_into(&mut s, &fresh).await;
    assert_eq!(text(&fresh), "precious");
}

/// Lets `allow` creations through, then refuses; counts every question.
#[derive(Debug)]
struct CountingLimit {
    asked: std::sync::atomic::AtomicUsize,
    allow: usize,
}

impl weft_sync::CreationLimit for CountingLimit {
    fn admit(&self, _: weft_sync::ClientAddr) -> Result<(), Duration> {
        let n = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n < self.allow {
            Ok(())
        } else {
            Err(Duration::from_millis(1500))
        }
    }
}

#[tokio::test]
async fn only_a_change_that_creates_a_document_is_put_to_the_creation_limit() {
    use std::sync::atomic::Ordering;
    use weft_sync::{ClientAddr, RoomError};
    use yrs::ReadTxn;
    let limit = Arc::new(CountingLimit {
        asked: Default::default(),
        allow: 1,
    });
    let f = fixture(EngineConfig {
        creation_limit: Some(limit.clone()),
        ..EngineConfig::default()
    });
    let client = Some(ClientAddr(7));
    let (first, second) = (name("first"), name("second"));

    // Joining, an empty sync step 2 and reading create nothing: not asked.
    let s = f
        .rooms
        .join(&first, Access::ReadWrite, client)
        .await
        .expect("join");
    let empty = decode_update(
        &Doc::new()
            .transact()
            .encode_state_as_update_v1(&StateVector::default()),
    )
    .expect("valid");
    s.send(vec![Inbound::Update(empty)], 0).await.expect("send");
    assert!(matches!(
        f.rooms.read(&first, None).await,
        Err(RoomError::NoSuchDocument(_))
    ));
    assert_eq!(limit.asked.load(Ordering::SeqCst), 0);

    // The first real change asks once; later ones do not.
    let writer = Doc::new();
    for word in ["a", "b", "c"] {
        s.send(vec![edit(&writer, word)], 0).await.expect("send");
    }
    let read = f.rooms.read(&first, None).await.expect("exists now");
    assert!(!read.update.is_empty());
    assert_eq!(limit.asked.load(Ordering::SeqCst), 1);
    assert!(f.store.info(&first).await.expect("info").is_some());

    // Over the limit: the editor is closed, the HTTP write refused, nothing
    // stored; also when an update that creates nothing comes first in the
    // same message (they are one run, and each is asked until one creates).
    let mut t = f
        .rooms
        .join(&second, Access::ReadWrite, client)
        .await
        .expect("join");
    let nothing = decode_update(
        &Doc::new()
            .transact()
            .encode_state_as_update_v1(&StateVector::default()),
    )
    .expect("valid");
    t.send(vec![Inbound::Update(nothing), edit(&Doc::new(), "x")], 0)
        .await
        .expect("send");
    let reason = loop {
        match timeout(WAIT, t.recv()).await.expect("closed in time") {
            Ok(_) => continue,
            Err(reason) => break reason,
        }
    };
    assert_eq!(
        reason,
        CloseReason::TooManyNewDocuments {
            retry_after_secs: 2
        }
    );
    let update = bytes::Bytes::from(insert_update("y"));
    assert_eq!(
        f.rooms.apply(&second, update.clone(), client).await,
        Err(RoomError::TooManyNewDocuments {
            retry_after_secs: 2
        })
    );
    assert!(f.store.info(&second).await.expect("info").is_none());
    // Without a client address (an operator's change) it is not asked.
    let asked = limit.asked.load(Ordering::SeqCst);
    assert!(f
        .rooms
        .apply(&second, update, None)
        .await
        .expect("applies")
        .is_some());
    assert_eq!(limit.asked.load(Ordering::SeqCst), asked);
    assert!(f.store.info(&second).await.expect("info").is_some());
}

fn insert_update(s: &str) -> Vec<u8> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, s);
    txn.encode_update_v1()
}

/// A clock under the test's control: the time stands still, and every
/// reading of the thread's CPU time is `step` later than the one before, so
/// each update the room times seems to take `step`.
struct SteppingClock {
    step: Duration,
    cpu: std::sync::Mutex<Duration>,
}

impl SteppingClock {
    fn new(step: Duration) -> Arc<Self> {
        Arc::new(SteppingClock {
            step,
            cpu: Default::default(),
        })
    }
}

impl Clock for SteppingClock {
    fn now_ms(&self) -> u64 {
        1_000_000
    }
    fn thread_cpu(&self) -> Duration {
        let mut cpu = self.cpu.lock().expect("lock");
        *cpu += self.step;
        *cpu
    }
}

/// Reads frames until the session ends; returns why.
async fn close_reason(session: &mut Session) -> CloseReason {
    loop {
        match timeout(WAIT, session.recv()).await.expect("closed in time") {
            Ok(_) => continue,
            Err(reason) => return reason,
        }
    }
}

#[tokio::test]
async fn an_update_past_the_cpu_budget_closes_its_connection_and_is_kept() {
    let clock = SteppingClock::new(Duration::from_millis(1500));
    let f = fixture_with_clock(EngineConfig::default(), clock);
    let doc = name("costly");
    let mut writer_session = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    let mut reader = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    next(&mut reader).await;
    writer_session
        .send(vec![edit(&Doc::new(), "costly")], 0)
        .await
        .expect("send");
    let CloseReason::TooCostly(why) = close_reason(&mut writer_session).await else {
        panic!("closed for another reason");
    };
    assert!(
        why.contains("1500 ms") && why.contains("per update"),
        "{why}"
    );
    // It was integrated, so it is stored and delivered like any change...
    let seen = Doc::new();
    next_update_into(&mut reader, &seen).await;
    assert_eq!(text(&seen), "costly");
    // ... and, having taken that long, snapshotted at once, so that loading
    // the document never replays it. The room snapshots after delivering;
    // a read answered after that batch shows the snapshot is done.
    f.rooms.read(&doc, None).await.expect("read");
    let stored = f.store.inner().load(&doc).await.expect("load");
    let snapshot = stored.snapshot.expect("a snapshot after a costly change");
    assert_eq!(snapshot.seq, 1);
}

#[tokio::test]
async fn updates_that_together_take_too_long_close_their_connection() {
    // 600 ms each: under the 1 s per update, and the 2 s allowance (which
    // never refills: the clock stands still) is passed by the fourth.
    let clock = SteppingClock::new(Duration::from_millis(600));
    let f = fixture_with_clock(EngineConfig::default(), clock);
    let doc = name("greedy");
    let mut writer_session = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    let mut reader = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    next(&mut reader).await;
    // In one message, so the four are one run, timed one by one (this
    // clock makes every reading 600 ms later; separate runs would each
    // also be charged 600 ms for their commit).
    let writer = Doc::new();
    let words = ["a", "b", "c", "d"].map(|word| edit(&writer, word));
    writer_session.send(words.into(), 0).await.expect("send");
    let CloseReason::TooCostly(why) = close_reason(&mut writer_session).await else {
        panic!("closed for another reason");
    };
    assert!(
        why.contains("2400 ms") && why.contains("in a short while"),
        "{why}"
    );
    // All four were kept (as one to four changes).
    let seen = Doc::new();
    while text(&seen) != "abcd" {
        next_update_into(&mut reader, &seen).await;
    }
    // Another connection has a budget of its own.
    let other = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    other
        .send(vec![edit(&Doc::new(), "!")], 0)
        .await
        .expect("send");
    next_update_into(&mut reader, &seen).await;
}

/// The metadata these tests store their documents with.
const META: DocMeta = DocMeta {
    incarnation: 1,
    created_at_ms: 0,
};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Two changes an earlier build stored from the crafted updates of the fuzz
/// finding `crash-history-with-legacy-json`; the second does not replay
/// after the first ("block parent <0#0> must be deleted or shared ref type").
const UNREPLAYABLE: [&str; 2] = [
    "0203030000070003000101000002010101020101010102000100020301000b",
    "0109d9eadac109000401017401480201012e020101010101010101010101010101010101\
     01010101210101010101010101000001010901010100010101010109030000000101010101\
     310101010101f8010101010101010101010101d9eadac1090103fe01",
];

/// A writer's edit as the store keeps it.
fn logged(seq: u64, doc: &Doc, s: &str) -> LogEntry {
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    let len = text.len(&txn);
    text.insert(&mut txn, len, s);
    LogEntry {
        seq,
        at_ms: seq,
        update: txn.encode_update_v1(),
        by: Default::default(),
    }
}

fn raw(seq: u64, update: Vec<u8>) -> LogEntry {
    LogEntry {
        seq,
        at_ms: seq,
        update,
        by: Default::default(),
    }
}

/// The document's text as the engine serves it.
async fn served_text(rooms: &Rooms, doc: &DocName) -> String {
    let read = rooms.read(doc, None).await.expect("loads");
    let check = Doc::new();
    check
        .transact_mut()
        .apply_update(Update::decode_v1(&read.update).expect("valid"))
        .expect("applies");
    text(&check)
}

fn typed(s: &str) -> bytes::Bytes {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, s);
    txn.encode_update_v1().into()
}

#[tokio::test]
async fn a_stored_change_that_does_not_replay_is_quarantined_and_the_rest_loads() {
    let f = fixture(EngineConfig::default());
    let doc = name("unreplayable");
    let writer = Doc::new();
    let history = vec![
        logged(1, &writer, "ab"),
        raw(2, unhex(UNREPLAYABLE[0])),
        raw(3, unhex(UNREPLAYABLE[1])),
        logged(4, &writer, "cd"),
    ];
    f.store
        .inner()
        .append(&doc, &META, &history)
        .await
        .expect("append");

    assert_eq!(served_text(&f.rooms, &doc).await, "abcd");
    // Both hold legacy JSON content, which yrs does not read back as it
    // wrote it: #3 fails, and #2 would leave the document holding what it
    // cannot store.
    let set_aside = f.store.quarantined(&doc).await.expect("quarantine");
    let seqs: Vec<_> = set_aside.iter().map(|q| (q.seq, q.snapshot)).collect();
    assert_eq!(seqs, vec![(2, None), (3, None)], "{set_aside:?}");
    let q = &set_aside[1];
    assert_eq!(q.changed_at_ms, 3);
    assert_eq!(q.update, unhex(UNREPLAYABLE[1]), "its bytes are kept");
    assert!(q.reason.contains("legacy JSON"), "{}", q.reason);
    // Numbering goes on after it; nothing is renumbered.
    let id = f
        .rooms
        .apply(&doc, typed("!"), None)
        .await
        .expect("applies");
    assert_eq!(id.expect("a change").seq, 5);

    // Loaded again: the quarantined change is skipped, not found again.
    timeout(WAIT, f.rooms.shut_down()).await.expect("stops");
    let rooms = Rooms::new(
        f.store.clone(),
        EngineConfig::default(),
        Arc::new(SystemClock),
    );
    assert!(served_text(&rooms, &doc).await.contains("abcd"));
    assert_eq!(f.store.quarantined(&doc).await.expect("read"), set_aside);
}

#[tokio::test]
async fn a_snapshot_that_does_not_load_is_quarantined_and_an_older_one_serves() {
    let f = fixture(EngineConfig::default());
    let store = f.store.inner();
    let doc = name("bad-snapshot");
    let writer = Doc::new();
    store
        .append(&doc, &META, &[logged(1, &writer, "ab")])
        .await
        .expect("append");
    let good = writer
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let snapshot = |seq: u64, state: Vec<u8>| NewSnapshot {
        seq,
        taken_at_ms: seq,
        reason: SnapshotReason::Periodic,
        state,
    };
    store
        .compact(&doc, snapshot(1, good), LogRetention::tail(100))
        .await
        .expect("snapshot");
    store
        .append(&doc, &META, &[logged(2, &writer, "cd")])
        .await
        .expect("append");
    let bad = store
        .compact(
            &doc,
            snapshot(2, vec![0xff, 0xff, 0xff]),
            LogRetention::tail(100),
        )
        .await
        .expect("snapshot");
    store
        .append(&doc, &META, &[logged(3, &writer, "ef")])
        .await
        .expect("append");

    assert_eq!(served_text(&f.rooms, &doc).await, "abcdef");
    let set_aside = f.store.quarantined(&doc).await.expect("quarantine");
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    assert_eq!((set_aside[0].seq, set_aside[0].snapshot), (2, Some(bad)));
    assert_eq!(set_aside[0].update, vec![0xff, 0xff, 0xff]);
    let id = f
        .rooms
        .apply(&doc, typed("!"), None)
        .await
        .expect("applies");
    assert_eq!(id.expect("a change").seq, 4);
}

#[tokio::test]
async fn numbering_goes_on_after_a_quarantined_snapshot_whose_log_is_gone() {
    let f = fixture(EngineConfig::default());
    let store = f.store.inner();
    let doc = name("bad-snapshot-alone");
    let writer = Doc::new();
    let history = vec![logged(1, &writer, "ab"), logged(2, &writer, "cd")];
    store.append(&doc, &META, &history).await.expect("append");
    let bad = NewSnapshot {
        seq: 2,
        taken_at_ms: 2,
        reason: SnapshotReason::Periodic,
        state: vec![0xff],
    };
    store
        .compact(&doc, bad, LogRetention::tail(0))
        .await
        .expect("snapshot");

    assert_eq!(served_text(&f.rooms, &doc).await, "");
    let id = f
        .rooms
        .apply(&doc, typed("!"), None)
        .await
        .expect("applies");
    assert_eq!(id.expect("a change").seq, 3, "2 is never given again");
    assert_eq!(f.store.quarantined(&doc).await.expect("read").len(), 1);
}

#[tokio::test]
async fn a_read_only_burst_of_changes_is_refused_once_not_closed_as_slow() {
    let f = fixture(EngineConfig {
        outbound_queue: 8,
        ..EngineConfig::default()
    });
    let doc = name("read-only-burst");
    let mut reader = f
        .rooms
        .join(&doc, Access::ReadOnly, None)
        .await
        .expect("join");
    next(&mut reader).await; // sync step 1
                             // Far more changes than the reader's queue has frames, in one message.
    let writer = Doc::new();
    let burst: Vec<Inbound> = (0..100).map(|i| edit(&writer, &i.to_string())).collect();
    reader.send(burst, 0).await.expect("send");
    f.rooms.stats(&doc).await.expect("room loaded");
    let mut frames = 0;
    while let Ok(Ok(_)) = timeout(Duration::from_millis(200), reader.recv()).await {
        frames += 1;
    }
    assert!(frames <= 2, "{frames} frames for one refused burst");
    // Still open: the room still answers it.
    reader
        .send(vec![edit(&writer, "!")], 0)
        .await
        .expect("still open");
}

#[tokio::test]
async fn each_sync_status_answers_for_the_read_only_changes_before_it() {
    let f = fixture(EngineConfig::default());
    let doc = name("read-only-status");
    let mut reader = f
        .rooms
        .join(&doc, Access::ReadOnly, None)
        .await
        .expect("join");
    next(&mut reader).await; // sync step 1
                             // Changes each followed by a sync status, in one input (as adjacent
                             // messages from one connection are taken): every status is preceded
                             // by its own refusal.
    let writer = Doc::new();
    let mut input = Vec::new();
    for i in 0..3 {
        input.push(edit(&writer, &i.to_string()));
        input.push(edit(&writer, "+"));
        input.push(Inbound::SyncStatus(vec![i]));
    }
    reader.send(input, 0).await.expect("send");
    let mut heard = Vec::new();
    while heard.len() < 6 {
        heard.push(match next(&mut reader).await {
            Inbound::Auth => "denied".to_owned(),
            Inbound::SyncStatus(p) => format!("status {p:?}"),
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(
        heard,
        [
            "denied",
            "status [0]",
            "denied",
            "status [1]",
            "denied",
            "status [2]"
        ]
    );
}

#[tokio::test]
async fn a_stateless_message_a_full_reader_has_no_room_for_is_skipped_not_a_reason_to_close_it() {
    use weft_sync::{Dialect, Joiner};
    let f = fixture(EngineConfig {
        outbound_queue: 8,
        ..EngineConfig::default()
    });
    let doc = name("stateless-to-a-full-reader");
    let hocuspocus = |access| Joiner {
        access,
        client: None,
        dialect: Dialect::Hocuspocus,
        author: None,
        via: "hocuspocus",
    };
    let mut reader = f
        .rooms
        .join_as(&doc, hocuspocus(Access::ReadOnly))
        .await
        .expect("join");
    let sender = f
        .rooms
        .join_as(&doc, hocuspocus(Access::ReadWrite))
        .await
        .expect("join");
    // Far more than the reader's queue holds, each handled on its own
    // while the reader reads nothing.
    for i in 0..50 {
        sender
            .send(vec![Inbound::Stateless(format!("note {i}"))], 8)
            .await
            .expect("send");
        f.rooms.stats(&doc).await.expect("room loaded");
    }
    let mut frames = 0;
    loop {
        match timeout(Duration::from_millis(200), reader.recv()).await {
            Ok(Ok(_)) => frames += 1,
            Ok(Err(reason)) => panic!("the reader was closed: {reason:?}"),
            Err(_) => break, // nothing more queued, and still open
        }
    }
    assert!(frames <= 8, "{frames} frames in a queue of 8");
    // Still a subscriber: the next change reaches it.
    let writer = Doc::new();
    sender
        .send(vec![edit(&writer, "after")], 0)
        .await
        .expect("send");
    let seen = Doc::new();
    next_update_into(&mut reader, &seen).await;
    assert_eq!(text(&seen), "after");
}

/// A viewer's next events, which must come in time.
async fn events(viewer: &mut weft_sync::Follower) -> bytes::Bytes {
    let next = timeout(WAIT, viewer.recv()).await.expect("in time");
    next.expect("the stream is open")
}

/// The `id:` of the first event in `events`.
fn first_event_id(events: &[u8]) -> weft_sync::EventId {
    let text = std::str::from_utf8(events).expect("events are text");
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an event id");
    id.parse().expect("a valid event id")
}

#[tokio::test]
async fn viewers_joining_an_unchanged_document_share_one_snapshot() {
    let f = fixture(EngineConfig::default());
    let doc = name("shared-snapshot");
    let mut writer = f
        .rooms
        .join(&doc, Access::ReadWrite, None)
        .await
        .expect("join");
    next(&mut writer).await;
    let client = Doc::new();
    let big = "x".repeat(200_000);
    writer
        .send(vec![edit(&client, &big)], 0)
        .await
        .expect("send");

    // Many viewers of a large document: one encoding, one copy in memory.
    let mut viewers = Vec::new();
    let mut openings = Vec::new();
    for _ in 0..20 {
        let mut viewer = f.rooms.follow(&doc, None).await.expect("follow");
        let opening = events(&mut viewer).await;
        let presence = events(&mut viewer).await;
        assert!(opening.starts_with(b"event: snapshot"));
        assert!(opening.len() > big.len(), "the snapshot holds the text");
        assert!(presence.starts_with(b"event: awareness"));
        openings.push(opening);
        viewers.push(viewer);
    }
    let first = openings[0].as_ptr();
    assert!(
        openings.iter().all(|o| o.as_ptr() == first),
        "every viewer's snapshot is the same bytes"
    );

    // After a change, a new viewer gets a snapshot that holds it.
    writer
        .send(vec![edit(&client, "y")], 0)
        .await
        .expect("send");
    let mut later = f.rooms.follow(&doc, None).await.expect("follow");
    let opening = events(&mut later).await;
    assert_ne!(opening.as_ptr(), first);
    assert_eq!(
        first_event_id(&opening).seq,
        first_event_id(&openings[0]).seq + 1
    );
}

#[tokio::test]
async fn a_viewer_resuming_further_back_than_the_log_replays_gets_the_snapshot() {
    let f = fixture(EngineConfig::default());
    let doc = name("far-behind");
    let writer = Doc::new();
    let history: Vec<LogEntry> = (1..=5_000).map(|seq| logged(seq, &writer, "a")).collect();
    f.store
        .inner()
        .append(&doc, &META, &history)
        .await
        .expect("append");
    let mut viewer = f.rooms.follow(&doc, None).await.expect("follow");
    let opening = events(&mut viewer).await;
    let newest = first_event_id(&opening);
    assert_eq!(newest.seq, 5_000);

    // 4,000 changes behind: replayed, change by change.
    let near = weft_sync::EventId {
        seq: 1_000,
        ..newest
    };
    let mut resumed = f.rooms.follow(&doc, Some(near)).await.expect("follow");
    let replay = events(&mut resumed).await;
    assert!(replay.starts_with(b"event: update"));
    assert_eq!(first_event_id(&replay).seq, 1_001);

    // 4,999 behind: the shared snapshot, not the whole log read for one.
    let far = weft_sync::EventId { seq: 1, ..newest };
    let mut resumed = f.rooms.follow(&doc, Some(far)).await.expect("follow");
    let snapshot = events(&mut resumed).await;
    assert!(snapshot.starts_with(b"event: snapshot"));
    assert_eq!(snapshot.as_ptr(), opening.as_ptr());
}
