//! Access control end to end: tokens from every place a browser can put
//! them, every way one can be wrong, read-only enforcement, the admin key,
//! origins, and expiry.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::{Doc, GetString, StateVector, Transact};

const SECRET: &str = "weft-test-secret-0123456789abcdefghij";
const ADMIN: &str = "admin-key-for-tests";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token as any backend sharing the secret would mint it.
fn token_with(secret: &str, doc: &str, mode: &str, exp: u64) -> String {
    let claims = json!({ "doc": doc, "mode": mode, "exp": exp, "sub": "tester" });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

fn token(doc: &str, mode: &str) -> String {
    token_with(SECRET, doc, mode, now() + 600)
}

fn secured(extra: &[&str]) -> Weft {
    let mut args = vec!["--auth-secret", SECRET, "--admin-key", ADMIN];
    args.extend_from_slice(extra);
    Weft::start(&args)
}

async fn error_code(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String) {
    let (status, body) = request(addr, method, path, headers, body).await;
    let code = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code)
}

#[tokio::test]
async fn http_endpoints_check_every_kind_of_token_problem() {
    let weft = secured(&[]);
    let a = &weft.addr;
    let expired = token_with(SECRET, "d", "write", now() - 10);
    let forged = token_with(
        "another-secret-another-secret-abcdef",
        "d",
        "write",
        now() + 600,
    );
    for (what, path, want) in [
        ("no token", "/docs/d".to_owned(), (401, "token_missing")),
        (
            "garbage",
            "/docs/d?token=abc".to_owned(),
            (401, "token_malformed"),
        ),
        (
            "bad signature",
            format!("/docs/d?token={forged}"),
            (401, "token_bad_signature"),
        ),
        (
            "expired",
            format!("/docs/d?token={expired}"),
            (401, "token_expired"),
        ),
        (
            "other document",
            format!("/docs/d?token={}", token("e", "read")),
            (403, "token_wrong_document"),
        ),
        (
            "pattern, other prefix",
            format!("/docs/team-b.x?token={}", token("team-a.*", "read")),
            (403, "token_wrong_document"),
        ),
    ] {
        let (status, code) = error_code(a, "GET", &path, &[], vec![]).await;
        assert_eq!((status, code.as_str()), want, "{what}");
    }
    // Past the token check, a name never written is simply not there.
    let (status, code) = error_code(
        a,
        "GET",
        &format!("/docs/team-a.x?token={}", token("team-a.*", "read")),
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (404, "document_not_found"),
        "a prefix pattern covers its documents"
    );

    // Writing needs a write token.
    let update = insert(&Doc::new(), "hi");
    let read = token("d", "read");
    let (status, code) = error_code(
        a,
        "POST",
        &format!("/docs/d/updates?token={read}"),
        &[],
        update.clone(),
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "token_read_only"));
    let bearer = format!("Bearer {}", token("d", "write"));
    let (status, _) = request(
        a,
        "POST",
        "/docs/d/updates",
        &[("authorization", &bearer)],
        update,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn sse_takes_tokens_from_query_header_or_cookie() {
    let weft = secured(&[]);
    let read = token("s", "read");
    let bearer = format!("Bearer {read}");
    let cookie = format!("other=1; weft_token={read}");
    for (what, path, headers) in [
        ("query", format!("/sse/s?token={read}"), vec![]),
        (
            "header",
            "/sse/s".to_owned(),
            vec![("authorization", bearer.as_str())],
        ),
        (
            "cookie",
            "/sse/s".to_owned(),
            vec![("cookie", cookie.as_str())],
        ),
    ] {
        let mut http = http1(&weft.addr).await;
        let resp = http.request("GET", &path, &headers, vec![]).await;
        assert_eq!(resp.status(), 200, "{what}");
        let mut sse = SseReader::new(resp);
        sse.next().await;
        assert_eq!(
            sse.next_change().await.event.as_deref(),
            Some("snapshot"),
            "{what}"
        );
    }
    let (status, code) = error_code(&weft.addr, "GET", "/sse/s", &[], vec![]).await;
    assert_eq!((status, code.as_str()), (401, "token_missing"));
}

#[tokio::test]
async fn websocket_refusals_close_with_4401_and_4403() {
    let weft = secured(&[]);
    let expired = token_with(SECRET, "w", "write", now() - 10);
    for (what, query, want) in [
        ("no token", String::new(), 4401),
        ("expired", format!("?token={expired}"), 4401),
        ("garbage", "?token=x.y.z".to_owned(), 4401),
        (
            "other document",
            format!("?token={}", token("other", "write")),
            4403,
        ),
    ] {
        let mut ws = connect(&format!("{}{query}", weft.url("w"))).await;
        let (code, reason) = close_of(&mut ws).await;
        assert_eq!(code, CloseCode::Library(want), "{what}: {reason}");
        assert!(!reason.is_empty());
    }
}

#[tokio::test]
async fn read_tokens_sync_and_show_presence_but_cannot_write() {
    let weft = secured(&[]);
    let mut writer = connect(&format!(
        "{}?token={}",
        weft.url("ro"),
        token("ro", "write")
    ))
    .await;
    next_message(&mut writer).await;
    let content = Doc::new();
    send(&mut writer, update_message(insert(&content, "original"))).await;
    // The answer to a query proves the room has stored and sent the change,
    // so the reader cannot also receive it as a broadcast after joining.
    send(&mut writer, YMessage::AwarenessQuery).await;
    assert!(matches!(
        next_message(&mut writer).await,
        YMessage::Awareness(_)
    ));

    let mut reader = connect(&format!("{}?token={}", weft.url("ro"), token("ro", "read"))).await;
    next_message(&mut reader).await;
    send(
        &mut reader,
        YMessage::Sync(SyncMessage::SyncStep1(StateVector::default())),
    )
    .await;
    let seen = Doc::new();
    apply(&seen, next_message(&mut reader).await);
    assert_eq!(
        seen.get_or_insert_text("t").get_string(&seen.transact()),
        "original"
    );

    // Presence is allowed.
    let presence = yrs::sync::Awareness::new(Doc::new());
    let mut presence = presence;
    presence
        .set_local_state(json!({ "user": "viewer" }))
        .expect("state");
    send(
        &mut reader,
        YMessage::Awareness(presence.update().expect("update")),
    )
    .await;
    assert!(matches!(
        next_message(&mut writer).await,
        YMessage::Awareness(_)
    ));

    // A change is answered with permission denied and goes nowhere.
    send(&mut reader, update_message(insert(&seen, " vandalised"))).await;
    loop {
        match next_message(&mut reader).await {
            YMessage::Auth(Some(reason)) => {
                assert!(reason.contains("read-only"), "{reason}");
                break;
            }
            YMessage::Awareness(_) => continue, // its own presence echo
            other => panic!("expected permission denied, got {other:?}"),
        }
    }
    send(&mut writer, YMessage::AwarenessQuery).await;
    assert!(
        matches!(next_message(&mut writer).await, YMessage::Awareness(_)),
        "the writer was sent nothing before its query answer"
    );
    let (_, body) = request(
        &weft.addr,
        "GET",
        &format!("/docs/ro/json?token={}", token("ro", "read")),
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json")["t"],
        "original"
    );
}

#[tokio::test]
async fn connections_end_when_their_token_expires() {
    let weft = secured(&[]);
    let short = token_with(SECRET, "exp", "write", now() + 2);
    let mut ws = connect(&format!("{}?token={short}", weft.url("exp"))).await;
    let mut http = http1(&weft.addr).await;
    let resp = http
        .request("GET", &format!("/sse/exp?token={short}"), &[], vec![])
        .await;
    assert_eq!(resp.status(), 200);
    let mut sse = SseReader::new(resp);
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::Library(4401), "token expired")
    );
    let ended = tokio::time::timeout(WAIT, async { while sse.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "the event stream ends too");
}

