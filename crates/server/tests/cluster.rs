//! Cluster mode end to end: a real `redis-server` on loopback and several
//! weft nodes sharing it, spoken to as y-websocket editors and SSE viewers.

#[path = "../../storage/tests/support/redis_cluster.rs"]
mod redis_cluster;
#[path = "../../storage/tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use redis_cluster::RedisCluster;
use redis_server::RedisServer;
use support::*;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

/// What the cluster tests do with a Redis: start weft nodes on it and
/// look inside it.
trait ClusterRedis {
    fn node(&self, extra: &[&str]) -> Weft;
    fn cli(&self, args: &[&str]) -> String;
}

impl ClusterRedis for RedisServer {
    fn node(&self, extra: &[&str]) -> Weft {
        let url = self.url();
        let mut args = vec!["--redis", url.as_str()];
        args.extend_from_slice(extra);
        Weft::start(&args)
    }

    /// Runs a redis-cli command, returning its output.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// A y-websocket editor: its own document, synced both ways on connect.
struct Editor {
    ws: Ws,
    doc: Doc,
}

impl Editor {
    async fn connect(url: &str, doc: Doc) -> Editor {
        let mut ws = connect(url).await;
        // What a y-websocket client does: ask for what it lacks and offer
        // everything it has (it may have typed while disconnected).
        let sv = doc.transact().state_vector();
        send(&mut ws, YMessage::Sync(SyncMessage::SyncStep1(sv))).await;
        let mine = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        send(&mut ws, YMessage::Sync(SyncMessage::SyncStep2(mine))).await;
        let mut editor = Editor { ws, doc };
        loop {
            match next_message(&mut editor.ws).await {
                YMessage::Sync(SyncMessage::SyncStep2(u)) => {
                    editor.apply(&u);
                    return editor;
                }
                other => editor.take(other).await,
            }
        }
    }

    fn apply(&self, update: &[u8]) {
        self.doc
            .transact_mut()
            .apply_update(Update::decode_v1(update).expect("valid update"))
            .expect("applies");
    }

    async fn take(&mut self, msg: YMessage) {
        match msg {
            YMessage::Sync(SyncMessage::SyncStep1(sv)) => {
                let reply = self.doc.transact().encode_state_as_update_v1(&sv);
                send(&mut self.ws, YMessage::Sync(SyncMessage::SyncStep2(reply))).await;
            }
            YMessage::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) => self.apply(&u),
            _ => {}
        }
    }

    async fn type_text(&mut self, s: &str) {
        let update = insert(&self.doc, s);
        send(&mut self.ws, update_message(update)).await;
    }

    /// Reads until the text holds every one of `parts`.
    async fn wait_for(&mut self, parts: &[String]) {
        while !parts.iter().all(|p| text(&self.doc).contains(p.as_str())) {
            let msg = next_message(&mut self.ws).await;
            self.take(msg).await;
        }
    }
}

fn tokens(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("<{prefix}{i}>")).collect()
}

async fn open_stream(addr: &str, path: &str, headers: &[(&str, &str)]) -> SseReader {
    let mut http = http1(addr).await;
    let resp = http.request("GET", path, headers, Vec::new()).await;
    assert_eq!(resp.status().as_u16(), 200);
    // Keep the connection alive as long as the reader.
    std::mem::forget(http);
    SseReader::new(resp)
}

fn seq_of(id: &str) -> u64 {
    id.rsplit_once('-')
        .and_then(|(_, s)| s.parse().ok())
        .expect("seq in id")
}

/// Reads update events into `doc` until its text holds all of `parts`;
/// returns their ids.
async fn view_until(sse: &mut SseReader, doc: &Doc, parts: &[String]) -> Vec<String> {
    let mut ids = Vec::new();
    while !parts.iter().all(|p| text(doc).contains(p.as_str())) {
        let ev = sse.next_change().await;
        if let Some(id) = &ev.id {
            ids.push(id.clone());
        }
        doc.transact_mut()
            .apply_update(Update::decode_v1(&ev.data_bytes()).expect("update"))
            .expect("applies");
    }
    ids
}

