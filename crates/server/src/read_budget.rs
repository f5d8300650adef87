//! `Budgeted`: an upgraded connection whose reads can be held to a budget
//! of bytes, and `ReadBudget`, the handle that sets it.
//!
//! A Hocuspocus socket is accepted before anyone has shown a token (its
//! tokens come inside, per document), and tungstenite assembles a message
//! of up to `--max-message-bytes` before handing any of it over. Until the
//! socket has authenticated a document, what it may send in all is held
//! to a budget well below one message, so a client without a token cannot
//! make the server hold megabytes of half-read frames. Written here, not
//! taken from a crate: it is one counter around `poll_read`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// No limit.
const UNLIMITED: usize = usize::MAX;

/// How many more bytes a connection may read (shared with its reader).
#[derive(Debug, Clone)]
pub struct ReadBudget(Arc<AtomicUsize>);

impl ReadBudget {
    pub fn new(bytes: usize) -> ReadBudget {
        ReadBudget(Arc::new(AtomicUsize::new(bytes)))
    }

    /// Reads are no longer limited.
    pub fn lift(&self) {
        self.0.store(UNLIMITED, Ordering::Relaxed);
    }

    /// Reads are limited to `bytes` more from now.
    pub fn limit(&self, bytes: usize) {
        self.0.store(bytes, Ordering::Relaxed);
    }

    /// Whether the budget ran out (a read was refused).
    pub fn is_spent(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }

    /// Takes `n` bytes from the budget; `false` if there were not that many
    /// (the budget is then spent).
    fn take(&self, n: usize) -> bool {
        let mut left = self.0.load(Ordering::Relaxed);
        loop {
            if left == UNLIMITED {
                return true;
            }
            let (next, ok) = match left.checked_sub(n) {
                Some(next) => (next, true),
                None => (0, false),
            };
            match self
                .0
                .compare_exchange_weak(left, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return ok,
                Err(now) => left = now,
            }
        }
    }
}

/// A connection whose reads draw on a [`ReadBudget`] (none: unlimited).
#[derive(Debug)]
pub struct Budgeted<S> {
    inner: S,
    budget: Option<ReadBudget>,
}

impl<S> Budgeted<S> {
    pub fn new(inner: S, budget: Option<ReadBudget>) -> Self {
        Budgeted { inner, budget }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        match &self.budget {
            Some(budget) if !budget.take(read) => Poll::Ready(Err(io::Error::other(
                "read more than the connection may before it authenticates",
            ))),
            _ => Poll::Ready(Ok(())),
        }
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
        client.write_all(b"x").await.expect("write");
        assert!(reader.read(&mut buf).await.is_err());
        assert!(budget.is_spent());
        budget.lift();
        client.write_all(&[7; 40]).await.expect("write");
        assert_eq!(reader.read(&mut buf).await.expect("unlimited"), 40);
        budget.limit(5);
        assert!(!budget.is_spent());
    }
}
