//! `Room`: the task that owns one live document.
//!
//! Connections talk to it only through its command channel. Its loop takes
//! every command that is waiting (a batch, `batch.rs`), runs them through
//! [`DocState`] (`commands.rs`, `updates.rs`, `viewers.rs`), makes the
//! batch's changes durable with one append (group commit, `commit.rs`), and
//! only then hands the resulting frames to the subscribers' bounded queues
//! (`fanout.rs`). A room waits for other documents' work only for a slot
//! of the CPU pool or a flush the store shares between documents (see
//! ARCHITECTURE.md).
//!
//! Whatever makes yrs work runs on the engine's CPU pool, off the runtime's
//! workers, and each writer's updates are charged to its CPU budget (see
//! `commands.rs` and `updates.rs`). The room also snapshots the document,
//! unloads it when it has been without subscribers for the grace period,
//! and shuts down in order (`lifecycle.rs`); in cluster mode it hears
//! other nodes' changes, presence and deletions (`cluster.rs`).
//!
//! A room may hold a name that was never written: it serves an empty
//! document (editors sync, viewers wait) and stores nothing, not even a
//! snapshot, until a change is stored; that append creates the document.
//! A change that would create it is first put to the creation limit
//! ([`CreationLimit`](crate::CreationLimit)) for its client.

mod batch;
mod cluster;
mod commands;
mod commit;
mod fanout;
mod lifecycle;
mod updates;
mod viewers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use weft_storage::{DocMeta, DocName, EngineStore, Followed, PeerEvent};
use yrs::sync::AwarenessUpdate;

use crate::changes::ChangeFeed;
use crate::cpu::CpuPool;
use crate::cpu_budget::CpuBudget;
use crate::doc_state::{ConnId, DocState, Effects};
use crate::rooms::RoomMap;
use crate::session::Subscriber;
use crate::{Clock, EngineConfig, EventId, RoomError};

use batch::Batcher;
pub(crate) use commands::{Command, RestoreFrom};

type Reply<T> = oneshot::Sender<Result<T, RoomError>>;

/// Everything a room needs besides its document.
pub(crate) struct RoomContext {
    pub store: Arc<dyn EngineStore>,
    pub config: Arc<EngineConfig>,
    pub clock: Arc<dyn Clock>,
    pub rooms: Arc<RoomMap>,
    pub shutdown: CancellationToken,
    /// Where stored changes are announced, if anyone listens.
    pub changes: Option<Arc<ChangeFeed>>,
    /// Where yrs work runs, off the runtime's workers.
    pub cpu: CpuPool,
}

/// One live document's task (see the module doc).
pub(crate) struct Room {
    name: DocName,
    /// Tells this room apart from an earlier or later room of the same name
    /// in the registry.
    instance: u64,
    state: DocState,
    /// What the store holds about the document, or will at its first append.
    meta: DocMeta,
    /// Whether the store holds the document (a name only read, followed or
    /// joined does not exist until a change to it is stored).
    exists: bool,
    subscribers: HashMap<ConnId, Subscriber>,
    /// Changes since the last snapshot.
    unsnapshotted: u64,
    /// Roughly what loading the document would replay: the CPU time its
    /// changes since the last snapshot took to integrate.
    replay_cost: Duration,
    /// What each connection's updates have cost.
    budget: CpuBudget,
    idle_since: Option<Instant>,
    rx: mpsc::Receiver<Command>,
    /// Takes commands off `rx` a batch at a time.
    batcher: Batcher,
    cx: RoomContext,
    /// Cluster mode: changes other nodes store, and what else they say
    /// (their presence, the document's deletion).
    remote: Option<mpsc::Receiver<Followed>>,
    peers: Option<mpsc::Receiver<PeerEvent>>,
    /// Presence removals of connections dropped outside a `Leave` (found
    /// gone while delivering, or closed after a failed store), which other
    /// nodes must hear too; published before the room takes anything else.
    departed: Vec<AwarenessUpdate>,
}

impl Room {
    /// Serves commands, other nodes' news and the unload deadline until
    /// the room stops.
    async fn run_loop(&mut self) {
        loop {
            self.publish_departed().await;
            // What did not fit the last batch opens the next, before anything
            // else is looked at.
            if let Some(command) = self.batcher.take_held() {
                if self.handle_batch(command).await {
                    return; // the document was deleted
                }
                continue;
            }
            let idle_deadline = self.idle_since.map(|t| t + self.cx.config.unload_grace);
            tokio::select! {
                biased;
                _ = self.cx.shutdown.cancelled() => {
                    self.shut_down().await;
                    return;
                }
                command = self.rx.recv() => {
                    let Some(command) = command else { return };
                    if self.handle_batch(command).await {
                        return; // the document was deleted
                    }
                }
                // Before the log: a deletion heard must win over what the
                // log then says of the keys it removed.
                Some(event) = recv_from(&mut self.peers) => {
                    if !self.on_peer_event(event).await {
                        return; // the document was deleted
                    }
                }
                Some(followed) = recv_from(&mut self.remote) => match followed {
                    Followed::Changes(entries) => self.handle_stored_elsewhere(entries).await,
                    Followed::Lost(reason) => self.history_lost(reason).await,
                    Followed::Deleted => {
                        self.deleted_elsewhere();
                        return;
                    }
                },
                _ = sleep_until(idle_deadline), if idle_deadline.is_some() => {
                    if self.try_unload().await {
                        return;
                    }
                }
            }
        }
    }

    /// Runs `first` and the commands waiting behind it, as many as one
    /// batch holds; `true` when the room must stop (its document was deleted).
    async fn handle_batch(&mut self, first: Command) -> bool {
        let batch = self.batcher.fill(first, &mut self.rx);
        if self.handle(batch).await {
            return true;
        }
        // Every connection this batch woke takes its frames before the next
        // batch is taken, whichever task the scheduler would pick first.
        tokio::task::yield_now().await;
        false
    }

    /// Runs a batch; `true` when the room must stop (its document was deleted).
    async fn handle(&mut self, batch: Vec<Command>) -> bool {
        let started = Instant::now();
        let mut fx = Effects::default();
        let mut deferred = Vec::new();
        self.run_batch(batch, &mut fx, &mut deferred).await;
        if let Err(unstored) = self.commit(&mut fx, &mut deferred).await {
            self.not_stored(unstored, fx, deferred).await;
            return false;
        }
        self.reload_if_poisoned().await;
        self.fan_out(fx, started).await;
        let asked = self.answer(deferred).await;
        if self.end_if_asked(asked).await {
            return true;
        }
        self.note_idle();
        self.snapshot_if_due().await;
        false
    }

    /// Starts the unload grace period if nobody is subscribed (ends it otherwise).
    fn note_idle(&mut self) {
        self.idle_since = self.subscribers.is_empty().then(Instant::now);
    }

    /// The id viewers know change `seq` by.
    fn event_id(&self, seq: u64) -> EventId {
        EventId {
            incarnation: self.state.incarnation(),
            seq,
        }
    }
}

/// The next item of an optional channel; pending forever without one.
async fn recv_from<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`; pending forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
