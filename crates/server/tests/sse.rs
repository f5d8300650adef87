//! The SSE viewer endpoint and the HTTP document API, over raw HTTP/1.1 and
//! HTTP/2 (hyper clients), against the real binary.

mod support;

use std::collections::HashMap;

use support::*;
use yrs::sync::AwarenessUpdate;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

fn apply_bytes(doc: &Doc, update: &[u8]) {
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).expect("valid update"))
        .expect("applies");
}

/// POSTs an update and returns the event id the server gave it.
async fn post(addr: &str, doc: &str, update: Vec<u8>) -> String {
    let (status, body) = request(addr, "POST", &format!("/docs/{doc}/updates"), &[], update).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    json["id"].as_str().expect("id").to_owned()
}

async fn open_stream(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (HttpResponseHead, SseReader) {
    let mut http = http1(addr).await;
    let resp = http.request("GET", path, headers, Vec::new()).await;
    let head = HttpResponseHead {
        status: resp.status().as_u16(),
        headers: resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
    };
    // Keep the connection alive as long as the reader.
    std::mem::forget(http);
    (head, SseReader::new(resp))
}

struct HttpResponseHead {
    status: u16,
    headers: HashMap<String, String>,
}

fn seq_of(id: &str) -> u64 {
    id.rsplit_once('-')
        .and_then(|(_, s)| s.parse().ok())
        .expect("seq in id")
}

#[tokio::test]
async fn a_fresh_stream_has_headers_retry_snapshot_then_live_updates() {
    let weft = Weft::start(&["--sse-retry-ms", "1234"]);
    let writer = Doc::new();
    let first = post(&weft.addr, "live", insert(&writer, "hello")).await;
    assert_eq!(seq_of(&first), 1);

    let (head, mut sse) = open_stream(&weft.addr, "/sse/live", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-type"], "text/event-stream");
    assert_eq!(head.headers["cache-control"], "no-cache");
    assert_eq!(head.headers["x-accel-buffering"], "no");
    assert!(!head.headers.contains_key("content-length"));

    let retry = sse.next().await.expect("retry block");
    assert_eq!(retry.retry.as_deref(), Some("1234"));
    let snapshot = sse.next_change().await;
    assert_eq!(snapshot.event.as_deref(), Some("snapshot"));
    assert_eq!(snapshot.id.as_deref(), Some(first.as_str()));
    let viewer = Doc::new();
    apply_bytes(&viewer, &snapshot.data_bytes());
    assert_eq!(text(&viewer), "hello");
    // Presence follows the snapshot, even when nobody is there.
    assert!(awareness_of(&sse.next_event().await).is_empty());

    for word in [" big", " wide", " world"] {
        let id = post(&weft.addr, "live", insert(&writer, word)).await;
        let ev = sse.next_change().await;
        assert_eq!(ev.event.as_deref(), Some("update"));
        assert_eq!(ev.id.as_deref(), Some(id.as_str()));
        apply_bytes(&viewer, &ev.data_bytes());
    }
    assert_eq!(text(&viewer), "hello big wide world");
}

#[tokio::test]
async fn quiet_streams_get_keepalive_comments() {
    let weft = Weft::start(&["--sse-keepalive", "100ms"]);
    let (_, mut sse) = open_stream(&weft.addr, "/sse/quiet", &[]).await;
    sse.next().await; // retry
    sse.next_change().await; // snapshot
    sse.next_event().await; // presence
    let block = sse.next().await.expect("keepalive");
    assert_eq!(block.comment.as_deref(), Some("keepalive"));
    assert!(block.event.is_none() && block.id.is_none());
}

#[tokio::test]
async fn a_keepalive_comes_one_period_after_the_last_event_however_it_was_written() {
    let period = std::time::Duration::from_secs(2);
    let weft = Weft::start(&["--sse-keepalive", "2s"]);
    let (_, mut sse) = open_stream(&weft.addr, "/sse/lively", &[]).await;
    let keepalive = async |sse: &mut SseReader| loop {
        let block = sse.next().await.expect("stream open");
        if block.comment.as_deref() == Some("keepalive") {
            return std::time::Instant::now();
        }
    };
    // Just after a keepalive, a change: the room writes it to the socket
    // itself, unseen by the stream's own timer.
    keepalive(&mut sse).await;
    post(&weft.addr, "lively", insert(&Doc::new(), "x")).await;
    assert_eq!(sse.next_change().await.event.as_deref(), Some("update"));
    let event_at = std::time::Instant::now();
    // The next keepalive comes once the stream has been quiet a whole
    // period: not at the next tick (it was not quiet), nor a tick later.
    let quiet = keepalive(&mut sse).await - event_at;
    assert!(
        quiet >= period.mul_f64(0.9) && quiet < period.mul_f64(1.5),
        "quiet for {quiet:?} before a keepalive, with a {period:?} period"
    );
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_changes() {
    let weft = Weft::start(&[]);
    let writer = Doc::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(post(&weft.addr, "resume", insert(&writer, &format!("{i}"))).await);
    }
    let had = ids[1].clone();
    for (how, path, headers) in [
        (
            "header",
            "/sse/resume".to_owned(),
            vec![("last-event-id", had.as_str())],
        ),
        ("query", format!("/sse/resume?lastEventId={had}"), vec![]),
    ] {
        let (_, mut sse) = open_stream(&weft.addr, &path, &headers).await;
        sse.next().await; // retry
                          // A viewer that had changes 1 and 2 gets 3, 4, 5: no snapshot, no repeats.
        for want in &ids[2..] {
            let ev = sse.next_change().await;
            assert_eq!(ev.event.as_deref(), Some("update"), "{how}: {ev:?}");
            assert_eq!(ev.id.as_deref(), Some(want.as_str()), "{how}");
        }
        let live = post(&weft.addr, "resume", insert(&writer, "+")).await;
        let ev = sse.next_change().await;
        assert_eq!(ev.id.as_deref(), Some(live.as_str()), "{how}: then live");
        ids.push(live);
    }
}

#[tokio::test]
async fn unknown_foreign_future_or_expired_ids_get_a_snapshot() {
    // A tiny in-memory window and log tail, so old ids really expire.
    let weft = Weft::start(&[
        "--recent-changes",
        "2",
        "--snapshot-every",
        "4",
        "--keep-log-tail",
        "1",
        "--history-retention",
        "0",
    ]);
    let writer = Doc::new();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(post(&weft.addr, "expiry", insert(&writer, &format!("{i}"))).await);
    }
    let (inc, _) = ids[0].split_once('-').expect("id");
    let foreign = format!("{:016x}-3", u64::from_str_radix(inc, 16).expect("hex") ^ 1);
    let future = format!("{inc}-999");
    for id in [
        "garbage",
        foreign.as_str(),
        future.as_str(),
        ids[0].as_str(),
    ] {
        let (_, mut sse) = open_stream(&weft.addr, "/sse/expiry", &[("last-event-id", id)]).await;
        sse.next().await;
        let ev = sse.next_change().await;
        assert_eq!(ev.event.as_deref(), Some("snapshot"), "resume from {id}");
        assert_eq!(ev.id.as_deref(), Some(ids[9].as_str()));
        let viewer = Doc::new();
        apply_bytes(&viewer, &ev.data_bytes());
        assert_eq!(text(&viewer), text(&writer));
    }
}

#[tokio::test]
async fn resume_works_across_a_restart_from_the_stored_log() {
    let mut weft = Weft::start(&["--recent-changes", "1"]);
    let writer = Doc::new();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(post(&weft.addr, "restart", insert(&writer, &format!("{i}"))).await);
    }
    weft.kill9();
    let weft = weft.restart(&["--recent-changes", "1"]);
    let (_, mut sse) = open_stream(&weft.addr, "/sse/restart", &[("last-event-id", &ids[2])]).await;
    sse.next().await;
    for want in &ids[3..] {
        let ev = sse.next_change().await;
        assert_eq!(
            (ev.event.as_deref(), ev.id.as_deref()),
            (Some("update"), Some(want.as_str()))
        );
    }
}

