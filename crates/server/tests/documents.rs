//! When a document exists, against the real binary: reading, following or
//! joining a name that was never written stores nothing; the first durable
//! change creates it; and creating documents is limited per client address
//! (`--max-new-docs-per-minute`), while writes to existing ones never are.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

const ADMIN: &str = "documents-admin-key-0123456789abcdef";

fn admin_header() -> (String, String) {
    ("authorization".into(), format!("Bearer {ADMIN}"))
}

/// The names `GET /admin/docs` lists.
async fn listed(addr: &str) -> Vec<String> {
    let (k, v) = admin_header();
    let (status, body) = request(addr, "GET", "/admin/docs", &[(&k, &v)], vec![]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    names(&body)
}

/// The names the home page's list (`GET /docs`) shows.
async fn home_list(addr: &str) -> Vec<String> {
    let (status, body) = request(addr, "GET", "/docs", &[], vec![]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    names(&body)
}

fn names(body: &[u8]) -> Vec<String> {
    let docs: Value = serde_json::from_slice(body).expect("json");
    docs.as_array()
        .expect("a list")
        .iter()
        .map(|d| d["name"].as_str().expect("name").to_owned())
        .collect()
}

/// `weft docs list` on a stopped server's data directory.
fn offline_list(dir: &Path) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["docs", "list", "--json", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    names(&out.stdout)
}

async fn post(addr: &str, doc: &str, update: Vec<u8>) -> (u16, Vec<u8>) {
    request(addr, "POST", &format!("/docs/{doc}/updates"), &[], update).await
}

fn error_code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("a JSON error, got {:?}", String::from_utf8_lossy(body)));
    assert!(v["message"].is_string(), "{v}");
    v["error"].as_str().expect("error code").to_owned()
}

/// Connects as y-websocket does (sync step 1, and step 2 with what the
/// client has) and waits for the server's step 2.
async fn editor(url: &str, doc: &Doc) -> Ws {
    let mut ws = connect(url).await;
    let sv = doc.transact().state_vector();
    send(&mut ws, YMessage::Sync(SyncMessage::SyncStep1(sv))).await;
    let mine = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    send(&mut ws, YMessage::Sync(SyncMessage::SyncStep2(mine))).await;
    loop {
        if let YMessage::Sync(SyncMessage::SyncStep2(u)) = next_message(&mut ws).await {
            doc.transact_mut()
                .apply_update(Update::decode_v1(&u).expect("update"))
                .expect("applies");
            return ws;
        }
    }
}

