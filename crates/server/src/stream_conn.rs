//! An event stream's connection, served without hyper once its request is in.
//!
//! An SSE viewer's connection carries one request and then, for as long as
//! the viewer watches, only the server's writes. hyper serves it like any
//! HTTP/1.1 connection: an 8 KiB read buffer (grown to 16 KiB for the next
//! request it waits for) and an 8 KiB write buffer, kept for the
//! connection's life, with no setting to shrink them. Across thousands of
//! idle viewers those buffers were most of the server's memory per viewer
//! (2,000 viewers: 23.6 KB of RSS each). So a plain HTTP/1.1 connection
//! whose first request is already waiting in the socket as a complete
//! `GET /sse/...` head is served here instead: the head is parsed
//! (`httparse`, as hyper does) from bytes peeked, not read, so anything
//! this path does not take (another method or path, HTTP/1.0, a body, an
//! upgrade, `Expect`, a head not yet complete or larger than
//! [`MAX_HEAD`]) goes to hyper untouched. The request then goes through
//! the same router, layers and handler as any other; only the writing of
//! its response is done here: the status line and headers, then the body
//! with chunked transfer encoding (or as is, when its length is known),
//! and the connection closes when the body ends, as an event stream's
//! does. Written here rather than taken from a crate because the part
//! needed is this small write path, and no HTTP crate offers it apart from
//! its whole connection machinery.
//!
//! The handler is given the connection's [`StreamOutlet`]: once the head
//! is written, the room may write the body's chunks itself (see
//! `direct_io`), and an empty frame of the body asks this path to flush
//! what the room left unwritten. The body is dropped before its last
//! chunk, so nothing the room writes can follow it.
//!
//! While it streams, the connection is watched for the viewer going away
//! (a read of end of file, or anything it sends: it has no second request
//! to make here) and every write has a deadline ([`WRITE_DEADLINE`]), so a
//! viewer that stops reading does not hold its task and descriptor
//! forever. On shutdown the body ends by itself (the handler watches the
//! same signal); the connection gets [`CLOSE_GRACE`] to finish, a write
//! waiting for room included.

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, Response, Version};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::direct_io::{DirectIo, TcpOutlet};

/// The largest request head taken here; larger ones go to hyper.
pub const MAX_HEAD: usize = 8 * 1024;

/// How long one write to a viewer may wait for room in its socket.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(30);

/// How long the connection may take to finish once the server shuts down.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The path every event stream is under.
const STREAM_PREFIX: &str = "/sse/";

/// Whether the bytes waiting on `tcp` begin an event-stream request: a
/// cheap look first, so other connections (a flood of them included) pay
/// nothing for this path.
pub async fn may_be_stream(tcp: &TcpStream) -> bool {
    const START: &[u8] = b"GET /sse/";
    let mut first = [0u8; START.len()];
    matches!(tcp.peek(&mut first).await, Ok(n) if first[..n] == *START)
}

/// The event-stream request waiting on `tcp`, and how many bytes its head
/// takes, if there is one this path serves; the bytes stay in the socket.
pub async fn waiting_request(tcp: &TcpStream) -> Option<(Request<Body>, usize)> {
    let mut buf = vec![0u8; MAX_HEAD];
    let seen = tcp.peek(&mut buf).await.ok()?;
    parse_head(&buf[..seen])
}

/// A complete `GET /sse/...` HTTP/1.1 head with no body, as a request.
fn parse_head(bytes: &[u8]) -> Option<(Request<Body>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = head.parse(bytes).ok()? else {
        return None;
    };
    if head.method != Some("GET") || head.version != Some(1) {
        return None;
    }
    let path = head.path.filter(|p| p.starts_with(STREAM_PREFIX))?;
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .version(Version::HTTP_11);
    for h in head.headers.iter() {
        let name = header::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let has_body = name == header::CONTENT_LENGTH && h.value.trim_ascii() != b"0";
        let takes_more =
            name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT;
        if has_body || takes_more {
            return None;
        }
        request = request.header(name, header::HeaderValue::from_bytes(h.value).ok()?);
    }
    Some((request.body(Body::empty()).ok()?, len))
}

/// Takes the request's head (`head_len` bytes, already waiting) off the
/// socket.
pub async fn consume_head(tcp: &mut TcpStream, head_len: usize) -> std::io::Result<()> {
    let mut head = vec![0u8; head_len];
    tcp.read_exact(&mut head).await.map(|_| ())
}

