//! Shared by the end-to-end tests: runs the real `weft` binary on an
//! ephemeral loopback port with a temporary data directory, and speaks to it
//! as a y-websocket client would (tokio-tungstenite) or over raw HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

pub const WAIT: Duration = Duration::from_secs(10);

/// Asks `probe` again and again (every 50 ms, for at most [`WAIT`]) until
/// its answer is `done`, and returns the last answer: for state of the
/// server process that no message announces.
pub async fn poll_until<T, F>(mut probe: impl FnMut() -> F, done: impl Fn(&T) -> bool) -> T
where
    F: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = probe().await;
        if done(&answer) || tokio::time::Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Weft {
    child: Child,
    pub addr: String,
    /// Where `--metrics-listen` bound, if it was given.
    pub metrics_addr: Option<String>,
    pub data_dir: tempfile::TempDir,
}

/// The addresses weft bound (it may have been asked for port 0), from
/// what it prints on stdout: `weft metrics on URL` (with --metrics-listen),
/// then `weft listening on URL`, its last line.
fn bound_addresses(mut stdout: impl BufRead) -> (String, Option<String>) {
    let host = |line: &str, prefix: &str| {
        line.trim()
            .strip_prefix(prefix)
            .and_then(|url| url.split_once("://"))
            .map(|(_, addr)| addr.to_owned())
    };
    let mut metrics = None;
    loop {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reads the address line");
        if let Some(addr) = host(&line, "weft listening on ") {
            return (addr, metrics);
        }
        metrics = Some(
            host(&line, "weft metrics on ").unwrap_or_else(|| panic!("unexpected line {line:?}")),
        );
    }
}

impl Weft {
    pub fn start(args: &[&str]) -> Weft {
        let data_dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(data_dir, "127.0.0.1:0", args)
    }

    pub fn start_in(data_dir: tempfile::TempDir, listen: &str, args: &[&str]) -> Weft {
        Self::spawn(data_dir, listen, args, None)
    }

    /// Starts with `RUST_LOG=debug` and the log written to `log_path`.
    pub fn start_logging_to(log_path: &std::path::Path, args: &[&str]) -> Weft {
        let data_dir = tempfile::tempdir().expect("tempdir");
        Self::spawn(data_dir, "127.0.0.1:0", args, Some(log_path))
    }

    /// Starts in `data_dir` with `RUST_LOG=debug` and the log written to
    /// `log_path`.
    pub fn start_in_logging_to(
        data_dir: tempfile::TempDir,
        log_path: &std::path::Path,
        args: &[&str],
    ) -> Weft {
        Self::spawn(data_dir, "127.0.0.1:0", args, Some(log_path))
    }

    fn spawn(
        data_dir: tempfile::TempDir,
        listen: &str,
        args: &[&str],
        log: Option<&std::path::Path>,
    ) -> Weft {
        let (level, stderr) = match log {
            Some(path) => (
                "debug",
                Stdio::from(std::fs::File::create(path).expect("log file")),
            ),
            None => ("error", Stdio::inherit()),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir.path())
            .args(args)
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("weft starts");
        let stdout = child.stdout.take().expect("stdout");
        let (addr, metrics_addr) = bound_addresses(BufReader::new(stdout));
        Weft {
            child,
            addr,
            metrics_addr,
            data_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory, in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("VmRSS")
    }

    pub fn url(&self, doc: &str) -> String {
        format!("ws://{}/ws/{doc}", self.addr)
    }

    /// kill -9: the server gets no chance to flush or snapshot.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reaped");
    }

    /// Starts again on the same port and data directory (after it exited).
    pub fn restart(mut self, args: &[&str]) -> Weft {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let addr = self.addr.clone();
        let placeholder = tempfile::TempDir::new().expect("tempdir");
        let data_dir = std::mem::replace(&mut self.data_dir, placeholder);
        Self::start_in(data_dir, &addr, args)
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("exits")
    }

    /// SIGTERM; the exit status and how long it took, or `None` if it was
    /// still running `within` later.
    pub fn terminate_within(
        &mut self,
        within: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.exit_within(within)
    }

