//! The y-websocket endpoint at the protocol level, against the real binary.

mod support;

use futures_util::SinkExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::{ClientID, Doc, ReadTxn, StateVector, Transact};

#[tokio::test]
async fn handshake_order_presence_and_step2() {
    let weft = Weft::start(&[]);
    let mut a = connect(&weft.url("hs")).await;
    assert!(matches!(
        next_message(&mut a).await,
        YMessage::Sync(SyncMessage::SyncStep1(_))
    ));
    send(&mut a, update_message(insert(&Doc::new(), "hello"))).await;
    send(&mut a, presence(11, 1, r#"{"user":{"name":"ann"}}"#)).await;
    // The presence echo proves the room has handled both messages.
    assert!(matches!(next_message(&mut a).await, YMessage::Awareness(_)));

    let mut b = connect(&weft.url("hs")).await;
    assert!(matches!(
        next_message(&mut b).await,
        YMessage::Sync(SyncMessage::SyncStep1(_))
    ));
    let YMessage::Awareness(states) = next_message(&mut b).await else {
        panic!("presence after step 1");
    };
    assert_eq!(
        states.clients[&ClientID::new(11)].json.as_ref(),
        r#"{"user":{"name":"ann"}}"#
    );
    send(
        &mut b,
        YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())),
    )
    .await;
    let doc = Doc::new();
    apply(&doc, next_message(&mut b).await);
    assert_eq!(text(&doc), "hello");
}

#[tokio::test]
async fn a_large_document_arrives_whole_in_one_message_sent_as_fragments() {
    let weft = Weft::start(&[]);
    let mut writer = connect(&weft.url("large")).await;
    next_message(&mut writer).await; // step 1
                                     // 1 MB of text: sent as sixteen 64 KiB fragments of one message.
    let big: String = (0..1_000_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    send(&mut writer, update_message(insert(&Doc::new(), &big))).await;
    send(&mut writer, presence(1, 1, "{}")).await;
    // The echo proves the room has the change.
    while !matches!(next_message(&mut writer).await, YMessage::Awareness(_)) {}

    let mut reader = connect(&weft.url("large")).await;
    next_message(&mut reader).await; // step 1
    send(
        &mut reader,
        YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())),
    )
    .await;
    let doc = Doc::new();
    loop {
        match next_message(&mut reader).await {
            msg @ YMessage::Sync(SyncMessage::SyncStep2(_)) => {
                apply(&doc, msg);
                break;
            }
            _ => continue,
        }
    }
    assert_eq!(text(&doc), big);
}

#[tokio::test]
async fn updates_go_to_the_others_and_not_back() {
    let weft = Weft::start(&[]);
    let mut a = connect(&weft.url("fan")).await;
    let mut b = connect(&weft.url("fan")).await;
    let mut c = connect(&weft.url("fan")).await;
    for ws in [&mut a, &mut b, &mut c] {
        next_message(ws).await;
    }
    send(&mut a, update_message(insert(&Doc::new(), "x"))).await;
    send(&mut a, YMessage::AwarenessQuery).await;
    for ws in [&mut b, &mut c] {
        let doc = Doc::new();
        apply(&doc, next_message(ws).await);
        assert_eq!(text(&doc), "x");
    }
    // The first thing a gets is the answer to its query, not its own update.
    assert!(matches!(next_message(&mut a).await, YMessage::Awareness(_)));
}

#[tokio::test]
async fn presence_vanishes_as_soon_as_its_connection_drops() {
    let weft = Weft::start(&[]);
    let mut a = connect(&weft.url("cursor")).await;
    let mut b = connect(&weft.url("cursor")).await;
    next_message(&mut a).await;
    next_message(&mut b).await;
    send(&mut a, presence(42, 3, r#"{"cursor":1}"#)).await;
    let YMessage::Awareness(seen) = next_message(&mut b).await else {
        panic!("presence");
    };
    assert_eq!(
        seen.clients[&ClientID::new(42)].json.as_ref(),
        r#"{"cursor":1}"#
    );

    drop(a); // no close frame, no null state: just gone
    let started = std::time::Instant::now();
    let YMessage::Awareness(gone) = next_message(&mut b).await else {
        panic!("presence removal");
    };
    assert_eq!(gone.clients[&ClientID::new(42)].json.as_ref(), "null");
    // Far sooner than the 30 s y-protocols timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn malformed_input_closes_only_the_offender() {
    let weft = Weft::start(&[]);
    let mut bystander = connect(&weft.url("bad")).await;
    let mut elsewhere = connect(&weft.url("good")).await;
    next_message(&mut bystander).await;
    next_message(&mut elsewhere).await;

    let cases: Vec<(&str, Message, CloseCode)> = vec![
        (
            "garbage",
            Message::Binary(vec![0xff, 0xfe, 0xfd].into()),
            CloseCode::Protocol,
        ),
        (
            "empty frame",
            Message::Binary(Vec::new().into()),
            CloseCode::Protocol,
        ),
        (
            "unknown type",
            Message::Binary(vec![9, 1, 0].into()),
            CloseCode::Protocol,
        ),
        (
            "truncated varint",
            Message::Binary(vec![0, 2, 0x80].into()),
            CloseCode::Protocol,
        ),
        (
            "huge length prefix",
            Message::Binary(vec![0, 2, 0xff, 0xff, 0xff, 0xff, 0x0f, 1].into()),
            CloseCode::Protocol,
        ),
        (
            "update that is not an update",
            Message::Binary(vec![0, 2, 4, 0xff, 0xff, 0xff, 0xff].into()),
            CloseCode::Protocol,
        ),
        (
            "text frame",
            Message::Text("hello".into()),
            CloseCode::Unsupported,
        ),
        (
            "presence that is not JSON",
            Message::Binary(presence(5, 1, "{nope").encode_v1_bytes().into()),
            CloseCode::Library(4400),
        ),
    ];
    for (what, frame, expected) in cases {
        let mut ws = connect(&weft.url("bad")).await;
        next_message(&mut ws).await;
        ws.send(frame).await.expect("send");
        let (code, reason) = close_of(&mut ws).await;
        assert_eq!(code, expected, "{what}: {reason}");
        assert!(!reason.is_empty(), "{what}: the close says why");
    }

    // The document and its other connection, and other documents, carry on.
    for ws in [&mut bystander, &mut elsewhere] {
        send(ws, update_message(insert(&Doc::new(), "still here"))).await;
        send(
            ws,
            YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())),
        )
        .await;
        let doc = Doc::new();
        apply(&doc, next_message(ws).await);
        assert_eq!(text(&doc), "still here");
    }
}

