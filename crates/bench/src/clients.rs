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
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::encoder::Encode;
use yrs::{Doc, Text, Transact};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const MARK: &[u8] = b"wbts";

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The send time carried in `bytes`, if any.
pub fn stamp(bytes: &[u8]) -> Option<u64> {
    let at = bytes.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let hex = std::str::from_utf8(bytes.get(at..at + 16)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// Time since a stamp.
pub fn since(stamp: u64) -> Duration {
    Duration::from_micros(now_micros().saturating_sub(stamp))
}

pub async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// Makes changes to one document and sends them as y-protocols updates.
pub struct Writer {
    ws: Ws,
    doc: Doc,
    padding: String,
}

impl Writer {
    pub async fn connect(url: &str, payload_bytes: usize) -> anyhow::Result<Self> {
        Ok(Writer {
            ws: connect(url).await?,
            doc: Doc::new(),
            padding: "x".repeat(payload_bytes.saturating_sub(20)),
        })
    }

    /// Sends one change stamped with the current time.
    pub async fn send(&mut self) -> anyhow::Result<()> {
        let update = {
            let text = self.doc.get_or_insert_text("t");
            let mut txn = self.doc.transact_mut();
            let len = text.len(&txn);
            let content = format!("wbts{:016x}{}", now_micros(), self.padding);
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

/// Reads a WebSocket until it ends, reporting each stamped change's delay.
pub async fn subscribe(mut ws: Ws, mut seen: impl FnMut(Duration, usize)) {
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Binary(frame) = message {
            // Sync update frames only: 0 (sync), 2 (update).
            if frame.starts_with(&[0, 2]) {
                if let Some(s) = stamp(&frame) {
                    seen(since(s), frame.len());
                }
            }
        }
    }
}

/// Opens an event stream; returns the response body.
pub async fn open_sse(addr: &str, path: &str, gzip: bool) -> anyhow::Result<hyper::body::Incoming> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
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

/// Reads an (uncompressed) event stream until it ends, reporting each
/// stamped update's delay and the wire bytes it took.
pub async fn view(mut body: hyper::body::Incoming, mut seen: impl FnMut(Duration, usize)) {
    let mut buf = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
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
                if let Some(s) = stamp(&update) {
                    seen(since(s), event.len());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_in_raw_bytes() {
        let frame = [b"\x00\x02junk".as_slice(), b"wbts00000000000003e8", b"tail"].concat();
        assert_eq!(stamp(&frame), Some(1000));
        assert_eq!(stamp(b"no stamp here"), None);
        assert_eq!(stamp(b"wbts12"), None);
    }
}
