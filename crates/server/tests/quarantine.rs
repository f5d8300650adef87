//! A crafted history cannot make a document unloadable: the fuzz finding
//! `crash-history-with-legacy-json` sent to the real binary is refused
//! (4400), and a history an earlier build stored from it loads, with what
//! does not replay quarantined and reported (`weft verify`, the admin API,
//! `weft_changes_quarantined_total`).

mod support;

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;
use support::*;
use weft_storage::{DocName, DocumentStore, LogEntry, SledStore};
use yrs::{Doc, Text, Transact};

const ADMIN: &str = "quarantine-admin-key-0123456789abcdef";

/// The finding's input: frames of a little-endian u16 length and bytes,
/// as the fuzz harness splits it.
fn finding_frames() -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus/room/crash-history-with-legacy-json");
    let mut data = std::fs::read(&path).expect("the finding is in the corpus");
    let mut frames = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
        frames.push(data[2..2 + len].to_vec());
        data.drain(..2 + len);
    }
    frames
}

async fn ws_send_raw(ws: &mut Ws, frame: Vec<u8>) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Binary(frame.into())).await.expect("send");
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// What a build without the write-time check recorded of the finding's two
/// updates (changes #1 and #2 of a fresh document): #2 does not replay
/// after #1 ("block parent <0#0> must be deleted or shared ref type").
const RECORDED: [&str; 2] = [
    "0203030000070003000101000002010101020101010102000100020301000b",
    "0109d9eadac109000401017401480201012e020101010101010101010101010101010101\
     01010101210101010101010101000001010901010100010101010109030000000101010101\
     310101010101f8010101010101010101010101d9eadac1090103fe01",
];

fn edit(doc: &Doc, s: &str) -> Vec<u8> {
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    let len = text.len(&txn);
    text.insert(&mut txn, len, s);
    txn.encode_update_v1()
}

