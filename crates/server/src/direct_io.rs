//! `DirectIo`: a plain TCP connection that a document's room may also
//! write to, beside the connection's own task, and `TcpOutlet`, the room's
//! handle on it (weft-sync's `Outlet`).
//!
//! Why: fanning a change out to many editors, the task of each woke up to
//! make one `send`; the wake-up and the task's poll cost as much CPU as the
//! `send`. With an outlet the room writes the WebSocket frame itself when
//! the connection has nothing else to write (see `weft_sync::outlet`).
//!
//! How the two writers stay in order, under one mutex per connection:
//! - the room writes (one non-blocking `send` of the frame's header and
//!   payload, never waiting) only when the connection's own last write
//!   went out whole and no rest of an earlier frame is kept;
//! - what the room's write left unwritten is kept here, and written before
//!   any other byte the connection writes or flushes (the session asks the
//!   connection to flush it);
//! - whatever the connection's task writes (hyper's response, tungstenite's
//!   frames) passes through here and notes whether it went out whole.
//!
//! Hand-written: tokio's `TcpStream` can be written through `&self`
//! (`try_write`), which is what lets the room and the task share it; no
//! crate puts such a gate in front of it. Only plain TCP: a TLS session's
//! writes cannot be shared this way, and its connections queue as before.
//! `poll_shutdown` does nothing: the socket closes when the connection
//! drops it (the room holds only a weak handle).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
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
}

#[derive(Debug, Default)]
struct Gate {
    /// What the room's last write left unwritten.
    rest: Option<Bytes>,
    /// The connection's last write did not go out whole: its writer holds
    /// the rest (a frame the room must not cut into).
    behind: bool,
}

impl DirectIo {
    pub fn new(tcp: TcpStream) -> Self {
        DirectIo(Arc::new(Shared {
            tcp,
            gate: Mutex::default(),
        }))
    }

    /// The room's handle on this connection.
    pub fn outlet(&self) -> TcpOutlet {
        TcpOutlet(Arc::downgrade(&self.0))
    }
}

impl Shared {
    fn gate(&self) -> MutexGuard<'_, Gate> {
        // A panic while holding the lock leaves the gate as it was.
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes what the room left unwritten, if anything.
    fn poll_rest(&self, gate: &mut Gate, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = gate.rest.as_mut() {
            let n = ready!(self.poll_send(cx, &[IoSlice::new(rest)]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n == rest.len() {
                gate.rest = None;
            } else {
                let _ = rest.split_to(n);
            }
        }
        Poll::Ready(Ok(()))
    }

    /// One non-blocking write, waiting for room as any write does.
    fn poll_send(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match send(&self.tcp, bufs) {
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

/// The room's handle on a [`DirectIo`]: writes a y-sync message as one
/// WebSocket binary frame when the connection is idle.
#[derive(Debug, Clone)]
pub struct TcpOutlet(Weak<Shared>);

impl Outlet for TcpOutlet {
    fn try_write(&self, frame: &Bytes) -> Written {
        let Some(shared) = self.0.upgrade() else {
            return Written::Nothing;
        };
        if frame.len() > MAX_DIRECT {
            return Written::Nothing;
        }
        let mut gate = shared.gate();
        if gate.behind || gate.rest.is_some() {
            return Written::Nothing;
        }
        let (head, head_len) = frame_head(frame.len());
        let head = &head[..head_len];
        // Never waits: a full socket is `WouldBlock`, and the frame queued.
        let n = match send(&shared.tcp, &[IoSlice::new(head), IoSlice::new(frame)]) {
            Ok(n) if n > 0 => n,
            _ => return Written::Nothing,
        };
        telemetry::carried("ws", "out", frame.len());
        if n == head_len + frame.len() {
            return Written::All;
        }
        gate.rest = Some(if n < head_len {
            let mut rest = head[n..].to_vec();
            rest.extend_from_slice(frame);
            Bytes::from(rest)
        } else {
            frame.slice(n - head_len..)
        });
        Written::Part
    }
}

/// Most bytes copied into one buffer to be sent with `send` rather than
/// `writev` (which costs the kernel more per call than the copy).
const COPY_UP_TO: usize = 2048;

/// Writes `bufs` without waiting: small ones copied together and sent with
/// one `send`, others with one `writev`.
fn send(tcp: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    match bufs {
        [one] => tcp.try_write(one),
        _ if total <= COPY_UP_TO => {
            let mut joined = [0u8; COPY_UP_TO];
            let mut at = 0;
            for b in bufs {
                joined[at..at + b.len()].copy_from_slice(b);
                at += b.len();
            }
            tcp.try_write(&joined[..at])
        }
        _ => tcp.try_write_vectored(bufs),
    }
}

/// The head of an unmasked, final, binary WebSocket frame of `len` bytes
/// (RFC 6455 section 5.2), and how many of its bytes are used.
fn frame_head(len: usize) -> ([u8; 10], usize) {
    let mut head = [0u8; 10];
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
        let outlet = io.outlet();
        assert_eq!(outlet.try_write(&Bytes::from_static(b"abc")), Written::All);
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, [0x82, 3, b'a', b'b', b'c']);
    }

    #[tokio::test]
    async fn what_the_room_could_not_write_goes_before_anything_else() {
        let (mut io, client) = pair().await;
        let outlet = io.outlet();
        // The client reads nothing: frames go out until the socket is full,
        // the last in part (unless it filled exactly at a frame's end).
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
        let framed = 4 + frame.len();
        assert_eq!(all.len(), parts * framed + 3);
        for i in 0..parts {
            let f = &all[i * framed..(i + 1) * framed];
            assert_eq!(f[..4], [0x82, 126, 0xea, 0x60]);
            assert!(f[4..].iter().all(|&b| b == 7));
        }
        assert_eq!(&all[all.len() - 3..], b"OWN");
    }

    #[tokio::test]
    async fn the_room_never_cuts_into_a_write_of_the_connection() {
        let (mut io, mut client) = pair().await;
        let outlet = io.outlet();
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
