//! Presence (awareness) end to end: who may publish which client ids, how
//! much one connection and one document may hold, and that nothing another
//! connection publishes can lock an editor out or rewrite its cursor.

mod support;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::*;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::{AwarenessUpdate, Message as YMessage, SyncMessage};
use yrs::{ClientID, Doc, StateVector};

const SECRET: &str = "weft-test-secret-0123456789abcdefghij";

fn token(doc: &str, mode: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 600;
    let claims = json!({ "doc": doc, "mode": mode, "exp": exp, "sub": "tester" });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

fn secured(extra: &[&str]) -> Weft {
    let mut args = vec!["--auth-secret", SECRET];
    args.extend_from_slice(extra);
    Weft::start(&args)
}

/// An awareness message with several states at once.
fn states(entries: &[(u64, u32, &str)]) -> YMessage {
    let clients = entries
        .iter()
        .map(|&(client, clock, json)| {
            (
                ClientID::new(client),
                AwarenessUpdateEntry {
                    clock,
                    json: json.into(),
                },
            )
        })
        .collect();
    YMessage::Awareness(AwarenessUpdate { clients })
}

/// A connection that keeps the presence it is sent as a y-protocols
/// client does (higher clock wins; `null` removes), and remembers every
/// entry it was ever sent.
struct Client {
    ws: Ws,
    view: HashMap<u64, (u32, Option<String>)>,
    history: Vec<(u64, String)>,
}

impl Client {
    async fn join(url: &str) -> Client {
        let mut ws = connect(url).await;
        assert!(matches!(
            next_message(&mut ws).await,
            YMessage::Sync(SyncMessage::SyncStep1(_))
        ));
        let mut client = Client {
            ws,
            view: HashMap::new(),
            history: Vec::new(),
        };
        client.settle().await;
        client
    }

    fn take(&mut self, update: &AwarenessUpdate) {
        for (client, entry) in &update.clients {
            let id = client.get();
            self.history.push((id, entry.json.to_string()));
            let (clock, present) = self.view.get(&id).cloned().unwrap_or((0, None));
            let null = &*entry.json == "null";
            if entry.clock > clock || (entry.clock == clock && null && present.is_some()) {
                let state = (!null).then(|| entry.json.to_string());
                self.view.insert(id, (entry.clock, state));
            }
        }
    }

    /// Reads everything the room had for this connection up to now: the
    /// answer to a sync step 1 comes after it.
    async fn settle(&mut self) {
        send(
            &mut self.ws,
            YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())),
        )
        .await;
        loop {
            match next_message(&mut self.ws).await {
                YMessage::Sync(SyncMessage::SyncStep2(_)) => return,
                YMessage::Awareness(update) => self.take(&update),
                _ => {}
            }
        }
    }

    /// Reads until `client`'s state is `json` (or gone, for `None`).
    async fn wait_for(&mut self, client: u64, json: Option<&str>) {
        let deadline = Instant::now() + WAIT;
        while self.state_of(client).as_deref() != json {
            assert!(
                Instant::now() < deadline,
                "client {client} never became {json:?}"
            );
            if let YMessage::Awareness(update) = next_message(&mut self.ws).await {
                self.take(&update);
            }
        }
    }

    fn state_of(&self, client: u64) -> Option<String> {
        self.view.get(&client).and_then(|(_, s)| s.clone())
    }

    fn was_sent(&self, needle: &str) -> bool {
        self.history.iter().any(|(_, json)| json.contains(needle))
    }
}

const VICTIM: u64 = 1001;
const MALLORY: u64 = 666;

