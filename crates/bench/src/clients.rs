//! The clients the load generator drives: y-websocket editors (WebSocket,
//! binary y-protocols frames) and SSE viewers (a streaming HTTP/1.1 GET).
//!
//! Writers put a send timestamp in every change they make (`wbts` and 16 hex
//! digits of microseconds since the epoch, inside the inserted text), so a
//! receiver finds it in the raw bytes without decoding the update.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Doc, Text, Transact};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
use crate::envelope;
pub use crate::envelope::Conn;

const MARK: &[u8] = b"wbts";

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Every send time carried in `bytes`, in order. A server may merge
/// changes that reach it together into one update (weft does, for one
/// writer's changes taken in one batch), so one frame can carry several.
pub fn stamps(bytes: &[u8]) -> Vec<u64> {
    let mut found = Vec::new();
    let mut rest = bytes;
    while let Some(at) = rest.windows(MARK.len()).position(|w| w == MARK) {
        rest = &rest[at + MARK.len()..];
        let hex = rest.get(..16).and_then(|h| std::str::from_utf8(h).ok());
        if let Some(stamp) = hex.and_then(|h| u64::from_str_radix(h, 16).ok()) {
            found.push(stamp);
        }
    }
    found
}

/// Reports each change carried in one received message: its delay, and
/// its share of the message's `len` bytes.
fn report_stamps(bytes: &[u8], len: usize, seen: &mut impl FnMut(Duration, usize)) {
    let found = stamps(bytes);
    let share = len / found.len().max(1);
    for s in found {
        seen(since(s), share);
    }
}

/// Time since a stamp.
pub fn since(stamp: u64) -> Duration {
    Duration::from_micros(now_micros().saturating_sub(stamp))
}

/// A document's WebSocket URL: `base` with `{doc}` replaced by the name
/// (for servers that put it mid-path, like y-sweet's
/// `ws://host/d/{doc}/ws/{doc}`), or the name appended as y-websocket does.
pub fn doc_url(base: &str, doc: &str) -> String {
    if base.contains("{doc}") {
        base.replace("{doc}", doc)
    } else {
        format!("{}/{doc}", base.trim_end_matches('/'))
    }
}

/// What one read from a WebSocket may bring (see [`connect`]).
const READ_BUFFER: usize = 16 * 1024;

/// Connects to a document's URL (see [`doc_url`]); a `hocuspocus+ws://`
/// URL speaks Hocuspocus' envelope (see [`envelope`](crate::envelope)).
pub async fn connect(url: &str) -> anyhow::Result<Conn> {
    let (url, doc) = envelope::parse(url);
    let url = url.as_str();
    // Browsers take messages of any size; a large document's sync step 2
    // is one message, so tungstenite's 16/64 MiB defaults must not apply.
    // And a 16 KiB read buffer rather than tungstenite's 128 KiB: it zeroes
    // the whole buffer before every read, which at 1,000 subscribers was
    // two thirds of the load generator's CPU, taken from the server under
    // test on the same cores.
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None)
        .read_buffer_size(READ_BUFFER);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(Conn::open(ws, doc).await?)
}

/// Makes changes to one document and sends them as y-protocols updates.
pub struct Writer {
    ws: Conn,
    doc: Doc,
    padding: String,
}

impl Writer {
    pub async fn connect(url: &str, payload_bytes: usize) -> anyhow::Result<Self> {
        Self::with_padding(url, "x".repeat(payload_bytes.saturating_sub(20))).await
    }

    /// A writer whose every change carries `padding` after its stamp.
    pub async fn with_padding(url: &str, padding: String) -> anyhow::Result<Self> {
        Ok(Writer {
            ws: connect(url).await?,
            doc: Doc::new(),
            padding,
        })
    }

    /// Sends one change stamped with the current time.
    pub async fn send(&mut self) -> anyhow::Result<()> {
        let padding = std::mem::take(&mut self.padding);
        let sent = self.send_text(&padding).await;
        self.padding = padding;
        sent
    }

    /// Sends one change: the stamp, then `padding`.
    pub async fn send_text(&mut self, padding: &str) -> anyhow::Result<()> {
        let update = {
            let text = self.doc.get_or_insert_text("t");
            let mut txn = self.doc.transact_mut();
            let len = text.len(&txn);
            let content = format!("wbts{:016x}{padding}", now_micros());
            text.insert(&mut txn, len, &content);
            txn.encode_update_v1()
        };
        let frame = YMessage::Sync(SyncMessage::Update(update)).encode_v1();
        self.ws.send(Message::Binary(frame.into())).await?;
        Ok(())
    }

    /// Reads (and drops) whatever the server sent, so its queue never fills.
    pub async fn drain(&mut self) {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::ZERO, self.ws.next()).await {}
    }
}

/// A sync update frame of a change stamped with the current time, from a
/// client of its own: a marker to send after other changes.
pub fn stamped_frame() -> Vec<u8> {
    marker_frame(now_micros())
}

/// A sync update frame of a change carrying the stamp `at`.
pub fn marker_frame(at: u64) -> Vec<u8> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, &format!("wbts{at:016x}"));
    YMessage::Sync(SyncMessage::Update(txn.encode_update_v1())).encode_v1()
}

/// Reads a WebSocket until it ends, reporting each stamped change's delay.
pub async fn subscribe<S>(mut ws: S, mut seen: impl FnMut(Duration, usize))
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Binary(frame) = message {
            // Sync update frames only: 0 (sync), 2 (update).
            if frame.starts_with(&[0, 2]) {
                report_stamps(&frame, frame.len(), &mut seen);
            }
        }
    }
}

