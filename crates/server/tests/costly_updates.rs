//! One writer's costly changes cannot stall the server: the document
//! engine's yrs work runs off the async workers, so while two documents
//! integrate updates that take seconds each, `/healthz` and a write to a
//! third document still answer at once, against the real binary.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Text, Transact, Update};

/// Characters each costly client types. The figure is 10,000
/// (release build: 4–13 s per update); yrs in a debug build is about 30×
/// slower, so 1,000 gives updates of the same cost here (1–4 s each).
const CHARS: u32 = 1_000;

/// The most any request may take while the costly updates run.
const RESPONSIVE: Duration = Duration::from_millis(200);

/// How long the costly work may take in all before the test gives up.
const COSTLY_RUN: Duration = Duration::from_secs(300);

/// A fresh client `client` types `chars` characters one at a time at the
/// start of the text, then deletes every other one: one Yjs v1 update whose
/// items all compete for the same place with any other such client's, so
/// yrs resolves each against all of theirs (quadratic work).
fn costly_update_of(client: u64, chars: u32) -> Vec<u8> {
    let doc = Doc::with_client_id(client);
    let text = doc.get_or_insert_text("t");
    for i in 0..chars {
        let letter = char::from(b'a' + (i % 26) as u8).to_string();
        text.insert(&mut doc.transact_mut(), 0, &letter);
    }
    for i in 0..chars / 2 {
        text.remove_range(&mut doc.transact_mut(), i, 1);
    }
    let update = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    update
}

fn costly_update(client: u64) -> Vec<u8> {
    costly_update_of(client, CHARS)
}

/// One character typed at the end of `doc`'s text, as an update.
fn keystroke(doc: &Doc) -> Vec<u8> {
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    let end = text.len(&txn);
    text.insert(&mut txn, end, "k");
    txn.encode_update_v1()
}

/// How long yrs takes to integrate `update` into a document holding `base`.
fn integration_time(base: &[u8], update: &[u8]) -> Duration {
    let doc = Doc::new();
    let apply = |bytes: &[u8]| {
        doc.transact_mut()
            .apply_update(Update::decode_v1(bytes).expect("valid update"))
            .expect("applies");
    };
    apply(base);
    let started = Instant::now();
    apply(update);
    started.elapsed()
}

/// One request on a fresh connection, however long it takes (up to
/// `COSTLY_RUN`): its status and how long it took.
async fn timed(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, Duration) {
    let started = Instant::now();
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connects");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.expect("writes");
        tcp.write_all(body).await.expect("writes");
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.expect("reads");
        answer
    };
    let answer = timeout(COSTLY_RUN, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} unanswered after {COSTLY_RUN:?}"));
    let status = String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, started.elapsed())
}

