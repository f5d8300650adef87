//! The network edge against a hostile client: request bodies are not read
//! before access is decided, and are read within a deadline; cross-site
//! requests cannot write with the ambient cookie; running out of file
//! descriptors backs off instead of spinning. (Idle and slow-header
//! connections: `tests/js/edge.test.js`, with a real y-websocket editor.)

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "edge-test-secret-0123456789abcdefghij";
const MIB: usize = 1024 * 1024;

fn token(doc: &str, mode: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "doc": doc, "mode": mode, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

/// Starts an upload of `declared` bytes with `headers`, sends `send` bytes
/// of it as fast as the server takes them, then stops sending. Returns the
/// socket, and the status line if the server answered meanwhile.
async fn upload(addr: &str, headers: &str, declared: usize, send: usize) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /docs/up/updates HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {declared}\r\n{headers}\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0;
    while sent < send {
        let n = chunk.len().min(send - sent);
        match tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&chunk[..n])).await {
            Ok(Ok(())) => sent += n,
            // Refused (closed) or no longer read: stop sending.
            _ => break,
        }
    }
    let status = read_status(&mut tcp, Duration::from_millis(100)).await;
    (tcp, status)
}

/// The status line the server sent, if one arrives within `wait`.
async fn read_status(tcp: &mut TcpStream, wait: Duration) -> String {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, tcp.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_owned(),
        _ => String::new(),
    }
}

/// Waits (bounded) until the server closes `tcp`; returns how long it took.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at((start + limit).into(), tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_uploads_are_refused_before_their_bodies_are_read() {
    let weft = Weft::start(&["--auth-secret", SECRET]);
    let before = weft.rss_kib();
    let uploads = (0..40).map(|_| {
        let addr = weft.addr.clone();
        tokio::spawn(async move { upload(&addr, "", 15 * MIB, 15 * MIB).await })
    });
    let mut peak = 0;
    let mut statuses = Vec::new();
    for u in uploads {
        let (mut tcp, mut status) = u.await.expect("upload");
        peak = peak.max(weft.rss_kib());
        if status.is_empty() {
            status = read_status(&mut tcp, WAIT).await;
        }
        statuses.push(status);
    }
    let grown_mib = peak.saturating_sub(before) as f64 / 1024.0;
    eprintln!("40 unauthenticated 15 MiB uploads: RSS {before} KiB -> peak {peak} KiB (+{grown_mib:.1} MiB)");
    assert!(
        statuses.iter().all(|s| s.contains(" 401 ")),
        "every upload is refused with 401: {statuses:?}"
    );
    assert!(grown_mib < 32.0, "RSS grew by {grown_mib:.1} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_uploads_that_stall_are_cut_off_and_their_memory_returned() {
    let weft = Weft::start(&["--auth-secret", SECRET, "--body-timeout", "3s"]);
    let write = format!("Authorization: Bearer {}\r\n", token("up", "write"));
    // A first, complete upload: the server's baseline includes a body read.
    let bearer = format!("Bearer {}", token("up", "write"));
    let (status, body) = post_change(&weft.addr, "up", "", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    let before = weft.rss_kib();
    let started = Instant::now();
    let uploads: Vec<_> = (0..40)
        .map(|_| {
            let (addr, write) = (weft.addr.clone(), write.clone());
            tokio::spawn(async move { upload(&addr, &write, 15 * MIB, 7 * MIB).await })
        })
        .collect();
    let mut sockets = Vec::new();
    for u in uploads {
        sockets.push(u.await.expect("upload").0);
    }
    let during = weft.rss_kib();
    let mut statuses = Vec::new();
    for tcp in &mut sockets {
        statuses.push(read_status(tcp, Duration::from_secs(10)).await);
        let closed = closed_within(tcp, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "a stalled upload was left open");
    }
    let cut_after = started.elapsed();
    // Memory goes back to the allocator as the buffers are freed.
    let mut after = weft.rss_kib();
    let deadline = Instant::now() + Duration::from_secs(5);
    while after > before + 32 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = weft.rss_kib();
    }
    eprintln!(
        "40 stalled authorized uploads: RSS {before} KiB -> {during} KiB while stalled -> {after} KiB after; all cut off after {cut_after:?}"
    );
    assert!(
        statuses.iter().all(|s| s.contains(" 408 ")),
        "each stalled upload is answered 408: {statuses:?}"
    );
    assert!(
        cut_after < Duration::from_secs(15),
        "cut off after {cut_after:?}"
    );
    assert!(
        after <= before + 32 * 1024,
        "RSS {after} KiB after the uploads ended, {before} KiB before"
    );
}

