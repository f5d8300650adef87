//! `Outlet`: a connection's way to take a frame straight from its room,
//! without the room queueing it and waking the connection's task.
//!
//! Fanning a change out to a thousand editors queued a frame for each and
//! woke each one's task, which then made one `send`: half the server's CPU
//! per delivery went to the wake-up, the task's poll and its bookkeeping
//! rather than the `send` itself. A transport that can write without
//! waiting (a plain TCP socket) gives its session an outlet; the room then
//! writes a frame itself when nothing is queued for that connection and the
//! connection is not writing, and queues it as before otherwise.
//!
//! What an outlet promises, so that a connection's frames stay in order
//! and whole: it writes nothing while the connection's own writes are
//! unfinished, and what it could write only in part, it keeps and writes
//! before any other byte of the connection.

use bytes::Bytes;

/// What became of a frame offered to an outlet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// All of it went out.
    All,
    /// Part of it went out; the outlet keeps the rest, which goes out when
    /// the connection next writes or flushes (the session asks it to).
    Part,
    /// None of it: the socket is full, the connection is busy writing or
    /// gone, or the frame is larger than the outlet writes. Queue it.
    Nothing,
}

/// Writes a room's frames to a connection directly (see the module doc).
pub trait Outlet: Send + Sync + std::fmt::Debug {
    /// Writes `frame` (a y-sync message, or a viewer's events) to the
    /// connection now, framed for its transport, if it can without
    /// waiting.
    fn try_write(&self, frame: &Bytes) -> Written;
}