fn assert_contiguous(ids: &[String]) {
    for pair in ids.windows(2) {
        assert_eq!(
            seq_of(&pair[1]),
            seq_of(&pair[0]) + 1,
            "ids must follow on with no gap or repeat: {pair:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editors_on_two_nodes_converge_and_a_viewer_on_a_third_resumes_on_any_node() {
    let redis = RedisServer::start();
    let (a, b, c) = (redis.node(&[]), redis.node(&[]), redis.node(&[]));
    converge_and_resume(&a, &b, &c, "shared").await;
}

/// Editors on `a` and `b` type into `doc` at once and converge; a viewer
/// on `c` sees every change in one numbered order, drops, and resumes on
/// `a` with exactly what it missed.
async fn converge_and_resume(a: &Weft, b: &Weft, c: &Weft, doc: &str) {
    let path = format!("/sse/{doc}");
    let mut viewer = open_stream(&c.addr, &path, &[]).await;
    viewer.next().await; // retry
    let seen = Doc::new();
    let snapshot = viewer.next_change().await;
    assert_eq!(snapshot.event.as_deref(), Some("snapshot"));

    let mut on_a = Editor::connect(&a.url(doc), Doc::new()).await;
    let mut on_b = Editor::connect(&b.url(doc), Doc::new()).await;
    // Both type at once, interleaved, without waiting for each other.
    let (from_a, from_b) = (tokens("a", 30), tokens("b", 30));
    for (x, y) in from_a.iter().zip(&from_b) {
        on_a.type_text(x).await;
        on_b.type_text(y).await;
    }
    let all: Vec<String> = from_a.iter().chain(&from_b).cloned().collect();
    timeout(WAIT, on_a.wait_for(&all))
        .await
        .expect("A gets B's");
    timeout(WAIT, on_b.wait_for(&all))
        .await
        .expect("B gets A's");
    assert_eq!(text(&on_a.doc), text(&on_b.doc), "editors converge");

    // The viewer on C saw every change from both, in one numbered order.
    let ids = timeout(WAIT, view_until(&mut viewer, &seen, &all))
        .await
        .expect("viewer on C sees both");
    assert_eq!(text(&seen), text(&on_a.doc));
    assert_contiguous(&ids);
    let last = ids.last().expect("some updates").clone();
    drop(viewer);

    // Its stream drops; more is typed meanwhile; it resumes on node A.
    let more = tokens("late", 10);
    for t in &more {
        on_b.type_text(t).await;
    }
    let mut resumed = open_stream(&a.addr, &path, &[("last-event-id", &last)]).await;
    resumed.next().await; // retry
    let first = resumed.next_change().await;
    assert_eq!(
        first.event.as_deref(),
        Some("update"),
        "a known id resumes with updates, not a snapshot: {first:?}"
    );
    let first_id = first.id.clone().expect("id");
    assert_eq!(seq_of(&first_id), seq_of(&last) + 1, "no gap, no repeat");
    seen.transact_mut()
        .apply_update(Update::decode_v1(&first.data_bytes()).expect("update"))
        .expect("applies");
    let mut rest = timeout(WAIT, view_until(&mut resumed, &seen, &more))
        .await
        .expect("resumed viewer sees the rest");
    rest.insert(0, first_id);
    // Every change after the last one seen, in order (the ten may have been
    // stored as fewer changes: a writer's updates taken in one batch are one).
    assert_contiguous(&rest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_nodes_and_goes_when_its_editor_leaves() {
    let redis = RedisServer::start();
    let (a, b) = (redis.node(&[]), redis.node(&[]));
    presence_crosses(&a, &b, "presence").await;
}

/// Presence set on `a` reaches an editor of `doc` on `b`, and its removal
/// too when the editor on `a` leaves (even when `a` finds the connection
/// gone while delivering to it, before its leaving is handled).
async fn presence_crosses(a: &Weft, b: &Weft, doc: &str) {
    let mut on_a = Editor::connect(&a.url(doc), Doc::new()).await;
    let mut on_b = Editor::connect(&b.url(doc), Doc::new()).await;
    send(&mut on_a.ws, presence(4242, 1, r#"{"user":"ada"}"#)).await;
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "presence never reached node B");
        if let YMessage::Awareness(update) = next_message(&mut on_b.ws).await {
            if let Some(entry) = update.clients.get(&yrs::ClientID::new(4242)) {
                assert_eq!(&*entry.json, r#"{"user":"ada"}"#);
                break;
            }
        }
    }
    // A's editor goes; B's editors are told its presence is gone.
    drop(on_a);
    loop {
        assert!(
            Instant::now() < deadline,
            "presence removal never reached node B"
        );
        if let YMessage::Awareness(update) = next_message(&mut on_b.ws).await {
            if let Some(entry) = update.clients.get(&yrs::ClientID::new(4242)) {
                if &*entry.json == "null" {
                    break;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_edit_loses_nothing_and_its_editors_resync_elsewhere() {
    let redis = RedisServer::start();
    let mut a = redis.node(&[]);
    let b = redis.node(&[]);
    let mut watcher = Editor::connect(&b.url("crash"), Doc::new()).await;
    let mut typist = Editor::connect(&a.url("crash"), Doc::new()).await;
    let typed = tokens("t", 200);
    for t in &typed[..60] {
        typist.type_text(t).await;
    }
    // B has these: Redis acknowledged them.
    timeout(WAIT, watcher.wait_for(&typed[..60]))
        .await
        .expect("B sees A's first changes");
    let acknowledged = text(&watcher.doc);
    // More, and A dies while taking them.
    for t in &typed[60..121] {
        typist.type_text(t).await;
    }
    a.kill9();
    // The editor reconnects to B with everything it typed, and goes on.
    let doc = std::mem::replace(&mut typist.doc, Doc::new());
    let mut typist = Editor::connect(&b.url("crash"), doc).await;
    for t in &typed[121..] {
        typist.type_text(t).await;
    }
    timeout(WAIT, watcher.wait_for(&typed))
        .await
        .expect("every change typed reaches B");
    assert!(text(&watcher.doc).starts_with(&acknowledged));
    // And it is stored: a fresh node loads all of it.
    let c = redis.node(&[]);
    let fresh = Editor::connect(&c.url("crash"), Doc::new()).await;
    assert_eq!(text(&fresh.doc), text(&typist.doc));
    for t in &typed {
        assert!(text(&fresh.doc).contains(t.as_str()), "{t} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_later_loads_from_the_snapshot_and_the_stream_tail() {
    let redis = RedisServer::start();
    let opts = [
        "--snapshot-every",
        "25",
        "--keep-log-tail",
        "5",
        "--history-retention",
        "0",
    ];
    let a = redis.node(&opts);
    let mut writer = Editor::connect(&a.url("late"), Doc::new()).await;
    let mut check = Editor::connect(&a.url("late"), Doc::new()).await;
    let typed = tokens("w", 120);
    for t in &typed {
        writer.type_text(t).await;
        // Stored (a second editor sees it) before the next is typed, so
        // each is a change of its own: 120 changes, several snapshots.
        timeout(WAIT, check.wait_for(std::slice::from_ref(t)))
            .await
            .expect("stored");
    }

    // Compacted: a snapshot exists and the stream keeps only a tail.
    let deadline = Instant::now() + WAIT;
    loop {
        let len: u64 = redis
            .cli(&["XLEN", "weft:{late}:log"])
            .parse()
            .unwrap_or(u64::MAX);
        let head = redis.cli(&["GET", "weft:{late}:head"]);
        if !head.is_empty() && len < typed.len() as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never compacted (XLEN {len}, head {head:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = redis.node(&opts);
    let joined = Editor::connect(&late.url("late"), Doc::new()).await;
    assert_eq!(text(&joined.doc), text(&writer.doc));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_carry_on_after_redis_restarts() {
    let mut redis = RedisServer::start();
    let (a, b) = (redis.node(&[]), redis.node(&[]));
    let mut on_a = Editor::connect(&a.url("blip"), Doc::new()).await;
    let mut on_b = Editor::connect(&b.url("blip"), Doc::new()).await;
    let before = tokens("before", 5);
    for t in &before {
        on_a.type_text(t).await;
    }
    timeout(WAIT, on_b.wait_for(&before))
        .await
        .expect("B sees A");
    drop((on_a, on_b));

    redis.restart();
    // Clients reconnect after a failure, as y-websocket does; within a few
    // attempts both nodes are serving from Redis again.
    let deadline = Instant::now() + WAIT;
    let mut attempt = 0;
    loop {
        assert!(Instant::now() < deadline, "the nodes never recovered");
        attempt += 1;
        let (url_a, url_b) = (a.url("blip"), b.url("blip"));
        let token = format!("<after{attempt}>");
        let all: Vec<String> = before.iter().cloned().chain([token.clone()]).collect();
        let tried = tokio::spawn(async move {
            let mut on_a = Editor::connect(&url_a, Doc::new()).await;
            let mut on_b = Editor::connect(&url_b, Doc::new()).await;
            on_a.type_text(&token).await;
            on_b.wait_for(&all).await;
        });
        match timeout(Duration::from_secs(3), tried).await {
            Ok(Ok(())) => break,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[test]
fn a_node_refuses_to_start_without_redis_and_says_why() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--listen", "127.0.0.1:0", "--redis"])
        .arg(format!("redis://127.0.0.1:{port}"))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach Redis"), "{stderr}");
}

#[test]
fn a_node_refuses_a_redis_that_evicts_keys_and_says_why() {
    let redis = RedisServer::start();
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    // (Without a maxmemory Redis never evicts, whatever the policy.)
    redis.cli(&["CONFIG", "SET", "maxmemory", "100mb"]);
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--listen", "127.0.0.1:0", "--redis"])
        .arg(redis.url())
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("maxmemory-policy is allkeys-lru")
            && stderr.contains("set `maxmemory-policy noeviction`"),
        "{stderr}"
    );
}

#[test]
fn a_node_refuses_webhooks_before_connecting_and_says_why() {
    // Webhook deliveries wait in the embedded store, which a cluster has
    // not: refused at startup, before Redis is even tried.
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--redis", "redis://127.0.0.1:1"])
        .args(["--webhook-url", "http://127.0.0.1:9/hook"])
        .args(["--webhook-secret", "a-webhook-secret-for-the-test"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("webhooks need the embedded store")
            && stderr.contains("--redis")
            && stderr.contains("--webhook-url"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot reach Redis"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_backup_into_a_cluster_is_refused_and_says_why() {
    const ADMIN: &str = "cluster-admin-key-for-restores-0123456789";
    let redis = RedisServer::start();
    let node = redis.node(&["--admin-key", ADMIN]);
    let mut viewer = open_stream(&node.addr, "/sse/kept", &[]).await;
    let mut editor = Editor::connect(&node.url("kept"), Doc::new()).await;
    editor.type_text("kept").await;
    timeout(
        WAIT,
        view_until(&mut viewer, &Doc::new(), &["kept".to_owned()]),
    )
    .await
    .expect("the change is stored");

    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("cluster.backup");
    let file = file.to_str().expect("utf8");
    let weft = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(args)
            .args(["--server", &format!("http://{}", node.addr)])
            .args(["--admin-key", ADMIN])
            .output()
            .expect("runs")
    };
    let backup = weft(&["backup", "-o", file]);
    assert!(
        backup.status.success(),
        "a cluster's documents back up: {}",
        String::from_utf8_lossy(&backup.stderr)
    );
    let stored = redis.cli(&["GET", "weft:{kept}:seq"]);
    assert!(stored.parse::<u64>().is_ok_and(|n| n > 0), "{stored}");
    let restore = weft(&["backup", "restore", file]);
    assert!(!restore.status.success());
    let stderr = String::from_utf8_lossy(&restore.stderr);
    assert!(
        stderr.contains("restoring a backup into Redis (cluster mode) is not supported")
            && stderr.contains("--data-dir"),
        "{stderr}"
    );
    assert_eq!(
        redis.cli(&["GET", "weft:{kept}:seq"]),
        stored,
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_document_on_one_node_lets_it_go_on_every_node() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    const ADMIN: &str = "cluster-admin-key-0123456789abcdef";
    let redis = RedisServer::start();
    let (a, b) = (
        redis.node(&["--admin-key", ADMIN]),
        redis.node(&["--admin-key", ADMIN]),
    );
    let mut on_a = Editor::connect(&a.url("doomed"), Doc::new()).await;
    let mut on_b = Editor::connect(&b.url("doomed"), Doc::new()).await;
    let mut viewer_on_b = open_stream(&b.addr, "/sse/doomed", &[]).await;
    let words = tokens("doomed", 3);
    for w in &words {
        on_a.type_text(w).await;
    }
    on_b.wait_for(&words).await; // B holds the document in memory

    let auth = format!("Bearer {ADMIN}");
    let headers = [("authorization", auth.as_str())];
    let (status, body) = request(&a.addr, "DELETE", "/admin/docs/doomed", &headers, vec![]).await;
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));

    // Connections on both nodes end the same way.
    for (node, editor) in [("A", &mut on_a), ("B", &mut on_b)] {
        let (code, reason) = close_of(&mut editor.ws).await;
        assert_eq!(code, CloseCode::Library(4404), "node {node}: {reason}");
    }
    let ended = async { while viewer_on_b.next().await.is_some() {} };
    timeout(WAIT, ended)
        .await
        .expect("the viewer's stream on B ends");

    // B no longer holds it: gone, and reading the name does not bring it back.
    let (status, _) = request(&b.addr, "GET", "/admin/docs/doomed", &headers, vec![]).await;
    assert_eq!(status, 404);
    let (status, body) = request(&b.addr, "GET", "/docs/doomed/json", &[], vec![]).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_an_unknown_name_on_any_node_stores_nothing_and_the_first_write_creates_it() {
    const ADMIN: &str = "cluster-admin-key-for-reads-0123456789";
    let redis = RedisServer::start();
    let (a, b) = (
        redis.node(&["--admin-key", ADMIN]),
        redis.node(&["--admin-key", ADMIN]),
    );
    async fn listed(addr: &str) -> usize {
        let auth = format!("Bearer {ADMIN}");
        let headers = [("authorization", auth.as_str())];
        let (status, body) = request(addr, "GET", "/admin/docs", &headers, vec![]).await;
        assert_eq!(status, 200);
        let docs: serde_json::Value = serde_json::from_slice(&body).expect("json");
        docs.as_array().expect("list").len()
    }

    for node in [&a, &b] {
        for path in ["/docs/ghost", "/docs/ghost/json", "/docs/never"] {
            let (status, body) = request(&node.addr, "GET", path, &[], vec![]).await;
            assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
            assert!(String::from_utf8_lossy(&body).contains("document_not_found"));
        }
    }
    // A viewer waits on B, an editor joins on A: both see an empty document.
    let mut viewer = open_stream(&b.addr, "/sse/ghost", &[]).await;
    let snapshot = viewer.next_change().await;
    assert_eq!(snapshot.event.as_deref(), Some("snapshot"));
    let incarnation = snapshot
        .id
        .as_deref()
        .and_then(|id| id.split_once('-'))
        .map(|(inc, _)| inc.to_owned())
        .expect("an id");
    let mut editor = Editor::connect(&a.url("ghost"), Doc::new()).await;
    assert!(text(&editor.doc).is_empty());
    assert_eq!((listed(&a.addr).await, listed(&b.addr).await), (0, 0));
    assert_eq!(redis.cli(&["EXISTS", "weft:{ghost}:seq"]), "0");
    for meta in ["weft:{ghost}:meta", "weft:{never}:meta"] {
        let ttl: i64 = redis.cli(&["PTTL", meta]).parse().expect("a number");
        assert!(
            ttl > 0,
            "{meta}: only provisional metadata, which expires (PTTL {ttl})"
        );
    }

    // The first edit creates it, under the incarnation both nodes loaded.
    editor.type_text("born").await;
    let ids = timeout(
        WAIT,
        view_until(&mut viewer, &Doc::new(), &["born".to_owned()]),
    )
    .await
    .expect("the viewer on B sees the first write");
    assert_eq!(ids, vec![format!("{incarnation}-1")]);
    assert_eq!((listed(&a.addr).await, listed(&b.addr).await), (1, 1));
    assert_eq!(
        redis.cli(&["PTTL", "weft:{ghost}:meta"]),
        "-1",
        "made permanent"
    );
}

/// Reads awareness messages, noting every (client, state) in `seen`, until
/// `client` is shown with state `json`.
async fn presence_until(ws: &mut Ws, seen: &mut Vec<(u64, String)>, client: u64, json: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "client {client} never showed {json}; saw {seen:?}"
        );
        if let YMessage::Awareness(update) = next_message(ws).await {
            let mut found = false;
            for (id, entry) in &update.clients {
                seen.push((id.get(), entry.json.to_string()));
                found |= id.get() == client && &*entry.json == json;
            }
            if found {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_owned_on_one_node_cannot_be_forged_from_another() {
    const VICTIM: u64 = 1001;
    const MALLORY: u64 = 666;
    let victim_state = r#"{"user":"Victim"}"#;
    let redis = RedisServer::start();
    let (a, b) = (redis.node(&[]), redis.node(&[]));
    let mut victim = Editor::connect(&a.url("owned"), Doc::new()).await;
    let mut watcher_a = Editor::connect(&a.url("owned"), Doc::new()).await;
    let (mut seen_by_victim, mut seen_on_a) = (Vec::new(), Vec::new());
    send(&mut victim.ws, presence(VICTIM, 3, victim_state)).await;
    presence_until(&mut watcher_a.ws, &mut seen_on_a, VICTIM, victim_state).await;

    // Mallory is the first on node B, so B loads the document for her and
    // has never been sent the victim's state; she forges it at once.
    let mut mallory = connect(&b.url("owned")).await;
    send(
        &mut mallory,
        presence(VICTIM, 50, r#"{"user":"Mallory pretending"}"#),
    )
    .await;
    send(&mut mallory, presence(VICTIM, 51, "null")).await;
    send(&mut mallory, presence(MALLORY, 1, r#"{"user":"Mallory"}"#)).await;
    // Her own state reaching node A means whatever she sent before it did.
    let mallory_state = r#"{"user":"Mallory"}"#;
    presence_until(&mut watcher_a.ws, &mut seen_on_a, MALLORY, mallory_state).await;
    presence_until(&mut victim.ws, &mut seen_by_victim, MALLORY, mallory_state).await;
    for (who, seen) in [("victim", &seen_by_victim), ("watcher on A", &seen_on_a)] {
        assert!(
            !seen
                .iter()
                .any(|(id, json)| *id == VICTIM && json != victim_state),
            "{who} was sent a forged state: {seen:?}"
        );
    }
    // She was not closed for it (y-websocket clients re-send others' states).
    send(&mut mallory, YMessage::AwarenessQuery).await;
    let mut seen_on_b = Vec::new();
    presence_until(&mut mallory, &mut seen_on_b, VICTIM, victim_state).await;

    // Node B shows newcomers the victim as the victim published it.
    let mut watcher_b = connect(&b.url("owned")).await;
    let mut seen_on_b = Vec::new();
    presence_until(&mut watcher_b, &mut seen_on_b, VICTIM, victim_state).await;
    assert!(
        !seen_on_b
            .iter()
            .any(|(id, json)| *id == VICTIM && json != victim_state),
        "a newcomer on B was shown a forged state: {seen_on_b:?}"
    );
}

/// Documents the connection-count test opens on one node. CI runs a few
/// hundred; `WEFT_CLUSTER_DOCS=5000` runs the figure README gives.
fn many_docs() -> usize {
    std::env::var("WEFT_CLUSTER_DOCS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}

/// A change typed on `writer_node` to `doc` reaches `editor`, retried
/// while the nodes find Redis again.
async fn crosses(writer_node: &Weft, doc: &str, editor: &mut Editor, token: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "{doc}: no change crossed nodes");
        let url = writer_node.url(doc);
        let owned = token.to_owned();
        let typed = tokio::spawn(async move {
            let mut writer = Editor::connect(&url, Doc::new()).await;
            writer.type_text(&owned).await;
            writer
        });
        let Ok(Ok(writer)) = timeout(Duration::from_secs(3), typed).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if timeout(Duration::from_secs(3), editor.wait_for(&[token.to_owned()]))
            .await
            .is_ok()
        {
            drop(writer);
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_serves_many_documents_on_a_few_redis_connections_and_across_a_restart() {
    let n = many_docs();
    let mut redis = RedisServer::start();
    // The editors are read one at a time, so at thousands of documents
    // some are not read for longer than two pings would allow.
    let unlimited = ["--max-new-docs-per-minute", "0", "--ping-interval", "10m"];
    let a = redis.node(&unlimited);
    let mut editors = Vec::with_capacity(n);
    for i in 0..n {
        editors.push(Editor::connect(&a.url(&format!("many-{i}")), Doc::new()).await);
    }
    let clients = redis.cli(&["CLIENT", "LIST"]).lines().count() - 1;
    eprintln!("one node with {n} documents open: {clients} Redis connections");
    assert!(
        clients <= 8,
        "one node with {n} documents open holds {clients} Redis connections"
    );

    // A change made on another node reaches a sample of them.
    let b = redis.node(&unlimited);
    let sample: Vec<usize> = (0..n).step_by((n / 100).max(1)).collect();
    for &i in &sample {
        crosses(
            &b,
            &format!("many-{i}"),
            &mut editors[i],
            &format!("<b{i}>"),
        )
        .await;
    }

    // Redis dies and comes back: every document still crosses nodes.
    redis.restart();
    for (i, editor) in editors.iter_mut().enumerate() {
        crosses(&b, &format!("many-{i}"), editor, &format!("<again{i}>")).await;
    }
    let clients = redis.cli(&["CLIENT", "LIST"]).lines().count() - 1;
    assert!(clients <= 16, "two nodes hold {clients} Redis connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_fails_no_request_and_a_redis_that_stays_down_is_unavailability() {
    let mut redis = RedisServer::start();
    let (a, b, c) = (redis.node(&[]), redis.node(&[]), redis.node(&[]));
    let mut editor = Editor::connect(&a.url("kept"), Doc::new()).await;
    editor.type_text("<kept>").await;
    let stored = async {
        while http_get(&b.addr, "/docs/kept/json", &[]).await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(WAIT, stored)
        .await
        .expect("stored through A, read on B");
    drop(editor);

    // The first request on a node after Redis restarts finds its command
    // connection dead; it is sent again on the new one. C never loaded
    // the document; B never heard of the other name.
    redis.restart();
    let (status, body) = http_get(&c.addr, "/docs/kept/json", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<kept>"), "{body}");
    let (status, body) = http_get(&b.addr, "/docs/never-written/json", &[]).await;
    assert_eq!(status, 404, "{body}");

    // Redis stays down: a document that must be loaded cannot be, and
    // that is unavailability (503, try again), not a damaged document.
    redis.stop();
    let (status, body) = http_get(&a.addr, "/docs/not-loaded/json", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage_unavailable"), "{body}");
    assert!(!body.contains("weft verify"), "{body}");
    redis.start_again();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_comes_back_empty_every_node_resyncs_its_clients_and_nothing_seen_is_lost() {
    let redis = RedisServer::start();
    let (a, b) = (redis.node(&[]), redis.node(&[]));
    let mut on_a = Editor::connect(&a.url("wiped"), Doc::new()).await;
    let mut on_b = Editor::connect(&b.url("wiped"), Doc::new()).await;
    let before = [tokens("a", 3), tokens("b", 3)].concat();
    for t in &before[..3] {
        on_a.type_text(t).await;
    }
    for t in &before[3..] {
        on_b.type_text(t).await;
    }
    timeout(WAIT, on_a.wait_for(&before))
        .await
        .expect("A has all");
    timeout(WAIT, on_b.wait_for(&before))
        .await
        .expect("B has all");

    // Redis loses everything (wiped, or an empty replica promoted). A's
    // next change is not stored under the old history: its writer is
    // closed with 1011, and so is B's editor once B hears the document
    // was stored anew.
    redis.cli(&["FLUSHALL"]);
    on_a.type_text("<after>").await;
    let (code, reason) = close_of(&mut on_a.ws).await;
    assert_eq!(u16::from(code), 1011, "{reason}");

    // Clients reconnect and resync, as y-websocket does: what they hold
    // goes back into Redis.
    let on_a = Editor::connect(&a.url("wiped"), on_a.doc).await;
    // B wrote nothing: only hearing that the history changed closes it.
    let (code, reason) = close_of(&mut on_b.ws).await;
    assert_eq!(u16::from(code), 1011, "{reason}");
    let on_b = Editor::connect(&b.url("wiped"), on_b.doc).await;

    // A node that starts now, and both others, have everything any client
    // saw, "<after>" included.
    let all: Vec<String> = before.iter().cloned().chain(["<after>".into()]).collect();
    let c = redis.node(&[]);
    let mut fresh = Editor::connect(&c.url("wiped"), Doc::new()).await;
    timeout(WAIT, fresh.wait_for(&all))
        .await
        .expect("a fresh node has every change");
    drop((on_a, on_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_replicas_a_change_no_replica_has_is_refused() {
    let redis = RedisServer::start();
    let a = redis.node(&["--redis-min-replicas", "1", "--redis-replica-wait", "200ms"]);
    let (status, body) = request(
        &a.addr,
        "POST",
        "/docs/lonely/updates",
        &[("content-type", "application/octet-stream")],
        insert(&Doc::new(), "<unreplicated>"),
    )
    .await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("replicas"), "{body}");
    // (The primary may still hold it: WAIT confirms, it does not undo.)
}

/// Takes whatever reaches `editor` within `within`, until its connection
/// ends.
async fn take_for(editor: &mut Editor, within: Duration) {
    let deadline = Instant::now() + within;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, editor.ws.next()).await {
        if let Message::Binary(bytes) = frame {
            if let Ok(msg) = YMessage::decode_v1(&bytes) {
                editor.take(msg).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_min_replicas_every_change_a_client_saw_survives_the_primary_dying() {
    let mut primary = RedisServer::start_on_tcp();
    let replica = RedisServer::start_replica_of(&primary);
    let a = primary.node(&["--redis-min-replicas", "1"]);
    let mut writer = Editor::connect(&a.url("failover"), Doc::new()).await;
    let mut observer = Editor::connect(&a.url("failover"), Doc::new()).await;
    let typed = tokens("t", 40);
    for t in &typed[..20] {
        writer.type_text(t).await;
    }
    timeout(WAIT, observer.wait_for(&typed[..20]))
        .await
        .expect("the observer sees the first changes");

    // The primary dies mid-edit (kill -9), and the replica takes over.
    for t in &typed[20..30] {
        writer.type_text(t).await;
    }
    primary.stop();
    for t in &typed[30..] {
        // Refused now (its node cannot store it): the connection may close.
        let update = update_message(insert(&writer.doc, t)).encode_v1();
        let _ = writer.ws.send(Message::Binary(update.into())).await;
    }
    // Whatever the observer got before its node lost Redis.
    take_for(&mut observer, Duration::from_secs(2)).await;
    let seen_by = |doc: &Doc| -> Vec<String> {
        let text = text(doc);
        typed
            .iter()
            .filter(|t| text.contains(t.as_str()))
            .cloned()
            .collect()
    };
    let seen = seen_by(&observer.doc);
    assert!(seen.len() >= 20, "{seen:?}");
    replica.cli(&["REPLICAOF", "NO", "ONE"]);

    let b = replica.node(&[]);
    let mut fresh = Editor::connect(&b.url("failover"), Doc::new()).await;
    timeout(WAIT, fresh.wait_for(&seen))
        .await
        .expect("every change a client saw is on the promoted replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_three_nodes_with_aggressive_trimming_are_never_disconnected() {
    let redis = RedisServer::start();
    let flags = [
        "--snapshot-every",
        "20",
        "--keep-log-tail",
        "3",
        "--history-retention",
        "0",
    ];
    let nodes = [redis.node(&flags), redis.node(&flags), redis.node(&flags)];
    let mut editors = Vec::new();
    for node in &nodes {
        editors.push(Editor::connect(&node.url("trimmed"), Doc::new()).await);
    }
    // Everyone types at once, without waiting for the others: appends
    // conflict, and the changes a node must catch up with are often
    // compacted away behind a snapshot by then.
    const ROUNDS: usize = 300;
    let typed: Vec<Vec<String>> = (0..3).map(|n| tokens(&format!("n{n}-"), ROUNDS)).collect();
    for i in 0..ROUNDS {
        for (editor, mine) in editors.iter_mut().zip(&typed) {
            editor.type_text(&mine[i]).await;
        }
        // Paced, so that most changes are stored one by one.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all: Vec<String> = typed.concat();
    for editor in &mut editors {
        // A 1011 here (a storage failure) would fail the read.
        timeout(WAIT, editor.wait_for(&all))
            .await
            .expect("every editor gets every change, never disconnected");
    }
    let texts: Vec<String> = editors.iter().map(|e| text(&e.doc)).collect();
    assert!(texts.iter().all(|t| t == &texts[0]), "editors converge");
}

/// A weft node on the Redis Cluster `cluster`.
fn on_cluster(cluster: &RedisCluster, extra: &[&str]) -> Weft {
    let urls = cluster.urls();
    let mut args = vec!["--redis-cluster", urls.as_str()];
    args.extend_from_slice(extra);
    Weft::start(&args)
}

/// A document's key, as weft names it.
fn doc_key(doc: &str, what: &str) -> String {
    format!("weft:{{{doc}}}:{what}")
}

/// One document name whose keys live on each of the cluster's shards.
fn one_doc_per_shard(cluster: &RedisCluster, prefix: &str) -> Vec<String> {
    let mut found: Vec<Option<String>> = vec![None; 3];
    for i in 0..1000 {
        let name = format!("{prefix}-{i}");
        let owner = cluster.owner_of(cluster.slot_of(&doc_key(&name, "log")));
        found[owner].get_or_insert(name);
        if found.iter().all(Option::is_some) {
            return found.into_iter().flatten().collect();
        }
    }
    panic!("no names found for every shard: {found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_documents_on_every_shard_converge_and_viewers_resume_on_any_node() {
    const ADMIN: &str = "cluster-admin-key-for-listing-0123456789";
    let cluster = RedisCluster::start();
    let (a, b, c) = (
        on_cluster(&cluster, &["--admin-key", ADMIN]),
        on_cluster(&cluster, &[]),
        on_cluster(&cluster, &[]),
    );
    let docs = one_doc_per_shard(&cluster, "sharded");
    for doc in &docs {
        converge_and_resume(&a, &b, &c, doc).await;
    }
    for doc in one_doc_per_shard(&cluster, "presence") {
        presence_crosses(&b, &c, &doc).await;
    }
    // Each node holds two connections to each primary, whatever the
    // number of documents: its commands and its subscriptions.
    for shard in 0..3 {
        let clients = cluster.cli_on(shard, &["CLIENT", "LIST"]);
        let weft = clients
            .lines()
            .filter(|l| !l.contains("cmd=client|list"))
            .count();
        assert_eq!(weft, 3 * 2, "connections on shard {shard}:\n{clients}");
    }
    // Listing finds the documents on every shard.
    let auth = format!("Bearer {ADMIN}");
    let (status, body) = request(
        &a.addr,
        "GET",
        "/admin/docs",
        &[("authorization", &auth)],
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let mut names: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    names.sort_unstable();
    let mut expected: Vec<&str> = docs.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(names, expected);
    // Each document is stored whole on its own shard.
    for (shard, doc) in docs.iter().enumerate() {
        for what in ["meta", "seq", "log"] {
            let key = doc_key(doc, what);
            assert_eq!(cluster.cli_on(shard, &["EXISTS", &key]), "1", "{key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_live_documents_slot_to_another_shard_loses_nothing_any_client_saw() {
    let cluster = RedisCluster::start();
    let (a, b) = (on_cluster(&cluster, &[]), on_cluster(&cluster, &[]));
    let doc = "moving";
    let mut on_a = Editor::connect(&a.url(doc), Doc::new()).await;
    let mut on_b = Editor::connect(&b.url(doc), Doc::new()).await;
    let mut viewer = open_stream(&b.addr, &format!("/sse/{doc}"), &[]).await;
    viewer.next().await; // retry
    let seen = Doc::new();
    let snapshot = viewer.next_change().await;
    assert_eq!(snapshot.event.as_deref(), Some("snapshot"));
    let mut typed = vec!["<before>".to_owned()];
    on_a.type_text(&typed[0]).await;
    timeout(WAIT, on_b.wait_for(&typed))
        .await
        .expect("B gets it");

    // The document's slot moves to another shard while both type: its
    // commands meet ASK, then TRYAGAIN while its keys are split, then
    // MOVED; the nodes' subscriptions to its channel are dropped by Redis.
    let slot = cluster.slot_of(&doc_key(doc, "log"));
    let (from, to) = (cluster.owner_of(slot), (cluster.owner_of(slot) + 1) % 3);
    let moving = tokio::task::spawn_blocking(move || {
        cluster.move_slot(slot, to, || std::thread::sleep(Duration::from_millis(150)));
        cluster
    });
    let mut round = 0;
    while !moving.is_finished() {
        for (editor, who) in [(&mut on_a, "a"), (&mut on_b, "b")] {
            let token = format!("<{who}{round}>");
            editor.type_text(&token).await;
            typed.push(token);
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let cluster = moving.await.expect("the slot moved");
    assert_eq!(cluster.owner_of(slot), to);
    assert!(
        round > 5,
        "typing went on throughout the move ({round} rounds)"
    );
    // On the new shard, each node hears the other's changes: its
    // subscription to the document's channel followed the slot.
    timeout(WAIT, on_a.wait_for(&typed))
        .await
        .expect("A has every change");
    timeout(WAIT, on_b.wait_for(&typed))
        .await
        .expect("B has every change");
    typed.push("<a-after>".to_owned());
    on_a.type_text("<a-after>").await;
    timeout(WAIT, on_b.wait_for(&typed))
        .await
        .expect("B hears A");
    typed.push("<b-after>".to_owned());
    on_b.type_text("<b-after>").await;
    timeout(WAIT, on_a.wait_for(&typed))
        .await
        .expect("A has every change");
    timeout(WAIT, on_b.wait_for(&typed))
        .await
        .expect("B has every change");
    assert_eq!(text(&on_a.doc), text(&on_b.doc), "editors converge");
    let ids = timeout(WAIT, view_until(&mut viewer, &seen, &typed))
        .await
        .expect("the viewer sees every change");
    assert_contiguous(&ids);
    // All of it is stored on the new shard and nothing is left on the old:
    // a node that loads the document now gets every change.
    assert_eq!(cluster.cli_on(to, &["EXISTS", &doc_key(doc, "log")]), "1");
    let slot_arg = slot.to_string();
    let left = cluster.cli_on(from, &["CLUSTER", "COUNTKEYSINSLOT", &slot_arg]);
    assert_eq!(left, "0", "nothing left behind");
    let c = on_cluster(&cluster, &[]);
    let fresh = Editor::connect(&c.url(doc), Doc::new()).await;
    for token in &typed {
        assert!(
            text(&fresh.doc).contains(token.as_str()),
            "{token} was lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_down_for_a_while_loses_nothing_and_every_document_crosses_nodes_after() {
    let mut cluster = RedisCluster::start();
    let (a, b) = (on_cluster(&cluster, &[]), on_cluster(&cluster, &[]));
    let docs = one_doc_per_shard(&cluster, "shard");
    let mut editors = Vec::new();
    for doc in &docs {
        let on_a = Editor::connect(&a.url(doc), Doc::new()).await;
        let on_b = Editor::connect(&b.url(doc), Doc::new()).await;
        editors.push((on_a, on_b));
    }

    // The third shard's primary dies (no replica takes over) while
    // documents on the other shards are typed into; two seconds later it
    // is back.
    cluster.stop(2);
    let mut typed = Vec::new();
    for (i, (on_a, _)) in editors.iter_mut().enumerate().take(2) {
        let token = format!("<while-{i}>");
        on_a.type_text(&token).await;
        typed.push(vec![token]);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_again(2);

    // What was typed meanwhile crosses, and so does the document on the
    // shard that was down.
    for (i, token) in typed.iter().enumerate() {
        timeout(WAIT, editors[i].1.wait_for(token))
            .await
            .unwrap_or_else(|_| panic!("{} lost what was typed while a shard was down", docs[i]));
    }
    let mut back = Editor::connect(&b.url(&docs[2]), Doc::new()).await;
    crosses(&a, &docs[2], &mut back, "<back>").await;
}

/// A Hocuspocus frame for `doc`: its name, then `body`.
fn hocuspocus_frame(doc: &str, body: &[u8]) -> Vec<u8> {
    use yrs::encoding::write::Write;
    let mut out = Vec::new();
    out.write_string(doc);
    out.extend_from_slice(body);
    out
}

/// A Hocuspocus socket on `node` with `doc` open (no token needed).
async fn hocuspocus_on(node: &Weft, doc: &str) -> Ws {
    let mut ws = connect(&format!("ws://{}/hocuspocus", node.addr)).await;
    let auth = hocuspocus_frame(doc, &[2, 0, 0]);
    ws.send(Message::Binary(auth.into())).await.expect("send");
    ws
}

/// Reads `ws` until a stateless message (type 5) for `doc` carrying
/// `payload` comes, or `within` passes.
async fn hears_stateless(ws: &mut Ws, doc: &str, payload: &str, within: Duration) -> bool {
    let mut want = hocuspocus_frame(doc, &[5]);
    yrs::encoding::write::Write::write_string(&mut want, payload);
    let deadline = Instant::now() + within;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if matches!(&msg, Message::Binary(b) if b[..] == want[..]) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hocuspocus_stateless_messages_cross_nodes() {
    let redis = RedisServer::start();
    let (a, b) = (redis.node(&[]), redis.node(&[]));
    let mut on_a = hocuspocus_on(&a, "chat").await;
    let mut on_b = hocuspocus_on(&b, "chat").await;
    // Stateless messages are ephemeral: one sent before node B's room
    // listens is lost, so A says it again until B hears it.
    let mut stateless = vec![5];
    yrs::encoding::write::Write::write_string(&mut stateless, "hello from A");
    let mut heard = false;
    for _ in 0..20 {
        let frame = hocuspocus_frame("chat", &stateless);
        on_a.send(Message::Binary(frame.into()))
            .await
            .expect("send");
        if hears_stateless(
            &mut on_b,
            "chat",
            "hello from A",
            Duration::from_millis(500),
        )
        .await
        {
            heard = true;
            break;
        }
    }
    assert!(
        heard,
        "node B's Hocuspocus connection never heard A's stateless message"
    );
    // The sender is not sent its own back, from its node or another.
    assert!(
        !hears_stateless(
            &mut on_a,
            "chat",
            "hello from A",
            Duration::from_millis(300)
        )
        .await
    );
}