/// Joins `url`'s document as an editor (once this returns, the room has
/// subscribed it), then counts the updates others send it.
async fn watcher(url: String, changes: usize) -> tokio::task::JoinHandle<()> {
    let mut ws = connect(&url).await;
    assert!(matches!(
        next_message(&mut ws).await,
        YMessage::Sync(SyncMessage::SyncStep1(_))
    ));
    tokio::spawn(async move {
        let mut seen = 0;
        while seen < changes {
            let frame = timeout(COSTLY_RUN, ws.next())
                .await
                .expect("the costly updates are all stored in time")
                .expect("the watcher stays connected")
                .expect("a frame");
            if let Message::Binary(bytes) = frame {
                if let Ok(YMessage::Sync(SyncMessage::Update(_))) = YMessage::decode_v1(&bytes) {
                    seen += 1;
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costly_updates_to_two_documents_do_not_stall_the_server() {
    let weft = Weft::start(&[]);
    // Each document first gets one such update (cheap: the first has no
    // competitors), then four more in flight at once, with ever larger
    // client ids: every one of those must be placed past all earlier ones.
    let seed = costly_update(1);
    let in_flight: Vec<Vec<u8>> = (2..6).map(costly_update).collect();
    let one = integration_time(&seed, &in_flight[0]);
    println!(
        "a costly update: {} bytes, {one:?} to integrate next to one other (debug yrs)",
        in_flight[0].len()
    );
    assert!(
        one >= Duration::from_millis(300),
        "the update is not costly enough to show anything: {one:?}"
    );
    let docs = ["costly-a", "costly-b"];
    for doc in docs {
        let path = format!("/docs/{doc}/updates");
        let (status, _) = timed(&weft.addr, "POST", &path, &seed).await;
        assert_eq!(status, 200);
    }

    // Watchers see each costly update once it is stored.
    let mut watchers = Vec::new();
    for doc in docs {
        watchers.push(watcher(weft.url(doc), in_flight.len()).await);
    }
    let mut writers = Vec::new();
    for doc in docs {
        for update in &in_flight {
            let mut ws = connect(&weft.url(doc)).await;
            send(&mut ws, update_message(update.clone())).await;
            writers.push(ws);
        }
    }
    let started = Instant::now();

    // Meanwhile, every 20 ms: the server's health, and a writer on a third
    // document.
    let writer = Doc::with_client_id(99);
    let mut health = Vec::new();
    let mut writes = Vec::new();
    let mut every = tokio::time::interval(Duration::from_millis(20));
    loop {
        every.tick().await;
        let (status, took) = timed(&weft.addr, "GET", "/healthz", b"").await;
        assert_eq!(status, 200);
        health.push(took);
        let (status, took) = timed(
            &weft.addr,
            "POST",
            "/docs/quiet/updates",
            &keystroke(&writer),
        )
        .await;
        assert_eq!(status, 200);
        writes.push(took);
        if watchers.iter().all(|w| w.is_finished()) {
            break;
        }
        assert!(
            started.elapsed() < COSTLY_RUN,
            "the costly updates were not all stored within {COSTLY_RUN:?}"
        );
    }
    let costly_run = started.elapsed();
    for watcher in watchers {
        watcher.await.expect("the watcher saw every costly update");
    }
    drop(writers);

    // After kill -9, the first read loads the document afresh.
    snapshots_stored(&weft.addr, docs.len()).await;
    let mut weft = weft;
    weft.kill9();
    let weft = weft.restart(&[]);
    let (status, cold_load) = timed(&weft.addr, "GET", "/docs/costly-a", b"").await;
    assert_eq!(status, 200);

    let worst = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    println!(
        "costly updates integrated in {costly_run:?}; /healthz: {} requests, slowest {:?}; \
         writes to a third document: {}, slowest {:?}; cold load after kill -9: {cold_load:?}",
        health.len(),
        worst(&health),
        writes.len(),
        worst(&writes)
    );
    assert!(
        costly_run > Duration::from_secs(1),
        "the costly updates were not costly: {costly_run:?}"
    );
    assert!(
        worst(&health) <= RESPONSIVE,
        "/healthz took {:?} while costly updates ran",
        worst(&health)
    );
    assert!(
        worst(&writes) <= RESPONSIVE,
        "a write to another document took {:?} while costly updates ran",
        worst(&writes)
    );
    assert!(
        cold_load < Duration::from_secs(2),
        "loading the costly document took {cold_load:?}: it replayed its costly history"
    );
}

/// Waits (a bounded while) until `at_least` snapshots have been stored,
/// by the server's own count.
async fn snapshots_stored(addr: &str, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (_, body) = request(addr, "GET", "/metrics", &[], vec![]).await;
        let stored: f64 = String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with("weft_snapshots_total"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        if stored >= at_least as f64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_update_takes_too_long_is_closed_and_its_update_kept() {
    let weft = Weft::start(&[]);
    let (status, _) = timed(
        &weft.addr,
        "POST",
        "/docs/greedy/updates",
        &costly_update(1),
    )
    .await;
    assert_eq!(status, 200);
    // Twice the characters: twice the work of the others (1.5–2 s here),
    // well past the default budget of 1 s for one update.
    let costly = costly_update_of(2, CHARS * 2);
    let mut ws = connect(&weft.url("greedy")).await;
    send(&mut ws, update_message(costly)).await;
    let close = timeout(Duration::from_secs(60), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the connection is closed in time")
    .expect("with a close code");
    assert_eq!(u16::from(close.code), 4429, "{}", close.reason);
    assert!(
        close.reason.contains("server time") && close.reason.contains("per update"),
        "{}",
        close.reason
    );
    println!("closed: {}", close.reason);

    // The update was integrated, so it was kept: the document has it.
    let (status, body) = request(&weft.addr, "GET", "/docs/greedy", &[], vec![]).await;
    assert_eq!(status, 200);
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&body).expect("an update"))
        .expect("applies");
    let sv = doc.transact().state_vector();
    assert_eq!(sv.get(&yrs::ClientID::new(2)), CHARS * 2, "all of it");
    let (_, metrics) = request(&weft.addr, "GET", "/metrics", &[], vec![]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weft_cpu_budget_disconnects_total{limit=\"update\"} 1")),
        "the close is counted:\n{metrics}"
    );
}
