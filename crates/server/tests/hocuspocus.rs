//! Hocuspocus' protocol at `/hocuspocus`, from a raw socket: many
//! documents on one socket, each with its own access decision; what a
//! client can send before authenticating, and for how long; token
//! refreshes and expiry; the per-socket document bound; stateless
//! messages; and y-websocket editors on the same documents. (The real
//! `@hocuspocus/provider` and Tiptap are driven in `tests/js`.)

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::*;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, StateVector};

const SECRET: &str = "weft-hocuspocus-secret-0123456789abcdef";

fn token_until(doc: &str, mode: &str, exp: u64) -> String {
    let claims = json!({ "doc": doc, "mode": mode, "exp": exp, "sub": "tester" });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn token(doc: &str, mode: &str) -> String {
    token_until(doc, mode, now() + 600)
}

/// A frame addressed to `key`: its name, then `body`.
fn addressed(key: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.write_string(key);
    out.extend_from_slice(body);
    out
}

/// What a provider sends to open a document.
fn auth(key: &str, token: &str) -> Vec<u8> {
    let mut body = vec![2, 0];
    body.write_string(token);
    body.write_string("4.8.0");
    addressed(key, &body)
}

fn sync(key: &str, message: YMessage) -> Vec<u8> {
    addressed(key, &message.encode_v1())
}

/// A server message, taken apart.
#[derive(Debug, PartialEq)]
enum Heard {
    Authenticated(String, String),
    Denied(String, String),
    TokenRequest(String),
    Sync(String, YMessage),
    Awareness(String),
    Stateless(String, String),
    Closed(String, String),
    Status(String, bool),
    Ping,
}

fn heard(frame: &[u8]) -> Heard {
    if frame == [9] {
        return Heard::Ping;
    }
    let mut c = Cursor::new(frame);
    let key = c.read_string().expect("address").to_owned();
    let kind: u8 = c.read_u8().expect("type");
    let string = |c: &mut Cursor| c.read_string().expect("string").to_owned();
    match kind {
        0 => {
            let message = YMessage::decode_v1(&frame[c.next - 1..]).expect("y-sync");
            Heard::Sync(key, message)
        }
        1 => Heard::Awareness(key),
        2 => match c.read_u8().expect("auth kind") {
            0 => Heard::TokenRequest(key),
            1 => Heard::Denied(key, string(&mut c)),
            2 => Heard::Authenticated(key, string(&mut c)),
            other => panic!("auth kind {other}"),
        },
        5 => Heard::Stateless(key, string(&mut c)),
        7 => Heard::Closed(key, string(&mut c)),
        8 => Heard::Status(key, c.read_u8().expect("status") == 1),
        other => panic!("message type {other}"),
    }
}

async fn put(ws: &mut Ws, frame: Vec<u8>) {
    ws.send(Message::Binary(frame.into())).await.expect("send");
}

/// The next server message, pings skipped.
async fn next(ws: &mut Ws) -> Heard {
    loop {
        let msg = timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("ok");
        match msg {
            Message::Binary(b) => match heard(&b) {
                Heard::Ping => continue,
                h => return h,
            },
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Skips messages until one `pick` takes.
async fn next_where<T>(ws: &mut Ws, mut pick: impl FnMut(Heard) -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(found) = pick(next(ws).await) {
            return found;
        }
    }
    panic!("not heard in 100 messages")
}

/// Opens `key` with `token` and waits for the answer to it.
async fn open(ws: &mut Ws, key: &str, token: &str) -> Heard {
    put(ws, auth(key, token)).await;
    let key = key.to_owned();
    next_where(ws, |h| match h {
        Heard::Authenticated(ref k, _) | Heard::Denied(ref k, _) if *k == key => Some(h),
        _ => None,
    })
    .await
}

/// Sends a change typed into `doc` on `key`; returns its sync status.
async fn change(ws: &mut Ws, key: &str, doc: &Doc, text: &str) -> bool {
    put(ws, sync(key, update_message(insert(doc, text)))).await;
    let key = key.to_owned();
    next_where(ws, |h| match h {
        Heard::Status(k, ok) if k == key => Some(ok),
        _ => None,
    })
    .await
}

fn hp_url(weft: &Weft) -> String {
    format!("ws://{}/hocuspocus", weft.addr)
}

#[tokio::test]
async fn each_document_on_a_socket_is_decided_on_its_own() {
    let weft = Weft::start(&["--auth-secret", SECRET]);
    let mut ws = connect(&hp_url(&weft)).await;
    let mut alpha_editor = connect(&format!(
        "{}?token={}",
        weft.url("alpha"),
        token("alpha", "write")
    ))
    .await;
    next_message(&mut alpha_editor).await; // its sync step 1

    assert_eq!(
        open(&mut ws, "alpha", &token("alpha", "write")).await,
        Heard::Authenticated("alpha".into(), "read-write".into())
    );
    // A token for another document is refused for this one alone.
    let Heard::Denied(_, why) = open(&mut ws, "beta", &token("gamma", "write")).await else {
        panic!("beta was not refused")
    };
    assert!(why.contains("gamma"), "{why}");
    // What the refused document sends is dropped, however much.
    for _ in 0..300 {
        put(
            &mut ws,
            sync("beta", update_message(insert(&Doc::new(), "x"))),
        )
        .await;
    }
    // The other document goes on: its change is stored, acknowledged and
    // reaches a y-websocket editor.
    let typist = Doc::with_client_id(41);
    assert!(change(&mut ws, "alpha", &typist, "hello").await);
    let reader = Doc::new();
    apply(&reader, next_message(&mut alpha_editor).await);
    assert_eq!(text(&reader), "hello");

    // A read token opens the document read-only: a change is refused
    // (sync status false) and reaches nobody.
    assert_eq!(
        open(&mut ws, "beta", &token("beta", "read")).await,
        Heard::Authenticated("beta".into(), "readonly".into())
    );
    assert!(!change(&mut ws, "beta", &Doc::with_client_id(42), "nope").await);
    let (status, body) = http_get(
        &weft.addr,
        &format!("/docs/beta?token={}", token("beta", "read")),
        &[],
    )
    .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn a_y_websocket_edit_reaches_hocuspocus_and_stateless_messages_only_hocuspocus() {
    let weft = Weft::start(&[]);
    let mut a = connect(&hp_url(&weft)).await;
    let mut b = connect(&format!("ws://{}/", weft.addr)).await; // the bare URL
    open(&mut a, "shared", "").await;
    open(&mut b, "shared", "").await;
    let mut editor = connect(&weft.url("shared")).await;
    next_message(&mut editor).await;

    // A stateless message goes to the other Hocuspocus connection...
    let mut body = vec![5];
    body.write_string("{\"hello\":1}");
    put(&mut a, addressed("shared", &body)).await;
    let got = next_where(&mut b, |h| match h {
        Heard::Stateless(k, s) => Some((k, s)),
        _ => None,
    })
    .await;
    assert_eq!(got, ("shared".into(), "{\"hello\":1}".into()));

    // ...and not to the y-websocket editor: the next thing it hears is
    // the change typed after it.
    let typist = Doc::with_client_id(7);
    send(
        &mut editor,
        update_message(insert(&typist, "from y-websocket")),
    )
    .await;
    let mine = Doc::new();
    let update = next_where(&mut a, |h| match h {
        Heard::Sync(_, m @ YMessage::Sync(SyncMessage::Update(_))) => Some(m),
        _ => None,
    })
    .await;
    apply(&mine, update);
    assert_eq!(text(&mine), "from y-websocket");
    assert!(change(&mut b, "shared", &Doc::with_client_id(8), "!").await);
    match next_message(&mut editor).await {
        YMessage::Sync(SyncMessage::Update(_)) => {}
        other => panic!("the y-websocket editor heard {other:?}"),
    }

    // An awareness query is answered (nobody has published presence, so
    // only the answer can be heard), addressed.
    put(&mut b, addressed("shared", &[3])).await;
    next_where(&mut b, |h| {
        matches!(h, Heard::Awareness(k) if k == "shared").then_some(())
    })
    .await;
}

#[tokio::test]
async fn what_a_socket_sends_before_its_token_is_bounded() {
    let weft = Weft::start(&[]);
    // Past 64 waiting messages the rest are dropped (the sync after the
    // token carries what they held): the socket is not closed for it,
    // and the 64 kept are answered once the token comes.
    let mut ws = connect(&hp_url(&weft)).await;
    let step1 = || {
        sync(
            "early",
            YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())),
        )
    };
    for _ in 0..300 {
        put(&mut ws, step1()).await;
    }
    open(&mut ws, "early", "").await;
    let mut answers = 0;
    // Each kept step 1 gets a step 2; then the provider's own, sent after
    // the token, is answered too.
    put(&mut ws, step1()).await;
    while answers < 65 {
        if let Heard::Sync(_, YMessage::Sync(SyncMessage::SyncStep2(_))) = next(&mut ws).await {
            answers += 1;
        }
    }
    let metrics = http_get(&weft.addr, "/metrics", &[]).await.1;
    assert!(
        metrics.contains("weft_hocuspocus_dropped_total{reason=\"waiting\"} 236"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("hocuspocus"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // However it comes: one large message before any token is cut off
    // long before it is whole, and the sender still hears why (the rest
    // is read and thrown away while it is told, not reset).
    let mut ws = connect(&hp_url(&weft)).await;
    let big = insert(&Doc::with_client_id(9), &"x".repeat(4 * 1024 * 1024));
    let _ = ws
        .send(Message::Binary(sync("early", update_message(big)).into()))
        .await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::from(4400), "{reason}");
    assert!(reason.contains("bytes sent before"), "{reason}");

    // Within the bound, it waits and is answered once the token comes.
    let mut ws = connect(&hp_url(&weft)).await;
    put(
        &mut ws,
        sync(
            "early",
            YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())),
        ),
    )
    .await;
    open(&mut ws, "early", "").await;
    let step2 = next_where(&mut ws, |h| match h {
        Heard::Sync(_, m @ YMessage::Sync(SyncMessage::SyncStep2(_))) => Some(m),
        _ => None,
    })
    .await;
    apply(&Doc::new(), step2);
}

#[tokio::test]
async fn a_socket_that_authenticates_nothing_is_closed_at_the_header_deadline() {
    let weft = Weft::start(&["--auth-secret", SECRET, "--header-timeout", "1s"]);
    let mut ws = connect(&hp_url(&weft)).await;
    // Refused tokens and traffic do not keep it open.
    open(&mut ws, "d", "not-a-token").await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::from(4401), "{reason}");

    // One document authenticated is enough.
    let mut ws = connect(&hp_url(&weft)).await;
    open(&mut ws, "d", &token("d", "write")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(change(&mut ws, "d", &Doc::with_client_id(3), "still here").await);

    // Or until it has none open: a provider detaching its last document.
    let mut ws = connect(&hp_url(&weft)).await;
    open(&mut ws, "f", &token("f", "write")).await;
    put(&mut ws, addressed("f", &[7])).await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::from(4401), "{reason}");

    // Until its last document's token ends: then it must show another.
    let mut ws = connect(&hp_url(&weft)).await;
    open(&mut ws, "e", &token_until("e", "write", now() + 2)).await;
    next_where(&mut ws, |h| matches!(h, Heard::Denied(..)).then_some(())).await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::from(4401), "{reason}");
}

