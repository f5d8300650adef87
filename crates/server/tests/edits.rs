//! Edits from backends without Yjs, against the real binary: a Quill Delta
//! and a whole new text posted to `/docs/{doc}/text/{name}`, keys posted to
//! `/docs/{doc}/map/{name}`, each reaching a y-websocket editor and an SSE
//! viewer and stored; and every kind of bad input refused with a JSON
//! error that says what is wrong.

mod support;

use serde_json::{json, Value};
use support::*;
use tokio::time::timeout;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Map, ReadTxn, StateVector, Text, Transact, Update};

async fn post_json(addr: &str, path: &str, body: Value) -> (u16, Value) {
    let headers = [("content-type", "application/json")];
    let (status, bytes) =
        request(addr, "POST", path, &headers, body.to_string().into_bytes()).await;
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

/// An editor as y-websocket connects, synced.
async fn editor(url: &str, doc: &Doc) -> Ws {
    let mut ws = connect(url).await;
    let sv = doc.transact().state_vector();
    send(&mut ws, YMessage::Sync(SyncMessage::SyncStep1(sv))).await;
    loop {
        if let YMessage::Sync(SyncMessage::SyncStep2(u)) = next_message(&mut ws).await {
            doc.transact_mut()
                .apply_update(Update::decode_v1(&u).expect("update"))
                .expect("applies");
            return ws;
        }
    }
}

/// Reads `ws` into `doc` until `done` holds.
async fn until(ws: &mut Ws, doc: &Doc, done: impl Fn(&Doc) -> bool) {
    while !done(doc) {
        let msg = next_message(ws).await;
        apply(doc, msg);
    }
}

/// Reads the viewer's updates into `doc` until `done` holds.
async fn view_until(sse: &mut SseReader, doc: &Doc, done: impl Fn(&Doc) -> bool) {
    while !done(doc) {
        let ev = sse.next_change().await;
        doc.transact_mut()
            .apply_update(Update::decode_v1(&ev.data_bytes()).expect("update"))
            .expect("applies");
    }
}

/// A token as a backend sharing the secret mints it.
fn mint_token(secret: &str, doc: &str, mode: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 600;
    let claims = json!({ "doc": doc, "mode": mode, "exp": exp, "sub": "backend" });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

fn text_of(doc: &Doc) -> String {
    doc.get_or_insert_text("t").get_string(&doc.transact())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_map_edits_over_http_reach_editors_and_viewers_and_are_stored() {
    let weft = Weft::start(&[]);
    // Written by a Yjs client first.
    let client = Doc::new();
    client
        .get_or_insert_text("t")
        .insert(&mut client.transact_mut(), 0, "hello world");
    let seed = client
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let (status, _) = request(&weft.addr, "POST", "/docs/d/updates", &[], seed).await;
    assert_eq!(status, 200);

    let mine = Doc::new();
    let mut ws = editor(&weft.url("d"), &mine).await;
    let mut http = http1(&weft.addr).await;
    let resp = http.request("GET", "/sse/d", &[], Vec::new()).await;
    assert_eq!(resp.status().as_u16(), 200);
    let mut viewer = SseReader::new(resp);
    let seen = Doc::new();
    view_until(&mut viewer, &seen, |d| text_of(d) == "hello world").await;

    // A Quill Delta, with formatting.
    let delta = json!({"delta": [{"retain": 6}, {"delete": 5}, {"insert": "weft", "attributes": {"bold": true}}]});
    let (status, body) = post_json(&weft.addr, "/docs/d/text/t", delta).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["id"].as_str().is_some_and(|id| id.contains('-')),
        "{body}"
    );
    let edited = |d: &Doc| text_of(d) == "hello weft";
    timeout(WAIT, until(&mut ws, &mine, edited))
        .await
        .expect("the editor gets it");
    timeout(WAIT, view_until(&mut viewer, &seen, edited))
        .await
        .expect("the viewer gets it");
    let bold = mine
        .get_or_insert_text("t")
        .diff(&mine.transact(), yrs::types::text::YChange::identity);
    assert!(
        bold.iter().any(|d| d
            .attributes
            .as_ref()
            .is_some_and(|a| a.contains_key("bold"))),
        "the insert is bold: {bold:?}"
    );

    // A whole new text, by the smallest change.
    let (status, body) = post_json(
        &weft.addr,
        "/docs/d/text/t",
        json!({"text": "hello, weft!"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let replaced = |d: &Doc| text_of(d) == "hello, weft!";
    timeout(WAIT, until(&mut ws, &mine, replaced))
        .await
        .expect("the editor gets it");
    timeout(WAIT, view_until(&mut viewer, &seen, replaced))
        .await
        .expect("the viewer gets it");
    // The same text again changes nothing.
    let (status, _) = post_json(
        &weft.addr,
        "/docs/d/text/t",
        json!({"text": "hello, weft!"}),
    )
    .await;
    assert_eq!(status, 204);

    // Map keys.
    let (status, body) = post_json(
        &weft.addr,
        "/docs/d/map/m",
        json!({"title": "Notes", "n": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let has_title = |d: &Doc| {
        d.get_or_insert_map("m")
            .get(&d.transact(), "title")
            .is_some_and(|v| v.to_string(&d.transact()) == "Notes")
    };
    timeout(WAIT, until(&mut ws, &mine, has_title))
        .await
        .expect("the editor gets it");
    let (status, body) = post_json(&weft.addr, "/docs/d/map/m", json!({"n": null})).await;
    assert_eq!(status, 200, "{body}");

    // All of it stored: a fresh editor after a restart has it.
    let weft = weft.restart(&[]);
    let (status, body) = request(&weft.addr, "GET", "/docs/d/json", &[], vec![]).await;
    assert_eq!(status, 200);
    let json: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["t"], "hello, weft!");
    assert_eq!(json["m"], json!({"title": "Notes"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_edit_creates_the_document() {
    let weft = Weft::start(&[]);
    let (status, body) = post_json(
        &weft.addr,
        "/docs/fresh/text/body",
        json!({"text": "first"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = request(&weft.addr, "GET", "/docs/fresh/json", &[], vec![]).await;
    assert_eq!(status, 200);
    let json: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["body"], "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_edits_are_refused_saying_what_is_wrong() {
    let weft = Weft::start(&[]);
    let (status, _) = post_json(&weft.addr, "/docs/b/text/t", json!({"text": "abc"})).await;
    assert_eq!(status, 200);
    let (status, _) = post_json(&weft.addr, "/docs/b/map/m", json!({"k": 1})).await;
    assert_eq!(status, 200);

    for (path, body, code) in [
        (
            "/docs/b/text/t",
            json!({"delta": [{"retain": 4}]}),
            "past_end",
        ),
        (
            "/docs/b/text/t",
            json!({"delta": [{"retain": 1}, {"delete": 3}]}),
            "past_end",
        ),
        (
            "/docs/b/text/t",
            json!({"delta": [{"retain": 0}]}),
            "invalid_delta",
        ),
        (
            "/docs/b/text/t",
            json!({"delta": [{"insert": 5}]}),
            "invalid_delta",
        ),
        ("/docs/b/text/t", json!({"words": "x"}), "invalid_body"),
        (
            "/docs/b/text/t",
            json!({"text": "x", "delta": []}),
            "invalid_body",
        ),
        (
            "/docs/b/map/m",
            json!(["not", "an", "object"]),
            "invalid_body",
        ),
        ("/docs/b/text/m", json!({"text": "x"}), "wrong_root_type"),
        ("/docs/b/map/t", json!({"k": 1}), "wrong_root_type"),
    ] {
        let (status, answer) = post_json(&weft.addr, path, body.clone()).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some(code)),
            "{path} {body}: {answer}"
        );
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    let (status, bytes) = request(
        &weft.addr,
        "POST",
        "/docs/b/text/t",
        &[],
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&bytes));
    // Nothing refused was applied.
    let (_, body) = request(&weft.addr, "GET", "/docs/b/json", &[], vec![]).await;
    let json: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json, json!({"t": "abc", "m": {"k": 1}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_need_a_write_token() {
    const SECRET: &str = "edits-test-secret-0123456789abcdefghijkl";
    let weft = Weft::start(&["--auth-secret", SECRET]);
    let read = mint_token(SECRET, "d", "read");
    let write = mint_token(SECRET, "d", "write");
    let body = json!({"text": "x"}).to_string().into_bytes();
    let (status, _) = request(&weft.addr, "POST", "/docs/d/text/t", &[], body.clone()).await;
    assert_eq!(status, 401);
    let path = format!("/docs/d/text/t?token={read}");
    let (status, _) = request(&weft.addr, "POST", &path, &[], body.clone()).await;
    assert_eq!(status, 403);
    let path = format!("/docs/d/text/t?token={write}");
    let (status, _) = request(&weft.addr, "POST", &path, &[], body).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_texts_sent_together_replace_one_after_another_never_doubling() {
    let weft = Weft::start(&[]);
    let (status, _) = post_json(&weft.addr, "/docs/twice/text/t", json!({"text": "old"})).await;
    assert_eq!(status, 200);
    // The same replacement sent eight times at once (a retried request,
    // say): the text ends as it, never as several copies.
    let sends = (0..8).map(|_| post_json(&weft.addr, "/docs/twice/text/t", json!({"text": "new"})));
    for (status, body) in futures_util::future::join_all(sends).await {
        assert!(status == 200 || status == 204, "{status} {body}");
    }
    let (_, body) = request(&weft.addr, "GET", "/docs/twice/json", &[], vec![]).await;
    let json: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["t"], "new");
}