trait EncodeBytes {
    fn encode_v1_bytes(&self) -> Vec<u8>;
}

impl EncodeBytes for YMessage {
    fn encode_v1_bytes(&self) -> Vec<u8> {
        yrs::updates::encoder::Encode::encode_v1(self)
    }
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let weft = Weft::start(&["--max-message-bytes", "1024"]);
    let mut ws = connect(&weft.url("big")).await;
    next_message(&mut ws).await;
    let big = update_message(insert(&Doc::new(), &"x".repeat(4096)));
    send(&mut ws, big).await;
    let (code, _) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::Size);

    let mut ok = connect(&weft.url("big")).await;
    next_message(&mut ok).await;
    send(&mut ok, update_message(insert(&Doc::new(), "small"))).await;
    send(
        &mut ok,
        YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())),
    )
    .await;
    let doc = Doc::new();
    apply(&doc, next_message(&mut ok).await);
    assert_eq!(text(&doc), "small", "the oversized update was not applied");
}

#[tokio::test]
async fn bad_doc_names_get_400_json_before_any_upgrade() {
    let weft = Weft::start(&[]);
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let long = format!("/ws/{}", "a".repeat(256));
    for path in [
        "/ws/a%2Fb",
        "/ws/a/b",
        "/ws/",
        "/ws/%FF",
        "/ws/a%20b",
        "/ws/caf%C3%A9",
        &long,
    ] {
        let (status, body) = http_get(&weft.addr, path, &upgrade).await;
        assert_eq!(status, 400, "{path}");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: body {body:?} is not JSON: {e}"));
        assert_eq!(json["error"], "invalid_doc_name", "{path}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A 255-byte name is fine.
    let mut ws = connect(&weft.url(&"a".repeat(255))).await;
    assert!(matches!(
        next_message(&mut ws).await,
        YMessage::Sync(SyncMessage::SyncStep1(_))
    ));

    let (status, body) = http_get(&weft.addr, "/ws/plain", &[]).await;
    assert!(status >= 400, "{status}");
    assert!(body.contains("not_a_websocket"), "{body}");
    let (status, body) = http_get(&weft.addr, "/healthz", &[]).await;
    assert_eq!((status, body.contains("ok")), (200, true));
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_dropped() {
    let weft = Weft::start(&["--ping-interval", "200ms"]);
    let mut tcp = TcpStream::connect(&weft.addr).await.expect("connect");
    let req = format!(
        "GET /ws/quiet HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        weft.addr
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    // Read (never answering) until the server hangs up.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = timeout(WAIT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server must drop a silent peer");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(seen.contains(&0x89), "it was pinged before being dropped");
}

#[tokio::test]
async fn kill_9_loses_nothing_a_client_saw() {
    let weft = Weft::start(&[]);
    let mut writer = connect(&weft.url("durable")).await;
    let mut watcher = connect(&weft.url("durable")).await;
    next_message(&mut writer).await;
    next_message(&mut watcher).await;
    let local = Doc::new();
    for i in 0..50 {
        send(
            &mut writer,
            update_message(insert(&local, &format!("{i},"))),
        )
        .await;
    }
    let seen = Doc::new();
    while text(&seen) != text(&local) {
        apply(&seen, next_message(&mut watcher).await);
    }
    let mut weft = weft;
    weft.kill9();
    let weft = weft.restart(&[]);
    let mut late = connect(&weft.url("durable")).await;
    next_message(&mut late).await;
    send(
        &mut late,
        YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())),
    )
    .await;
    let recovered = Doc::new();
    apply(&recovered, next_message(&mut late).await);
    assert_eq!(text(&recovered), text(&seen));
    assert_eq!(
        recovered.transact().state_vector(),
        seen.transact().state_vector()
    );
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_cleanly() {
    let mut weft = Weft::start(&[]);
    let mut ws = connect(&weft.url("term")).await;
    next_message(&mut ws).await;
    send(&mut ws, update_message(insert(&Doc::new(), "kept"))).await;
    send(&mut ws, YMessage::AwarenessQuery).await;
    next_message(&mut ws).await; // the room has handled the update
    let waiter = tokio::spawn(async move { close_of(&mut ws).await });
    let status = weft.terminate();
    assert!(status.success(), "{status}");
    let (code, _) = waiter.await.expect("task");
    assert_eq!(code, CloseCode::Away);

    let weft = weft.restart(&[]);
    let mut ws = connect(&weft.url("term")).await;
    next_message(&mut ws).await;
    send(
        &mut ws,
        YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())),
    )
    .await;
    let doc = Doc::new();
    apply(&doc, next_message(&mut ws).await);
    assert_eq!(text(&doc), "kept");
}
