//! Every configured limit, against the real binary: what is refused, with
//! which code, and that nothing refused changes a document.

mod support;

use std::collections::HashMap;

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{AwarenessUpdate, Message as YMessage, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, StateVector};

async fn text_of(addr: &str, doc: &str) -> String {
    let (_, body) = request(addr, "GET", &format!("/docs/{doc}/json"), &[], vec![]).await;
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    json["t"].as_str().unwrap_or("").to_owned()
}

#[tokio::test]
async fn a_document_cannot_grow_past_its_limit() {
    let weft = Weft::start(&["--max-document-bytes", "2000"]);
    let writer = Doc::new();
    let (status, _) = request(
        &weft.addr,
        "POST",
        "/docs/capped/updates",
        &[],
        insert(&writer, "small"),
    )
    .await;
    assert_eq!(status, 200);

    let mut ws = connect(&weft.url("capped")).await;
    next_message(&mut ws).await;
    send(&mut ws, update_message(insert(&writer, &"x".repeat(5000)))).await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::Library(4413), "{reason}");
    assert!(reason.contains("2000"), "{reason}");

    let (status, body) = request(
        &weft.addr,
        "POST",
        "/docs/capped/updates",
        &[],
        insert(&writer, &"y".repeat(5000)),
    )
    .await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("document_too_large"));
    assert_eq!(
        text_of(&weft.addr, "capped").await,
        "small",
        "refused changes left no trace"
    );
}

#[tokio::test]
async fn connections_beyond_a_documents_limit_are_turned_away() {
    let weft = Weft::start(&["--max-connections-per-doc", "2"]);
    let mut a = connect(&weft.url("busy")).await;
    let mut b = connect(&weft.url("busy")).await;
    next_message(&mut a).await;
    next_message(&mut b).await;
    let mut c = connect(&weft.url("busy")).await;
    let (code, reason) = close_of(&mut c).await;
    assert_eq!(code, CloseCode::Again, "{reason}");
    let mut http = http1(&weft.addr).await;
    let resp = http.request("GET", "/sse/busy", &[], vec![]).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    // Other documents are not affected, and a freed place can be taken.
    let mut other = connect(&weft.url("quiet")).await;
    assert!(matches!(
        next_message(&mut other).await,
        YMessage::Sync(SyncMessage::SyncStep1(_))
    ));
    drop(a);
    let url = weft.url("busy");
    let url = url.as_str();
    let join = move || async move {
        let mut ws = connect(url).await;
        let first = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            next_message_or_close(&mut ws),
        );
        matches!(first.await, Ok(true)).then_some(ws)
    };
    let d = poll_until(join, Option::is_some).await;
    assert!(
        d.is_some(),
        "the place a closed connection left is free again"
    );
}

/// True when the first thing the server sends is a y-protocols message.
async fn next_message_or_close(ws: &mut Ws) -> bool {
    use futures_util::StreamExt;
    matches!(ws.next().await, Some(Ok(Message::Binary(_))))
}

#[tokio::test]
async fn the_server_turns_away_connections_beyond_its_total() {
    let weft = Weft::start(&["--max-connections", "2"]);
    let mut a = connect(&weft.url("one")).await;
    next_message(&mut a).await;
    let mut http = http1(&weft.addr).await;
    let resp = http.request("GET", "/sse/two", &[], vec![]).await;
    assert_eq!(resp.status(), 200);
    let mut sse = SseReader::new(resp);
    sse.next().await;
    let mut c = connect(&weft.url("three")).await;
    let (code, _) = close_of(&mut c).await;
    assert_eq!(code, CloseCode::Again);
    let (status, body) = request(&weft.addr, "GET", "/sse/four", &[], vec![]).await;
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("server_full"));
    // Plain HTTP requests are not connections that stay: they still work
    // (a document nothing was written to is not found, not refused).
    let (status, body) = request(&weft.addr, "GET", "/docs/one", &[], vec![]).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("document_not_found"));
}

/// A WebSocket to `url` from the loopback address `from`.
async fn connect_from(from: &str, addr: &str, url: &str) -> Ws {
    let plain = tokio_tungstenite::MaybeTlsStream::Plain(tcp_from(from, addr).await);
    let (ws, _) = tokio_tungstenite::client_async(url, plain)
        .await
        .expect("upgrade");
    ws
}

/// Whether an editor from 127.0.0.1 is let in now.
async fn admitted(url: &str) -> bool {
    let mut ws = connect(url).await;
    next_message_or_close(&mut ws).await
}

