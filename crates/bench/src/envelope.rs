//! Hocuspocus' envelope around y-protocols messages, so the same scenarios
//! drive `@hocuspocus/server` as its own provider does.
//!
//! A Hocuspocus connection can carry several documents, so every message
//! starts with the document's name (a lib0 `varString`), followed by what
//! y-websocket would send: its message type (0 sync, 1 awareness, 2 auth,
//! 3 awareness query; Hocuspocus adds 4 sync reply, a sync message that
//! asks for no answer, and types from 5 up for its own features) and the
//! payload. A provider opens each document with an auth message (type 2,
//! then 0 and the token); the server queues everything else until then.
//!
//! A URL of the form `hocuspocus+ws://host:port/NAME` selects it: the
//! client connects to `ws://host:port/NAME` (Hocuspocus ignores the path),
//! authenticates for `NAME` with an empty token, prefixes every frame it
//! sends with `NAME`, and hands on only sync and awareness frames with the
//! prefix taken off (sync replies as plain sync frames). Written here, not
//! taken from a crate: no Rust crate speaks Hocuspocus' protocol, and the
//! envelope is two varints and a string.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, SinkExt, Stream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::clients::Ws;

const SCHEME: &str = "hocuspocus+";
const SYNC: u64 = 0;
const AWARENESS: u64 = 1;
const AUTH: u64 = 2;
const SYNC_REPLY: u64 = 4;
/// The auth message's first field: a token follows.
const TOKEN: u64 = 0;

/// The URL to connect to and, for Hocuspocus, the document every message
/// is addressed to.
pub fn parse(url: &str) -> (String, Option<String>) {
    match url.strip_prefix(SCHEME) {
        Some(plain) => {
            let name = plain.rsplit('/').next().unwrap_or_default().to_owned();
            (plain.to_owned(), Some(name))
        }
        None => (url.to_owned(), None),
    }
}

/// A WebSocket speaking y-protocols, plainly or inside Hocuspocus'
/// envelope; a `Stream` and `Sink` of the plain frames either way.
pub struct Conn {
    ws: Ws,
    doc: Option<String>,
}

impl Conn {
    /// Opens `ws` for `doc` (`None`: plain y-websocket), as Hocuspocus'
    /// provider does: auth with an (empty) token first.
    pub async fn open(mut ws: Ws, doc: Option<String>) -> Result<Self, WsError> {
        if let Some(doc) = &doc {
            let mut frame = address(doc);
            write_var(&mut frame, AUTH);
            write_var(&mut frame, TOKEN);
            write_var(&mut frame, 0); // the token: empty
            ws.send(Message::Binary(frame.into())).await?;
        }
        Ok(Conn { ws, doc })
    }
}

/// `doc` as a lib0 varString: its length in bytes, then the bytes.
fn address(doc: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(doc.len() + 8);
    write_var(&mut out, doc.len() as u64);
    out.extend_from_slice(doc.as_bytes());
    out
}

fn write_var(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A varint at the front of `bytes`: its value and the rest.
fn read_var(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut n = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, &bytes[i + 1..]));
        }
    }
    None
}

/// A Hocuspocus frame as the plain y-protocols frame inside, if it is a
/// sync or awareness message.
fn unwrap(frame: &[u8]) -> Option<Vec<u8>> {
    let (len, rest) = read_var(frame)?;
    let rest = rest.get(usize::try_from(len).ok()?..)?;
    let (kind, payload) = read_var(rest)?;
    let kind = match kind {
        SYNC | SYNC_REPLY => SYNC,
        AWARENESS => AWARENESS,
        _ => return None,
    };
    let mut out = Vec::with_capacity(payload.len() + 1);
    write_var(&mut out, kind);
    out.extend_from_slice(payload);
    Some(out)
}

impl Stream for Conn {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let next = Pin::new(&mut self.ws).poll_next(cx);
            let Some(_) = self.doc else { return next };
            match next {
                Poll::Ready(Some(Ok(Message::Binary(frame)))) => {
                    if let Some(plain) = unwrap(&frame) {
                        return Poll::Ready(Some(Ok(Message::Binary(plain.into()))));
                    }
                    // Hocuspocus' own messages (auth answers, save status).
                }
                other => return other,
            }
        }
    }
}

impl Sink<Message> for Conn {
    type Error = WsError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Pin::new(&mut self.ws).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        let message = match (&self.doc, message) {
            (Some(doc), Message::Binary(frame)) => {
                let mut wrapped = address(doc);
                wrapped.extend_from_slice(&frame);
                Message::Binary(wrapped.into())
            }
            (_, other) => other,
        };
        Pin::new(&mut self.ws).start_send(message)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Pin::new(&mut self.ws).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Pin::new(&mut self.ws).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_the_scheme_address_the_last_path_segment() {
        assert_eq!(
            parse("hocuspocus+ws://h:1/doc-a"),
            ("ws://h:1/doc-a".to_string(), Some("doc-a".to_string()))
        );
        assert_eq!(
            parse("ws://h:1/ws/doc-a"),
            ("ws://h:1/ws/doc-a".into(), None)
        );
    }

    #[test]
    fn frames_are_unwrapped_to_plain_sync_and_awareness_and_the_rest_dropped() {
        let doc = "d".repeat(200); // a two-byte length
        let framed = |kind: u64, payload: &[u8]| {
            let mut f = address(&doc);
            write_var(&mut f, kind);
            f.extend_from_slice(payload);
            f
        };
        assert_eq!(unwrap(&framed(SYNC, &[2, 1, 9])), Some(vec![0, 2, 1, 9]));
        assert_eq!(unwrap(&framed(SYNC_REPLY, &[1, 0])), Some(vec![0, 1, 0]));
        assert_eq!(unwrap(&framed(AWARENESS, &[5])), Some(vec![1, 5]));
        assert_eq!(unwrap(&framed(AUTH, &[2])), None);
        assert_eq!(unwrap(&framed(8, &[1])), None);
        assert_eq!(unwrap(&[0xff]), None);
    }
}
