//! What operators see: metrics that move when things happen, health and
//! readiness, JSON logs with connection spans, and configuration from flags,
//! environment and file in that order.

mod support;

use std::collections::HashMap;

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::Message as YMessage;
use yrs::Doc;

const SECRET: &str = "operability-secret-0123456789abcdef";
const ADMIN: &str = "ops-admin-key-0123456789abcdef0123";

fn token(doc: &str, mode: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 600;
    let claims = serde_json::json!({ "doc": doc, "mode": mode, "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

/// Every sample of a scrape: `name{labels}` → value.
async fn scrape(addr: &str) -> HashMap<String, f64> {
    let (status, body) = request(addr, "GET", "/metrics", &[], vec![]).await;
    assert_eq!(status, 200);
    String::from_utf8(body)
        .expect("utf8")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the first sample whose name and labels contain all `parts`.
fn sample(m: &HashMap<String, f64>, parts: &[&str]) -> f64 {
    m.iter()
        .filter(|(k, _)| parts.iter().all(|p| k.contains(p)))
        .map(|(_, v)| *v)
        .sum()
}

#[tokio::test]
async fn every_metric_family_appears_and_moves() {
    let weft = Weft::start(&[
        "--auth-secret",
        SECRET,
        "--admin-key",
        ADMIN,
        "--unload-grace",
        "200ms",
        "--outbound-queue-bytes",
        "1024",
    ]);
    let a = &weft.addr;
    let before = scrape(a).await;

    // A writer and a reader on WebSocket, a viewer on SSE.
    let mut writer = connect(&format!("{}?token={}", weft.url("m"), token("m", "write"))).await;
    next_message(&mut writer).await;
    let mut reader = connect(&format!("{}?token={}", weft.url("m"), token("m", "read"))).await;
    next_message(&mut reader).await;
    let mut http = http1(a).await;
    let resp = http
        .request(
            "GET",
            &format!("/sse/m?token={}", token("m", "read")),
            &[],
            vec![],
        )
        .await;
    let mut sse = SseReader::new(resp);
    sse.next().await;
    send(&mut writer, update_message(insert(&Doc::new(), "hello"))).await;
    sse.next_change().await;
    sse.next_change().await;
    // A read-only change, refused; a bad token; a text frame (close 1003).
    send(&mut reader, update_message(insert(&Doc::new(), "nope"))).await;
    let (status, _) = request(a, "GET", "/docs/m?token=garbage", &[], vec![]).await;
    assert_eq!(status, 401);
    let mut rude = connect(&format!("{}?token={}", weft.url("m"), token("m", "write"))).await;
    next_message(&mut rude).await;
    rude.send(Message::Text("hi".into())).await.expect("send");
    close_of(&mut rude).await;
    // A manual snapshot.
    let auth = format!("Bearer {ADMIN}");
    let (status, _) = request(
        a,
        "POST",
        "/admin/docs/m/snapshots",
        &[("authorization", &auth)],
        vec![],
    )
    .await;
    assert_eq!(status, 201);

    let during = scrape(a).await;
    let moved = |parts: &[&str]| sample(&during, parts) - sample(&before, parts);
    // The writer (and perhaps the closing rude one, until its close completes).
    assert!(
        sample(
            &during,
            &["weft_connections{", "transport=\"ws\"", "mode=\"write\""]
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &during,
            &["weft_connections{", "transport=\"ws\"", "mode=\"read\""]
        ),
        1.0
    );
    assert_eq!(
        sample(&during, &["weft_connections{", "transport=\"sse\""]),
        1.0
    );
    assert_eq!(sample(&during, &["weft_documents_loaded"]), 1.0);
    assert_eq!(moved(&["weft_changes_accepted_total"]), 1.0);
    assert!(moved(&["weft_changes_refused_total", "reason=\"read_only\""]) >= 1.0);
    assert!(
        moved(&[
            "weft_messages_total",
            "transport=\"ws\"",
            "direction=\"in\""
        ]) >= 2.0
    );
    assert!(
        moved(&[
            "weft_messages_total",
            "transport=\"ws\"",
            "direction=\"out\""
        ]) >= 2.0
    );
    assert!(
        moved(&[
            "weft_messages_total",
            "transport=\"sse\"",
            "direction=\"out\""
        ]) >= 2.0
    );
    assert!(moved(&["weft_bytes_total", "transport=\"ws\"", "direction=\"in\""]) > 20.0);
    assert!(moved(&["weft_durable_append_seconds_count"]) >= 1.0);
    assert!(moved(&["weft_fanout_delivery_seconds_count"]) >= 1.0);
    assert!(moved(&["weft_document_load_seconds_count"]) >= 1.0);
    assert!(moved(&["weft_snapshots_total", "reason=\"manual\""]) >= 1.0);
    assert!(moved(&["weft_snapshot_duration_seconds_count"]) >= 1.0);
    assert!(moved(&["weft_auth_failures_total", "reason=\"token_malformed\""]) >= 1.0);
    assert!(moved(&["weft_ws_closes_total", "code=\"1003\""]) >= 1.0);

    // A viewer that stops reading while big changes flow is disconnected.
    let mut stalled = tokio::net::TcpStream::connect(a).await.expect("tcp");
    let req = format!(
        "GET /sse/m?token={} HTTP/1.1\r\nHost: x\r\n\r\n",
        token("m", "read")
    );
    tokio::io::AsyncWriteExt::write_all(&mut stalled, req.as_bytes())
        .await
        .expect("write");
    let content = Doc::new();
    let big = "x".repeat(256 * 1024);
    let mut slow = 0.0;
    for _ in 0..100 {
        send(&mut writer, update_message(insert(&content, &big))).await;
        send(&mut writer, YMessage::AwarenessQuery).await;
        loop {
            if let YMessage::Awareness(_) = next_message(&mut writer).await {
                break;
            }
        }
        slow = sample(
            &scrape(a).await,
            &["weft_slow_client_disconnects_total", "transport=\"sse\""],
        );
        if slow >= 1.0 {
            break;
        }
    }
    assert!(
        slow >= 1.0,
        "the stalled viewer was counted as a slow-client disconnect"
    );

    // Everyone leaves; the idle document is evicted.
    drop((writer, reader, sse, http, stalled));
    let m = poll_until(
        || scrape(a),
        |m| {
            sample(m, &["weft_document_evictions_total"]) >= 1.0
                && sample(m, &["weft_documents_loaded"]) == 0.0
                && sample(m, &["weft_connections{"]) == 0.0
        },
    )
    .await;
    let evicted = sample(&m, &["weft_document_evictions_total"]);
    assert!(evicted >= 1.0, "the idle document was evicted");
    let after = scrape(a).await;
    assert_eq!(sample(&after, &["weft_connections{"]), 0.0);
}

#[tokio::test]
async fn health_readiness_and_a_separate_metrics_address() {
    let weft = Weft::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics_addr = weft
        .metrics_addr
        .clone()
        .expect("the metrics address is printed");
    let (status, body) = request(&weft.addr, "GET", "/healthz", &[], vec![]).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).contains("ok")),
        (200, true)
    );
    let (status, body) = request(&weft.addr, "GET", "/readyz", &[], vec![]).await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).contains("ready")),
        (200, true)
    );
    let (status, _) = request(&weft.addr, "GET", "/metrics", &[], vec![]).await;
    assert_eq!(status, 404, "metrics are only on their own address");
    let m = scrape(&metrics_addr).await;
    assert_eq!(m.get("weft_documents_loaded"), Some(&0.0));
}