    /// The exit status once the process exits by itself, with how long that
    /// took from now; `None` if it is still running `within` later.
    pub fn exit_within(
        &mut self,
        within: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let started = std::time::Instant::now();
        while started.elapsed() < within {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn connect(url: &str) -> Ws {
    let (ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connects in time")
        .expect("connects");
    ws
}

/// The next binary frame, decoded; pings and pongs are skipped.
pub async fn next_message(ws: &mut Ws) -> YMessage {
    loop {
        let msg = timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame ok");
        match msg {
            Message::Binary(b) => return YMessage::decode_v1(&b).expect("valid y-protocols"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Sends a binary message in fragments, a few KiB every 100 ms, never its
/// last, while reading (so pings are answered), until the server closes;
/// returns the close code and reason, and how long it took.
pub async fn never_finish_a_message(ws: &mut Ws) -> (CloseCode, String, std::time::Duration) {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let started = std::time::Instant::now();
    let mut opcode = OpCode::Data(Data::Binary);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    while started.elapsed() < WAIT {
        tokio::select! {
            next = futures_util::StreamExt::next(ws) => match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code, frame.reason.to_string(), started.elapsed());
                }
                Some(Ok(_)) => {}
                other => panic!("the connection ended without a close: {other:?}"),
            },
            _ = tick.tick() => {
                let fragment = Frame::message(vec![7u8; 4096], opcode, false);
                opcode = OpCode::Data(Data::Continue);
                if ws.send(Message::Frame(fragment)).await.is_err() {
                    let (code, reason) = close_of(ws).await;
                    return (code, reason, started.elapsed());
                }
            }
        }
    }
    panic!("still open after {WAIT:?} of a message that never ends");
}

/// Reads until the server closes; returns its close code and reason.
pub async fn close_of(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        let msg = timeout(WAIT, ws.next()).await.expect("closed in time");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => return (frame.code, frame.reason.to_string()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                panic!("connection ended without a close code")
            }
            Some(Ok(_)) => continue,
        }
    }
}

pub async fn send(ws: &mut Ws, msg: YMessage) {
    ws.send(Message::Binary(msg.encode_v1().into()))
        .await
        .expect("send");
}

pub fn update_message(update: Vec<u8>) -> YMessage {
    YMessage::Sync(SyncMessage::Update(update))
}

/// Applies a step 2 / update message to `doc`; panics on anything else.
pub fn apply(doc: &yrs::Doc, msg: YMessage) {
    use yrs::Transact;
    let bytes = match msg {
        YMessage::Sync(SyncMessage::SyncStep2(b) | SyncMessage::Update(b)) => b,
        other => panic!("expected a document update, got {other:?}"),
    };
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(&bytes).expect("valid update"))
        .expect("applies");
}

/// A raw HTTP/1.1 GET; returns (status, body).
pub async fn http_get(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        req.push_str("Connection: close\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    // Read the head, then exactly Content-Length bytes: the connection may stay open.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "connection closed before the response head ended");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while raw.len() < head_end + length {
        let n = timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("body in time")
            .expect("read");
        assert!(n > 0, "connection closed inside the body");
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[head_end..head_end + length]).into_owned();
    (status, body)
}

/// An HTTP client connection (hyper) to the server: HTTP/1.1, or HTTP/2
/// with prior knowledge (h2c), where many requests share one connection.
pub enum Http {
    /// With the `Host` to send.
    H1(
        hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
        String,
    ),
    H2(hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>),
}

/// A TCP connection to `addr` from the loopback address `source` (any
/// 127.0.0.x reaches a server on 127.0.0.1, as another client's address).
pub async fn tcp_from(source: &str, addr: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source address"))
        .expect("bind the source address");
    socket
        .connect(addr.parse().expect("server address"))
        .await
        .expect("tcp")
}

pub async fn http1(addr: &str) -> Http {
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("http1 handshake");
    tokio::spawn(conn);
    Http::H1(send, addr.to_owned())
}

pub async fn http2(addr: &str) -> Http {
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    http2_over(tcp).await
}

/// HTTP/2 over an established stream (plain TCP: h2c; or TLS after ALPN h2).
pub async fn http2_over<S>(io: S) -> Http
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    Http::H2(send)
}

pub type HttpResponse = hyper::Response<hyper::body::Incoming>;

impl Http {
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> HttpResponse {
        let mut req = hyper::Request::builder().method(method).uri(path);
        if let Http::H1(_, host) = self {
            req = req.header("host", host.as_str());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("request");
        let fut = match self {
            Http::H1(s, _) => {
                s.ready().await.expect("ready");
                futures_util::future::Either::Left(s.send_request(req))
            }
            Http::H2(s) => {
                s.ready().await.expect("ready");
                futures_util::future::Either::Right(s.send_request(req))
            }
        };
        timeout(WAIT, fut)
            .await
            .expect("response in time")
            .expect("response")
    }
}

/// A whole small response body.
pub async fn body_bytes(resp: HttpResponse) -> Vec<u8> {
    use http_body_util::BodyExt;
    timeout(WAIT, resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes()
        .to_vec()
}

/// One-shot request on a fresh HTTP/1.1 connection.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut http = http1(addr).await;
    let resp = http.request(method, path, headers, body).await;
    let status = resp.status().as_u16();
    (status, body_bytes(resp).await)
}

/// A parsed Server-Sent Event (or a comment / retry block).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
    pub comment: Option<String>,
}

impl SseEvent {
    pub fn data_bytes(&self) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(self.data.as_deref().expect("data"))
            .expect("base64 data")
    }
}