/// The room's handle on an event stream's connection served here, as a
/// request extension: it writes chunks of the body (only this path's
/// responses are written in a way it may share).
#[derive(Debug, Clone)]
pub struct StreamOutlet(pub TcpOutlet);

/// How a response goes out: its head, encoded, and its body.
pub struct Outgoing {
    head: Bytes,
    body: Body,
    chunked: bool,
}

impl Outgoing {
    /// Encodes `response`'s head; its headers are let go here, before
    /// streaming, so a viewer's connection keeps nothing it no longer needs.
    pub fn new(response: Response<Body>) -> Self {
        let (parts, body) = response.into_parts();
        let length = known_length(&parts.headers, &body);
        Outgoing {
            head: Bytes::from(encode_head(&parts, length)),
            body,
            chunked: length.is_none(),
        }
    }
}

/// Takes a boxed value out, freeing the box now (moving out of `*b` in an
/// async fn frees it only when the binding goes out of scope, which for a
/// parameter is when the connection ends).
#[allow(clippy::boxed_local)] // taking the box is the point
pub fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// What woke an idle stream.
enum Next {
    Frame(hyper::body::Frame<Bytes>),
    /// The body ended (or failed: `false`).
    Ended(bool),
    /// The viewer hung up, or sent something it has no reason to.
    Hangup,
}

