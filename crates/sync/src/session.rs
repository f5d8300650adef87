//! `Session`: one connection's membership of a room.
//!
//! The transport (WebSocket today) reads frames from [`Session::recv`] and
//! passes decoded client messages to [`Session::send`]. When the room drops a
//! session (the client was too slow, sent something invalid, the server is
//! shutting down) `recv` returns the [`CloseReason`] so the transport can
//! close with the right code. Dropping the session leaves the room.
//!
//! The queue between the room and the connection is a `VecDeque` behind a
//! mutex rather than a `tokio::sync::mpsc` channel: a bounded tokio channel
//! allocates a block of 32 slots and a cache-padded channel state up front
//! (about 1.8 KB), which every idle connection kept for nothing. This one
//! holds one allocation with the close reason and the byte count, and its
//! frames grow and shrink with what is actually queued. It has exactly one
//! producer (the room) and one consumer (the connection), so a plain mutex
//! and one stored waker are all it needs.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use weft_storage::{DocName, Provenance};

use crate::creation::ClientAddr;
use crate::doc_state::{Access, ConnId};
use crate::outlet::{Outlet, Written};
use crate::protocol::Inbound;
use crate::room::Command;

/// Why the room ended a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent something the document refused.
    Rejected(String),
    /// The client stopped reading and its queue filled up.
    TooSlow,
    /// Changes could not be stored; the client should reconnect and resync.
    StorageFailure(String),
    /// The server is shutting down.
    ShuttingDown,
    /// An operator deleted the document.
    Deleted,
    /// A change would have made the document larger than its limit.
    TooLarge(String),
    /// A change would have created a document, and the client has created
    /// as many as it may for now; the change was not applied.
    TooManyNewDocuments { retry_after_secs: u64 },
    /// The connection's updates took more of the server's time than its
    /// budget allows (its last update was kept).
    TooCostly(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Rejected(why) => f.write_str(why),
            CloseReason::TooSlow => f.write_str("client too slow: it stopped reading"),
            CloseReason::StorageFailure(_) => f.write_str("storage failure; reconnect to resync"),
            CloseReason::ShuttingDown => f.write_str("server shutting down"),
            CloseReason::Deleted => f.write_str("document deleted by an operator"),
            CloseReason::TooLarge(why) | CloseReason::TooCostly(why) => f.write_str(why),
            CloseReason::TooManyNewDocuments { retry_after_secs } => write!(
                f,
                "too many new documents from this address; try again in {retry_after_secs} s"
            ),
        }
    }
}

/// What an editor's client speaks around y-protocols' messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// y-websocket's (and y-sweet's): y-protocols messages only.
    #[default]
    YSync,
    /// Hocuspocus': its connections also hear each other's stateless
    /// messages, and are sent the document's sync step 1 only in answer
    /// to theirs (as Hocuspocus' server does; its provider counts on one
    /// per step 1 it sends to know when it is in sync).
    Hocuspocus,
}

/// Who joins a document, and how (see [`Rooms::join_as`](crate::Rooms::join_as)).
#[derive(Debug, Clone)]
pub struct Joiner {
    pub access: Access,
    /// Where the connection comes from, for the limit on creating
    /// documents (`None`: not limited).
    pub client: Option<ClientAddr>,
    pub dialect: Dialect,
    /// Its token's subject; without one its changes are recorded as made
    /// by `anonymous#<connection id>`.
    pub author: Option<String>,
    /// The transport, recorded with its changes: `ws`, `hocuspocus`, ...
    pub via: &'static str,
}

/// What a subscriber is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// y-sync frames.
    Editor,
    /// Viewer events, for changes after `after` (earlier ones were in its
    /// opening payload).
    Viewer { after: u64 },
}

/// A frame on a session's queue. `counted`: its bytes count against the
/// queue's byte limit (all but a joiner's opening presence). An empty
/// frame asks the connection to flush what its outlet kept.
#[derive(Debug)]
pub(crate) struct Queued {
    frame: Bytes,
    counted: bool,
}