#[tokio::test]
async fn a_body_is_limited_as_it_arrives() {
    let weft = Weft::start(&["--max-message-bytes", "65536"]);
    // Declared too large: refused before reading.
    let (_tcp, status) = upload(&weft.addr, "", 10 * MIB, 0).await;
    let status = if status.is_empty() {
        let mut tcp = _tcp;
        read_status(&mut tcp, WAIT).await
    } else {
        status
    };
    assert!(status.contains(" 413 "), "{status}");
    // Chunked, no length: refused once it passes the limit.
    let mut tcp = TcpStream::connect(&weft.addr).await.expect("connect");
    let head = format!(
        "POST /docs/up/updates HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        weft.addr
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    let chunk = format!("{:x}\r\n{}\r\n", 16 * 1024, "x".repeat(16 * 1024));
    for _ in 0..8 {
        if tcp.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let status = read_status(&mut tcp, WAIT).await;
    assert!(status.contains(" 413 "), "{status}");
}

/// Posts a one-character change to `doc` (`query` appended to the path).
async fn post_change(
    addr: &str,
    doc: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let y = yrs::Doc::new();
    let update = insert(&y, "x");
    let path = format!("/docs/{doc}/updates{query}");
    let (status, body) = request(addr, "POST", &path, headers, update).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn length_of(addr: &str, doc: &str) -> usize {
    let (status, body) = request(addr, "GET", &format!("/docs/{doc}/json"), &[], vec![]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    v["t"].as_str().map_or(0, str::len)
}

#[tokio::test]
async fn cross_site_writes_are_refused_with_allowed_origins() {
    let weft = Weft::start(&["--allowed-origins", "https://app.example"]);
    let cases: &[(&[(&str, &str)], u16)] = &[
        (
            &[
                ("origin", "https://evil.example"),
                ("content-type", "text/plain"),
            ],
            403,
        ),
        (&[("sec-fetch-site", "cross-site")], 403),
        (&[("origin", "null")], 403),
        (&[("origin", "https://app.example")], 200),
        // Not from a browser page at all: a backend.
        (&[], 200),
    ];
    for (headers, want) in cases {
        let (status, body) = post_change(&weft.addr, "csrf", "", headers).await;
        assert_eq!(status, *want, "{headers:?}: {body}");
        if *want == 403 {
            assert!(body.contains("origin_not_allowed"), "{body}");
        }
    }
    // Only the two allowed posts changed the document.
    assert_eq!(length_of(&weft.addr, "csrf").await, 2);
}

#[tokio::test]
async fn a_cross_site_request_cannot_write_with_the_cookie() {
    let weft = Weft::start(&["--auth-secret", SECRET]);
    let write = token("csrf", "write");
    let cookie = format!("weft_token={write}");
    let bearer = format!("Bearer {write}");
    let host = weft.addr.clone();
    let same_origin = format!("http://{host}");
    let cases: Vec<(Vec<(&str, &str)>, u16)> = vec![
        // The classic forged form post: another site, the ambient cookie.
        (
            vec![
                ("origin", "https://evil.example"),
                ("content-type", "text/plain"),
                ("cookie", &cookie),
            ],
            403,
        ),
        (
            vec![("sec-fetch-site", "cross-site"), ("cookie", &cookie)],
            403,
        ),
        // An empty ?token= does not make the cookie count as given.
        (
            vec![("origin", "https://evil.example"), ("cookie", &cookie)],
            403,
        ),
        // A token the calling page was given explicitly.
        (
            vec![
                ("origin", "https://evil.example"),
                ("authorization", &bearer),
            ],
            200,
        ),
        // This server's own pages.
        (vec![("origin", &same_origin), ("cookie", &cookie)], 200),
        (
            vec![("sec-fetch-site", "same-origin"), ("cookie", &cookie)],
            200,
        ),
    ];
    for (i, (headers, want)) in cases.iter().enumerate() {
        let query = if i == 2 { "?token=" } else { "" };
        let (status, body) = post_change(&weft.addr, "csrf", query, headers).await;
        assert_eq!(status, *want, "case {i} {headers:?}: {body}");
        if *want == 403 {
            assert!(body.contains("cross_site_cookie"), "{body}");
        }
    }
    let read = format!("Bearer {}", token("csrf", "read"));
    let (status, body) = request(
        &weft.addr,
        "GET",
        "/docs/csrf/json",
        &[("authorization", &read)],
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        v["t"].as_str().map_or(0, str::len),
        3,
        "only the three allowed posts applied"
    );

    // A WebSocket from another site with only the cookie is refused too.
    let (status, _) = http_get(
        &weft.addr,
        "/ws/csrf",
        &[
            ("origin", "https://evil.example"),
            ("cookie", &cookie),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_backs_off_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("weft.log");
    let mut child = std::process::Command::new("sh")
        .args(["-c", "ulimit -n 128 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_weft"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--header-timeout",
            "3s",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("weft starts");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("address line");
    let addr = line
        .trim()
        .rsplit("://")
        .next()
        .expect("address")
        .to_owned();
    let pid = child.id();
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0)
    };

    // 300 silent connections against 128 descriptors.
    let attack = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let ticks = cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks() - ticks;
    // Once the silent connections are closed (header timeout), it serves again.
    let start = Instant::now();
    let mut healthy = false;
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(Ok((200, _))) = tokio::time::timeout(Duration::from_secs(2), async {
            Ok::<_, ()>(http_get(&addr, "/healthz", &[]).await)
        })
        .await
        {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = http_get(&addr, "/metrics", &[]).await;
    drop(silent);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).expect("log");
    let accept_lines = log.lines().filter(|l| l.contains("accept failed")).count();
    eprintln!(
        "out of descriptors: {spent} CPU ticks in 2 s, {accept_lines} log lines, serving again after {:?}",
        start.elapsed()
    );
    assert!(
        spent < 50,
        "the accept loop spun: {spent} ticks of CPU in 2 s"
    );
    assert!(accept_lines >= 1, "the exhaustion was logged:\n{log}");
    let window = attack.elapsed().as_secs_f64();
    assert!(
        accept_lines as f64 <= window + 1.0,
        "{accept_lines} log lines in {window:.1} s: more than one a second"
    );
    assert!(
        healthy,
        "weft did not serve again once descriptors were free"
    );
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("weft_accept_errors_total{reason=\"fd_exhausted\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        counted >= 1.0,
        "weft_accept_errors_total counts it:\n{metrics}"
    );
}

/// Waits (bounded) until the server has closed `http`'s connection.
async fn closed_after(http: &Http, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let closed = match http {
            Http::H1(s, _) => s.is_closed(),
            Http::H2(s) => s.is_closed(),
        };
        if closed {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_open_streams_are_not() {
    let weft = Weft::start(&[
        "--header-timeout",
        "1s",
        "--idle-timeout",
        "2s",
        "--sse-keepalive",
        "500ms",
    ]);
    // HTTP/1.1 keep-alive: the wait for the next request is on the header clock.
    let mut h1 = http1(&weft.addr).await;
    assert_eq!(
        h1.request("GET", "/healthz", &[], vec![]).await.status(),
        200
    );
    let h1_closed = closed_after(&h1, Duration::from_secs(10)).await;
    // HTTP/2 has no header clock between requests: the idle deadline.
    let mut h2 = http2(&weft.addr).await;
    assert_eq!(
        h2.request("GET", "/healthz", &[], vec![]).await.status(),
        200
    );
    let h2_closed = closed_after(&h2, Duration::from_secs(10)).await;
    eprintln!("idle HTTP/1.1 closed after {h1_closed:?}, idle HTTP/2 after {h2_closed:?}");
    let h1_closed = h1_closed.expect("an idle HTTP/1.1 connection is closed");
    let h2_closed = h2_closed.expect("an idle HTTP/2 connection is closed");
    assert!(h1_closed >= Duration::from_millis(800), "{h1_closed:?}");
    assert!(h2_closed >= Duration::from_millis(1800), "{h2_closed:?}");

    // An event stream is a request in flight, on either protocol: it lives
    // on well past both deadlines.
    for h2 in [false, true] {
        let mut http = if h2 {
            http2(&weft.addr).await
        } else {
            http1(&weft.addr).await
        };
        let response = http.request("GET", "/sse/idle", &[], vec![]).await;
        assert_eq!(response.status(), 200);
        let mut events = SseReader::new(response);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            assert!(
                events.next().await.is_some(),
                "the stream ended after {:?}",
                start.elapsed()
            );
        }
    }
}