/// Writes the response and streams its body until it ends, the viewer
/// goes away or stops reading, or the server shuts down and the grace
/// passes.
///
/// While idle, this future holds only the socket and the body: it waits on
/// both with one `poll_fn` (no read future, no cancellation future), and a
/// write that cannot finish at once is boxed (see [`write`]). The body
/// ends by itself on shutdown (the handler watches the signal); writes
/// after shutdown get [`CLOSE_GRACE`].
pub async fn respond(mut io: DirectIo, out: Box<Outgoing>, shutdown: &CancellationToken) {
    let Outgoing {
        head,
        mut body,
        chunked,
    } = unbox(out);
    if write(&mut io, &head, shutdown).await.is_err() {
        return;
    }
    drop(head);
    loop {
        let next = std::future::poll_fn(|cx| {
            use axum::body::HttpBody as _;
            match std::pin::Pin::new(&mut body).poll_frame(cx) {
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    return std::task::Poll::Ready(Next::Frame(frame))
                }
                std::task::Poll::Ready(Some(Err(_))) => {
                    return std::task::Poll::Ready(Next::Ended(false))
                }
                std::task::Poll::Ready(None) => return std::task::Poll::Ready(Next::Ended(true)),
                std::task::Poll::Pending => {}
            }
            // A peek, not mere readiness: readiness left over from reading
            // the head must not count as a hang-up.
            let mut one = [0u8; 1];
            let mut buf = tokio::io::ReadBuf::new(&mut one);
            match io.poll_peek(cx, &mut buf) {
                std::task::Poll::Ready(_) => std::task::Poll::Ready(Next::Hangup),
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
        .await;
        match next {
            Next::Frame(frame) => {
                let Some(out) = frame_bytes(frame, chunked) else {
                    continue;
                };
                if write(&mut io, &out, shutdown).await.is_err() {
                    return;
                }
            }
            Next::Ended(true) => break,
            Next::Ended(false) | Next::Hangup => return,
        }
    }
    // The room writes nothing more once the body (its session) is gone.
    drop(body);
    let finish = async {
        if chunked {
            write(&mut io, b"0\r\n\r\n", shutdown).await?;
        }
        match io.into_tcp() {
            Some(mut tcp) => tcp.shutdown().await,
            None => Ok(()),
        }
    };
    let _ = Box::pin(timeout(CLOSE_GRACE, finish)).await;
}

/// One frame of the body as it goes on the wire (its data; trailers have
/// no place here); `None` for nothing to write. An empty frame is written
/// as nothing (an empty chunk would end the body), which flushes what the
/// room left unwritten.
fn frame_bytes(frame: hyper::body::Frame<Bytes>, chunked: bool) -> Option<Bytes> {
    let data = frame.into_data().ok()?;
    Some(if chunked && !data.is_empty() {
        chunk(&data)
    } else {
        data
    })
}

/// The body's length when it is known up front: it is sent as is, with a
/// `content-length`; otherwise it is sent in chunks.
fn known_length(headers: &HeaderMap, body: &Body) -> Option<u64> {
    use axum::body::HttpBody as _;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    declared.or_else(|| body.size_hint().exact())
}

/// The status line and headers, ending with the blank line.
fn encode_head(parts: &axum::http::response::Parts, length: Option<u64>) -> Vec<u8> {
    let status = parts.status;
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if [
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::CONTENT_LENGTH,
        ]
        .contains(name)
        {
            continue;
        }
        push_header(&mut head, name.as_str(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(SystemTime::now());
        push_header(&mut head, "date", date.as_bytes());
    }
    match length {
        Some(n) => push_header(&mut head, "content-length", n.to_string().as_bytes()),
        None => push_header(&mut head, "transfer-encoding", b"chunked"),
    }
    push_header(&mut head, "connection", b"close");
    head.extend_from_slice(b"\r\n");
    head
}

fn push_header(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// `data` as one chunk of a chunked body.
fn chunk(data: &[u8]) -> Bytes {
    let size = format!("{:x}\r\n", data.len());
    let mut out = Vec::with_capacity(size.len() + data.len() + 2);
    out.extend_from_slice(size.as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out.into()
}

/// Writes all of `bytes`, after what the room left unwritten, within
/// [`WRITE_DEADLINE`], and within [`CLOSE_GRACE`] of shutdown. Most writes
/// fit the socket's buffer and are done at once; only one that has to
/// wait for room is a future of its own (boxed, so waiting is not what
/// sizes every viewer's task).
async fn write(
    io: &mut DirectIo,
    bytes: &[u8],
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let rest = match io.try_write(bytes) {
        Ok(n) if n == bytes.len() => return Ok(()),
        Ok(n) => &bytes[n..],
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => bytes,
        Err(e) => return Err(e),
    };
    let waiting = async {
        let shut_down = async {
            shutdown.cancelled().await;
            tokio::time::sleep(CLOSE_GRACE).await;
        };
        let write_all = async {
            io.write_all(rest).await?;
            io.flush().await
        };
        tokio::select! {
            written = timeout(WRITE_DEADLINE, write_all) => {
                written.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            }
            () = shut_down => Err(std::io::ErrorKind::TimedOut.into()),
        }
    };
    Box::pin(waiting).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str) -> Option<(String, usize)> {
        parse_head(head.as_bytes()).map(|(r, len)| (r.uri().to_string(), len))
    }

    #[test]
    fn a_complete_event_stream_get_is_taken_with_its_head_length() {
        let head = "GET /sse/notes?token=t HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1-4\r\n\r\n";
        assert_eq!(
            parsed(head),
            Some(("/sse/notes?token=t".into(), head.len()))
        );
        let (request, _) = parse_head(head.as_bytes()).expect("taken");
        assert_eq!(request.headers()["last-event-id"], "1-4");
    }

    #[test]
    fn anything_else_is_left_to_hyper() {
        for head in [
            "GET /sse/notes HTTP/1.1\r\nHost: x\r\n",      // incomplete
            "GET /sse/notes HTTP/1.0\r\nHost: x\r\n\r\n",  // HTTP/1.0
            "HEAD /sse/notes HTTP/1.1\r\nHost: x\r\n\r\n", // not GET
            "GET /ws/notes HTTP/1.1\r\nHost: x\r\n\r\n",   // not a stream
            "GET /sse/notes HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", // a body
            "GET /sse/notes HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /sse/notes HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /sse/notes HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /sse/notes HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert_eq!(parsed(head), None, "{head:?}");
        }
        assert!(parsed("GET /sse/n HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_some());
    }

    #[test]
    fn the_head_says_how_the_body_is_delimited_and_that_the_connection_closes() {
        let response = Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .header("connection", "keep-alive")
            .body(())
            .expect("response");
        let (parts, ()) = response.into_parts();
        let head = String::from_utf8(encode_head(&parts, None)).expect("utf-8");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("content-type: text/event-stream\r\n"),
            "{head}"
        );
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert!(head.contains("connection: close\r\n") && !head.contains("keep-alive"));
        assert!(
            head.contains("date: ") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let head = String::from_utf8(encode_head(&parts, Some(12))).expect("utf-8");
        assert!(head.contains("content-length: 12\r\n") && !head.contains("chunked"));
        assert_eq!(&chunk(b"data: x\n\n")[..], b"9\r\ndata: x\n\n\r\n");
    }
}