fn awareness_of(ev: &SseEvent) -> HashMap<u64, String> {
    assert_eq!(ev.event.as_deref(), Some("awareness"));
    assert!(ev.id.is_none(), "presence events carry no id");
    let update = AwarenessUpdate::decode_v1(&ev.data_bytes()).expect("awareness update");
    update
        .clients
        .into_iter()
        .map(|(c, e)| (c.get(), e.json.to_string()))
        .collect()
}

#[tokio::test]
async fn editors_reach_viewers_and_posts_reach_editors() {
    let weft = Weft::start(&[]);
    let mut editor = connect(&weft.url("mixed")).await;
    next_message(&mut editor).await;
    send(&mut editor, presence(7, 1, r#"{"user":"ed"}"#)).await;
    next_message(&mut editor).await; // presence echo: the room has it

    let (_, mut sse) = open_stream(&weft.addr, "/sse/mixed", &[]).await;
    sse.next().await;
    assert_eq!(sse.next_change().await.event.as_deref(), Some("snapshot"));
    // Everyone's presence follows the snapshot.
    assert_eq!(
        awareness_of(&sse.next_event().await)[&7],
        r#"{"user":"ed"}"#
    );

    // WebSocket edit → viewer.
    let ed_doc = Doc::new();
    send(&mut editor, update_message(insert(&ed_doc, "typed"))).await;
    let viewer = Doc::new();
    let ev = sse.next_change().await;
    assert_eq!(ev.event.as_deref(), Some("update"));
    apply_bytes(&viewer, &ev.data_bytes());
    assert_eq!(text(&viewer), "typed");

    // POST → editor and viewer.
    let poster = Doc::new();
    apply_bytes(
        &poster,
        &viewer
            .transact()
            .encode_state_as_update_v1(&StateVector::default()),
    );
    let id = post(&weft.addr, "mixed", insert(&poster, " posted")).await;
    apply(&ed_doc, next_message(&mut editor).await);
    assert_eq!(text(&ed_doc), "typed posted");
    let ev = sse.next_change().await;
    assert_eq!(ev.id.as_deref(), Some(id.as_str()));

    // Cursor moves and the editor leaving reach the viewer.
    send(&mut editor, presence(7, 2, r#"{"user":"ed","cursor":3}"#)).await;
    assert_eq!(
        awareness_of(&sse.next_event().await)[&7],
        r#"{"user":"ed","cursor":3}"#
    );
    drop(editor);
    assert_eq!(awareness_of(&sse.next_event().await)[&7], "null");
}

#[tokio::test]
async fn the_document_api_reads_diffs_and_renders_json() {
    let weft = Weft::start(&["--max-message-bytes", "4096"]);
    let abc = "abc".repeat(100);
    let writer = Doc::new();
    let first = insert(&writer, &"abc".repeat(100));
    post(&weft.addr, "api", first.clone()).await;
    let mid_sv = writer.transact().state_vector();
    post(&weft.addr, "api", insert(&writer, "def")).await;

    let (status, full) = request(&weft.addr, "GET", "/docs/api", &[], vec![]).await;
    assert_eq!(status, 200);
    let reader = Doc::new();
    apply_bytes(&reader, &full);
    assert_eq!(text(&reader), format!("{abc}def"));

    use base64::Engine;
    let sv = base64::engine::general_purpose::STANDARD.encode(mid_sv.encode_v1());
    let sv = sv
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let (status, diff) = request(
        &weft.addr,
        "GET",
        &format!("/docs/api?sv={sv}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    assert!(diff.len() < full.len());
    let behind = Doc::new();
    apply_bytes(&behind, &first);
    apply_bytes(&behind, &diff);
    assert_eq!(text(&behind), format!("{abc}def"));

    let (status, json) = request(&weft.addr, "GET", "/docs/api/json", &[], vec![]).await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&json).expect("json");
    assert_eq!(json, serde_json::json!({ "t": format!("{abc}def") }));

    // Nothing new: 204. Garbage: 400 JSON. Too large: 413 JSON.
    let again = writer
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let (status, _) = request(&weft.addr, "POST", "/docs/api/updates", &[], again).await;
    assert_eq!(status, 204);
    let (status, body) = request(&weft.addr, "POST", "/docs/api/updates", &[], vec![0xff; 9]).await;
    assert_eq!(status, 400);
    let err: serde_json::Value = serde_json::from_slice(&body).expect("json error");
    assert_eq!(err["error"], "invalid_update");
    let big = insert(&Doc::new(), &"x".repeat(8192));
    let (status, body) = request(&weft.addr, "POST", "/docs/api/updates", &[], big).await;
    assert_eq!(status, 413);
    let err: serde_json::Value = serde_json::from_slice(&body).expect("json error");
    assert_eq!(err["error"], "too_large");
    let (status, body) = request(&weft.addr, "GET", "/docs/api?sv=%21%21", &[], vec![]).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // The document is unchanged by the refused posts.
    let (_, json) = request(&weft.addr, "GET", "/docs/api/json", &[], vec![]).await;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&json).expect("json")["t"],
        format!("{abc}def")
    );
}

#[tokio::test]
async fn gzip_streams_deliver_each_event_at_once_and_smaller() {
    let weft = Weft::start(&[]);
    let writer = Doc::new();
    let (head, mut zipped) =
        open_stream(&weft.addr, "/sse/zip", &[("accept-encoding", "gzip")]).await;
    assert_eq!(head.headers["content-encoding"], "gzip");
    let (_, mut plain) = open_stream(&weft.addr, "/sse/zip", &[]).await;
    for s in [&mut zipped, &mut plain] {
        s.next().await;
        s.next_change().await;
    }
    let (z0, p0) = (zipped.wire_bytes, plain.wire_bytes);
    let sentence = "The quick brown fox jumps over the lazy dog. ";
    for i in 0..20 {
        let id = post(
            &weft.addr,
            "zip",
            insert(&writer, &sentence.repeat(1 + i % 3)),
        )
        .await;
        // Each event is readable before the next change is even sent.
        for s in [&mut zipped, &mut plain] {
            let ev = s.next_change().await;
            assert_eq!(ev.id.as_deref(), Some(id.as_str()));
        }
    }
    let (z, p) = (zipped.wire_bytes - z0, plain.wire_bytes - p0);
    eprintln!(
        "20 updates: {p} bytes plain, {z} bytes gzip ({:.0}% saved)",
        100.0 * (1.0 - z as f64 / p as f64)
    );
    assert!(z < p, "gzip {z} should beat plain {p}");
}

#[tokio::test]
async fn a_hundred_streams_share_one_http2_connection() {
    // One client creates 100 documents at once, past the default limit.
    let weft = Weft::start(&["--max-new-docs-per-minute", "0"]);
    let mut h2 = http2(&weft.addr).await;
    let mut readers = Vec::new();
    for i in 0..100 {
        let resp = h2
            .request(
                "GET",
                &format!("http://{}/sse/multi-{i}", weft.addr),
                &[],
                vec![],
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let mut r = SseReader::new(resp);
        r.next().await;
        assert_eq!(r.next_change().await.event.as_deref(), Some("snapshot"));
        readers.push(r);
    }
    for (i, r) in readers.iter_mut().enumerate() {
        let id = post(&weft.addr, &format!("multi-{i}"), insert(&Doc::new(), "x")).await;
        let ev = r.next_change().await;
        assert_eq!(ev.id.as_deref(), Some(id.as_str()), "stream {i}");
    }
}

#[tokio::test]
async fn a_viewer_that_stops_reading_is_cut_off_and_others_keep_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let weft = Weft::start(&["--outbound-queue", "8"]);
    // The slow viewer asks for the stream and then never reads.
    let mut slow = tokio::net::TcpStream::connect(&weft.addr)
        .await
        .expect("tcp");
    slow.write_all(b"GET /sse/flood HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let (_, mut fast) = open_stream(&weft.addr, "/sse/flood", &[]).await;
    fast.next().await;
    fast.next_change().await;

    let writer = Doc::new();
    let chunk = "0123456789abcdef".repeat(4096); // 64 KiB of text per change
    let total = 200;
    let mut last = String::new();
    for _ in 0..total {
        last = post(&weft.addr, "flood", insert(&writer, &chunk)).await;
        // The fast viewer gets each change before the next is sent.
        let ev = fast.next_change().await;
        assert_eq!(ev.id.as_deref(), Some(last.as_str()));
    }

    // Now read the slow one: a prefix of the changes, then the end.
    let mut raw = Vec::new();
    let read = tokio::time::timeout(WAIT, slow.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the slow viewer's stream must end, not hang");
    let got = String::from_utf8_lossy(&raw)
        .matches("event: update")
        .count();
    assert!(got < total, "cut off after {got} of {total} changes");
    assert!(!String::from_utf8_lossy(&raw).contains(&last));
}

/// Sends `parts` of a request over a fresh connection, pausing between
/// them, and returns what the server sent until it has sent `until`.
async fn raw_stream(addr: &str, parts: &[&str], until: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // Long enough for the first part to be all the server sees.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        tcp.write_all(part.as_bytes()).await.expect("write");
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("more in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn event_streams_are_served_however_their_request_arrives() {
    let weft = Weft::start(&[]);
    let addr = weft.addr.clone();
    // Whole, HTTP/1.1: served by the event-stream path, chunked, closing.
    let whole = raw_stream(
        &addr,
        &[&format!("GET /sse/raw HTTP/1.1\r\nHost: {addr}\r\n\r\n")],
        "event: snapshot",
    )
    .await;
    assert!(whole.starts_with("HTTP/1.1 200 OK\r\n"), "{whole}");
    let head = whole
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    // Its head dripped in two parts, or HTTP/1.0, or with a body: hyper
    // serves it, and the viewer gets the same stream.
    let dripped = raw_stream(
        &addr,
        &[
            "GET /sse/raw HTTP/1.1\r\n",
            &format!("Host: {addr}\r\n\r\n"),
        ],
        "event: snapshot",
    )
    .await;
    assert!(dripped.starts_with("HTTP/1.1 200 OK\r\n"), "{dripped}");
    let old = raw_stream(
        &addr,
        &[&format!("GET /sse/raw HTTP/1.0\r\nHost: {addr}\r\n\r\n")],
        "event: snapshot",
    )
    .await;
    assert!(old.contains(" 200 OK\r\n"), "{old}");
    // A refusal goes out whole, with its length.
    let refused = raw_stream(
        &addr,
        &[&format!(
            "GET /sse/bad%00name HTTP/1.1\r\nHost: {addr}\r\n\r\n"
        )],
        "}",
    )
    .await;
    assert!(
        refused.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{refused}"
    );
    assert!(
        refused.to_lowercase().contains("content-length: "),
        "{refused}"
    );
}

/// A raw connection with a 4 KiB receive window that has asked for
/// `doc`'s event stream (and read nothing yet).
async fn small_window_stream(addr: &str, doc: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut tcp = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    tcp.write_all(format!("GET /sse/{doc} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    tcp
}

#[tokio::test]
async fn a_viewer_that_never_reads_does_not_hold_up_shutdown() {
    let mut weft = Weft::start(&["--shutdown-timeout", "20s"]);
    let addr = weft.addr.clone();
    // A small receive window, and never a read.
    let stalled = small_window_stream(&addr, "stall").await;
    // Megabytes of changes, far more than the sockets hold: the server's
    // writes to the viewer wait for room that never comes.
    let writer = Doc::new();
    let chunk = "abcdefgh".repeat(32 * 1024);
    for _ in 0..24 {
        post(&addr, "stall", insert(&writer, &chunk)).await;
    }
    let (status, took) = weft
        .terminate_within(std::time::Duration::from_secs(10))
        .expect("shut down within 10 s, not at its 20 s deadline");
    assert!(status.success(), "{status:?}");
    assert!(took < std::time::Duration::from_secs(8), "{took:?}");
    drop(stalled);
}

/// The chunks of a chunked body, strictly: each size line, its data and
/// its CRLF, then the last chunk and nothing after it. The data of all of
/// them, joined.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk's size line ends with CRLF");
        let size = std::str::from_utf8(&body[..line_end]).expect("ascii size");
        let size = usize::from_str_radix(size, 16).expect("a hex chunk size");
        body = &body[line_end + 2..];
        if size == 0 {
            assert_eq!(body, b"\r\n", "nothing may follow the last chunk");
            return data;
        }
        assert!(body.len() >= size + 2, "a chunk cut short");
        data.extend_from_slice(&body[..size]);
        assert_eq!(
            &body[size..size + 2],
            b"\r\n",
            "a chunk's data ends with CRLF"
        );
        body = &body[size + 2..];
    }
}

#[tokio::test]
async fn a_viewer_that_falls_behind_and_catches_up_gets_every_change_whole_and_in_order() {
    use tokio::io::AsyncReadExt;
    let mut weft = Weft::start(&["--outbound-queue-bytes", "67108864"]);
    let addr = weft.addr.clone();
    // A small receive window: the server's writes fill the socket, and
    // stop part-way through events, while the viewer does not read.
    let mut viewer = small_window_stream(&addr, "behind").await;
    let mut wire = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Reads until `needle` has arrived, looking only at what is new.
    let mut read_until = async |wire: &mut Vec<u8>, needle: &str| {
        let mut from = 0;
        loop {
            let seen = &wire[from.min(wire.len())..];
            if seen.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return;
            }
            from = wire.len().saturating_sub(needle.len());
            let n = tokio::time::timeout(WAIT, viewer.read(&mut buf))
                .await
                .expect("more in time")
                .expect("read");
            assert!(n > 0, "the stream ended early");
            wire.extend_from_slice(&buf[..n]);
        }
    };
    read_until(&mut wire, "event: awareness").await;

    // 200 changes of 32 KB of text (44 KB events), 9 MB in all: far more
    // than the sockets between them hold.
    let writer = Doc::new();
    let text = "0123456789abcdef".repeat(2048);
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(post(&addr, "behind", insert(&writer, &text)).await);
    }
    let last = ids.last().expect("changes").clone();
    read_until(&mut wire, &format!("id: {last}\n")).await;
    let (status, _) = weft
        .terminate_within(std::time::Duration::from_secs(10))
        .expect("shut down");
    assert!(status.success(), "{status:?}");
    tokio::time::timeout(WAIT, viewer.read_to_end(&mut wire))
        .await
        .expect("the stream ends at shutdown")
        .expect("read");

    let head_end = wire
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let events = String::from_utf8(dechunk(&wire[head_end + 4..])).expect("utf-8 events");
    let updates: Vec<SseEvent> = events
        .split("\n\n")
        .filter(|block| block.starts_with("event: update"))
        .map(|block| {
            let mut ev = SseEvent::default();
            for line in block.lines() {
                match line.split_once(": ") {
                    Some(("id", id)) => ev.id = Some(id.to_owned()),
                    Some(("data", data)) => ev.data = Some(data.to_owned()),
                    _ => {}
                }
            }
            ev
        })
        .collect();
    let got: Vec<&str> = updates.iter().filter_map(|ev| ev.id.as_deref()).collect();
    assert_eq!(got, ids, "every change once, in order");
    let seen = Doc::new();
    for ev in &updates {
        apply_bytes(&seen, &ev.data_bytes());
    }
    let text_len = {
        use yrs::Text;
        seen.get_or_insert_text("t").len(&seen.transact())
    };
    assert_eq!(text_len, 200 * 32 * 1024);
}