async fn json_of(addr: &str, doc: &str) -> Value {
    let (status, body) = request(addr, "GET", &format!("/docs/{doc}/json"), &[], vec![]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("json")
}

async fn admin(addr: &str, path: &str) -> Value {
    let auth = format!("Bearer {ADMIN}");
    let (status, body) = request(addr, "GET", path, &[("authorization", &auth)], vec![]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("json")
}

/// `weft_changes_quarantined_total`, 0 when not yet counted.
async fn quarantined_total(addr: &str) -> f64 {
    let (_, metrics) = request(addr, "GET", "/metrics", &[], vec![]).await;
    String::from_utf8_lossy(&metrics)
        .lines()
        .find_map(|l| l.strip_prefix("weft_changes_quarantined_total "))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

fn weft() -> Command {
    let mut cmd = Command::cargo_bin("weft").expect("binary");
    cmd.env_remove("WEFT_DATA_DIR")
        .env_remove("WEFT_SERVER")
        .env_remove("WEFT_ADMIN_KEY")
        .env("RUST_LOG", "warn");
    cmd
}

/// `weft verify --json ARGS`: its exit status and report.
fn verify(args: &[&str]) -> (bool, Value) {
    let out = weft()
        .args(["verify", "--json"])
        .args(args)
        .output()
        .expect("runs");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

#[tokio::test]
async fn the_findings_updates_are_refused_and_the_document_keeps_its_content() {
    let weft = Weft::start(&[]);
    let doc = "crafted";
    let writer = Doc::new();
    let (status, _) = request(
        &weft.addr,
        "POST",
        &format!("/docs/{doc}/updates"),
        &[],
        edit(&writer, "hello"),
    )
    .await;
    assert_eq!(status, 200);

    let frames = finding_frames();
    for frame in &frames[..2] {
        let mut ws = connect(&weft.url(doc)).await;
        ws_send_raw(&mut ws, frame.clone()).await;
        let (code, reason) = close_of(&mut ws).await;
        assert_eq!(u16::from(code), 4400, "{reason}");
        assert!(reason.contains("legacy JSON"), "{reason}");
    }
    assert_eq!(json_of(&weft.addr, doc).await["t"], "hello");

    // After a restart the document loads as it was, nothing set aside.
    let weft = weft.restart(&[]);
    assert_eq!(json_of(&weft.addr, doc).await["t"], "hello");
    assert_eq!(quarantined_total(&weft.addr).await, 0.0);
}

#[tokio::test]
async fn a_stored_history_that_does_not_replay_is_quarantined_and_the_document_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = "crafted";
    let writer = Doc::new();
    {
        // What an earlier build stored: the writer's text around the
        // finding's two recorded changes.
        let store = SledStore::open(dir.path()).expect("open");
        let entry = |seq: u64, update: Vec<u8>| LogEntry {
            seq,
            at_ms: 1_000 + seq,
            update,
            by: Default::default(),
        };
        let history = vec![
            entry(1, edit(&writer, "hello")),
            entry(2, unhex(RECORDED[0])),
            entry(3, unhex(RECORDED[1])),
            entry(4, edit(&writer, " world")),
        ];
        let name = DocName::new(doc).expect("name");
        let meta = store.load(&name).await.expect("load").meta;
        store.append(&name, &meta, &history).await.expect("append");
    }
    let data_dir = dir.path().to_str().expect("utf8").to_owned();

    // Before it is loaded, verify finds what will not replay.
    let (ok, report) = verify(&["--data-dir", &data_dir]);
    assert!(!ok, "{report}");
    let problems = report["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 2, "{report}");
    assert_eq!(problems[0]["location"], "crafted#2");
    assert!(
        problems[1]["problem"]
            .as_str()
            .expect("text")
            .contains("does not replay"),
        "{report}"
    );

    let weft = Weft::start_in(dir, "127.0.0.1:0", &["--admin-key", ADMIN]);
    assert_eq!(json_of(&weft.addr, doc).await["t"], "hello world");
    assert_eq!(quarantined_total(&weft.addr).await, 2.0);
    let shown = admin(&weft.addr, &format!("/admin/docs/{doc}")).await;
    let quarantined = shown["quarantined"].as_array().expect("a list");
    let seqs: Vec<_> = quarantined.iter().map(|q| q["seq"].clone()).collect();
    assert_eq!(seqs, vec![Value::from(2), Value::from(3)], "{shown}");
    assert_eq!(quarantined[1]["changed_at_ms"], 1_003);
    assert_eq!(quarantined[1]["size_bytes"], unhex(RECORDED[1]).len());
    assert!(
        quarantined[1]["reason"]
            .as_str()
            .expect("text")
            .contains("legacy JSON"),
        "{shown}"
    );
    // Numbering goes on after the quarantined changes.
    let (status, body) = request(
        &weft.addr,
        "POST",
        &format!("/docs/{doc}/updates"),
        &[],
        edit(&writer, "!"),
    )
    .await;
    assert_eq!(status, 200);
    let id: Value = serde_json::from_slice(&body).expect("json");
    assert!(id["id"].as_str().expect("an id").ends_with("-5"), "{id}");

    // Verify reports them as quarantined, not as problems.
    let server = format!("http://{}", weft.addr);
    let (ok, report) = verify(&["--server", &server, "--admin-key", ADMIN]);
    assert!(ok, "{report}");
    let listed = report["quarantined"].as_array().expect("a list");
    assert_eq!(listed.len(), 2, "{report}");
    assert_eq!(
        (listed[0]["doc"].clone(), listed[0]["seq"].clone()),
        (Value::from(doc), Value::from(2))
    );

    // Restarted: it loads again, and nothing new is quarantined.
    let weft = weft.restart(&["--admin-key", ADMIN]);
    assert_eq!(json_of(&weft.addr, doc).await["t"], "hello world!");
    assert_eq!(quarantined_total(&weft.addr).await, 0.0);
    let shown = admin(&weft.addr, &format!("/admin/docs/{doc}")).await;
    assert_eq!(shown["quarantined"].as_array().map(Vec::len), Some(2));
}