/// The text of `doc` as `GET /docs/{doc}/json` shows it, once it has one.
async fn wait_for_text(addr: &str, doc: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = request(addr, "GET", &format!("/docs/{doc}/json"), &[], vec![]).await;
        if status == 200 {
            let v: Value = serde_json::from_slice(&body).expect("json");
            if v["t"] == want {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{doc} never held {want:?} (last answer {status})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn open_stream(addr: &str, path: &str) -> SseReader {
    let mut http = http1(addr).await;
    let resp = http.request("GET", path, &[], Vec::new()).await;
    assert_eq!(resp.status().as_u16(), 200);
    std::mem::forget(http); // the connection lives as long as the reader
    SseReader::new(resp)
}

#[tokio::test]
async fn reading_following_or_joining_unknown_names_stores_nothing() {
    let mut weft = Weft::start(&["--admin-key", ADMIN]);
    for i in 0..40 {
        for path in [
            format!("/docs/ghost-{i}"),
            format!("/docs/ghost-{i}/json"),
            format!("/docs/ghost-{i}?sv=AA=="),
        ] {
            let (status, body) = request(&weft.addr, "GET", &path, &[], vec![]).await;
            assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
            assert_eq!(error_code(&body), "document_not_found", "{path}");
        }
    }
    for i in 0..10 {
        let mut viewer = open_stream(&weft.addr, &format!("/sse/seen-{i}")).await;
        let snapshot = viewer.next_change().await;
        assert_eq!(snapshot.event.as_deref(), Some("snapshot"));
    }
    for i in 0..10 {
        let doc = Doc::new();
        let ws = editor(&weft.url(&format!("joined-{i}")), &doc).await;
        drop(ws);
    }
    assert_eq!(listed(&weft.addr).await, Vec::<String>::new());
    assert_eq!(home_list(&weft.addr).await, Vec::<String>::new());

    // Shutdown snapshots every loaded document that changed: none did.
    assert!(weft.terminate().success());
    assert_eq!(offline_list(weft.data_dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_viewer_waiting_on_an_unknown_name_sees_the_first_write_live() {
    let weft = Weft::start(&["--admin-key", ADMIN]);
    let mut viewer = open_stream(&weft.addr, "/sse/soon").await;
    let snapshot = viewer.next_change().await;
    assert_eq!(snapshot.event.as_deref(), Some("snapshot"));
    let (incarnation, seq) = snapshot
        .id
        .as_deref()
        .and_then(|id| id.split_once('-'))
        .expect("an event id");
    assert_eq!(seq, "0");
    // Waiting stores nothing.
    let (status, _) = request(&weft.addr, "GET", "/docs/soon", &[], vec![]).await;
    assert_eq!(status, 404);
    assert!(listed(&weft.addr).await.is_empty());

    let writer = Doc::new();
    let (status, body) = post(&weft.addr, "soon", insert(&writer, "hello")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let update = viewer.next_change().await;
    assert_eq!(update.event.as_deref(), Some("update"));
    assert_eq!(
        update.id.as_deref(),
        Some(format!("{incarnation}-1").as_str()),
        "the document keeps the incarnation it was followed under"
    );
    let seen = Doc::new();
    seen.transact_mut()
        .apply_update(Update::decode_v1(&update.data_bytes()).expect("update"))
        .expect("applies");
    assert_eq!(text(&seen), "hello");
    assert_eq!(listed(&weft.addr).await, vec!["soon".to_owned()]);
    assert_eq!(home_list(&weft.addr).await, vec!["soon".to_owned()]);
}

#[tokio::test]
async fn an_editors_first_edit_creates_the_document_and_a_restart_keeps_it() {
    let weft = Weft::start(&["--admin-key", ADMIN]);
    let doc = Doc::new();
    let mut ws = editor(&weft.url("fresh"), &doc).await;
    assert!(text(&doc).is_empty(), "an unknown name syncs as empty");
    assert!(listed(&weft.addr).await.is_empty());

    send(&mut ws, update_message(insert(&doc, "typed"))).await;
    wait_for_text(&weft.addr, "fresh", "typed").await;
    let (_, before) = request(&weft.addr, "GET", "/docs/fresh", &[], vec![]).await;
    assert_eq!(listed(&weft.addr).await, vec!["fresh".to_owned()]);
    let (status, body) = post(&weft.addr, "other", insert(&Doc::new(), "posted")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    drop(ws);

    let weft = weft.restart(&["--admin-key", ADMIN]);
    assert_eq!(
        listed(&weft.addr).await,
        vec!["fresh".to_owned(), "other".to_owned()]
    );
    wait_for_text(&weft.addr, "fresh", "typed").await;
    wait_for_text(&weft.addr, "other", "posted").await;
    let (_, after) = request(&weft.addr, "GET", "/docs/fresh", &[], vec![]).await;
    assert_eq!(before, after);
}

/// A one-shot request from a given loopback address (Linux routes all of
/// 127.0.0.0/8 to the loopback interface).
async fn request_from(
    source: &str,
    addr: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Vec<u8>, Option<String>) {
    let tcp = tcp_from(source, addr).await;
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("http1 handshake");
    tokio::spawn(conn);
    let mut http = Http::H1(send, addr.to_owned());
    let resp = http.request(method, path, &[], body).await;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, body_bytes(resp).await, retry_after)
}

#[tokio::test]
async fn creating_documents_is_limited_per_address_and_writing_to_existing_ones_is_not() {
    // 6 a minute: a burst of 6, then one every 10 s.
    let weft = Weft::start(&["--admin-key", ADMIN, "--max-new-docs-per-minute", "6"]);
    for i in 0..6 {
        let (status, body) = post(&weft.addr, &format!("new-{i}"), insert(&Doc::new(), "x")).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let (status, body, retry_after) = request_from(
        "127.0.0.1",
        &weft.addr,
        "POST",
        "/docs/new-6/updates",
        insert(&Doc::new(), "x"),
    )
    .await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    assert_eq!(error_code(&body), "too_many_new_documents");
    let wait: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((1..=10).contains(&wait), "Retry-After {wait}");
    let (status, _) = request(&weft.addr, "GET", "/docs/new-6", &[], vec![]).await;
    assert_eq!(status, 404, "the refused write created nothing");

    // Writes to documents that exist go on, over HTTP and WebSocket.
    let (status, _) = post(&weft.addr, "new-0", insert(&Doc::new(), "more")).await;
    assert_eq!(status, 200);
    let existing = Doc::new();
    let mut on_existing = editor(&weft.url("new-1"), &existing).await;
    send(&mut on_existing, update_message(insert(&existing, "!"))).await;

    // An editor whose first edit would create a document is closed with 4429.
    let fresh = Doc::new();
    let mut ws = editor(&weft.url("ws-new"), &fresh).await;
    send(&mut ws, update_message(insert(&fresh, "refused"))).await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::Library(4429), "{reason}");
    assert!(reason.contains("new documents"), "{reason}");
    let (status, _) = request(&weft.addr, "GET", "/docs/ws-new", &[], vec![]).await;
    assert_eq!(status, 404, "the refused change was not stored");

    wait_for_text(&weft.addr, "new-1", "x!").await;

    // Another address has its own allowance.
    let (status, body, _) = request_from(
        "127.0.0.2",
        &weft.addr,
        "POST",
        "/docs/elsewhere/updates",
        insert(&Doc::new(), "y"),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut all = listed(&weft.addr).await;
    all.sort();
    assert_eq!(
        all,
        [
            "elsewhere",
            "new-0",
            "new-1",
            "new-2",
            "new-3",
            "new-4",
            "new-5"
        ]
    );
}

#[tokio::test]
async fn one_address_creating_as_fast_as_it_can_gets_the_burst_then_one_a_second() {
    // The default: 60 a minute, a burst of 10.
    let weft = Weft::start(&[]);
    let attempts = 200;
    let started = Instant::now();
    let mut created = 0;
    for i in 0..attempts {
        let (status, body) =
            post(&weft.addr, &format!("flood-{i}"), insert(&Doc::new(), "z")).await;
        match status {
            200 => created += 1,
            429 => assert_eq!(error_code(&body), "too_many_new_documents"),
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&body)),
        }
    }
    let elapsed = started.elapsed();
    eprintln!("{created} of {attempts} new documents accepted in {elapsed:?}");
    let allowed = 10 + elapsed.as_secs() + 1;
    assert!(
        (10..=allowed).contains(&created),
        "{created} created in {elapsed:?}: at most {allowed} allowed"
    );

    // 0 lifts the limit.
    let open = Weft::start(&["--max-new-docs-per-minute", "0"]);
    for i in 0..30 {
        let (status, _) = post(&open.addr, &format!("free-{i}"), insert(&Doc::new(), "z")).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn a_backup_restored_under_a_waiting_viewer_is_served_at_once() {
    let source = Weft::start(&["--admin-key", ADMIN]);
    let (status, _) = post(&source.addr, "restored", insert(&Doc::new(), "from backup")).await;
    assert_eq!(status, 200);
    let (k, v) = admin_header();
    let (status, archive) =
        request(&source.addr, "GET", "/admin/backup", &[(&k, &v)], vec![]).await;
    assert_eq!(status, 200);

    // On another server, a viewer waits on the name: its room holds an
    // empty, never-written document when the backup lands.
    let target = Weft::start(&["--admin-key", ADMIN]);
    let mut viewer = open_stream(&target.addr, "/sse/restored").await;
    viewer.next_change().await;
    let (status, body) = request(&target.addr, "POST", "/admin/backup", &[(&k, &v)], archive).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // The stale room lets go: the viewer's stream ends (it reconnects and
    // gets the restored content), and reads see the restored document.
    let ended = async { while viewer.next().await.is_some() {} };
    tokio::time::timeout(WAIT, ended)
        .await
        .expect("the viewer's stream ends");
    wait_for_text(&target.addr, "restored", "from backup").await;
    let mut again = open_stream(&target.addr, "/sse/restored").await;
    let snapshot = again.next_change().await;
    let seen = Doc::new();
    seen.transact_mut()
        .apply_update(Update::decode_v1(&snapshot.data_bytes()).expect("update"))
        .expect("applies");
    assert_eq!(text(&seen), "from backup");
}
