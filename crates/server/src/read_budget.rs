//! `Budgeted`: an upgraded connection whose reads can be held to a budget
//! of bytes, and `ReadBudget`, the handle that sets it; it also counts
//! what was read towards a message not yet whole ([`Budgeted::unfinished`],
//! for `slow_message.rs`).
//!
//! A Hocuspocus socket is accepted before anyone has shown a token (its
//! tokens come inside, per document), and tungstenite assembles a message
//! of up to `--max-message-bytes` before handing any of it over. Until the
//! socket has authenticated a document, what it may send in all is held
//! to a budget well below one message, so a client without a token cannot
//! make the server hold megabytes of half-read frames. When the budget
//! runs out, the reader is told ([`ReadBudget::spent`]) and from then on
//! what the connection sends is read and thrown away, never buffered and
//! never handed to tungstenite: the connection can still be told why it
//! is closed, and is not reset (as a socket closed with unread data is)
//! before it reads that. Written here, not taken from a crate: it is one
//! counter around `poll_read`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// No limit.
const UNLIMITED: usize = usize::MAX;
/// Spent: whatever is read is thrown away.
const DRAINING: usize = usize::MAX - 1;

/// How many more bytes a connection may read (shared with its reader).
#[derive(Debug, Clone)]
pub struct ReadBudget(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    left: AtomicUsize,
    spent: Notify,
}

impl ReadBudget {
    pub fn new(bytes: usize) -> ReadBudget {
        ReadBudget(Arc::new(Shared {
            left: AtomicUsize::new(bytes),
            spent: Notify::new(),
        }))
    }

    /// Reads are no longer limited (unless the budget is already spent).
    pub fn lift(&self) {
        self.set(UNLIMITED);
    }

    /// Reads are limited to `bytes` more from now (unless the budget is
    /// already spent).
    pub fn limit(&self, bytes: usize) {
        self.set(bytes.min(DRAINING - 1));
    }

    fn set(&self, to: usize) {
        let _ = self
            .0
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left != DRAINING).then_some(to)
            });
    }

    /// Resolves once the budget has run out.
    pub async fn spent(&self) {
        self.0.spent.notified().await;
    }

    fn is_draining(&self) -> bool {
        self.0.left.load(Ordering::Relaxed) == DRAINING
    }

    /// Takes `n` bytes from the budget; `false` if there were not that many
    /// (the budget is then spent, and whoever waits on it told).
    fn take(&self, n: usize) -> bool {
        let taken =
            self.0
                .left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| match left {
                    UNLIMITED => Some(UNLIMITED),
                    DRAINING => None,
                    left => Some(left.checked_sub(n).unwrap_or(DRAINING)),
                });
        let ok = matches!(taken, Ok(left) if left == UNLIMITED || left >= n);
        if !ok {
            self.0.spent.notify_one();
        }
        ok
    }
}

/// A connection whose reads draw on a [`ReadBudget`] (none: unlimited),
/// and which counts what it read since the reader last had a whole
/// message, so that a message that never finishes arriving can be told.
#[derive(Debug)]
pub struct Budgeted<S> {
    inner: S,
    budget: Option<ReadBudget>,
    /// Bytes read since the last whole data message, less the control
    /// frames the reader was handed meanwhile.
    unfinished: u64,
    /// Whether a whole data message was handed over since the last
    /// [`Budgeted::take_finished`].
    finished: bool,
}

impl<S> Budgeted<S> {
    pub fn new(inner: S, budget: Option<ReadBudget>) -> Self {
        Budgeted {
            inner,
            budget,
            unfinished: 0,
            finished: false,
        }
    }

    /// Bytes read that are not yet part of a message the reader was given:
    /// a message still arriving (up to a read's worth of the next).
    pub fn unfinished(&self) -> u64 {
        self.unfinished
    }

    /// The reader was given a whole data message.
    pub fn message_done(&mut self) {
        self.unfinished = 0;
        self.finished = true;
    }

    /// Whether a whole data message was handed over since the last call.
    pub fn take_finished(&mut self) -> bool {
        std::mem::take(&mut self.finished)
    }

    /// The reader was given a control frame of `wire` bytes.
    pub fn control_done(&mut self, wire: usize) {
        self.unfinished = self.unfinished.saturating_sub(wire as u64);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.budget.as_ref().is_some_and(ReadBudget::is_draining) {
            return self.poll_drain(cx);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        self.unfinished = self.unfinished.saturating_add(read as u64);
        match &self.budget {
            Some(budget) if !budget.take(read) => {
                // Over: these bytes are thrown away with the rest.
                buf.set_filled(before);
                self.poll_drain(cx)
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl<S: AsyncRead + Unpin> Budgeted<S> {
    /// Reads and throws away whatever has come; ready (with nothing read,
    /// which is the end of the stream) once the peer closes. A peer that
    /// keeps sending gets the task back every 64 reads, so it cannot keep
    /// a worker to itself.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 4096];
        for _ in 0..64 {
            let mut buf = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_stop_at_the_budget_until_it_is_lifted() {
        let (mut client, server) = tokio::io::duplex(64);
        let budget = ReadBudget::new(10);
        let mut reader = Budgeted::new(server, Some(budget.clone()));
        let mut buf = [0u8; 64];
        client.write_all(b"0123456789").await.expect("write");
        assert_eq!(reader.read(&mut buf).await.expect("within"), 10);
        budget.lift();
        client.write_all(&[7; 40]).await.expect("write");
        assert_eq!(reader.read(&mut buf).await.expect("unlimited"), 40);
        budget.limit(5);
        client.write_all(b"abcde").await.expect("write");
        assert_eq!(reader.read(&mut buf).await.expect("within"), 5);
    }

    #[tokio::test]
    async fn past_the_budget_the_reader_is_told_and_the_rest_thrown_away() {
        let (mut client, server) = tokio::io::duplex(64);
        let budget = ReadBudget::new(10);
        let mut reader = Budgeted::new(server, Some(budget.clone()));
        let mut buf = [0u8; 64];
        client.write_all(b"0123456789").await.expect("write");
        assert_eq!(reader.read(&mut buf).await.expect("within"), 10);
        client.write_all(b"x").await.expect("write");
        // The reader sees nothing of what came after, and no error: only
        // the end, once the peer has sent all it would.
        let read = tokio::spawn(async move { reader.read(&mut buf).await });
        tokio::time::timeout(std::time::Duration::from_secs(5), budget.spent())
            .await
            .expect("told the budget is spent");
        for _ in 0..100 {
            client.write_all(&[1; 60]).await.expect("write");
        }
        drop(client);
        assert_eq!(read.await.expect("joins").expect("the end"), 0);
        // Nothing lifts a spent budget.
        budget.lift();
        assert!(budget.is_draining());
    }
}