#[tokio::test]
async fn tokens_are_asked_for_again_before_they_end_and_end_access_otherwise() {
    let weft = Weft::start(&["--auth-secret", SECRET]);
    let mut ws = connect(&hp_url(&weft)).await;
    let soon = now() + 3;
    open(&mut ws, "kept", &token_until("kept", "write", soon)).await;
    open(&mut ws, "lapsed", &token_until("lapsed", "write", soon)).await;

    // Both are asked for a fresh token; only one answers.
    let mut asked = Vec::new();
    while asked.len() < 2 {
        if let Heard::TokenRequest(k) = next(&mut ws).await {
            asked.push(k);
        }
    }
    asked.sort();
    assert_eq!(asked, ["kept", "lapsed"]);
    // A fresh token is taken without an answer, as Hocuspocus does.
    put(&mut ws, auth("kept", &token("kept", "write"))).await;
    let ended = next_where(&mut ws, |h| match h {
        Heard::Denied(k, why) => Some((k, why)),
        _ => None,
    })
    .await;
    assert_eq!(ended.0, "lapsed");
    assert!(ended.1.contains("expired"), "{}", ended.1);
    // The refreshed one outlives its first token.
    while now() <= soon + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(change(&mut ws, "kept", &Doc::with_client_id(5), "later").await);
}

