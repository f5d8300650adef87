//! The documents one Hocuspocus socket has open, and what it sent for
//! documents it has not opened yet.
//!
//! Each open document is a [`Session`] of its own, with the access its
//! token granted and when that token ends. Messages for an address that
//! has not authenticated wait (a provider whose token comes from a
//! function may send changes before its token), within a bound in
//! frames, bytes and addresses, and for at most the header deadline; an
//! address refused access, or whose
//! document the server ended, has its messages dropped until it sends a
//! token again. Frames from the rooms are taken round-robin, so one busy
//! document cannot starve the others on the socket.

use std::collections::HashSet;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use weft_storage::DocName;
use weft_sync::hocuspocus::Replies;
use weft_sync::{CloseReason, Session};

use crate::auth::Mode;
use crate::limits::ConnectionSlot;
use crate::telemetry::LiveConnection;

/// At most this many documents open on one socket.
pub const MAX_DOCUMENTS: usize = 64;
/// At most this many of them the same document (session-aware providers
/// open one document under several addresses).
pub const MAX_SESSIONS_PER_DOCUMENT: usize = 8;
/// Messages waiting for their address's token: at most this many frames,
/// bytes and addresses on one socket.
pub const MAX_WAITING_FRAMES: usize = 64;
pub const MAX_WAITING_BYTES: usize = 64 * 1024;
pub const MAX_WAITING_ADDRESSES: usize = 16;
/// How long before a token ends the provider is asked for a fresh one (at
/// most half of the token's remaining life).
const REFRESH_AHEAD: Duration = Duration::from_secs(30);

/// One document open on the socket.
pub struct Open {
    /// Its address, as the provider sent it.
    pub key: String,
    pub doc: DocName,
    pub session: Session,
    pub mode: Mode,
    /// The subject of the token it was opened with.
    pub author: Option<String>,
    pub replies: Replies,
    /// When its token ends access, if ever.
    expiry: Option<Instant>,
    /// When to ask the provider for a fresh token.
    refresh_at: Option<Instant>,
    /// The connection place it holds, beyond the socket's own.
    _slot: Option<ConnectionSlot>,
    _live: LiveConnection,
}

impl Open {
    pub fn new(
        key: &str,
        (doc, session): (DocName, Session),
        (mode, author): (Mode, Option<String>),
        slot: Option<ConnectionSlot>,
    ) -> Open {
        Open {
            key: key.to_owned(),
            doc,
            session,
            mode,
            author,
            replies: Replies::default(),
            expiry: None,
            refresh_at: None,
            _slot: slot,
            _live: LiveConnection::new("hocuspocus", mode.as_str()),
        }
    }

    /// A fresh token: access ends at `expiry` if that is later than
    /// before, and the provider is asked again before then. (A token that
    /// ends no later, a fixed string, is not asked for again: it is
    /// what it is.)
    pub fn refresh(&mut self, expiry: Option<Instant>) {
        let later = match (self.expiry, expiry) {
            (Some(old), Some(new)) => new > old,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if later {
            self.set_expiry(expiry);
        }
    }

    /// Access ends at `expiry`; the provider is asked for a fresh token
    /// before.
    pub fn set_expiry(&mut self, expiry: Option<Instant>) {
        self.expiry = expiry;
        self.refresh_at = expiry.map(|at| {
            let left = at.saturating_duration_since(Instant::now());
            at.checked_sub(REFRESH_AHEAD.min(left / 2)).unwrap_or(at)
        });
    }
}

/// Why a message could not wait for its address's token.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMuchWaiting(pub String);

/// What a deadline asks of the socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Ask the provider of the document at this index for a fresh token.
    Refresh(usize),
    /// The token of the document at this index has ended.
    Expired(usize),
}

/// The socket's documents (see the module doc).
#[derive(Default)]
pub struct Documents {
    pub open: Vec<Open>,
    /// Frames waiting for their address's token, with when each came.
    waiting: Vec<(String, Bytes, Instant)>,
    waiting_bytes: usize,
    /// Addresses whose messages are dropped until they send a token.
    muted: HashSet<String>,
    /// Where the next round-robin turn starts.
    next: usize,
}

impl Documents {
    pub fn find(&self, key: &str) -> Option<usize> {
        self.open.iter().position(|o| o.key == key)
    }

    /// How many addresses have `doc` open.
    pub fn sessions_of(&self, doc: &DocName) -> usize {
        self.open.iter().filter(|o| &o.doc == doc).count()
    }

    pub fn is_muted(&self, key: &str) -> bool {
        self.muted.contains(key)
    }

    /// Opens a document, forgetting that its address was refused.
    pub fn add(&mut self, open: Open) -> usize {
        self.muted.remove(&open.key);
        self.open.push(open);
        self.open.len() - 1
    }

    /// Closes the document at `index` (leaving its room); its address's
    /// messages are dropped until it sends a token. Returns its address.
    pub fn end(&mut self, index: usize) -> String {
        let open = self.open.swap_remove(index);
        self.forget(&open.key);
        open.key
    }

