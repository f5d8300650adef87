//! Hostile frames against a live server: a curated list of attacks that
//! must each be refused with a clear close code and leave the document as it
//! was, then thousands of random mutations of valid frames. Throughout, the
//! server must not crash or hang, and another document keeps serving.

mod support;

use std::collections::HashMap;

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{AwarenessUpdate, Message as YMessage, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, StateVector, Text, Transact};

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn awareness_frame(json: &str) -> Vec<u8> {
    let mut clients = HashMap::new();
    clients.insert(
        ClientID::new(77),
        AwarenessUpdateEntry {
            clock: 1,
            json: json.into(),
        },
    );
    YMessage::Awareness(AwarenessUpdate { clients }).encode_v1()
}

fn valid_frames() -> Vec<Vec<u8>> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let update = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hostile input test");
        txn.encode_update_v1()
    };
    vec![
        YMessage::Sync(SyncMessage::Update(update.clone())).encode_v1(),
        YMessage::Sync(SyncMessage::SyncStep2(update)).encode_v1(),
        YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1(),
        awareness_frame(r##"{"user":{"name":"x","color":"#fff"}}"##),
        YMessage::AwarenessQuery.encode_v1(),
    ]
}

/// Attacks that must be refused, with the close code they must get.
fn curated() -> Vec<(&'static str, Message, CloseCode)> {
    let bin = |b: Vec<u8>| Message::Binary(b.into());
    let mut invalid_utf8 = awareness_frame(r#"{"a":"xx"}"#);
    let at = invalid_utf8.len() - 3;
    invalid_utf8[at] = 0xff; // inside the JSON string
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    vec![
        ("empty frame", bin(vec![]), CloseCode::Protocol),
        ("lone varint start", bin(vec![0x80]), CloseCode::Protocol),
        (
            "truncated varint in a length",
            bin(vec![0, 2, 0xff, 0xff]),
            CloseCode::Protocol,
        ),
        (
            "length prefix of 2^63",
            bin(vec![
                0, 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ]),
            CloseCode::Protocol,
        ),
        (
            "awareness claiming a billion clients",
            bin(vec![1, 5, 0x80, 0x94, 0xeb, 0xdc, 0x03]),
            CloseCode::Protocol,
        ),
        (
            "update claiming a billion structs",
            bin(vec![0, 2, 6, 0x80, 0x94, 0xeb, 0xdc, 0x03, 0]),
            CloseCode::Protocol,
        ),
        (
            "unknown message type",
            bin(vec![42, 0]),
            CloseCode::Protocol,
        ),
        ("unknown sync step", bin(vec![0, 9, 0]), CloseCode::Protocol),
        (
            "garbage",
            bin((0..64u8).map(|i| i.wrapping_mul(37)).collect()),
            CloseCode::Protocol,
        ),
        (
            "invalid UTF-8 in presence",
            bin(invalid_utf8),
            CloseCode::Protocol,
        ),
        (
            "presence that is not JSON",
            bin(awareness_frame("{")),
            CloseCode::Library(4400),
        ),
        (
            "text frame",
            Message::Text("hello".into()),
            CloseCode::Unsupported,
        ),
        (
            "presence nested 100,000 deep",
            bin(awareness_frame(&deep)),
            CloseCode::Library(4400),
        ),
    ]
}

/// Reads until the answer to an awareness query (true) or a close (false).
async fn answered(ws: &mut Ws) -> bool {
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an answer or a close in time")
        {
            Some(Ok(Message::Binary(b))) if b.first() == Some(&1) => return true,
            Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return false,
        }
    }
}

async fn still_serving(ws: &mut Ws) {
    send(ws, YMessage::AwarenessQuery).await;
    assert!(
        matches!(next_message(ws).await, YMessage::Awareness(_)),
        "the bystander still gets answers"
    );
}

#[tokio::test]
async fn hostile_frames_are_refused_and_nothing_else_suffers() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("weft.log");
    let weft = Weft::start_logging_to(&log, &["--max-presence-bytes", "1000000"]);
    let (status, _) = request(&weft.addr, "POST", "/docs/target/updates", &[], {
        let d = Doc::new();
        let t = d.get_or_insert_text("t");
        let mut txn = d.transact_mut();
        t.insert(&mut txn, 0, "original");
        txn.encode_update_v1()
    })
    .await;
    assert_eq!(status, 200);
    let mut bystander = connect(&weft.url("elsewhere")).await;
    next_message(&mut bystander).await;

    let mut tried = 0;
    for (what, frame, code) in curated() {
        let mut ws = connect(&weft.url("target")).await;
        next_message(&mut ws).await;
        ws.send(frame).await.expect("send");
        let (got, reason) = close_of(&mut ws).await;
        assert_eq!(got, code, "{what}: {reason}");
        assert!(!reason.is_empty(), "{what}: the close says why");
        tried += 1;
    }
    still_serving(&mut bystander).await;
    let (_, body) = request(&weft.addr, "GET", "/docs/target/json", &[], vec![]).await;
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        json["t"], "original",
        "refused input left the document as it was"
    );

    // Random mutations of valid frames: bit flips, truncations, splices.
    let mut rng = Lcg(0x5eed);
    let valid = valid_frames();
    let mutations = 2000;
    let mut ws = connect(&weft.url("fuzzed")).await;
    next_message(&mut ws).await;
    let mut closes = 0;
    for i in 0..mutations {
        let mut frame = valid[rng.below(valid.len())].clone();
        match rng.below(4) {
            0 => {
                let at = rng.below(frame.len());
                frame[at] ^= 1 << rng.below(8);
            }
            1 => frame.truncate(rng.below(frame.len())),
            2 => {
                let at = rng.below(frame.len());
                let byte = (rng.next() & 0xff) as u8;
                frame.insert(at, byte);
            }
            _ => {
                let at = rng.below(frame.len());
                frame[at] = 0xff;
                if at + 1 < frame.len() {
                    frame[at + 1] = 0xff;
                }
            }
        }
        tried += 1;
        // Each mutation is followed by a question, so we know the server
        // dealt with it before the next: an answer, or a close.
        let query = YMessage::AwarenessQuery.encode_v1();
        let alive = ws.send(Message::Binary(frame.into())).await.is_ok()
            && ws.send(Message::Binary(query.into())).await.is_ok()
            && answered(&mut ws).await;
        if !alive {
            closes += 1;
            ws = connect(&weft.url("fuzzed")).await;
            next_message(&mut ws).await;
        }
        if i % 250 == 0 {
            still_serving(&mut bystander).await;
        }
    }
    still_serving(&mut bystander).await;
    drop(weft); // the server process is still there to be killed
    let text = std::fs::read_to_string(&log).expect("log");
    let panics = text.matches("panicked").count();
    let caught = text.matches("failed internally").count();
    eprintln!(
        "hostile inputs: {tried} tried ({} curated, {mutations} random mutations of which {closes} \
         closed their connection); {caught} made yrs fail internally and were refused; {panics} \
         uncaught panics",
        curated().len()
    );
    assert_eq!(panics, 0, "a panic inside the server:\n{text}");
}
