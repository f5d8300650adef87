//! The y-sweet API's edges, against the real binary (the published y-sweet
//! packages themselves are driven in `tests/js/y-sweet.test.js`): open
//! mode hands out client tokens without a token, as y-sweet's development
//! server does; with tokens required, only the admin key gets them; bad
//! requests are refused saying why.

mod support;

use serde_json::{json, Value};
use support::*;

async fn post_json(addr: &str, path: &str, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let (status, bytes) = request(addr, "POST", path, &all, body.to_string().into_bytes()).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_hands_out_client_tokens_without_a_token() {
    let weft = Weft::start(&[]);
    let (status, body) = post_json(&weft.addr, "/doc/new", &[], json!({})).await;
    assert_eq!(status, 200, "{body}");
    let id = body["docId"].as_str().expect("an id").to_owned();
    let (status, token) = post_json(&weft.addr, &format!("/doc/{id}/auth"), &[], json!({})).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["url"], format!("ws://{}/ws", weft.addr));
    assert_eq!(token["baseUrl"], format!("http://{}/d/{id}", weft.addr));
    assert_eq!(token["docId"], id.as_str());
    assert_eq!(token["authorization"], "full");
    assert!(token.get("token").is_none(), "{token}");
    // Never written: empty, as y-sweet answers.
    let (status, bytes) = request(
        &weft.addr,
        "GET",
        &format!("/d/{id}/as-update"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((status, bytes), (200, vec![0, 0]));
    let (status, body) = post_json(&weft.addr, "/check_store", &[], json!({})).await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    // Behind a proxy that terminates TLS, the URLs are the ones clients use.
    let proxied = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "docs.example.com"),
    ];
    let (status, token) =
        post_json(&weft.addr, &format!("/doc/{id}/auth"), &proxied, json!({})).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["url"], "wss://docs.example.com/ws");
    assert_eq!(token["baseUrl"], format!("https://docs.example.com/d/{id}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_required_only_the_admin_key_gets_client_tokens() {
    const SECRET: &str = "ysweet-test-secret-0123456789abcdefghij";
    const ADMIN: &str = "ysweet-test-admin-key-0123456789abcdef";
    let weft = Weft::start(&["--auth-secret", SECRET, "--admin-key", ADMIN]);
    let admin = format!("Bearer {ADMIN}");
    let (status, body) = post_json(&weft.addr, "/doc/d/auth", &[], json!({})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("admin_key_missing")),
        "{body}"
    );
    let wrong = [("authorization", "Bearer not-the-admin-key-0123456789abcdef")];
    let (status, _) = post_json(&weft.addr, "/doc/d/auth", &wrong, json!({})).await;
    assert_eq!(status, 401);
    let with_key = [("authorization", admin.as_str())];
    let (status, token) = post_json(
        &weft.addr,
        "/doc/d/auth",
        &with_key,
        json!({"authorization": "read-only"}),
    )
    .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["authorization"], "read-only");
    let read = token["token"].as_str().expect("a token");
    // The read-only token reads, and may not write.
    let bearer = format!("Bearer {read}");
    let (status, _) = request(
        &weft.addr,
        "GET",
        "/d/d/as-update",
        &[("authorization", &bearer)],
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = request(
        &weft.addr,
        "POST",
        "/d/d/update",
        &[("authorization", &bearer)],
        vec![0, 0],
    )
    .await;
    assert_eq!(status, 403);
    for (body, code) in [
        (json!({"authorization": "admin"}), "invalid_authorization"),
        (json!({"validForSeconds": 0}), "invalid_ttl"),
    ] {
        let (status, answer) = post_json(&weft.addr, "/doc/d/auth", &with_key, body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some(code)),
            "{answer}"
        );
    }
    let (status, answer) =
        post_json(&weft.addr, "/doc/new", &with_key, json!({"docId": "../x"})).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_doc_name")),
        "{answer}"
    );
}