#[tokio::test]
async fn a_socket_opens_at_most_64_documents() {
    let weft = Weft::start(&[]);
    let mut ws = connect(&hp_url(&weft)).await;
    for i in 0..64 {
        let answer = open(&mut ws, &format!("doc-{i}"), "").await;
        assert!(
            matches!(answer, Heard::Authenticated(..)),
            "{i}: {answer:?}"
        );
    }
    let Heard::Denied(_, why) = open(&mut ws, "doc-64", "").await else {
        panic!("the 65th document was opened")
    };
    assert!(why.contains("maximum of 64"), "{why}");
    // Closing one makes room.
    put(&mut ws, addressed("doc-0", &[7])).await;
    assert!(matches!(
        open(&mut ws, "doc-64", "").await,
        Heard::Authenticated(..)
    ));

    // One document under many session-aware addresses: at most 8.
    let mut ws = connect(&hp_url(&weft)).await;
    for i in 0..8 {
        let answer = open(&mut ws, &format!("same\0s{i}"), "").await;
        assert!(
            matches!(answer, Heard::Authenticated(..)),
            "{i}: {answer:?}"
        );
    }
    let Heard::Denied(_, why) = open(&mut ws, "same\0s8", "").await else {
        panic!("a ninth session of one document was opened")
    };
    assert!(why.contains("8 times"), "{why}");
}

