//! `DirectIo`: a plain TCP connection that a document's room may also
//! write to, beside the connection's own task, and `TcpOutlet`, the room's
//! handle on it (weft-sync's `Outlet`).
//!
//! Why: fanning a change out to many editors or viewers, the task of each
//! woke up to make one `send`; the wake-up and the task's poll cost as much
//! CPU as the `send`. With an outlet the room writes the message itself,
//! framed for the connection (a WebSocket binary frame, or a chunk of an
//! event stream's chunked body), when the connection has nothing else to
//! write (see `weft_sync::outlet`).
//!
//! How the two writers stay in order, under one mutex per connection:
//! - the room writes (one non-blocking `send` of the frame's header and
//!   payload, never waiting) only when the connection's own last write
//!   went out whole and no rest of an earlier frame is kept;
//! - what the room's write left unwritten is kept here, and written before
//!   any other byte the connection writes or flushes (the session asks the
//!   connection to flush it);
//! - whatever the connection's task writes (hyper's response, tungstenite's
//!   frames, an event stream's chunks) passes through here and notes
//!   whether it went out whole.
//!
//! Hand-written: tokio's `TcpStream` can be written through `&self`
//! (`try_write`), which is what lets the room and the task share it; no
//! crate puts such a gate in front of it. The room's own writes go
//! straight to the socket through `socket2` (see [`Via`]). Only plain TCP: a TLS session's
//! writes cannot be shared this way, and its connections queue as before.
//! `poll_shutdown` only flushes: the socket closes when the connection
//! drops it (the room holds only a weak handle), or is shut down for
//! writing once taken back with [`DirectIo::into_tcp`].

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use weft_sync::outlet::{Outlet, Written};

use crate::telemetry;

/// Frames larger than this are left to the connection, which sends them
/// in fragments of this size.
const MAX_DIRECT: usize = crate::ws::FRAGMENT;

/// A plain TCP connection, readable and writable as any, that also hands
/// out an outlet.
#[derive(Debug)]
pub struct DirectIo(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    tcp: TcpStream,
    gate: Mutex<Gate>,
    /// When the room last wrote an event stream's chunk, in milliseconds
    /// after [`epoch`] plus one (0: never): the stream sends a keepalive
    /// only once it has been quiet for a whole period.
    room_wrote_at: AtomicU64,
}

#[derive(Debug, Default)]
struct Gate {
    /// What the room's last write left unwritten.
    rest: Option<Rest>,
    /// The connection's last write did not go out whole: its writer holds
    /// the rest (a frame the room must not cut into).
    behind: bool,
}

impl DirectIo {
    pub fn new(tcp: TcpStream) -> Self {
        DirectIo(Arc::new(Shared {
            tcp,
            gate: Mutex::default(),
            room_wrote_at: AtomicU64::new(0),
        }))
    }

    /// The room's handle on this connection, writing messages framed as
    /// `framing` says.
    pub fn outlet(&self, framing: Framing) -> TcpOutlet {
        TcpOutlet {
            shared: Arc::downgrade(&self.0),
            framing,
        }
    }

    /// The connection's own write of `buf`, without waiting: what the room
    /// left unwritten goes first (`WouldBlock` if the socket has no room
    /// for all of it). An empty `buf` only flushes that.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut gate = self.0.gate();
        while let Some(rest) = gate.rest.as_mut() {
            let n = send(&self.0.tcp, &rest.slices(), Via::Readiness)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            if rest.advance(n) {
                gate.rest = None;
            }
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let written = self.0.tcp.try_write(buf);
        gate.behind = !matches!(written, Ok(n) if n == buf.len());
        written
    }