#[tokio::test]
async fn json_logs_carry_the_connection_span() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("weft.log");
    let weft = Weft::start_logging_to(&log, &["--log-format", "json"]);
    let mut ws = connect(&weft.url("logged")).await;
    next_message(&mut ws).await;
    drop(ws);
    let (_, _) = request(&weft.addr, "GET", "/docs/logged", &[], vec![]).await;
    drop(weft);
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let connected = lines
        .iter()
        .find(|l| l["fields"]["message"] == "connected")
        .expect("a connection was logged");
    let span = &connected["span"];
    assert_eq!(span["name"], "ws");
    assert_eq!(span["doc"], "logged");
    assert!(span["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    assert!(span["conn"].is_number());
}

#[test]
fn settings_come_from_flag_then_environment_then_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("weft.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7001\"\nmax-connections = 11\nping_interval = \"5s\"\nadmin-key = \"file-secret-0123456789abcdef01234567\"\nredis = \"redis://:file-redis-pw@redis.internal:6379\"\n",
    )
    .expect("write");
    let out = assert_cmd::Command::cargo_bin("weft")
        .expect("binary")
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .args(["--listen", "127.0.0.1:7003"])
        .env("WEFT_MAX_CONNECTIONS", "12")
        .env_remove("WEFT_PING_INTERVAL")
        .env_remove("WEFT_LISTEN")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = String::from_utf8_lossy(&out.stdout).parse().expect("TOML");
    assert_eq!(
        printed["listen"].as_str(),
        Some("127.0.0.1:7003"),
        "flag beats all"
    );
    assert_eq!(
        printed["max_connections"].as_integer(),
        Some(12),
        "environment beats file"
    );
    assert_eq!(
        printed["ping_interval"].as_str(),
        Some("5s"),
        "file beats default"
    );
    assert_eq!(printed["unload_grace"].as_str(), Some("30s"), "default");
    assert_eq!(
        printed["admin_key"].as_str(),
        Some("<redacted>"),
        "secrets never printed"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("file-secret"));
    assert_eq!(
        printed["redis"].as_str(),
        Some("<redacted>"),
        "a Redis URL may hold a password"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("file-redis-pw"));

    std::fs::write(&file, "max-conections = 1\n").expect("write");
    let out = assert_cmd::Command::cargo_bin("weft")
        .expect("binary")
        .args(["serve", "--print-config", "--config"])
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown setting \"max-conections\""));
}