#[tokio::test]
async fn stateless_messages_are_held_to_a_rate_per_socket() {
    let weft = Weft::start(&[]);
    let mut sender = connect(&hp_url(&weft)).await;
    open(&mut sender, "flood", "").await;
    let mut body = vec![5];
    body.write_string(&"s".repeat(64 * 1024));
    // Four seconds' worth go at once; the fifth is too much.
    for _ in 0..5 {
        put(&mut sender, addressed("flood", &body)).await;
    }
    let (code, reason) = close_of(&mut sender).await;
    assert_eq!(code, CloseCode::from(4429), "{reason}");
    assert!(reason.contains("stateless"), "{reason}");
}

#[tokio::test]
async fn malformed_frames_close_the_socket_with_a_reason() {
    let weft = Weft::start(&[]);
    for (frame, what) in [
        (vec![0x7f], "a name longer than the frame"),
        (vec![0xff, 0xff, 0xff, 0xff, 0x0f], "a huge name length"),
        (addressed("d", &[]), "no message"),
        (auth("d", &"t".repeat(9 * 1024)), "a token of 9 KiB"),
    ] {
        let mut ws = connect(&hp_url(&weft)).await;
        put(&mut ws, frame).await;
        let (code, reason) = close_of(&mut ws).await;
        assert_eq!(code, CloseCode::Protocol, "{what}: {reason}");
    }
    let mut ws = connect(&hp_url(&weft)).await;
    open(&mut ws, "d", "").await;
    put(&mut ws, addressed("d", &[0, 2, 0x7f])).await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::Protocol, "{reason}");

    // What Hocuspocus' server ignores is ignored: a forged "authenticated"
    // answer opens nothing, and an unknown type closes nothing.
    let mut ws = connect(&hp_url(&weft)).await;
    let mut forged = vec![2, 2];
    forged.write_string("read-write");
    put(&mut ws, addressed("d", &forged)).await;
    put(&mut ws, addressed("d", &[42])).await;
    assert!(matches!(
        open(&mut ws, "d", "").await,
        Heard::Authenticated(..)
    ));
    put(&mut ws, addressed("d", &[42, 1, 2, 3])).await;
    assert!(change(&mut ws, "d", &Doc::with_client_id(77), "still open").await);
}

#[tokio::test]
async fn a_document_ended_by_the_server_ends_alone() {
    const ADMIN: &str = "hocuspocus-admin-key-0123456789abcdef";
    let weft = Weft::start(&["--admin-key", ADMIN]);
    let mut ws = connect(&hp_url(&weft)).await;
    open(&mut ws, "doomed", "").await;
    open(&mut ws, "kept", "").await;
    assert!(change(&mut ws, "doomed", &Doc::with_client_id(1), "soon gone").await);

    let auth = format!("Bearer {ADMIN}");
    let headers = [("authorization", auth.as_str())];
    let (status, body) =
        request(&weft.addr, "DELETE", "/admin/docs/doomed", &headers, vec![]).await;
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    let (key, why) = next_where(&mut ws, |h| match h {
        Heard::Closed(k, why) => Some((k, why)),
        _ => None,
    })
    .await;
    assert_eq!(key, "doomed");
    assert!(why.contains("deleted"), "{why}");
    // What the provider still sends for it is dropped; the other document
    // goes on, on the same socket.
    put(
        &mut ws,
        sync(
            "doomed",
            update_message(insert(&Doc::with_client_id(2), "x")),
        ),
    )
    .await;
    assert!(change(&mut ws, "kept", &Doc::with_client_id(3), "still here").await);
}

#[tokio::test]
async fn a_message_that_never_finishes_arriving_is_cut_off() {
    let weft = Weft::start(&[
        "--auth-secret",
        SECRET,
        "--ping-interval",
        "200ms",
        "--body-timeout",
        "1s",
    ]);
    let mut ws = connect(&hp_url(&weft)).await;
    assert_eq!(
        open(&mut ws, "dripped", &token("dripped", "write")).await,
        Heard::Authenticated("dripped".into(), "read-write".into())
    );
    let (code, reason, _) = never_finish_a_message(&mut ws).await;
    assert_eq!(code, CloseCode::Policy, "{reason}");
    assert!(reason.contains("still arriving after 1s"), "{reason}");
}

#[tokio::test]
async fn one_address_cannot_fill_the_places_of_sockets_waiting_to_authenticate() {
    let weft = Weft::start(&["--auth-secret", SECRET, "--max-connections-per-client", "2"]);
    let _first = connect(&hp_url(&weft)).await;
    let _second = connect(&hp_url(&weft)).await;
    let mut third = connect(&hp_url(&weft)).await;
    let (code, reason) = close_of(&mut third).await;
    assert_eq!(code, CloseCode::Again);
    assert!(
        reason.contains("your address has its maximum of 2"),
        "{reason}"
    );
}