/// Reads an event stream body, optionally gzip-compressed, block by block.
pub struct SseReader {
    body: hyper::body::Incoming,
    gunzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
    buf: String,
    pub wire_bytes: usize,
}

impl SseReader {
    pub fn new(resp: HttpResponse) -> SseReader {
        let gzip = resp
            .headers()
            .get("content-encoding")
            .is_some_and(|v| v == "gzip");
        SseReader {
            body: resp.into_body(),
            gunzip: gzip.then(|| flate2::write::GzDecoder::new(Vec::new())),
            buf: String::new(),
            wire_bytes: 0,
        }
    }

    /// The next block (event, comment or retry), or None at end of stream.
    pub async fn next(&mut self) -> Option<SseEvent> {
        use http_body_util::BodyExt;
        use std::io::Write;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                return Some(parse_block(&block));
            }
            let frame = timeout(WAIT, self.body.frame())
                .await
                .expect("stream produced data in time");
            let frame = frame?;
            let Ok(frame) = frame else { return None };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.wire_bytes += data.len();
            let text = match self.gunzip.as_mut() {
                Some(gz) => {
                    gz.write_all(&data).expect("valid gzip");
                    gz.flush().expect("gzip flush");
                    String::from_utf8(std::mem::take(gz.get_mut())).expect("utf8")
                }
                None => String::from_utf8(data.to_vec()).expect("utf8"),
            };
            self.buf.push_str(&text);
        }
    }

    /// The next block that is an event (skips comments).
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            let ev = self.next().await.expect("stream still open");
            if ev.event.is_some() {
                return ev;
            }
        }
    }
}

impl SseReader {
    /// The next `snapshot` or `update` event (skips presence and comments).
    pub async fn next_change(&mut self) -> SseEvent {
        loop {
            let ev = self.next_event().await;
            if ev.event.as_deref() != Some("awareness") {
                return ev;
            }
        }
    }
}

fn parse_block(block: &str) -> SseEvent {
    let mut ev = SseEvent::default();
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            ev.comment = Some(c.trim().to_owned());
        } else if let Some((field, value)) = line.split_once(':') {
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "event" => ev.event = Some(value),
                "id" => ev.id = Some(value),
                "data" => {
                    assert!(ev.data.is_none(), "one data line per event");
                    ev.data = Some(value)
                }
                "retry" => ev.retry = Some(value),
                other => panic!("unexpected field {other:?}"),
            }
        }
    }
    ev
}

/// Appends `s` to the text "t" of `doc`; returns that change as an update.
pub fn insert(doc: &yrs::Doc, s: &str) -> Vec<u8> {
    use yrs::{Text, Transact};
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    let len = text.len(&txn);
    text.insert(&mut txn, len, s);
    txn.encode_update_v1()
}

/// The text "t" of `doc`.
pub fn text(doc: &yrs::Doc) -> String {
    use yrs::{GetString, Transact};
    let t = doc.get_or_insert_text("t");
    let s = t.get_string(&doc.transact());
    s
}

/// An awareness message setting client `client`'s state.
pub fn presence(client: u64, clock: u32, json: &str) -> YMessage {
    let mut clients = std::collections::HashMap::new();
    clients.insert(
        yrs::ClientID::new(client),
        yrs::sync::awareness::AwarenessUpdateEntry {
            clock,
            json: json.into(),
        },
    );
    YMessage::Awareness(yrs::sync::AwarenessUpdate { clients })
}
