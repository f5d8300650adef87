//! History end to end: every stored change records who made it (the
//! token's subject, or `anonymous#<connection>`), when and through what
//! (`ws`, `hocuspocus`, `http`), and `GET /docs/{doc}/history` lists them
//! with a read token, a page at a time, by time and by author.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::SinkExt;
use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use yrs::encoding::write::Write;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Text};

const SECRET: &str = "weft-history-secret-0123456789abcdefghij";

fn token(doc: &str, mode: &str, sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 600;
    let claims = json!({ "doc": doc, "mode": mode, "exp": exp, "sub": sub });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

async fn history(weft: &Weft, query: &str) -> Value {
    let reader = token("story", "read", "reader");
    let (status, body) = http_get(
        &weft.addr,
        &format!("/docs/story/history?token={reader}&{query}"),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// `(author, via)` of each listed change.
fn who(page: &Value) -> Vec<(String, String)> {
    page["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("?").to_owned();
            (s("author"), s("via"))
        })
        .collect()
}

/// Waits until the document's history lists `n` changes (it is 404 until
/// the first is stored).
async fn history_of(weft: &Weft, n: usize) -> Value {
    let reader = token("story", "read", "reader");
    let path = format!("/docs/story/history?token={reader}&limit=100");
    poll_until(
        || async {
            let (_, body) = http_get(&weft.addr, &path, &[]).await;
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)
        },
        |page| page["changes"].as_array().is_some_and(|c| c.len() >= n),
    )
    .await
}

#[tokio::test]
async fn each_change_records_its_author_and_transport_and_history_lists_them() {
    let weft = Weft::start(&["--auth-secret", SECRET]);
    // Ada types over y-websocket.
    let ada = Doc::with_client_id(1);
    let mut ws = connect(&format!(
        "{}?token={}",
        weft.url("story"),
        token("story", "write", "ada")
    ))
    .await;
    next_message(&mut ws).await;
    send(&mut ws, update_message(insert(&ada, "hello"))).await;
    history_of(&weft, 1).await;
    // Grace over Hocuspocus' protocol.
    let mut hp = connect(&format!("ws://{}/hocuspocus", weft.addr)).await;
    let frame = |body: Vec<u8>| {
        let mut out = Vec::new();
        out.write_string("story");
        out.extend_from_slice(&body);
        Message::Binary(out.into())
    };
    let mut auth = vec![2, 0];
    auth.write_string(&token("story", "write", "grace"));
    hp.send(frame(auth)).await.expect("send");
    let grace = Doc::with_client_id(2);
    let change = update_message(insert(&grace, " world")).encode_v1();
    hp.send(frame(change)).await.expect("send");
    history_of(&weft, 2).await;
    // A bot over HTTP.
    let bot = Doc::with_client_id(3);
    let (status, body) = request(
        &weft.addr,
        "POST",
        &format!(
            "/docs/story/updates?token={}",
            token("story", "write", "bot")
        ),
        &[],
        insert(&bot, "!"),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    let page = history_of(&weft, 3).await;
    assert_eq!(
        who(&page),
        [
            ("ada".into(), "ws".into()),
            ("grace".into(), "hocuspocus".into()),
            ("bot".into(), "http".into())
        ]
    );
    let first = &page["changes"][0];
    assert_eq!(
        (first["inserted"].as_u64(), first["deleted"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(first["seq"].as_u64(), Some(1));
    assert!(
        first["id"].as_str().is_some_and(|id| id.ends_with("-1")),
        "{first}"
    );

    // By author, a page at a time.
    assert_eq!(
        who(&history(&weft, "author=grace").await),
        [("grace".into(), "hocuspocus".into())]
    );
    let one = history(&weft, "limit=1").await;
    assert_eq!(who(&one).len(), 1);
    let next = one["next"].as_u64().expect("a next page");
    let rest = history(&weft, &format!("cursor={next}")).await;
    assert_eq!(who(&rest).len(), 2);
    assert!(rest["next"].is_null());

    // By time: nothing before the first change, everything after.
    let at = first["at_ms"].as_u64().expect("time");
    let rfc = |ms: u64| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
    let before = history(&weft, &format!("until={}", rfc(at))).await;
    assert!(who(&before).is_empty());
    let after = history(&weft, &format!("since={}", rfc(at))).await;
    assert_eq!(who(&after).len(), 3);

    // Bad input is said plainly; a write token is not needed, a token is.
    let reader = token("story", "read", "reader");
    let (status, body) = http_get(
        &weft.addr,
        &format!("/docs/story/history?token={reader}&since=yesterday"),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_time"), "{body}");
    let (status, _) = http_get(&weft.addr, "/docs/story/history", &[]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn without_tokens_changes_are_anonymous_with_their_connection() {
    let weft = Weft::start(&[]);
    let mut ws = connect(&weft.url("story")).await;
    next_message(&mut ws).await;
    send(
        &mut ws,
        update_message(insert(&Doc::with_client_id(1), "hi")),
    )
    .await;
    let page = poll_until(
        || async {
            let (_, body) = http_get(&weft.addr, "/docs/story/history", &[]).await;
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)
        },
        |page| page["changes"].as_array().is_some_and(|c| !c.is_empty()),
    )
    .await;
    let (author, via) = who(&page).remove(0);
    assert!(author.starts_with("anonymous#"), "{author}");
    assert_eq!(via, "ws");
    let (status, _) = http_get(&weft.addr, "/docs/nothing-here/history", &[]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_document_reads_as_it_was_at_any_change_or_time() {
    let weft = Weft::start(&[]);
    let mut ws = connect(&weft.url("story")).await;
    next_message(&mut ws).await;
    let writer = Doc::with_client_id(1);
    let mut pages = Vec::new();
    for (n, word) in ["one", "two", "three"].iter().enumerate() {
        send(&mut ws, update_message(insert(&writer, word))).await;
        let page = poll_until(
            || async {
                let (_, body) = http_get(&weft.addr, "/docs/story/history", &[]).await;
                serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)
            },
            |page| page["changes"].as_array().is_some_and(|c| c.len() > n),
        )
        .await;
        pages.push(page);
        // Each change in a millisecond of its own, so that each time
        // names exactly one of them.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let changes = pages[2]["changes"].as_array().expect("changes").clone();
    let id = |i: usize| changes[i]["id"].as_str().expect("id").to_owned();
    let at_ms = |i: usize| changes[i]["at_ms"].as_u64().expect("time");

    // As JSON, just after the second change.
    let (status, body) = http_get(&weft.addr, &format!("/docs/story/json?at={}", id(1)), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON")["t"],
        "onetwo"
    );

    // As a Yjs update, at the time of the first, naming the change it holds.
    let rfc = |ms: u64| humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
    let mut http = http1(&weft.addr).await;
    let resp = http
        .request(
            "GET",
            &format!("/docs/story?at={}", rfc(at_ms(0))),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let named = resp.headers()["weft-event-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(named, id(0));
    let past = Doc::new();
    {
        use yrs::updates::decoder::Decode;
        use yrs::Transact;
        let update = yrs::Update::decode_v1(&body_bytes(resp).await).expect("an update");
        past.transact_mut().apply_update(update).expect("applies");
    }
    assert_eq!(text(&past), "one");

    // Before anything was written: empty. Now: everything.
    let (_, body) = http_get(
        &weft.addr,
        &format!("/docs/story/json?at={}", rfc(at_ms(0) - 1000)),
        &[],
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON")["t"],
        Value::Null
    );
    let (_, body) = http_get(&weft.addr, &format!("/docs/story/json?at={}", id(2)), &[]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON")["t"],
        "onetwothree"
    );

    // Bad input says what is wrong.
    let (status, body) = http_get(&weft.addr, "/docs/story/json?at=soon", &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid_point_in_time"), "{body}");
    let (status, _) = http_get(&weft.addr, "/docs/story?at=soon&sv=AA", &[]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn attribution_says_who_wrote_each_part_of_a_text() {
    use yrs::{Text, Transact};
    let weft = Weft::start(&["--auth-secret", SECRET]);
    let join = |who: &'static str| {
        let url = format!(
            "{}?token={}",
            weft.url("story"),
            token("story", "write", who)
        );
        async move {
            let mut ws = connect(&url).await;
            next_message(&mut ws).await;
            ws
        }
    };
    let (mut ada_ws, mut grace_ws) = (join("ada").await, join("grace").await);
    let ada = Doc::with_client_id(1);
    let typed = insert(&ada, "hello world");
    send(&mut ada_ws, update_message(typed.clone())).await;
    history_of(&weft, 1).await;
    // Grace, having Ada's text, writes into the middle of it.
    let grace = Doc::with_client_id(2);
    {
        use yrs::updates::decoder::Decode;
        grace
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(&typed).expect("update"))
            .expect("applies");
    }
    let between = {
        let text = grace.get_or_insert_text("t");
        let mut txn = grace.transact_mut();
        text.insert(&mut txn, 5, " big");
        txn.encode_update_v1()
    };
    send(&mut grace_ws, update_message(between)).await;
    history_of(&weft, 2).await;

    let reader = token("story", "read", "reader");
    let (status, body) = http_get(
        &weft.addr,
        &format!("/docs/story/attribution/t?token={reader}"),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let runs: Value = serde_json::from_str(&body).expect("JSON");
    let runs: Vec<(String, String)> = runs["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["text"].as_str().unwrap_or("").to_owned(),
                r["author"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        [
            ("hello".to_owned(), "ada".to_owned()),
            (" big".to_owned(), "grace".to_owned()),
            (" world".to_owned(), "ada".to_owned())
        ]
    );
    let (status, _) = http_get(
        &weft.addr,
        &format!("/docs/story/attribution/nope?token={reader}"),
        &[],
    )
    .await;
    assert_eq!(status, 404);
}

/// Appends each word to "story" over HTTP, one change each; their ids.
async fn post_words(weft: &Weft, words: &[&str]) -> Vec<String> {
    let writer = Doc::with_client_id(1);
    let mut ids = Vec::new();
    for word in words {
        let (status, body) = request(
            &weft.addr,
            "POST",
            "/docs/story/updates",
            &[],
            insert(&writer, word),
        )
        .await;
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_slice(&body).expect("JSON");
        ids.push(answer["id"].as_str().expect("id").to_owned());
    }
    ids
}

/// The key admin requests in these tests carry.
const ADMIN: &str = "history-admin-key-0123456789abcdef0123";

/// A server that takes a snapshot every 2 changes and keeps no log tail
/// behind the newest, with `more` flags.
fn snapshotting_every_two(more: &[&str]) -> Weft {
    let mut args = vec![
        "--admin-key",
        ADMIN,
        "--snapshot-every",
        "2",
        "--keep-log-tail",
        "0",
    ];
    args.extend_from_slice(more);
    Weft::start(&args)
}

#[tokio::test]
async fn the_history_window_keeps_every_point_exact_behind_snapshots() {
    // No tail, but the default window.
    let weft = snapshotting_every_two(&[]);
    let ids = post_words(&weft, &["a", "b", "c", "d", "e"]).await;
    let auth = format!("Bearer {ADMIN}");
    poll_until(
        || async {
            let (_, body) = http_get(
                &weft.addr,
                "/admin/docs/story/snapshots",
                &[("authorization", &auth)],
            )
            .await;
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)
        },
        |list| list.as_array().is_some_and(|l| l.len() >= 2),
    )
    .await;
    // Every change is still listed, and the first point is exact.
    let (_, body) = http_get(&weft.addr, "/docs/story/history", &[]).await;
    let page: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(page["changes"][0]["seq"], 1, "{body}");
    let (status, body) =
        http_get(&weft.addr, &format!("/docs/story/json?at={}", ids[0]), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON")["t"],
        "a"
    );
}

#[tokio::test]
async fn points_the_history_kept_no_longer_reaches_are_said_so_and_never_restored() {
    // No log kept behind the newest snapshot, and no history window.
    let weft = snapshotting_every_two(&["--history-retention", "0"]);
    let ids = post_words(&weft, &["a", "b", "c", "d", "e"]).await;
    // Wait for the log to be trimmed to what follows the newest snapshot.
    poll_until(
        || async {
            let (_, body) = http_get(&weft.addr, "/docs/story/history", &[]).await;
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)
        },
        |page| page["changes"][0]["seq"].as_u64() == Some(5),
    )
    .await;

    // Before the oldest snapshot, with no log: not kept, and said so.
    let (status, body) =
        http_get(&weft.addr, &format!("/docs/story/json?at={}", ids[0]), &[]).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no longer kept"), "{body}");
    // Between snapshots: the nearest earlier point, named.
    let mut http = http1(&weft.addr).await;
    let resp = http
        .request(
            "GET",
            &format!("/docs/story?at={}", ids[2]),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["weft-event-id"].to_str().expect("ascii"),
        ids[1]
    );
    // And a restore to that point is refused rather than undo more.
    let auth = format!("Bearer {ADMIN}");
    let body = serde_json::to_vec(&json!({ "at": ids[2] })).expect("JSON");
    let (status, answer) = request(
        &weft.addr,
        "POST",
        "/admin/docs/story/restore",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&answer));
    assert!(
        String::from_utf8_lossy(&answer).contains(&ids[1]),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Nor reverted from a point the log no longer reaches back to.
    let body =
        serde_json::to_vec(&json!({ "author": "anonymous", "since": "1970-01-01T00:00:00Z" }))
            .expect("JSON");
    let (status, answer) = request(
        &weft.addr,
        "POST",
        "/admin/docs/story/revert",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains("no longer holds change 1"), "{answer}");
    let (_, now) = http_get(&weft.addr, "/docs/story/json", &[]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&now).expect("JSON")["t"],
        "abcde"
    );
}

/// `doc`'s change to its text "t", made by `edit`, as an update.
fn edit(doc: &Doc, edit: impl FnOnce(&yrs::TextRef, &mut yrs::TransactionMut)) -> Vec<u8> {
    use yrs::Transact;
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    edit(&text, &mut txn);
    txn.encode_update_v1()
}

/// Reads `ws` into `doc` until its text is `want`.
async fn read_until(ws: &mut Ws, doc: &Doc, want: &str) {
    while text(doc) != want {
        if let m @ yrs::sync::Message::Sync(
            yrs::sync::SyncMessage::SyncStep2(_) | yrs::sync::SyncMessage::Update(_),
        ) = next_message(ws).await
        {
            apply(doc, m);
        }
    }
}

/// `POST /admin/docs/story/revert` with `body`, and the admin key if given.
async fn revert(weft: &Weft, admin: Option<&str>, body: Value) -> (u16, Value) {
    let auth = admin.map(|key| format!("Bearer {key}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    let body = serde_json::to_vec(&body).expect("JSON");
    let (status, answer) = request(
        &weft.addr,
        "POST",
        "/admin/docs/story/revert",
        &headers,
        body,
    )
    .await;
    (
        status,
        serde_json::from_slice(&answer).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn reverting_one_author_leaves_the_others_work_and_reaches_open_editors() {
    let weft = Weft::start(&["--auth-secret", SECRET, "--admin-key", ADMIN]);
    // Three authors, each its own editor, and an open editor watching.
    let mut editors = Vec::new();
    for (i, who) in ["ada", "grace", "mallory"].into_iter().enumerate() {
        let url = format!(
            "{}?token={}",
            weft.url("story"),
            token("story", "write", who)
        );
        let mut ws = connect(&url).await;
        next_message(&mut ws).await;
        editors.push((Doc::with_client_id(i as u64 + 1), ws));
    }
    let url = format!(
        "{}?token={}",
        weft.url("story"),
        token("story", "read", "watcher")
    );
    let mut watcher = connect(&url).await;
    let watched = Doc::new();
    // Asks for everything, so that nothing stored before it joined is missed.
    let everything = yrs::sync::SyncMessage::SyncStep1(yrs::StateVector::default());
    send(&mut watcher, yrs::sync::Message::Sync(everything)).await;

    // Interleaved edits of one sentence; everyone sees each at once.
    type Edit = Box<dyn FnOnce(&yrs::TextRef, &mut yrs::TransactionMut)>;
    let steps: Vec<(usize, Edit)> = vec![
        (
            0,
            Box::new(|t, txn| t.insert(txn, 0, "The quick fox jumps.")),
        ),
        (1, Box::new(|t, txn| t.insert(txn, 9, " brown"))),
        (2, Box::new(|t, txn| t.remove_range(txn, 0, 4))),
        (
            1,
            Box::new(|t, txn| {
                t.remove_range(txn, 12, 3);
                t.insert(txn, 12, "dog");
            }),
        ),
        (0, Box::new(|t, txn| t.insert(txn, 22, "!"))),
        (2, Box::new(|t, txn| t.insert(txn, 0, "A "))),
    ];
    for (n, (who, step)) in steps.into_iter().enumerate() {
        let update = edit(&editors[who].0, step);
        for (i, (doc, _)) in editors.iter().enumerate() {
            if i != who {
                apply(doc, update_message(update.clone()));
            }
        }
        send(&mut editors[who].1, update_message(update)).await;
        history_of(&weft, n + 1).await;
    }
    read_until(&mut watcher, &watched, "A quick brown dog jumps.!").await;
    let page = history_of(&weft, 6).await;
    let first = page["changes"][0]["id"].as_str().expect("id").to_owned();

    // Mallory's changes since the first go: "A " removed, "The " back.
    let (status, answer) = revert(
        &weft,
        Some(ADMIN),
        json!({ "author": "mallory", "since": first }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["changes"].as_u64(), &answer["since"]),
        (Some(2), &json!(first))
    );
    let want = "The quick brown dog jumps.!";
    read_until(&mut watcher, &watched, want).await;
    for (doc, ws) in &mut editors {
        read_until(ws, doc, want).await;
    }
    let (_, now) = http_get(
        &weft.addr,
        &format!("/docs/story/json?token={}", token("story", "read", "r")),
        &[],
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&now).expect("JSON")["t"],
        want
    );
    // The revert is the operator's change, listed as such.
    let page = history_of(&weft, 7).await;
    assert_eq!(who(&page)[6], ("admin".into(), "revert:mallory".into()));
    // The same revert again would put "The " back twice: refused, naming
    // the revert to go on from.
    let (status, answer) = revert(
        &weft,
        Some(ADMIN),
        json!({ "author": "mallory", "since": first }),
    )
    .await;
    let reverted = page["changes"][6]["id"].as_str().expect("id");
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains(reverted)),
        "{answer}"
    );

    // Then Grace's: " brown" goes and the fox she replaced comes back.
    let (status, _) = revert(
        &weft,
        Some(ADMIN),
        json!({ "author": "grace", "since": first }),
    )
    .await;
    assert_eq!(status, 200);
    read_until(&mut watcher, &watched, "The quick fox jumps.!").await;

    // Refusals say why.
    let bad = [
        (json!({ "author": "", "since": first }), 400),
        (json!({ "author": "ada", "since": "yesterday" }), 400),
        (json!({ "author": "ada" }), 400),
    ];
    for (body, want) in bad {
        let (status, answer) = revert(&weft, Some(ADMIN), body.clone()).await;
        assert_eq!(status, want, "{body}: {answer}");
    }
    let (status, _) = revert(&weft, None, json!({ "author": "ada", "since": first })).await;
    assert_eq!(status, 401);
}