/// `weft serve --print-config ARGS` with no `WEFT_*` variable set: stdout.
fn print_config(args: &[&std::ffi::OsStr]) -> String {
    let mut cmd = assert_cmd::Command::cargo_bin("weft").expect("binary");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WEFT_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd
        .args(["serve", "--print-config"])
        .args(args)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

/// Prints, loads that back with `--config`, prints again: the same bytes.
fn assert_round_trips(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("printed.toml");
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let printed = print_config(&args);
    std::fs::write(&file, &printed).expect("write");
    let again = print_config(&["--config".as_ref(), file.as_os_str()]);
    assert_eq!(
        printed, again,
        "--print-config does not load back as itself"
    );
    printed
}

#[test]
fn the_printed_configuration_loads_back_as_itself() {
    let defaults = assert_round_trips(&[]);
    for line in [
        "snapshot_keep_hourly = \"7days\"",
        "snapshot_keep_daily = \"90days\"",
        "snapshot_keep_every_changes = 20000",
        "history_retention = \"30days\"",
        "prune_interval = \"10m\"",
        "allowed_origins = []",
    ] {
        assert!(defaults.contains(line), "{line:?} missing:\n{defaults}");
    }
    let printed = assert_round_trips(&[
        "--listen",
        "0.0.0.0:7010",
        "--metrics-listen",
        "127.0.0.1:9100",
        "--log-format",
        "json",
        "--allowed-origins",
        "https://app.example,https://other.example",
        "--webhook-url",
        "https://hooks.example/a",
        "--webhook-url",
        "https://hooks.example/b",
        "--snapshot-keep-daily",
        "30days",
        "--idle-timeout",
        "90s",
        "--storage-timeout",
        "1500ms",
        "--max-connections",
        "7",
        "--auth-expiry-disconnects",
        "false",
        "--tls-cert",
        "/etc/weft/cert.pem",
        "--tls-key",
        "/etc/weft/key.pem",
    ]);
    for line in [
        "snapshot_keep_daily = \"30days\"",
        "idle_timeout = \"90s\"",
        "storage_timeout = \"1500ms\"",
        "https://hooks.example/b",
        "https://other.example",
    ] {
        assert!(printed.contains(line), "{line:?} missing:\n{printed}");
    }
}

#[tokio::test]
async fn an_empty_list_of_origins_in_the_file_allows_any_like_no_list() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("weft.toml");
    std::fs::write(&file, "allowed-origins = []\n").expect("write");
    let weft = Weft::start(&["--config", file.to_str().expect("utf8")]);
    let mut http = http1(&weft.addr).await;
    let resp = http
        .request(
            "GET",
            "/sse/anywhere",
            &[("origin", "https://app.example")],
            vec![],
        )
        .await;
    assert_eq!(
        resp.status(),
        200,
        "an empty list must not refuse every origin"
    );
}