#[tokio::test]
async fn a_forged_state_or_null_for_another_connections_client_id_goes_nowhere() {
    let weft = secured(&[]);
    let doc = "cursors";
    let write = format!("{}?token={}", weft.url(doc), token(doc, "write"));
    let read = format!("{}?token={}", weft.url(doc), token(doc, "read"));
    let mut victim = Client::join(&write).await;
    let mut observer = Client::join(&write).await;
    send(&mut victim.ws, presence(VICTIM, 3, r#"{"user":"Victim"}"#)).await;
    observer
        .wait_for(VICTIM, Some(r#"{"user":"Victim"}"#))
        .await;

    // Mallory, with a read token, claims the victim's id with a higher
    // clock, then erases it; then publishes her own presence.
    let mut mallory = Client::join(&read).await;
    send(
        &mut mallory.ws,
        presence(VICTIM, 50, r#"{"user":"Mallory pretending"}"#),
    )
    .await;
    send(&mut mallory.ws, presence(VICTIM, 51, "null")).await;
    send(
        &mut mallory.ws,
        presence(MALLORY, 1, r#"{"user":"Mallory"}"#),
    )
    .await;
    // Her own presence reaching the observer means the room handled the
    // forgeries before it; she was not closed for them (a y-websocket
    // client re-sends others' states as a matter of course).
    observer
        .wait_for(MALLORY, Some(r#"{"user":"Mallory"}"#))
        .await;
    mallory.settle().await;
    victim.settle().await;
    observer.settle().await;

    for (who, c) in [("observer", &observer), ("victim", &victim)] {
        assert_eq!(
            c.state_of(VICTIM).as_deref(),
            Some(r#"{"user":"Victim"}"#),
            "{who} still shows the victim"
        );
        assert!(!c.was_sent("pretending"), "{who} was sent the forged state");
        assert!(
            !c.history.contains(&(VICTIM, "null".into())),
            "{who} was sent the forged null"
        );
    }
    // And a newcomer is shown the real one.
    let late = Client::join(&write).await;
    assert_eq!(
        late.state_of(VICTIM).as_deref(),
        Some(r#"{"user":"Victim"}"#)
    );
    assert_eq!(
        late.state_of(MALLORY).as_deref(),
        Some(r#"{"user":"Mallory"}"#)
    );

    // When the victim leaves, the id is free again: it was the victim's
    // only while that connection lived.
    drop(victim);
    observer.wait_for(VICTIM, None).await;
}

#[tokio::test]
async fn one_connection_may_introduce_at_most_four_client_ids() {
    let weft = Weft::start(&[]);
    let mut five = Client::join(&weft.url("ids")).await;
    let entries: Vec<(u64, u32, &str)> = (1..=5).map(|id| (id, 1, r#"{"tab":1}"#)).collect();
    send(&mut five.ws, states(&entries)).await;
    let (code, reason) = close_of(&mut five.ws).await;
    assert_eq!(code, CloseCode::Library(4400), "{reason}");
    assert!(reason.contains("at most 4 client ids"), "{reason}");

    // Four, over two messages, are fine; a fifth closes it.
    let mut tabs = Client::join(&weft.url("ids")).await;
    send(&mut tabs.ws, states(&entries[..2])).await;
    send(&mut tabs.ws, states(&entries[2..4])).await;
    tabs.wait_for(4, Some(r#"{"tab":1}"#)).await;
    send(&mut tabs.ws, states(&entries[4..])).await;
    let (code, reason) = close_of(&mut tabs.ws).await;
    assert_eq!(code, CloseCode::Library(4400), "{reason}");

    // Nothing refused was stored.
    let late = Client::join(&weft.url("ids")).await;
    assert!(
        late.view.values().all(|(_, s)| s.is_none()),
        "{:?}",
        late.view
    );
}

/// An awareness message of `count` client ids (from `first` on) with
/// states of 100 bytes.
fn flood(first: u64, count: u64) -> YMessage {
    let json = format!(r#"{{"pad":"{}"}}"#, "x".repeat(90));
    let entries: Vec<(u64, u32, &str)> = (first..first + count)
        .map(|id| (id, 1, json.as_str()))
        .collect();
    states(&entries)
}

#[tokio::test]
async fn the_reported_flood_is_refused_at_once_and_editors_still_join() {
    let weft = Weft::start(&[]);
    let (status, _) = request(
        &weft.addr,
        "POST",
        "/docs/flooded/updates",
        &[],
        insert(&Doc::new(), "still here"),
    )
    .await;
    assert_eq!(status, 200);
    let watcher = Client::join(&weft.url("flooded")).await;
    let rss_before = weft.rss_kib();
    // The report's 40,000 ids of 100 bytes in one message (4.6 MB) is more
    // than any client could have reason to send: refused before it is
    // decoded. 10,000 (1.2 MB) is decoded, and refused for its ids.
    let cases = [
        (
            flood(10_000, 40_000),
            "more than this document's presence allows",
        ),
        (flood(10_000, 10_000), "at most 4 client ids"),
    ];
    for round in 0..10 {
        let (message, why) = &cases[round % 2];
        let mut flooder = Client::join(&weft.url("flooded")).await;
        send(&mut flooder.ws, message.clone()).await;
        let (code, reason) = close_of(&mut flooder.ws).await;
        assert_eq!(code, CloseCode::Library(4400), "{reason}");
        assert!(reason.contains(why), "{reason}");
    }
    let started = Instant::now();
    let mut editor = connect(&weft.url("flooded")).await;
    send(
        &mut editor,
        YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())),
    )
    .await;
    let content = Doc::new();
    loop {
        match next_message(&mut editor).await {
            YMessage::Sync(SyncMessage::SyncStep2(u)) => {
                apply(&content, YMessage::Sync(SyncMessage::SyncStep2(u)));
                break;
            }
            YMessage::Awareness(update) => assert!(update.clients.is_empty()),
            _ => {}
        }
    }
    assert_eq!(text(&content), "still here");
    let joined = started.elapsed();
    let grew = weft.rss_kib().saturating_sub(rss_before);
    eprintln!("10 floods refused; an editor then synced in {joined:?}; server RSS +{grew} KiB");
    assert!(joined < Duration::from_secs(5));
    assert!(grew < 16 * 1024, "RSS grew by {grew} KiB");
    drop(watcher);
}

#[tokio::test]
async fn a_full_document_refuses_its_largest_holder_not_the_newcomer() {
    let weft = Weft::start(&[
        "--max-document-presence-bytes",
        "200000",
        "--max-presence-bytes",
        "70000",
    ]);
    let url = weft.url("crowded");
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(65_000));
    let bigger = format!(r#"{{"pad":"{}"}}"#, "x".repeat(66_000));
    // Three hogs fill the budget to within 2 KB.
    let mut hogs = Vec::new();
    for (i, json) in [&big, &bigger, &big].into_iter().enumerate() {
        let mut hog = Client::join(&url).await;
        send(&mut hog.ws, presence(100 + i as u64, 1, json)).await;
        hog.wait_for(100 + i as u64, Some(json)).await;
        hogs.push(hog);
    }
    // A fourth as large as the largest is itself the largest holder: it is
    // refused, and nothing of it stored.
    let mut fourth = Client::join(&url).await;
    send(&mut fourth.ws, presence(200, 1, &bigger)).await;
    let (code, reason) = close_of(&mut fourth.ws).await;
    assert_eq!(code, CloseCode::Library(4400), "{reason}");
    assert!(reason.contains("presence is full"), "{reason}");

    // An editor with an ordinary cursor pushes it over: the hog holding the
    // most is closed and its state removed; the editor stays.
    let mut editor = Client::join(&url).await;
    let cursor = format!(r#"{{"user":"ed","pad":"{}"}}"#, "c".repeat(4000));
    send(&mut editor.ws, presence(7, 1, &cursor)).await;
    editor.wait_for(7, Some(&cursor)).await;
    editor.wait_for(101, None).await;
    let (code, reason) = close_of(&mut hogs[1].ws).await;
    assert_eq!(code, CloseCode::Library(4400), "{reason}");
    assert!(reason.contains("presence is full"), "{reason}");
    editor.settle().await;
    assert!(editor.state_of(100).is_some() && editor.state_of(102).is_some());
    assert!(editor.state_of(200).is_none());
}

#[tokio::test]
async fn a_joiners_opening_presence_is_never_what_closes_it() {
    // Presence worth far more than a connection may have queued.
    let weft = Weft::start(&["--outbound-queue-bytes", "65536"]);
    let url = weft.url("busy");
    let json = format!(r#"{{"pad":"{}"}}"#, "p".repeat(50_000));
    let mut holders = Vec::new();
    for n in 0..3u64 {
        let mut holder = Client::join(&url).await;
        let entries: Vec<(u64, u32, &str)> =
            (0..4).map(|i| (n * 10 + i + 1, 1, json.as_str())).collect();
        send(&mut holder.ws, states(&entries)).await;
        holders.push(holder);
        // Everyone reads it, so no holder is ever a slow reader here.
        for h in &mut holders {
            h.wait_for(n * 10 + 4, Some(&json)).await;
        }
    }
    // 600 KB of presence; the joiner is sent it whole and stays.
    for _ in 0..3 {
        let joiner = timeout(WAIT, Client::join(&url)).await.expect("joins");
        let present = joiner.view.values().filter(|(_, s)| s.is_some()).count();
        assert_eq!(present, 12);
    }
}

#[tokio::test]
async fn readers_presence_can_be_turned_off() {
    let weft = secured(&["--readers-presence", "false"]);
    let doc = "quiet";
    let mut writer =
        Client::join(&format!("{}?token={}", weft.url(doc), token(doc, "write"))).await;
    let mut reader = Client::join(&format!("{}?token={}", weft.url(doc), token(doc, "read"))).await;
    send(&mut reader.ws, presence(31, 1, r#"{"user":"reader"}"#)).await;
    reader.settle().await;
    send(&mut writer.ws, presence(32, 1, r#"{"user":"writer"}"#)).await;
    reader.wait_for(32, Some(r#"{"user":"writer"}"#)).await;
    writer.settle().await;
    assert!(!writer.was_sent("reader"), "the reader's presence went out");
    assert_eq!(reader.state_of(31), None, "not even echoed as stored");
    // The reader stays connected and keeps syncing.
    reader.settle().await;
}