#[tokio::test]
async fn expiry_can_be_told_not_to_disconnect() {
    let weft = secured(&["--auth-expiry-disconnects", "false"]);
    let short = token_with(SECRET, "keep", "write", now() + 1);
    let mut ws = connect(&format!("{}?token={short}", weft.url("keep"))).await;
    next_message(&mut ws).await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // past the expiry
    send(&mut ws, YMessage::AwarenessQuery).await;
    assert!(matches!(
        next_message(&mut ws).await,
        YMessage::Awareness(_)
    ));
}

#[tokio::test]
async fn origins_outside_the_list_are_refused() {
    let weft = secured(&[
        "--allowed-origins",
        "https://app.example,https://other.example",
    ]);
    let t = token("o", "write");
    let upgrade = |origin: &'static str| {
        vec![
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Origin", origin),
        ]
    };
    let (status, body) = http_get(
        &weft.addr,
        &format!("/ws/o?token={t}"),
        &upgrade("https://evil.example"),
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("origin_not_allowed"), "{body}");
    let (status, _) = error_code(
        &weft.addr,
        "GET",
        &format!("/sse/o?token={t}"),
        &[("origin", "https://evil.example")],
        vec![],
    )
    .await;
    assert_eq!(status, 403);

    // An allowed origin gets through, and CORS answers its preflight.
    let mut http = http1(&weft.addr).await;
    let resp = http
        .request(
            "GET",
            &format!("/sse/o?token={t}"),
            &[("origin", "https://app.example")],
            vec![],
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let mut http = http1(&weft.addr).await;
    let pre = http
        .request(
            "OPTIONS",
            "/docs/o/updates",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization"),
            ],
            vec![],
        )
        .await;
    assert!(pre.status().is_success());
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn the_admin_key_mints_tokens_that_work() {
    let weft = secured(&[]);
    let a = &weft.addr;
    let body = serde_json::to_vec(&json!({ "doc": "minted", "mode": "write", "ttl_secs": 600 }))
        .expect("json");
    let admin = format!("Bearer {ADMIN}");
    let doc_token = format!("Bearer {}", token("minted", "write"));
    for (what, headers, want) in [
        ("no key", vec![], (401, "admin_key_missing")),
        (
            "wrong key",
            vec![("authorization", "Bearer nope")],
            (401, "admin_key_wrong"),
        ),
        (
            "a document token",
            vec![("authorization", doc_token.as_str())],
            (401, "admin_key_wrong"),
        ),
    ] {
        let (status, code) = error_code(a, "POST", "/auth/token", &headers, body.clone()).await;
        assert_eq!((status, code.as_str()), want, "{what}");
    }
    let headers = [
        ("authorization", admin.as_str()),
        ("content-type", "application/json"),
    ];
    let (status, code) =
        error_code(a, "POST", "/auth/token", &headers, b"{\"doc\":1}".to_vec()).await;
    assert_eq!((status, code.as_str()), (400, "invalid_request"));

    let (status, reply) = request(a, "POST", "/auth/token", &headers, body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let reply: Value = serde_json::from_slice(&reply).expect("json");
    let minted = reply["token"].as_str().expect("token");
    assert!(reply["expires_at"].as_u64().expect("expiry") > now());
    let ws_url = reply["ws_url"].as_str().expect("ws_url");
    assert!(ws_url.ends_with(&format!("/ws/minted?token={minted}")));
    let mut ws = connect(ws_url).await;
    next_message(&mut ws).await;
    send(
        &mut ws,
        update_message(insert(&Doc::new(), "via minted token")),
    )
    .await;
    send(&mut ws, YMessage::AwarenessQuery).await;
    assert!(
        matches!(next_message(&mut ws).await, YMessage::Awareness(_)),
        "no permission denied"
    );
    let sse_path = reply["sse_url"]
        .as_str()
        .expect("sse_url")
        .split_once(a.as_str())
        .expect("host")
        .1
        .to_owned();
    let (status, _) = request(a, "GET", &sse_path.replace("/sse/", "/docs/"), &[], vec![]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn open_mode_allows_everything_and_mints_nothing() {
    let weft = Weft::start(&["--admin-key", ADMIN]);
    let (status, _) = request(
        &weft.addr,
        "POST",
        "/docs/open/updates",
        &[],
        insert(&Doc::new(), "x"),
    )
    .await;
    assert_eq!(status, 200);
    let admin = format!("Bearer {ADMIN}");
    let body = serde_json::to_vec(&json!({ "doc": "open", "mode": "read" })).expect("json");
    let (status, code) = error_code(
        &weft.addr,
        "POST",
        "/auth/token",
        &[
            ("authorization", &admin),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!((status, code.as_str()), (409, "auth_disabled"));
}

#[tokio::test]
async fn query_tokens_stay_out_of_the_logs() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("weft.log");
    let weft = Weft::start_logging_to(&log, &["--auth-secret", SECRET]);
    let t = token("logged", "read");
    let (status, _) = request(
        &weft.addr,
        "GET",
        &format!("/docs/logged?token={t}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(status, 404, "admitted; nothing written to it yet");
    let mut ws = connect(&format!("{}?token={t}", weft.url("logged"))).await;
    next_message(&mut ws).await;
    drop(ws);
    drop(weft);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("/docs/logged"), "the request was logged");
    assert!(text.contains("token=<redacted>"));
    let signature = t.rsplit('.').next().expect("jwt");
    assert!(!text.contains(signature), "a token leaked into the log");
    assert!(!text.contains(SECRET));
}

#[tokio::test]
async fn tokens_signed_elsewhere_verify_with_a_public_key() {
    let keys = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
    let dir = tempfile::tempdir().expect("tmp");
    let public = dir.path().join("public.pem");
    std::fs::write(&public, keys.public_key_pem()).expect("write");
    let weft = Weft::start(&["--auth-public-key", public.to_str().expect("utf8")]);

    let signer =
        jsonwebtoken::EncodingKey::from_ec_pem(keys.serialize_pem().as_bytes()).expect("key");
    let claims = json!({ "doc": "es", "mode": "read", "exp": now() + 600 });
    let es256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &signer,
    )
    .expect("sign");
    let (status, code) = error_code(
        &weft.addr,
        "GET",
        &format!("/docs/es?token={es256}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (404, "document_not_found"),
        "admitted; nothing written to it yet"
    );
    // An HS256 token cannot pass where only the public key is configured.
    let (status, code) = error_code(
        &weft.addr,
        "GET",
        &format!("/docs/es?token={}", token("es", "read")),
        &[],
        vec![],
    )
    .await;
    assert_eq!((status, code.as_str()), (401, "token_bad_signature"));
}
