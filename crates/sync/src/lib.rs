//! weft-sync: the document engine.
//!
//! One [`Room`](room) task per live document owns its `yrs::Doc` and
//! presence; [`Rooms`] starts and finds them; a [`Session`] is one
//! connection's membership of a room. The protocol logic itself lives in
//! [`DocState`] (with its `Presence`) and [`protocol`], which do no I/O. This crate never touches a
//! socket: transports live in the server crate.

pub mod changes;
mod cpu;
mod cpu_budget;
mod creation;
mod doc_state;
pub mod edit;
mod event_id;
pub mod guard;
pub mod harness;
pub mod history;
pub mod hocuspocus;
pub mod json;
mod loading;
pub mod outlet;
mod plausible;
mod presence;
pub mod protocol;
mod replay;
mod restore;
mod revert;
mod room;
mod rooms;
mod sections;
mod session;
mod viewer;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use cpu_budget::CpuLimits;
pub use creation::{ClientAddr, CreationLimit};
pub use doc_state::{
    Access, Change, ConnId, Delivery, DocLimits, DocState, Effects, LoadError, Rejection,
};
pub use event_id::{BadEventId, EventId};
pub use presence::PresenceRefusal;
pub use replay::SetAside;
pub use revert::Reverted;
pub use rooms::Rooms;
pub use session::{CloseReason, Dialect, Follower, Joiner, Outbound, Session};

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long a document stays loaded after its last connection leaves.
    pub unload_grace: Duration,
    /// How many recent changes each live document keeps in memory for replay.
    pub recent_changes: usize,
    /// Take a snapshot after this many changes.
    pub snapshot_every: u64,
    /// How many logged changes to keep behind the newest snapshot, for replay.
    pub keep_log_tail: u64,
    /// How long logged changes are kept behind snapshots, so that every
    /// point in that time can be rebuilt exactly (older points: the
    /// snapshots kept).
    pub history_retention: Duration,
    /// Frames a connection may have waiting before it counts as too slow.
    pub outbound_queue: usize,
    /// Bytes a connection may have waiting before it counts as too slow.
    pub outbound_queue_bytes: usize,
    /// Commands a room may have waiting before senders wait.
    pub command_queue: usize,
    /// What clients may make a document hold.
    pub limits: DocLimits,
    /// Connections (editors and viewers) one document accepts (0: no limit).
    pub max_connections_per_doc: usize,
    /// Who may create documents how fast; `None`: anyone, any time.
    pub creation_limit: Option<Arc<dyn CreationLimit>>,
    /// How much of the server's time one connection's updates may take.
    pub cpu_limits: CpuLimits,
    /// Rooms doing yrs work at once, each on a thread of its own (more wait
    /// for a slot; see `cpu.rs`).
    pub cpu_slots: usize,
    /// A document is snapshotted as soon as the changes since its last
    /// snapshot took this long to integrate (or it took this long to load),
    /// so that loading it again never replays more than about this much.
    pub snapshot_after_cpu: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            unload_grace: Duration::from_secs(30),
            recent_changes: 1024,
            snapshot_every: 1000,
            keep_log_tail: 10_000,
            history_retention: Duration::from_secs(30 * 24 * 3600),
            outbound_queue: 1024,
            outbound_queue_bytes: 4 * 1024 * 1024,
            command_queue: 1024,
            limits: DocLimits {
                max_document_bytes: 256 * 1024 * 1024,
                max_presence_bytes: 64 * 1024,
                max_presence_clients_per_connection: 4,
                max_document_presence_bytes: 1024 * 1024,
                readers_presence: true,
            },
            max_connections_per_doc: 10_000,
            creation_limit: None,
            cpu_limits: CpuLimits::per_update(Duration::from_secs(1)),
            cpu_slots: cpu::default_slots(),
            snapshot_after_cpu: Duration::from_secs(1),
        }
    }
}

/// The time, injected so the engine can be tested with a fixed clock.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// CPU time the calling thread has used: only differences between two
    /// readings on one thread mean anything. What a room charges to the
    /// connection whose update it integrates. Without a per-thread clock,
    /// the time that passed.
    fn thread_cpu(&self) -> Duration {
        Duration::from_millis(self.now_ms())
    }
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    #[cfg(unix)]
    fn thread_cpu(&self) -> Duration {
        use rustix::time::{clock_gettime, ClockId};
        let t = clock_gettime(ClockId::ThreadCPUTime);
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        )
    }
}

/// A document's state as read through the engine.
#[derive(Debug, Clone)]
pub struct DocRead {
    /// A Yjs v1 update: the whole document, or what a given state vector lacks.
    pub update: Vec<u8>,
    /// The newest change it includes.
    pub id: EventId,
}

/// The outcome of a restore or an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The change it made, if the content was not already so.
    pub change: Option<EventId>,
    /// The snapshot taken right after it.
    pub snapshot: u64,
}

/// Who is connected to a live document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoomStats {
    pub editors: usize,
    pub viewers: usize,
    pub last_seq: u64,
}

/// Why a request to a document's room failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("the stored document could not be loaded: {0}")]
    LoadFailed(String),
    /// The store could not be read for now (unreachable, restarting, timed
    /// out): nothing is known to be wrong with the document.
    #[error("the document's store cannot be read right now ({0}); try again shortly")]
    StoreUnavailable(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the document is busy loading and unloading; try again")]
    Busy,
    #[error("{0}")]
    Rejected(String),
    #[error("the change could not be stored ({0}); it was not applied")]
    StorageFailure(String),
    #[error("{0}")]
    NotFound(String),
    /// A read of a document nothing has been written to.
    #[error("there is no document {0}: nothing has been written to it")]
    NoSuchDocument(String),
    /// The change would create a document, and its client has created as
    /// many as it may for now.
    #[error(
        "too many new documents from this address; try again in {retry_after_secs} s \
         (writing to documents that exist is not limited)"
    )]
    TooManyNewDocuments { retry_after_secs: u64 },
    #[error("{0}")]
    TooLarge(String),
    /// What was asked contradicts what was done before.
    #[error("{0}")]
    Conflict(String),
    #[error("the document has its maximum of {0} connections; try again later")]
    Full(usize),
    /// The node is already doing as much of this kind of work as it takes
    /// at once (rebuilding past states), or what it read changed under it.
    #[error("{0}; try again shortly")]
    TryAgain(String),
    /// Internal: the room was unloading; ask a fresh one. `Rooms` retries
    /// it and never returns it.
    #[doc(hidden)]
    #[error("the document was unloading")]
    Retry,
}