    /// Drops `key`'s waiting messages and any later ones, until it sends
    /// a token. The set is bounded like the socket's documents: past
    /// that, it starts again empty (the messages of the addresses it
    /// forgot then wait again, within the waiting bound).
    pub fn forget(&mut self, key: &str) {
        self.take_waiting(key);
        if self.muted.len() >= MAX_DOCUMENTS {
            self.muted.clear();
        }
        self.muted.insert(key.to_owned());
    }

    /// Keeps `frame` until `key` sends its token.
    pub fn wait(&mut self, key: &str, frame: Bytes) -> Result<(), TooMuchWaiting> {
        let new_address = !self.waiting.iter().any(|(k, ..)| k == key);
        let addresses = self.waiting_addresses() + usize::from(new_address);
        if self.waiting.len() >= MAX_WAITING_FRAMES
            || self.waiting_bytes + frame.len() > MAX_WAITING_BYTES
            || addresses > MAX_WAITING_ADDRESSES
        {
            return Err(TooMuchWaiting(format!(
                "more than {MAX_WAITING_FRAMES} messages, {MAX_WAITING_BYTES} bytes or \
                 {MAX_WAITING_ADDRESSES} documents sent before their Auth message; \
                 send each document's token first"
            )));
        }
        self.waiting_bytes += frame.len();
        self.waiting.push((key.to_owned(), frame, Instant::now()));
        Ok(())
    }

    /// When the oldest waiting frame came.
    pub fn oldest_waiting(&self) -> Option<Instant> {
        self.waiting.first().map(|(.., since)| *since)
    }

    /// Drops the frames waiting since before `since`: their token did not
    /// come in time.
    pub fn drop_stale_waiting(&mut self, since: Instant) {
        let before = self.waiting.len();
        self.waiting.retain(|(.., came)| *came >= since);
        if self.waiting.len() != before {
            self.waiting_bytes = self.waiting.iter().map(|(_, f, _)| f.len()).sum();
        }
    }

    /// `key`'s waiting frames, in the order they came.
    pub fn take_waiting(&mut self, key: &str) -> Vec<Bytes> {
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(k, ..)| k == key);
        self.waiting = others;
        let frames: Vec<Bytes> = mine.into_iter().map(|(_, f, _)| f).collect();
        self.waiting_bytes -= frames.iter().map(Bytes::len).sum::<usize>();
        frames
    }

    fn waiting_addresses(&self) -> usize {
        let keys: HashSet<&str> = self.waiting.iter().map(|(k, ..)| k.as_str()).collect();
        keys.len()
    }

    /// The next frame from any open document's room, or why the room
    /// ended one, with the document's index.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<(usize, Result<Bytes, CloseReason>)> {
        let n = self.open.len();
        for turn in 0..n {
            let index = (self.next + turn) % n;
            if let Poll::Ready(next) = self.open[index].session.poll_recv(cx) {
                self.next = index + 1;
                return Poll::Ready((index, next));
            }
        }
        Poll::Pending
    }

    /// The earliest time a token needs refreshing or ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open
            .iter()
            .flat_map(|o| [o.refresh_at, o.expiry])
            .flatten()
            .min()
    }

    /// What is due at `now`: tokens to refresh (each asked once), and
    /// tokens that ended.
    pub fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut due = Vec::new();
        for (index, open) in self.open.iter_mut().enumerate() {
            if open.expiry.is_some_and(|at| at <= now) {
                due.push(Due::Expired(index));
            } else if open.refresh_at.is_some_and(|at| at <= now) {
                open.refresh_at = None;
                due.push(Due::Refresh(index));
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_is_bounded_in_frames_bytes_and_addresses() {
        let mut docs = Documents::default();
        for i in 0..MAX_WAITING_ADDRESSES {
            docs.wait(&format!("d{i}"), Bytes::from_static(b"x"))
                .expect("fits");
        }
        assert!(docs.wait("one-more", Bytes::from_static(b"x")).is_err());
        assert!(docs
            .wait("d0", Bytes::from(vec![0; MAX_WAITING_BYTES]))
            .is_err());
        for _ in MAX_WAITING_ADDRESSES..MAX_WAITING_FRAMES {
            docs.wait("d1", Bytes::from_static(b"x")).expect("fits");
        }
        assert!(docs.wait("d1", Bytes::from_static(b"x")).is_err());
        // Taking an address's frames gives them back in order and frees
        // their room.
        let mine = docs.take_waiting("d1");
        assert_eq!(mine.len(), MAX_WAITING_FRAMES - MAX_WAITING_ADDRESSES + 1);
        docs.wait("d1", Bytes::from(vec![0; MAX_WAITING_BYTES - 100]))
            .expect("fits again");
    }

    #[test]
    fn an_ended_address_loses_its_waiting_frames() {
        let mut docs = Documents::default();
        docs.wait("a", Bytes::from_static(b"1")).expect("fits");
        docs.wait("b", Bytes::from_static(b"2")).expect("fits");
        docs.forget("a");
        assert!(docs.is_muted("a") && !docs.is_muted("b"));
        assert!(docs.take_waiting("a").is_empty());
        assert_eq!(docs.take_waiting("b"), vec![Bytes::from_static(b"2")]);
        assert_eq!(docs.waiting_bytes, 0);
    }
}
