//! Backpressure: clients that stop reading are closed, so they cost the
//! server bounded memory and do not slow anyone else down.
//!
//! 50 WebSocket clients and SSE viewers that never read sit on a document
//! while a writer sends 1,000 changes of 8 KiB (8 MB) to 49 normal readers.
//! Frames are shared between connections, so a stalled one costs little at
//! first, but it pins every change sent since it stopped reading, without
//! end, unless it is closed. With `--outbound-queue-bytes 1MiB` each is
//! closed once the kernel's buffers and 1 MiB of queue wait for it: the
//! test checks that memory stays under a stated bound, that the normal
//! readers' latency stays near the baseline, and that writing on makes the
//! server drop every stalled connection.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use yrs::{Doc, Text, Transact};

const READERS: usize = 49;
const SLOW: usize = 50;
const CHANGES: usize = 1000;
const CHANGE_BYTES: usize = 8 * 1024;
const ADMIN: &str = "slow-test-admin-0123456789abcdef01";

struct Run {
    p50: Duration,
    p99: Duration,
    /// The writer and the content it writes, to go on writing.
    writer: Ws,
    content: Doc,
}

/// One writer sends CHANGES changes; READERS normal clients time their arrival.
async fn run_workload(weft: &Weft, doc: &str) -> Run {
    let mut writer = connect(&weft.url(doc)).await;
    next_message(&mut writer).await;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut ws = connect(&weft.url(doc)).await;
        next_message(&mut ws).await;
        readers.push(ws);
    }
    let start = Instant::now();
    let handles: Vec<_> = readers
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut arrivals = Vec::with_capacity(CHANGES);
                while arrivals.len() < CHANGES {
                    match tokio::time::timeout(WAIT, ws.next()).await {
                        Ok(Some(Ok(Message::Binary(b)))) if b.first() == Some(&0) => {
                            arrivals.push(start.elapsed())
                        }
                        Ok(Some(Ok(_))) => {}
                        other => panic!("a normal reader lost its stream: {other:?}"),
                    }
                }
                arrivals
            })
        })
        .collect();

    let content = Doc::new();
    let chunk = "abcdefgh".repeat(CHANGE_BYTES / 8);
    let mut sent = Vec::with_capacity(CHANGES);
    for _ in 0..CHANGES {
        let update = change(&content, &chunk);
        sent.push(start.elapsed());
        send(&mut writer, update_message(update)).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut latencies = Vec::new();
    for h in handles {
        let arrivals = h.await.expect("reader");
        latencies.extend(
            arrivals
                .iter()
                .zip(&sent)
                .map(|(got, at)| got.saturating_sub(*at)),
        );
    }
    latencies.sort();
    Run {
        p50: latencies[latencies.len() / 2],
        p99: latencies[latencies.len() * 99 / 100],
        writer,
        content,
    }
}

fn change(content: &Doc, chunk: &str) -> Vec<u8> {
    let text = content.get_or_insert_text("t");
    let mut txn = content.transact_mut();
    let len = text.len(&txn);
    text.insert(&mut txn, len, chunk);
    txn.encode_update_v1()
}

/// Live connections on `doc`, as the admin API reports them.
async fn live_connections(weft: &Weft, doc: &str) -> u64 {
    let auth = format!("Bearer {ADMIN}");
    let (status, body) = request(
        &weft.addr,
        "GET",
        &format!("/admin/docs/{doc}"),
        &[("authorization", &auth)],
        vec![],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    v["editors"].as_u64().unwrap_or(0) + v["viewers"].as_u64().unwrap_or(0)
}

/// Opens a WebSocket (or an event stream) and never reads from it.
async fn stalled(addr: &str, path: &str, websocket: bool) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    // A small receive window, so the flood backs up into the server soon.
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut tcp = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("tcp");
    let extra = if websocket {
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    } else {
        ""
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
    let req = if websocket {
        req.replace("Connection: close\r\n", "")
    } else {
        req
    };
    tcp.write_all(req.as_bytes()).await.expect("write");
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_cost_bounded_memory_and_no_latency() {
    let weft = Weft::start(&[
        "--outbound-queue-bytes",
        "1048576",
        "--max-messages-per-sec",
        "0",
        "--admin-key",
        ADMIN,
    ]);

    let baseline = run_workload(&weft, "base").await;
    let rss_before = weft.rss_kib();

    let mut slow = Vec::new();
    for i in 0..SLOW {
        let websocket = i % 2 == 0;
        let path = if websocket {
            "/ws/loaded"
        } else {
            "/sse/loaded"
        };
        slow.push(stalled(&weft.addr, path, websocket).await);
    }
    let mut loaded = run_workload(&weft, "loaded").await;
    let rss_after = weft.rss_kib();
    let grown_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;

    eprintln!(
        "slow clients: baseline p50 {:?} p99 {:?}; with {SLOW} stalled clients p50 {:?} p99 {:?}; \
         RSS {} MiB -> {} MiB (+{grown_mib:.1} MiB)",
        baseline.p50,
        baseline.p99,
        loaded.p50,
        loaded.p99,
        rss_before / 1024,
        rss_after / 1024,
    );
    // Writing goes on until the server has dropped every stalled client,
    // which only a bounded queue makes it do (bounded, too: 80 MB more).
    let chunk = "abcdefgh".repeat(CHANGE_BYTES / 8);
    let mut extra = 0;
    while live_connections(&weft, "loaded").await > 1 + READERS as u64 {
        assert!(
            extra < 10_000,
            "stalled clients are still connected after {extra} more changes"
        );
        for _ in 0..100 {
            send(
                &mut loaded.writer,
                update_message(change(&loaded.content, &chunk)),
            )
            .await;
        }
        extra += 100;
    }
    let loaded_clients = loaded.writer;

    // The stated bound: the 8 MB document, its recent-change window and
    // the stalled clients' queues (50 × 1 MiB) fit inside it.
    assert!(
        grown_mib < 128.0,
        "server memory grew by {grown_mib:.1} MiB"
    );
    assert!(
        loaded.p50 <= baseline.p50 * 3 + Duration::from_millis(20),
        "normal readers slowed down: p50 {:?} vs {:?}",
        loaded.p50,
        baseline.p50
    );

    drop(loaded_clients);
    eprintln!("slow clients: all {SLOW} stalled connections were dropped by the server after {extra} more changes");
    drop(slow);
}