/// What the room and the connection share: the queue between them.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// At most this many frames are queued.
    max_frames: usize,
    reason: OnceLock<CloseReason>,
    /// Bytes queued and not yet taken by the connection.
    queued: AtomicUsize,
    /// Whether the queue has an outlet: read without the lock, so that a
    /// connection without one costs `offer` no second lock.
    has_outlet: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Queued>,
    /// The connection waiting for a frame.
    waker: Option<Waker>,
    /// Where the room may write frames itself (see `outlet.rs`).
    outlet: Option<Arc<dyn Outlet>>,
    /// The connection took frames it has not finished writing: the room
    /// must not write past them.
    sending: bool,
    /// The room dropped the subscriber: nothing more will come.
    room_gone: bool,
    /// The connection dropped the session: nothing more is taken.
    conn_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the queue consistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The provenance of a subscriber that has none of its own (viewers):
/// one shared allocation rather than one per connection.
fn no_provenance() -> Arc<Provenance> {
    static NONE: OnceLock<Arc<Provenance>> = OnceLock::new();
    NONE.get_or_init(Arc::default).clone()
}

/// The room's side of a session: where its frames go.
pub(crate) struct Subscriber {
    shared: Arc<Shared>,
    pub kind: Kind,
    pub access: Access,
    /// Where the connection comes from, for the limit on creating
    /// documents (`None`: not limited).
    pub client: Option<ClientAddr>,
    /// Who the connection's changes are recorded as made by.
    pub by: Arc<Provenance>,
    /// What its client speaks: a Hocuspocus connection also hears other
    /// connections' stateless messages, and is sent the document's sync
    /// step 1 only when it asks.
    pub dialect: Dialect,
    max_queued_bytes: usize,
}

/// Why a frame could not be queued.
pub(crate) enum Offer {
    /// The client is not keeping up.
    Full,
    /// The connection is gone.
    Closed,
}

impl Subscriber {
    /// Queues a frame unless the queue is full, by count or by bytes. One
    /// frame is always accepted into an empty queue, however large, so a big
    /// document can still be sent whole.
    pub fn offer(&self, frame: Bytes) -> Result<(), Offer> {
        if self.write_directly(&frame) {
            return Ok(());
        }
        let len = frame.len();
        let queued = self.shared.queued.load(Ordering::Relaxed);
        if queued > 0 && queued + len > self.max_queued_bytes {
            return Err(Offer::Full);
        }
        self.shared.queued.fetch_add(len, Ordering::Relaxed);
        self.push(Queued {
            frame,
            counted: true,
        })
        .inspect_err(|_| {
            self.shared.queued.fetch_sub(len, Ordering::Relaxed);
        })
    }

    /// Queues a joiner's opening presence: not held to the byte limit nor
    /// counted against it (it is bounded by the document's presence
    /// budget), so what others published cannot be what closes a joiner.
    pub fn offer_opening(&self, frame: Bytes) -> Result<(), Offer> {
        self.push(Queued {
            frame,
            counted: false,
        })
    }