#[tokio::test]
async fn one_address_cannot_take_every_place_of_a_document() {
    let weft = Weft::start(&["--max-connections-per-client", "3"]);
    // One HTTP/2 connection carries many event streams: each counts.
    let mut h2 = http2(&weft.addr).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let resp = h2.request("GET", "/sse/crowded", &[], vec![]).await;
        assert_eq!(resp.status(), 200);
        let mut sse = SseReader::new(resp);
        sse.next().await;
        streams.push(sse);
    }
    let refused = h2.request("GET", "/sse/crowded", &[], vec![]).await;
    assert_eq!(refused.status(), 429);
    let body = String::from_utf8_lossy(&body_bytes(refused).await).into_owned();
    assert!(body.contains("too_many_connections"), "{body}");
    assert!(body.contains("your address has its maximum of 3"), "{body}");
    let mut editor = connect(&weft.url("crowded")).await;
    let (code, reason) = close_of(&mut editor).await;
    assert_eq!(code, CloseCode::Again);
    assert!(reason.contains("your address"), "{reason}");

    // Another address still gets in.
    let mut other = connect_from("127.0.0.2", &weft.addr, &weft.url("crowded")).await;
    assert!(
        next_message_or_close(&mut other).await,
        "another address is served"
    );

    // A place given back is a place again.
    drop(streams.pop());
    let url = weft.url("crowded");
    assert!(poll_until(|| admitted(&url), |&yes| yes).await);
}

#[tokio::test]
async fn a_message_that_never_finishes_arriving_is_cut_off() {
    let weft = Weft::start(&["--ping-interval", "200ms", "--body-timeout", "1s"]);
    let mut dripping = connect(&weft.url("dripped")).await;
    next_message(&mut dripping).await;
    let (code, reason, took) = never_finish_a_message(&mut dripping).await;
    assert_eq!(code, CloseCode::Policy, "{reason}");
    assert!(reason.contains("still arriving after 1s"), "{reason}");
    assert!(took >= std::time::Duration::from_secs(1), "{took:?}");

    // A large message sent whole is taken.
    let mut editor = connect(&weft.url("dripped")).await;
    next_message(&mut editor).await;
    let big = "x".repeat(2_000_000);
    send(&mut editor, update_message(insert(&Doc::new(), &big))).await;
    let stored = poll_until(|| text_of(&weft.addr, "dripped"), |t| t.len() == big.len()).await;
    assert_eq!(stored.len(), big.len());
}

#[tokio::test]
async fn a_flooding_connection_is_closed_and_others_carry_on() {
    let weft = Weft::start(&["--max-messages-per-sec", "20", "--message-burst", "40"]);
    let mut calm = connect(&weft.url("flood")).await;
    let mut flood = connect(&weft.url("flood")).await;
    next_message(&mut calm).await;
    next_message(&mut flood).await;
    let query = YMessage::AwarenessQuery.encode_v1();
    let mut sent = 0;
    let code = loop {
        if flood
            .send(Message::Binary(query.clone().into()))
            .await
            .is_err()
            || sent > 10_000
        {
            break close_of(&mut flood).await.0;
        }
        sent += 1;
        if sent % 100 == 0 {
            // Give the server a moment to close us, if it has.
            if let Ok(Some(Ok(Message::Close(Some(frame))))) = tokio::time::timeout(
                std::time::Duration::from_millis(1),
                futures_util::StreamExt::next(&mut flood),
            )
            .await
            {
                break frame.code;
            }
        }
    };
    assert_eq!(code, CloseCode::Library(4429));
    assert!(sent >= 40, "the burst was allowed: {sent}");
    send(
        &mut calm,
        YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())),
    )
    .await;
    assert!(matches!(
        next_message(&mut calm).await,
        YMessage::Sync(SyncMessage::SyncStep2(_))
    ));
}

#[tokio::test]
async fn oversized_presence_is_refused() {
    let weft = Weft::start(&["--max-presence-bytes", "100"]);
    let mut ws = connect(&weft.url("presence")).await;
    next_message(&mut ws).await;
    let mut clients = HashMap::new();
    clients.insert(
        ClientID::new(1),
        AwarenessUpdateEntry {
            clock: 1,
            json: format!(r#"{{"name":"{}"}}"#, "n".repeat(200)).into(),
        },
    );
    send(&mut ws, YMessage::Awareness(AwarenessUpdate { clients })).await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::Library(4400));
    assert!(reason.contains("limit is 100"), "{reason}");
}