    /// Waits for the peer to send something, or hang up, without taking it.
    pub fn poll_peek(
        &self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<usize>> {
        self.0.tcp.poll_peek(cx, buf)
    }

    /// The socket itself, once the room can no longer write to it (its
    /// outlet's session is gone), for a proper shutdown; `None` while a
    /// room's write is under way.
    pub fn into_tcp(self) -> Option<TcpStream> {
        Arc::try_unwrap(self.0).ok().map(|shared| shared.tcp)
    }
}

/// How a room's message is framed on the connection it writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// As one WebSocket binary frame (the connection is a WebSocket).
    WebSocket,
    /// As one chunk of a chunked HTTP/1.1 body (an event stream).
    Chunk,
}

impl Shared {
    fn gate(&self) -> MutexGuard<'_, Gate> {
        // A panic while holding the lock leaves the gate as it was.
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what the room left unwritten, if anything.
    fn poll_rest(&self, gate: &mut Gate, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = gate.rest.as_mut() {
            let n = ready!(self.poll_send(cx, &rest.slices()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if rest.advance(n) {
                gate.rest = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// One non-blocking write, waiting for room as any write does.
    fn poll_send(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match send(&self.tcp, bufs, Via::Readiness) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    /// The connection's own write of `bufs`, after the room's rest.
    fn poll_write_own(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut gate = self.gate();
        ready!(self.poll_rest(&mut gate, cx))?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        match self.poll_send(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                gate.behind = n < total;
                Poll::Ready(Ok(n))
            }
            other => {
                gate.behind = true;
                other
            }
        }
    }
}

impl AsyncRead for DirectIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.tcp.poll_read_ready(cx))?;
            // Zeroed before it is read into (no `unsafe` here), so at most
            // 64 KiB at a time however large the reader's buffer is.
            let room = buf.remaining().min(64 * 1024);
            match self.0.tcp.try_read(buf.initialize_unfilled_to(room)) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for DirectIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_own(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_own(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut gate = self.0.gate();
        self.0.poll_rest(&mut gate, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// The room's handle on a [`DirectIo`]: writes a message, framed for the
/// connection, when the connection is idle.
#[derive(Debug, Clone)]
pub struct TcpOutlet {
    shared: Weak<Shared>,
    framing: Framing,
}

impl TcpOutlet {
    /// When the room last wrote an event stream's chunk to the connection.
    pub fn room_wrote_at(&self) -> Option<Instant> {
        let at = self.shared.upgrade()?.room_wrote_at.load(Ordering::Relaxed);
        let ms = at.checked_sub(1)?;
        Some(epoch() + Duration::from_millis(ms))
    }
}

/// When this process first needed a time for [`Shared::room_wrote_at`].
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Outlet for TcpOutlet {
    fn try_write(&self, frame: &Bytes) -> Written {
        let Some(shared) = self.shared.upgrade() else {
            return Written::Nothing;
        };
        if frame.len() > MAX_DIRECT {
            return Written::Nothing;
        }
        if frame.is_empty() {
            // Nothing to write (and an empty chunk would end the body).
            return Written::All;
        }
        let mut gate = shared.gate();
        if gate.behind || gate.rest.is_some() {
            return Written::Nothing;
        }
        let (head, head_len) = match self.framing {
            Framing::WebSocket => frame_head(frame.len()),
            Framing::Chunk => chunk_head(frame.len()),
        };
        let tail: &'static [u8] = match self.framing {
            Framing::WebSocket => b"",
            Framing::Chunk => b"\r\n",
        };
        let parts = [&head[..head_len], frame, tail];
        // Never waits: a full socket is `WouldBlock`, and the frame queued.
        let n = match send(&shared.tcp, &parts.map(IoSlice::new), Via::Socket) {
            Ok(n) if n > 0 => n,
            _ => return Written::Nothing,
        };
        if self.framing == Framing::Chunk {
            let ms = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            shared.room_wrote_at.store(ms + 1, Ordering::Relaxed);
        }
        let transport = match self.framing {
            Framing::WebSocket => "ws",
            Framing::Chunk => "sse",
        };
        telemetry::carried(transport, "out", frame.len());
        let total = head_len + frame.len() + tail.len();
        if n == total {
            return Written::All;
        }
        gate.rest = Some(Rest::after(&head[..head_len], frame, tail, n));
        Written::Part
    }
}

/// What a room's write left unwritten: the rest of the message's head
/// (copied: a few bytes), of the message itself (a slice of the one buffer
/// every connection it went to shares, not a copy per connection) and of
/// its tail.
#[derive(Debug)]
struct Rest {
    parts: [Bytes; 3],
}

impl Rest {
    /// What is left of `head`, `frame` and `tail` after the first `n` bytes.
    fn after(head: &[u8], frame: &Bytes, tail: &'static [u8], n: usize) -> Rest {
        let in_head = n.min(head.len());
        let in_frame = (n - in_head).min(frame.len());
        let in_tail = (n - in_head - in_frame).min(tail.len());
        Rest {
            parts: [
                Bytes::copy_from_slice(&head[in_head..]),
                frame.slice(in_frame..),
                Bytes::from_static(&tail[in_tail..]),
            ],
        }
    }

    fn slices(&self) -> [IoSlice<'_>; 3] {
        self.parts.each_ref().map(|part| IoSlice::new(part))
    }

    /// Marks `n` more bytes written; `true` when nothing is left.
    fn advance(&mut self, mut n: usize) -> bool {
        for part in &mut self.parts {
            let k = n.min(part.len());
            part.advance(k);
            n -= k;
        }
        self.parts.iter().all(Bytes::is_empty)
    }
}

/// Most bytes copied into one buffer to be sent with `send` rather than
/// `writev` (which costs the kernel more per call than the copy).
const COPY_UP_TO: usize = 2048;

/// How a write reaches the socket.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// Through tokio's readiness, which a `WouldBlock` clears: for the
    /// writes of the connection's task, which then wait for the socket to
    /// become writable.
    Readiness,
    /// Straight to the socket (`socket2::SockRef`): for the room's writes,
    /// which never wait. Skipping tokio's readiness bookkeeping, one more
    /// cache miss per connection, cut a 1,000-subscriber fan-out's CPU by
    /// about 7 %. A `WouldBlock` here leaves tokio's readiness set, so the
    /// connection's next wait finds it out with one more try.
    Socket,
}

/// Writes `bufs` without waiting: small ones copied together and sent with
/// one `send`, others with one `writev`.
fn send(tcp: &TcpStream, bufs: &[IoSlice<'_>], via: Via) -> io::Result<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    match bufs {
        [one] => write(tcp, one, via),
        _ if total <= COPY_UP_TO => {
            let mut joined = [0u8; COPY_UP_TO];
            let mut at = 0;
            for b in bufs {
                joined[at..at + b.len()].copy_from_slice(b);
                at += b.len();
            }
            write(tcp, &joined[..at], via)
        }
        _ => match via {
            Via::Readiness => tcp.try_write_vectored(bufs),
            Via::Socket => SockRef::from(tcp).send_vectored(bufs),
        },
    }
}

/// One `send` of `buf`, without waiting.
fn write(tcp: &TcpStream, buf: &[u8], via: Via) -> io::Result<usize> {
    match via {
        Via::Readiness => tcp.try_write(buf),
        Via::Socket => SockRef::from(tcp).send(buf),
    }
}

/// Room for the longest head either framing puts before a message (a
/// chunk's size line: 16 hex digits and CRLF; a frame's head takes 10).
const HEAD_ROOM: usize = 18;

/// The head of an unmasked, final, binary WebSocket frame of `len` bytes
/// (RFC 6455 section 5.2), and how many of its bytes are used.
fn frame_head(len: usize) -> ([u8; HEAD_ROOM], usize) {
    let mut head = [0u8; HEAD_ROOM];
    head[0] = 0x82;
    if len < 126 {
        head[1] = len as u8;
        (head, 2)
    } else if let Ok(short) = u16::try_from(len) {
        head[1] = 126;
        head[2..4].copy_from_slice(&short.to_be_bytes());
        (head, 4)
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (head, 10)
    }
}

/// The size line of an HTTP/1.1 chunk of `len` bytes (RFC 9112 section
/// 7.1), and how many of its bytes are used.
fn chunk_head(len: usize) -> ([u8; HEAD_ROOM], usize) {
    let mut head = [0u8; HEAD_ROOM];
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, b) in head[..digits].iter_mut().enumerate() {
        let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
        *b = b"0123456789abcdef"[nibble];
    }
    head[digits..digits + 2].copy_from_slice(b"\r\n");
    (head, digits + 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn frame_heads_use_the_shortest_length() {
        assert_eq!(frame_head(5).0[..2], [0x82, 5]);
        assert_eq!(frame_head(125).1, 2);
        let (head, n) = frame_head(126);
        assert_eq!(head[..n], [0x82, 126, 0, 126]);
        let (head, n) = frame_head(70_000);
        assert_eq!(n, 10);
        assert_eq!(head[..n], [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    /// A server-side `DirectIo` and the client's end of the same socket.
    async fn pair() -> (DirectIo, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.expect("accept");
        (DirectIo::new(server), client.expect("connect"))
    }

    /// Everything the client reads until the server's side closes.
    async fn read_all(mut client: TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.expect("read");
        all
    }

    #[tokio::test]
    async fn the_room_writes_a_whole_frame_when_the_connection_is_idle() {
        let (io, mut client) = pair().await;
        let outlet = io.outlet(Framing::WebSocket);
        assert_eq!(outlet.try_write(&Bytes::from_static(b"abc")), Written::All);
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, [0x82, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn chunk_heads_are_the_size_in_hex() {
        let line = |len| {
            let (head, n) = chunk_head(len);
            String::from_utf8(head[..n].to_vec()).expect("ascii")
        };
        assert_eq!(line(0), "0\r\n");
        assert_eq!(line(9), "9\r\n");
        assert_eq!(line(0x1a2), "1a2\r\n");
        assert_eq!(line(0x10000), "10000\r\n");
        assert_eq!(line(usize::MAX), "ffffffffffffffff\r\n");
    }

    #[test]
    fn what_is_left_of_a_message_is_its_unwritten_bytes() {
        let frame = Bytes::from_static(b"data");
        let whole = b"4\r\ndata\r\n";
        let left = |rest: &Rest| rest.parts.concat();
        for n in 1..whole.len() {
            let mut rest = Rest::after(b"4\r\n", &frame, b"\r\n", n);
            assert_eq!(left(&rest), whole[n..], "after {n}");
            // Written a byte at a time, it empties exactly at its end.
            for i in n..whole.len() {
                assert_eq!(rest.advance(1), i + 1 == whole.len(), "at {i}");
            }
        }
        let rest = Rest::after(&[0x82, 4], &frame, b"", 3);
        assert_eq!(left(&rest), b"ata");
        // The message's rest is the shared buffer, not a copy.
        assert_eq!(rest.parts[1].as_ptr(), frame[1..].as_ptr());
    }

    /// The room writes 60,000-byte messages until the client's socket is
    /// full, then the connection writes its own bytes: the client reads
    /// every message whole (`head`, the payload, `tail`), then those.
    async fn room_fills_then_connection_writes(framing: Framing, head: &[u8], tail: &[u8]) {
        let (mut io, client) = pair().await;
        let outlet = io.outlet(framing);
        // The client reads nothing: messages go out until the socket is
        // full, the last in part (unless it filled exactly at one's end).
        let frame = Bytes::from(vec![7u8; 60_000]);
        let mut whole = 0usize;
        let last = loop {
            match outlet.try_write(&frame) {
                Written::All => whole += 1,
                other => break other,
            }
            assert!(whole < 10_000, "the socket never filled");
        };
        let parts = whole + usize::from(last == Written::Part);
        // The room writes no more while a rest is kept (or the socket is
        // full).
        assert_eq!(
            outlet.try_write(&Bytes::from_static(b"x")),
            Written::Nothing
        );

        // The connection's own write goes after the rest, once the client
        // reads: everything arrives whole and in order.
        let reader = tokio::spawn(read_all(client));
        io.write_all(b"OWN").await.expect("own write");
        io.flush().await.expect("flush");
        drop(outlet);
        drop(io);
        let all = reader.await.expect("reader");
        let framed = head.len() + frame.len() + tail.len();
        assert_eq!(all.len(), parts * framed + 3);
        for i in 0..parts {
            let f = &all[i * framed..(i + 1) * framed];
            assert_eq!(&f[..head.len()], head);
            assert!(f[head.len()..framed - tail.len()].iter().all(|&b| b == 7));
            assert_eq!(&f[framed - tail.len()..], tail);
        }
        assert_eq!(&all[all.len() - 3..], b"OWN");
    }

    #[tokio::test]
    async fn what_the_room_could_not_write_goes_before_anything_else() {
        room_fills_then_connection_writes(Framing::WebSocket, &[0x82, 126, 0xea, 0x60], b"").await;
    }

    #[tokio::test]
    async fn an_event_streams_chunks_stay_whole_when_the_socket_fills() {
        room_fills_then_connection_writes(Framing::Chunk, b"ea60\r\n", b"\r\n").await;
    }

    #[tokio::test]
    async fn the_connections_own_non_blocking_write_flushes_the_rooms_rest_first() {
        let (io, client) = pair().await;
        let outlet = io.outlet(Framing::Chunk);
        let frame = Bytes::from(vec![7u8; 60_000]);
        while outlet.try_write(&frame) == Written::All {}
        // Full: an own write without waiting is refused, not reordered.
        assert_eq!(
            io.try_write(b"OWN").map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
        let reader = tokio::spawn(read_all(client));
        let mut own: &[u8] = b"OWN";
        while !own.is_empty() {
            io.0.tcp.writable().await.expect("writable");
            match io.try_write(own) {
                Ok(n) => own = &own[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
        }
        let wrote = outlet.room_wrote_at().expect("the room wrote");
        assert!(wrote <= Instant::now());
        drop(outlet);
        drop(io);
        let all = reader.await.expect("reader");
        assert_eq!(&all[all.len() - 3..], b"OWN");
        assert_eq!((all.len() - 3) % (6 + frame.len() + 2), 0, "whole chunks");
    }

    #[tokio::test]
    async fn the_room_never_cuts_into_a_write_of_the_connection() {
        let (mut io, mut client) = pair().await;
        let outlet = io.outlet(Framing::WebSocket);
        // The connection's own message, larger than the socket takes at once.
        let own = vec![1u8; 8 << 20];
        let n = std::future::poll_fn(|cx| Pin::new(&mut io).poll_write(cx, &own))
            .await
            .expect("write");
        assert!(n < own.len(), "the socket took all {n} bytes at once");
        // The client reads some: the socket has room, but the rest of the
        // connection's message must come first.
        let mut some = vec![0u8; 64 * 1024];
        client.read_exact(&mut some).await.expect("read");
        assert_eq!(
            outlet.try_write(&Bytes::from_static(b"x")),
            Written::Nothing
        );

        let reader = tokio::spawn(read_all(client));
        io.write_all(&own[n..]).await.expect("the rest");
        assert_eq!(outlet.try_write(&Bytes::from_static(b"x")), Written::All);
        drop(outlet);
        drop(io);
        let all = reader.await.expect("reader");
        assert_eq!(all.len(), own.len() - some.len() + 3);
        assert!(all[..all.len() - 3].iter().all(|&b| b == 1));
        assert_eq!(&all[all.len() - 3..], [0x82, 1, b'x']);
    }
}