/// Connects and asks for the whole document (sync step 1 with an empty
/// state vector, as a new editor does), then hands every sync step 2 and
/// update frame to `done` until it says the client has what it waits for.
/// Returns the time from connecting to then.
async fn join_with(
    url: &str,
    mut done: impl FnMut(&bytes::Bytes) -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let started = std::time::Instant::now();
    let mut ws = connect(url).await?;
    let step1 = YMessage::Sync(SyncMessage::SyncStep1(Default::default())).encode_v1();
    ws.send(Message::Binary(step1.into())).await?;
    while let Some(message) = ws.next().await {
        if let Message::Binary(frame) = message? {
            // 0 (sync), then 1 (step 2) or 2 (update).
            if (frame.starts_with(&[0, 1]) || frame.starts_with(&[0, 2])) && done(&frame)? {
                let took = started.elapsed();
                SinkExt::close(&mut ws).await.ok();
                return Ok(took);
            }
        }
    }
    anyhow::bail!("{url} closed before sending the whole document")
}

/// Joins and waits for sync step 2. Returns the time that took and the
/// step 2 frame.
pub async fn join_frame(url: &str) -> anyhow::Result<(Duration, bytes::Bytes)> {
    let mut step2 = None;
    let took = join_with(url, |frame| {
        let is_step2 = frame.starts_with(&[0, 1]);
        if is_step2 {
            step2 = Some(frame.clone());
        }
        Ok(is_step2)
    })
    .await?;
    Ok((took, step2.unwrap_or_default()))
}

/// Joins and applies every sync message until the text "t" is at least
/// `text_len` UTF-16 units long. Returns the time that took and the bytes
/// of sync messages received.
pub async fn join_until(url: &str, text_len: usize) -> anyhow::Result<(Duration, usize)> {
    use yrs::updates::decoder::Decode;
    let doc = crate::trace::trace_doc();
    let text = doc.get_or_insert_text(crate::trace::TEXT);
    let mut bytes = 0;
    let took = join_with(url, |frame| {
        bytes += frame.len();
        if let YMessage::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) =
            YMessage::decode_v1(frame)?
        {
            doc.transact_mut()
                .apply_update(yrs::Update::decode_v1(&u)?)?;
        }
        Ok(text.len(&doc.transact()) as usize >= text_len)
    })
    .await?;
    Ok((took, bytes))
}

/// Joins and reads sync messages (step 2 and updates: some servers answer
/// before a stored document is loaded and send it afterwards) until they add
/// up to `bytes`. Returns the time that took and the bytes received.
pub async fn join_bytes(url: &str, bytes: usize) -> anyhow::Result<(Duration, usize)> {
    let mut got = 0;
    let took = join_with(url, |frame| {
        got += frame.len();
        Ok(got >= bytes)
    })
    .await?;
    Ok((took, got))
}

/// Opens an event stream; returns the response body.
pub async fn open_sse(addr: &str, path: &str, gzip: bool) -> anyhow::Result<hyper::body::Incoming> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    open_sse_on(tcp, addr, path, gzip).await
}

/// Opens an event stream over a connection already made.
pub async fn open_sse_on<T>(
    io: T,
    addr: &str,
    path: &str,
    gzip: bool,
) -> anyhow::Result<hyper::body::Incoming>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", addr);
    if gzip {
        req = req.header("accept-encoding", "gzip");
    }
    let resp = send
        .send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new())?)
        .await?;
    anyhow::ensure!(resp.status().is_success(), "{path}: {}", resp.status());
    Ok(resp.into_body())
}

/// Reads an event stream until it ends, reporting each stamped update's
/// delay and its size as text. `gzip`: the body is gzip-encoded.
pub async fn view(mut body: hyper::body::Incoming, mut seen: impl FnMut(Duration, usize)) {
    view_encoded(&mut body, false, &mut seen).await
}

pub async fn view_encoded(
    body: &mut hyper::body::Incoming,
    gzip: bool,
    seen: &mut impl FnMut(Duration, usize),
) {
    use std::io::Write;
    let mut buf = Vec::new();
    let mut gunzip = flate2::write::GzDecoder::new(Vec::new());
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if gzip {
            if gunzip
                .write_all(&data)
                .and_then(|()| gunzip.flush())
                .is_err()
            {
                return;
            }
            buf.append(gunzip.get_mut());
        } else {
            buf.extend_from_slice(&data);
        }
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            if !text.contains("event: update") {
                continue;
            }
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            if let Ok(update) = base64::engine::general_purpose::STANDARD.decode(data) {
                report_stamps(&update, event.len(), seen);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_urls_append_the_name_or_fill_it_in() {
        assert_eq!(doc_url("ws://h/ws/", "a"), "ws://h/ws/a");
        assert_eq!(doc_url("ws://h/d/{doc}/ws/{doc}", "a"), "ws://h/d/a/ws/a");
    }

    #[test]
    fn stamps_are_found_in_raw_bytes() {
        let frame = [b"\x00\x02junk".as_slice(), b"wbts00000000000003e8", b"tail"].concat();
        assert_eq!(stamps(&frame), vec![1000]);
        assert_eq!(stamps(b"no stamp here"), Vec::<u64>::new());
        assert_eq!(stamps(b"wbts12"), Vec::<u64>::new());
    }

    #[test]
    fn every_change_merged_into_one_update_is_found() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &format!("wbts{:016x}", 7));
        text.insert(&mut txn, 0, &format!("wbts{:016x}", 9));
        let update = txn.encode_update_v1();
        let mut found = stamps(&update);
        found.sort_unstable();
        assert_eq!(found, vec![7, 9]);
    }
}
