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
const ADMIN: &str = "admin-key-for-tests-0123456789abcdef";

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

/// A token with exactly these claims (and this header), signed with the
/// test secret: for claims a well-behaved backend would never mint.
fn signed(header: &jsonwebtoken::Header, claims: &Value) -> String {
    jsonwebtoken::encode(
        header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
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

#[tokio::test]
async fn tokens_with_out_of_range_times_are_malformed_not_a_crash() {
    let weft = secured(&[]);
    let header = jsonwebtoken::Header::default();
    let later = now() + 600;
    for (what, claims) in [
        (
            "exp = 2^64 - 1",
            json!({ "doc": "t", "mode": "read", "exp": u64::MAX }),
        ),
        (
            "exp = 2^63",
            json!({ "doc": "t", "mode": "read", "exp": 1u64 << 63 }),
        ),
        (
            "exp in the year 10000",
            json!({ "doc": "t", "mode": "read", "exp": 253_402_300_800u64 }),
        ),
        (
            "nbf = 2^64 - 1",
            json!({ "doc": "t", "mode": "read", "exp": later, "nbf": u64::MAX }),
        ),
        (
            "iat = 2^64 - 1",
            json!({ "doc": "t", "mode": "read", "exp": later, "iat": u64::MAX }),
        ),
        (
            "nbf negative",
            json!({ "doc": "t", "mode": "read", "exp": later, "nbf": -1 }),
        ),
    ] {
        let t = signed(&header, &claims);
        let (status, code) = error_code(
            &weft.addr,
            "GET",
            &format!("/docs/t?token={t}"),
            &[],
            vec![],
        )
        .await;
        assert_eq!((status, code.as_str()), (401, "token_malformed"), "{what}");
        let mut ws = connect(&format!("{}?token={t}", weft.url("t"))).await;
        let (code, reason) = close_of(&mut ws).await;
        assert_eq!(code, CloseCode::Library(4401), "{what}: {reason}");
        assert!(reason.contains("malformed"), "{what}: {reason}");
    }
    // A far but representable expiry is fine, and the server is still up.
    let far = signed(
        &header,
        &json!({ "doc": "t", "mode": "read", "exp": later + 50 * 365 * 86_400 }),
    );
    let (status, _) = request(
        &weft.addr,
        "GET",
        &format!("/docs/t?token={far}"),
        &[],
        vec![],
    )
    .await;
    // Past the token check; the document was never written.
    assert_eq!(status, 404);
    let mut ws = connect(&format!("{}?token={far}", weft.url("t"))).await;
    next_message(&mut ws).await;
}

#[tokio::test]
async fn tokens_are_refused_before_their_not_before_time() {
    let weft = secured(&[]);
    let header = jsonwebtoken::Header::default();
    let later = now() + 600;
    let early = signed(
        &header,
        &json!({ "doc": "n", "mode": "write", "exp": later, "nbf": now() + 300 }),
    );
    let (status, code) = error_code(
        &weft.addr,
        "GET",
        &format!("/docs/n?token={early}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((status, code.as_str()), (401, "token_not_yet_valid"));
    let mut ws = connect(&format!("{}?token={early}", weft.url("n"))).await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::Library(4401), "{reason}");
    assert!(reason.contains("not valid yet"), "{reason}");

    let due = signed(
        &header,
        &json!({ "doc": "n", "mode": "write", "exp": later, "nbf": now() - 5, "iat": now() - 5 }),
    );
    let (status, _) = request(
        &weft.addr,
        "GET",
        &format!("/docs/n?token={due}"),
        &[],
        vec![],
    )
    .await;
    // Past the token check; the document was never written.
    assert_eq!(status, 404, "a token past its nbf works");
}

#[tokio::test]
async fn tokens_naming_critical_extensions_weft_lacks_are_refused() {
    let weft = secured(&[]);
    let claims = json!({ "doc": "c", "mode": "write", "exp": now() + 600 });
    let mut header = jsonwebtoken::Header {
        crit: Some(vec!["weft-unknown-ext".into()]),
        ..jsonwebtoken::Header::default()
    };
    header.extras.insert("weft-unknown-ext", true);
    let critical = signed(&header, &claims);
    let (status, code) = error_code(
        &weft.addr,
        "GET",
        &format!("/docs/c?token={critical}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!((status, code.as_str()), (401, "token_malformed"));
    let mut ws = connect(&format!("{}?token={critical}", weft.url("c"))).await;
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::Library(4401), "{reason}");

    let plain = signed(&jsonwebtoken::Header::default(), &claims);
    let (status, _) = request(
        &weft.addr,
        "GET",
        &format!("/docs/c?token={plain}"),
        &[],
        vec![],
    )
    .await;
    // Past the token check; the document was never written.
    assert_eq!(status, 404, "the same token without crit works");
}

#[tokio::test]
async fn an_empty_token_in_one_place_does_not_hide_a_token_in_the_next() {
    let weft = secured(&[]);
    let t = token("e", "read");
    let bearer = format!("Bearer {t}");
    let cookie = format!("weft_token={t}");
    for (what, path, headers) in [
        (
            "empty query, bearer",
            "/docs/e?token=",
            vec![("authorization", bearer.as_str())],
        ),
        (
            "blank query, bearer",
            "/docs/e?token=%20%20",
            vec![("authorization", bearer.as_str())],
        ),
        (
            "empty query, cookie",
            "/docs/e?token=",
            vec![("cookie", cookie.as_str())],
        ),
        (
            "empty bearer, cookie",
            "/docs/e",
            vec![("authorization", "Bearer  "), ("cookie", cookie.as_str())],
        ),
    ] {
        let (status, body) = request(&weft.addr, "GET", path, &headers, vec![]).await;
        // Past the token check: the document was never written.
        assert_eq!(status, 404, "{what}: {}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("document_not_found"));
    }
    let (status, code) = error_code(&weft.addr, "GET", "/docs/e?token=", &[], vec![]).await;
    assert_eq!(
        (status, code.as_str()),
        (401, "token_missing"),
        "nothing anywhere"
    );
}

/// Runs `weft serve` with `args`; it must exit by itself within the wait.
fn serve_exits(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env_remove("WEFT_ADMIN_KEY")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weft starts");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weft serve {args:?} {env:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    (status.code(), err)
}

#[test]
fn a_short_admin_key_stops_the_server_starting() {
    for (args, env) in [
        (vec!["--admin-key", "short-admin-key"], vec![]),
        (
            vec![],
            vec![("WEFT_ADMIN_KEY", "0123456789abcdef0123456789abcde")],
        ), // 31 bytes
    ] {
        let (code, err) = serve_exits(&args, &env);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("at least 32 bytes"), "{err}");
        assert!(err.contains("openssl rand -hex 32"), "{err}");
    }
}

/// An HTTP/1.1 connection from a chosen loopback source address.
async fn http1_from(source: &str, addr: &str) -> Http {
    let tcp = tcp_from(source, addr).await;
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("http1 handshake");
    tokio::spawn(conn);
    Http::H1(send, addr.to_owned())
}

/// One admin-key request on `http`: (status, error code, Retry-After).
async fn mint_with(http: &mut Http, key: &str) -> (u16, String, Option<u64>) {
    let auth = format!("Bearer {key}");
    let body = serde_json::to_vec(&json!({ "doc": "g", "mode": "read" })).expect("json");
    let resp = http
        .request(
            "POST",
            "/auth/token",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await;
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = body_bytes(resp).await;
    let code = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code, retry)
}

#[tokio::test]
async fn wrong_admin_keys_are_counted_and_throttled_per_address() {
    let weft = secured(&[]);
    let wrong = "wrong-admin-key-wrong-admin-key-wrong";
    let mut http = http1_from("127.0.0.1", &weft.addr).await;

    // The burst: ten wrong keys are answered as wrong, then the address is
    // locked out.
    for i in 0..10 {
        let (status, code, _) = mint_with(&mut http, wrong).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "admin_key_wrong"),
            "guess {i}"
        );
    }
    let (status, code, retry) = mint_with(&mut http, wrong).await;
    assert_eq!((status, code.as_str()), (429, "too_many_failures"));
    let retry = retry.expect("Retry-After");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Locked out, even the right key is not compared.
    let (status, code, _) = mint_with(&mut http, ADMIN).await;
    assert_eq!((status, code.as_str()), (429, "too_many_failures"));

    // Another address has its own allowance.
    let mut other = http1_from("127.0.0.2", &weft.addr).await;
    assert_eq!(mint_with(&mut other, ADMIN).await.0, 200);
    assert_eq!(mint_with(&mut other, wrong).await.0, 401);

    // Sustained guessing: how many guesses are compared (answered 401) in
    // two seconds of trying as fast as one connection can.
    let start = std::time::Instant::now();
    let (mut compared, mut refused) = (0u32, 0u32);
    while start.elapsed() < Duration::from_secs(2) {
        match mint_with(&mut http, wrong).await.0 {
            401 => compared += 1,
            429 => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "admin key guesses from one address: {compared} compared, {refused} refused in {secs:.2} s \
         ({:.1} compared/s, {:.0} requests/s)",
        f64::from(compared) / secs,
        f64::from(compared + refused) / secs
    );
    assert!(compared <= 3, "{compared} guesses compared in {secs:.2} s");
    assert!(refused > 100, "the loop ran ({refused} refused)");

    // The lockout ends by itself: the right key works again within a
    // couple of seconds of the last wrong one.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = mint_with(&mut http, ADMIN).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(std::time::Instant::now() < deadline, "still locked out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (_, metrics) = request(&weft.addr, "GET", "/metrics", &[], vec![]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_auth_failures_total{reason=\"admin_key\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no admin_key failures counted in\n{metrics}"));
    assert!(failures >= 11.0, "{failures} admin key failures counted");
}