    /// Writes `frame` through the connection's outlet if it has one,
    /// nothing is queued before it and the connection is not writing;
    /// `true` when it needs queueing no more. A frame written in part is
    /// followed by a request to flush the rest.
    fn write_directly(&self, frame: &Bytes) -> bool {
        if !self.shared.has_outlet.load(Ordering::Relaxed) {
            return false;
        }
        let waker = {
            let mut queue = self.shared.lock();
            let Some(outlet) = queue.outlet.as_ref() else {
                return false;
            };
            if queue.conn_gone || queue.sending || !queue.frames.is_empty() {
                return false;
            }
            match outlet.try_write(frame) {
                Written::All => return true,
                Written::Nothing => return false,
                Written::Part => {}
            }
            queue.frames.push_back(Queued {
                frame: Bytes::new(),
                counted: false,
            });
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    fn push(&self, queued: Queued) -> Result<(), Offer> {
        let waker = {
            let mut queue = self.shared.lock();
            if queue.conn_gone {
                return Err(Offer::Closed);
            }
            if queue.frames.len() >= self.shared.max_frames {
                return Err(Offer::Full);
            }
            queue.frames.push_back(queued);
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Records why the session ends; dropping `self` then ends it. A
    /// client closed for not reading will never be sent what it has not
    /// taken, so that is freed now rather than when its connection
    /// notices (which may wait on a socket nobody reads).
    pub fn close(self, reason: CloseReason) {
        if reason == CloseReason::TooSlow {
            let dropped = std::mem::take(&mut self.shared.lock().frames);
            self.shared.queued.store(0, Ordering::Relaxed);
            drop(dropped);
        }
        let _ = self.shared.reason.set(reason);
    }
}

impl Drop for Subscriber {
    /// The session takes what is queued, then learns why it ended.
    fn drop(&mut self) {
        let waker = {
            let mut queue = self.shared.lock();
            queue.room_gone = true;
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A connection's membership of one room.
#[derive(Debug)]
pub struct Session {
    conn: ConnId,
    doc: DocName,
    room: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    tasks: TaskTracker,
}

impl Session {
    pub(crate) fn pair(
        conn: ConnId,
        doc: DocName,
        room: mpsc::Sender<Command>,
        limits: (usize, usize),
        (access, client): (Access, Option<ClientAddr>),
        tasks: TaskTracker,
    ) -> (Session, Subscriber) {
        let (frames, bytes) = limits;
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            max_frames: frames.max(1),
            reason: OnceLock::new(),
            queued: AtomicUsize::new(0),
            has_outlet: AtomicBool::new(false),
        });
        let session = Session {
            conn,
            doc,
            room,
            shared: shared.clone(),
            tasks,
        };
        let subscriber = Subscriber {
            shared,
            kind: Kind::Editor,
            access,
            client,
            by: no_provenance(),
            dialect: Dialect::YSync,
            max_queued_bytes: bytes,
        };
        (session, subscriber)
    }

    pub fn id(&self) -> ConnId {
        self.conn
    }

    /// Lets the room write this connection's frames through `outlet` when
    /// it is idle (see `outlet.rs`); the connection then takes frames with
    /// [`recv_outbound`](Self::recv_outbound) and says when each is written
    /// with [`sent`](Self::sent).
    pub fn set_outlet(&self, outlet: Arc<dyn Outlet>) {
        self.shared.lock().outlet = Some(outlet);
        self.shared.has_outlet.store(true, Ordering::Relaxed);
    }

    /// The room writes nothing more through the outlet (the connection is
    /// closing: nothing may follow its close frame).
    pub fn close_outlet(&self) {
        self.shared.has_outlet.store(false, Ordering::Relaxed);
        self.shared.lock().outlet = None;
    }

    /// [`recv`](Self::recv) for a connection with an outlet: the next frame
    /// to write, or a request to flush what the outlet kept.
    pub async fn recv_outbound(&mut self) -> Result<Outbound, CloseReason> {
        poll_fn(|cx| self.poll_outbound(cx)).await
    }

    /// [`recv_outbound`](Self::recv_outbound) for a hand-written future or
    /// stream.
    pub fn poll_outbound(&mut self, cx: &mut Context<'_>) -> Poll<Result<Outbound, CloseReason>> {
        self.poll_take(cx).map_ok(|frame| {
            if frame.is_empty() {
                Outbound::Flush
            } else {
                Outbound::Frame(frame)
            }
        })
    }

    /// What the connection took last is written: the room may write
    /// through the outlet again once the queue is empty.
    pub fn sent(&self) {
        self.shared.lock().sending = false;
    }

    pub fn doc(&self) -> &DocName {
        &self.doc
    }

    /// The next frame for this client, or why the room ended the session.
    pub async fn recv(&mut self) -> Result<Bytes, CloseReason> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`recv`](Self::recv) for a hand-written future or stream.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, CloseReason>> {
        let taken = self.poll_take(cx);
        // A flush request (an empty frame) only ever follows a write through
        // an outlet, whose connection takes frames with `recv_outbound`.
        debug_assert!(
            !matches!(&taken, Poll::Ready(Ok(frame)) if frame.is_empty()),
            "a session with an outlet must be read with recv_outbound"
        );
        taken
    }

    /// The next frame, counted off the queue, or why the session ended.
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, CloseReason>> {
        self.poll_next(cx.waker()).map(|next| match next {
            Some(Queued { frame, counted }) => {
                if counted {
                    self.shared.queued.fetch_sub(frame.len(), Ordering::Relaxed);
                }
                Ok(frame)
            }
            None => Err(self.close_reason()),
        })
    }

    /// The next queued frame; `None` once the room has dropped its side
    /// and everything it queued has been taken.
    fn poll_next(&self, waker: &Waker) -> Poll<Option<Queued>> {
        let mut queue = self.shared.lock();
        if let Some(next) = queue.frames.pop_front() {
            queue.sending = queue.outlet.is_some();
            // Drained: the buffer goes back, so an idle connection keeps
            // none (the next frame allocates a small one again).
            if queue.frames.is_empty() {
                queue.frames = VecDeque::new();
            }
            return Poll::Ready(Some(next));
        }
        if queue.room_gone {
            return Poll::Ready(None);
        }
        match &mut queue.waker {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        Poll::Pending
    }

    /// Hands decoded messages to the room. Waits while the room is busy,
    /// which slows a fast sender down instead of queueing without bound.
    /// `bytes` is the size of the frame they came in.
    pub async fn send(&self, messages: Vec<Inbound>, bytes: usize) -> Result<(), CloseReason> {
        let command = Command::Receive {
            conn: self.conn,
            messages,
            bytes,
        };
        // Waiting is the exception, and boxed: a connection's task keeps
        // room for every future it may wait on for its whole life.
        // Not matched on in place: the scrutinee (a whole command) would
        // be kept across the await below, sizing every connection's future.
        let command = match self.room.try_send(command) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(command)) => command,
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(self.close_reason()),
        };
        Box::pin(self.room.send(command))
            .await
            .map_err(|_| self.close_reason())
    }

    fn close_reason(&self) -> CloseReason {
        self.shared
            .reason
            .get()
            .cloned()
            .unwrap_or(CloseReason::ShuttingDown)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let dropped = {
            let mut queue = self.shared.lock();
            queue.conn_gone = true;
            queue.waker = None;
            std::mem::take(&mut queue.frames)
        };
        drop(dropped);
        let leave = Command::Leave { conn: self.conn };
        if let Err(mpsc::error::TrySendError::Full(leave)) = self.room.try_send(leave) {
            // The room is busy; tell it without holding up the caller.
            let room = self.room.clone();
            if tokio::runtime::Handle::try_current().is_ok() {
                self.tasks.spawn(async move {
                    let _ = room.send(leave).await;
                });
            }
        }
    }
}

/// What a connection with an outlet is to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    /// Write this frame.
    Frame(Bytes),
    /// Flush: the outlet kept part of a frame the room wrote.
    Flush,
}

/// A viewer's membership of a room: it only receives. Viewers cannot change
/// a document because this type has no way to send.
#[derive(Debug)]
pub struct Follower(Session);

impl Follower {
    pub(crate) fn new(session: Session) -> Self {
        Follower(session)
    }

    pub fn id(&self) -> ConnId {
        self.0.id()
    }

    /// The next chunk of viewer events, or why the room ended the stream.
    pub async fn recv(&mut self) -> Result<Bytes, CloseReason> {
        self.0.recv().await
    }

    /// [`recv`](Self::recv) for a hand-written future or stream.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, CloseReason>> {
        self.0.poll_recv(cx)
    }

    /// Lets the room write events through `outlet` (see
    /// [`Session::set_outlet`]); the viewer's stream then takes them with
    /// [`poll_outbound`](Self::poll_outbound).
    pub fn set_outlet(&self, outlet: Arc<dyn Outlet>) {
        self.0.set_outlet(outlet);
    }

    /// [`Session::poll_outbound`]: the next events to write, or a request
    /// to flush what the outlet kept.
    pub fn poll_outbound(&mut self, cx: &mut Context<'_>) -> Poll<Result<Outbound, CloseReason>> {
        self.0.poll_outbound(cx)
    }

    /// [`Session::sent`]: what the stream took last is written.
    pub fn sent(&self) {
        self.0.sent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outlet that takes frames as told, and records what it took.
    #[derive(Debug, Default)]
    struct Taking {
        next: Mutex<VecDeque<Written>>,
        took: Mutex<Vec<Bytes>>,
    }

    impl Outlet for Taking {
        fn try_write(&self, frame: &Bytes) -> Written {
            let written = self
                .next
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or(Written::All);
            if written != Written::Nothing {
                self.took.lock().expect("lock").push(frame.clone());
            }
            written
        }
    }

    #[tokio::test]
    async fn the_room_writes_through_the_outlet_only_behind_everything_queued() {
        let (room, _rx) = mpsc::channel(1);
        let doc = DocName::new("direct").expect("valid");
        let limits = (64, 1 << 20);
        let (mut session, subscriber) = Session::pair(
            1,
            doc,
            room,
            limits,
            (Access::ReadWrite, None),
            TaskTracker::new(),
        );
        let outlet = Arc::new(Taking::default());
        session.set_outlet(outlet.clone());
        let frame = |b: &'static [u8]| Bytes::from_static(b);

        // Idle: written at once, nothing queued.
        assert!(subscriber.offer(frame(b"a")).is_ok());
        // The socket is full: queued, and what follows queues behind it.
        outlet
            .next
            .lock()
            .expect("lock")
            .push_back(Written::Nothing);
        assert!(subscriber.offer(frame(b"b")).is_ok());
        assert!(subscriber.offer(frame(b"c")).is_ok());
        assert_eq!(
            session.recv_outbound().await,
            Ok(Outbound::Frame(frame(b"b")))
        );
        session.sent();
        // The connection took "c" and has not written it yet.
        assert_eq!(
            session.recv_outbound().await,
            Ok(Outbound::Frame(frame(b"c")))
        );
        assert!(subscriber.offer(frame(b"d")).is_ok());
        assert_eq!(
            outlet.took.lock().expect("lock").len(),
            1,
            "\"d\" went past \"c\""
        );
        session.sent();
        assert_eq!(
            session.recv_outbound().await,
            Ok(Outbound::Frame(frame(b"d")))
        );
        session.sent();
        // Written in part: the connection is asked to flush the rest, and
        // the next frame waits behind that.
        outlet.next.lock().expect("lock").push_back(Written::Part);
        assert!(subscriber.offer(frame(b"e")).is_ok());
        assert!(subscriber.offer(frame(b"f")).is_ok());
        assert_eq!(session.recv_outbound().await, Ok(Outbound::Flush));
        session.sent();
        assert_eq!(
            session.recv_outbound().await,
            Ok(Outbound::Frame(frame(b"f")))
        );
        session.sent();
        // Closing: nothing more goes through the outlet.
        session.close_outlet();
        assert!(subscriber.offer(frame(b"g")).is_ok());
        assert_eq!(
            session.recv_outbound().await,
            Ok(Outbound::Frame(frame(b"g")))
        );
        assert_eq!(
            *outlet.took.lock().expect("lock"),
            [frame(b"a"), frame(b"e")]
        );
    }

    #[tokio::test]
    async fn a_reader_closed_as_too_slow_gives_back_what_it_had_not_taken() {
        let (room, _rx) = mpsc::channel(1);
        let doc = DocName::new("slow").expect("valid");
        let (mut session, subscriber) = Session::pair(
            1,
            doc,
            room,
            (64, 1 << 20),
            (Access::ReadOnly, None),
            TaskTracker::new(),
        );
        for _ in 0..10 {
            assert!(subscriber.offer(Bytes::from(vec![0; 1000])).is_ok());
        }
        let shared = session.shared.clone();
        subscriber.close(CloseReason::TooSlow);
        assert_eq!(shared.queued.load(Ordering::Relaxed), 0);
        assert!(shared.lock().frames.is_empty());
        assert_eq!(session.recv().await, Err(CloseReason::TooSlow));
    }
}
