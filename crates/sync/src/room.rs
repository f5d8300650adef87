//! `Room`: the task that owns one live document.
//!
//! Connections talk to it only through its command channel. Its loop takes
//! every command that is waiting (a batch), runs them through [`DocState`],
//! makes the batch's changes durable with one append (group commit), and only
//! then hands the resulting frames to the subscribers' bounded queues. Work on
//! one document never waits for another's.
//!
//! **CPU work never runs on the runtime's workers.** The room is an async
//! task, but whatever makes yrs work (running a batch's commands through
//! [`DocState`], loading or reloading the document, encoding a snapshot or a
//! viewer's opening, applying other nodes' changes) goes through the engine's
//! [`CpuPool`]: a bounded number of slots, each running its work with
//! `block_in_place`, so the worker hands its other tasks on and `/healthz`,
//! other documents and new connections keep being served while one document
//! takes seconds. Only light commands (joins, leaves, small presence
//! messages) run in place. The room awaits each piece of work before going
//! on, so it stays the document's one owner; store I/O and channels stay
//! async.
//!
//! **Each writer has a CPU budget.** Every update's integration is timed
//! (CPU time of the thread, from the injected [`Clock`]) and charged to its
//! connection ([`CpuBudget`]); a connection past its budget is closed with
//! [`CloseReason::TooCostly`]. The update that overran was integrated, so it
//! is stored and delivered like any other: memory matches the disk. The same
//! timings say what loading the document would replay: once the changes
//! since the last snapshot took `snapshot_after_cpu` to integrate (or the
//! load itself took that long), the room snapshots at once, so a costly
//! history is replayed at most once.
//!
//! It also snapshots the document every so many changes, unloads it when it
//! has been without subscribers for the grace period, and on shutdown drains
//! what was already sent to it, snapshots, and closes every subscriber.
//!
//! In cluster mode it hears other nodes (their presence, the document's
//! deletion) and, once loaded, asks them for the presence their
//! connections hold before serving anyone, so that no connection here can
//! claim a client id that is live on another node.
//!
//! A room may hold a name that was never written: it serves an empty
//! document (editors sync, viewers wait) and stores nothing, not even a
//! snapshot, until a change is stored; that append creates the document.
//! A change that would create it is first put to the creation limit
//! ([`CreationLimit`](crate::CreationLimit)) for its client.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use weft_storage::{
    DocMeta, DocName, EngineStore, LogEntry, NewSnapshot, PeerEvent, SnapshotReason, StorageError,
};

use yrs::StateVector;

use crate::batch::Batcher;
use crate::changes::ChangeFeed;
use crate::cpu::CpuPool;
use crate::cpu_budget::{CpuBudget, Overrun};
use crate::creation::{retry_after_secs, ClientAddr};
use crate::doc_state::{Access, Change, ConnId, Delivery, DocState, Effects};
use crate::guard::guarded;
use crate::loading::{self, Loaded};
use crate::protocol::{self, ClientUpdate, Inbound};
use crate::rooms::RoomMap;
use crate::session::{CloseReason, Kind, Offer, Subscriber};
use crate::{
    restore, viewer, Clock, DocRead, EngineConfig, EventId, Restored, RoomError, RoomStats,
};

/// A frame of presence messages up to this size is light work: handled
/// in place, without a trip to the CPU pool.
const LIGHT_BYTES: usize = 64 * 1024;

/// How often one batch may be renumbered after other nodes' changes before
/// it is refused (cluster mode).
const MAX_REBASES: u32 = 16;

/// How long a room that has just loaded waits for other nodes to tell it
/// their presence (cluster mode) before it serves anyone regardless.
const PEER_PRESENCE_WAIT: Duration = Duration::from_secs(1);

type Reply<T> = oneshot::Sender<Result<T, RoomError>>;

pub(crate) enum Command {
    /// An editor joins: it gets sync step 1 and presence.
    Join {
        conn: ConnId,
        subscriber: Subscriber,
        reply: Reply<()>,
    },
    /// A viewer joins: it gets a snapshot (or the changes after `resume`)
    /// and presence, then live events.
    Follow {
        conn: ConnId,
        subscriber: Subscriber,
        resume: Option<EventId>,
        reply: Reply<()>,
    },
    Receive {
        conn: ConnId,
        messages: Vec<Inbound>,
        /// Size of the frame they came in, for the document size limit and
        /// the batch's byte bound.
        bytes: usize,
    },
    Leave {
        conn: ConnId,
    },
    /// A change from outside any connection (the HTTP API).
    Apply {
        /// A Yjs v1 update, decoded by the room.
        update: Bytes,
        /// Whose allowance it counts against if it creates the document.
        client: Option<ClientAddr>,
        reply: Reply<Option<EventId>>,
    },
    /// The document's state, or what a state vector lacks.
    Read {
        since: Option<StateVector>,
        reply: Reply<DocRead>,
    },
    /// Take a snapshot now; answers its id.
    Snapshot {
        reason: SnapshotReason,
        reply: Reply<u64>,
    },
    /// Bring the content back to stored snapshot `snapshot`, as a change.
    Restore {
        snapshot: u64,
        reply: Reply<Restored>,
    },
    /// Merge a Yjs v1 update as a change, then snapshot (reason `import`).
    Import {
        update: Bytes,
        reply: Reply<Restored>,
    },
    /// Close every connection and remove the document from storage.
    Delete {
        reply: Reply<bool>,
    },
    /// The store's copy was replaced outside the room (a backup restore):
    /// close every connection (they reconnect and resync) and stop, so the
    /// next use loads what is stored now.
    Reopen {
        reply: Reply<()>,
    },
    /// Who is connected.
    Stats {
        reply: Reply<RoomStats>,
    },
}

impl Command {
    /// Whether running it reads the store (a viewer's opening may replay
    /// the stored log; a restore reads a snapshot).
    fn reads_store(&self) -> bool {
        matches!(self, Command::Follow { .. } | Command::Restore { .. })
    }

    /// Whether it is cheap whatever the document: joining, leaving, counting
    /// and small presence messages. Everything else may make yrs work.
    fn is_light(&self) -> bool {
        match self {
            Command::Join { .. } | Command::Leave { .. } | Command::Stats { .. } => true,
            Command::Receive {
                messages, bytes, ..
            } => {
                *bytes <= LIGHT_BYTES
                    && messages.iter().all(|m| {
                        matches!(
                            m,
                            Inbound::Awareness(_) | Inbound::AwarenessQuery | Inbound::Auth
                        )
                    })
            }
            _ => false,
        }
    }

    /// Answers the command with `error` instead of running it.
    fn refuse(self, error: RoomError) {
        match self {
            Command::Join { reply, .. } | Command::Follow { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Apply { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Read { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Snapshot { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Restore { reply, .. } | Command::Import { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Delete { reply } => {
                let _ = reply.send(Err(error));
            }
            Command::Reopen { reply } => {
                let _ = reply.send(Err(error));
            }
            Command::Stats { reply } => {
                let _ = reply.send(Err(error));
            }
            Command::Receive { .. } | Command::Leave { .. } => {}
        }
    }
}

/// Replies that must wait until the batch's changes are on disk.
enum Deferred {
    Applied(Reply<Option<EventId>>, Result<Option<EventId>, RoomError>),
    Read(Reply<DocRead>, DocRead),
    /// Snapshot once the batch is stored, then answer with its id.
    Snapshot(Reply<u64>, SnapshotReason),
    /// A restore or import: snapshot once stored, then answer.
    Changed(Reply<Restored>, Option<EventId>, SnapshotReason),
    Delete(Reply<bool>),
    Reopen(Reply<()>),
}

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
    remote: Option<mpsc::Receiver<Vec<LogEntry>>>,
    peers: Option<mpsc::Receiver<PeerEvent>>,
}

impl Room {
    /// Loads the document and runs the room until it unloads or shuts down.
    pub(crate) async fn run(
        name: DocName,
        instance: u64,
        mut rx: mpsc::Receiver<Command>,
        cx: RoomContext,
    ) {
        let started = Instant::now();
        // Listening before loading: a deletion is either in what loads or
        // heard afterwards, never missed in between.
        let peers = cx.store.watch_peers(&name).await.unwrap_or_else(|e| {
            warn!(doc = %name, error = %e, "presence and deletions from other nodes are unavailable");
            None
        });
        let loaded = loading::load(&*cx.store, &name, &cx.config, cx.clock.clone(), &cx.cpu).await;
        let Loaded {
            state,
            meta,
            exists,
            unsnapshotted,
            cost: load_cost,
        } = match loaded {
            Ok(loaded) => loaded,
            Err(reason) => {
                error!(doc = %name, %reason, "document failed to load; refusing connections to it");
                cx.rooms.remove_if(&name, instance);
                refuse_all(&mut rx, RoomError::LoadFailed(reason));
                return;
            }
        };
        debug!(doc = %name, last_seq = state.last_seq(), elapsed = ?started.elapsed(), "document loaded");
        metrics::histogram!("weft_document_load_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("weft_documents_loaded").increment(1.0);
        // Followed from the newest change loaded, so nothing stored
        // meanwhile is missed.
        let remote = match cx.store.watch(&name, state.last_seq()).await {
            Ok(remote) => remote,
            Err(e) => {
                error!(doc = %name, error = %e, "cannot follow the shared log; refusing connections");
                cx.rooms.remove_if(&name, instance);
                refuse_all(&mut rx, RoomError::LoadFailed(e.to_string()));
                return;
            }
        };
        let budget = CpuBudget::new(cx.config.cpu_limits);
        let mut room = Room {
            name,
            instance,
            state,
            meta,
            exists,
            subscribers: HashMap::new(),
            unsnapshotted,
            // Replaying the log is what loading cost, beyond the snapshot.
            replay_cost: load_cost,
            budget,
            idle_since: Some(Instant::now()),
            rx,
            batcher: Batcher::new(&cx.config),
            cx,
            remote,
            peers,
        };
        if room.costly_to_replay() {
            // So that the next load is quick (a snapshot loads in a
            // fraction of the time its history takes to replay).
            info!(doc = %room.name, took = ?load_cost, "loading replayed a costly history; snapshotting");
            let _ = room.snapshot(SnapshotReason::Periodic).await;
        }
        if room.learn_peers_presence().await {
            room.run_loop().await;
        }
        metrics::gauge!("weft_documents_loaded").decrement(1.0);
    }

    async fn run_loop(&mut self) {
        loop {
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
                Some(entries) = recv_from(&mut self.remote) => {
                    self.handle_stored_elsewhere(entries).await;
                }
                Some(event) = recv_from(&mut self.peers) => {
                    if !self.on_peer_event(event).await {
                        return; // the document was deleted
                    }
                }
                _ = sleep_until(idle_deadline), if idle_deadline.is_some() => {
                    if self.try_unload().await {
                        return;
                    }
                }
            }
        }
    }

    /// Cluster mode: asks the other nodes for the presence their
    /// connections hold and takes every answer (or waits
    /// `PEER_PRESENCE_WAIT`) before serving anyone. `false` when the
    /// document was deleted meanwhile.
    async fn learn_peers_presence(&mut self) -> bool {
        if self.peers.is_none() {
            return true;
        }
        let expected = match self.cx.store.ask_presence(&self.name).await {
            Ok(expected) => expected,
            Err(e) => {
                warn!(doc = %self.name, error = %e, "could not ask other nodes for their presence");
                return true;
            }
        };
        let deadline = Instant::now() + PEER_PRESENCE_WAIT;
        let mut answered = 0;
        while answered < expected {
            let heard = tokio::time::timeout_at(deadline, recv_from(&mut self.peers)).await;
            let Ok(Some(event)) = heard else {
                warn!(doc = %self.name, answered, expected, "not every node told its presence in time");
                break;
            };
            answered += usize::from(matches!(event, PeerEvent::PresenceAnswer(_)));
            if !self.on_peer_event(event).await {
                return false;
            }
        }
        true
    }

    /// What another node said (cluster mode). `false` when the room must
    /// stop: the document was deleted.
    async fn on_peer_event(&mut self, event: PeerEvent) -> bool {
        use yrs::updates::encoder::Encode;
        match event {
            PeerEvent::Presence(update) | PeerEvent::PresenceAnswer(update) => {
                let mut fx = Effects::default();
                self.state.apply_remote_presence(&update, &mut fx);
                self.deliver(fx);
            }
            PeerEvent::PresenceWanted { asker } => {
                let mine = self.state.local_presence().encode_v1();
                if let Err(e) = self
                    .cx
                    .store
                    .answer_presence(&self.name, asker, &mine)
                    .await
                {
                    debug!(doc = %self.name, error = %e, "presence question not answered");
                }
            }
            PeerEvent::Deleted => {
                self.deleted_elsewhere();
                return false;
            }
        }
        true
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
        self.store_and_deliver(started, fx, deferred).await
    }

    /// Runs a batch's commands in order. Those that need nothing from the
    /// store run together as one piece of CPU work, off the runtime's
    /// workers (see `cpu.rs`) unless all are light; a viewer's opening and
    /// a restore read the store first, then do their CPU work the same way.
    async fn run_batch(
        &mut self,
        batch: Vec<Command>,
        fx: &mut Effects,
        deferred: &mut Vec<Deferred>,
    ) {
        let mut commands = batch.into_iter().peekable();
        while commands.peek().is_some() {
            let mut run = Vec::new();
            while let Some(command) = commands.next_if(|c| !c.reads_store()) {
                run.push(command);
            }
            if run.iter().all(Command::is_light) {
                self.run_commands(run, fx, deferred);
            } else {
                let cpu = self.cx.cpu.clone();
                cpu.run(|| self.run_commands(run, fx, deferred)).await;
            }
            if let Some(command) = commands.next() {
                self.run_reading_store(command, fx, deferred).await;
            }
        }
    }

    /// Commands that need no I/O, in order.
    fn run_commands(
        &mut self,
        batch: Vec<Command>,
        fx: &mut Effects,
        deferred: &mut Vec<Deferred>,
    ) {
        for command in batch {
            match command {
                Command::Join {
                    conn,
                    subscriber,
                    reply,
                } => {
                    if let Err(full) = self.has_room() {
                        let _ = reply.send(Err(full));
                    } else if reply.send(Ok(())).is_ok() {
                        // Subscribed before the initial sync is queued, so no
                        // change can fall between the two.
                        self.subscribers.insert(conn, subscriber);
                        self.state.join(conn, fx);
                    }
                }
                Command::Receive {
                    conn,
                    messages,
                    bytes,
                } => self.receive(conn, messages, bytes, fx),
                Command::Leave { conn } => {
                    if self.subscribers.remove(&conn).is_some() {
                        self.budget.forget(conn);
                        self.state.leave(conn, fx);
                    }
                }
                Command::Apply {
                    update,
                    client,
                    reply,
                } => {
                    let result = self.apply_from_outside(&update, client, fx);
                    deferred.push(Deferred::Applied(reply, result));
                }
                Command::Read { reply, .. } if !self.exists_with(&fx) => {
                    let _ = reply.send(Err(RoomError::NoSuchDocument(self.name.to_string())));
                }
                Command::Read { since, reply } => {
                    match self.state.encode_diff(&since.unwrap_or_default()) {
                        Ok(update) => {
                            let id = self.event_id(self.state.last_seq());
                            deferred.push(Deferred::Read(reply, DocRead { update, id }));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(RoomError::StorageFailure(e)));
                        }
                    }
                }
                Command::Snapshot { reason, reply } => {
                    deferred.push(Deferred::Snapshot(reply, reason));
                }
                Command::Import { update, reply } => {
                    match self.apply_from_outside(&update, None, fx) {
                        Ok(id) => {
                            deferred.push(Deferred::Changed(reply, id, SnapshotReason::Import))
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Command::Delete { reply } => deferred.push(Deferred::Delete(reply)),
                Command::Reopen { reply } => deferred.push(Deferred::Reopen(reply)),
                Command::Stats { reply } => {
                    let viewers = self
                        .subscribers
                        .values()
                        .filter(|s| matches!(s.kind, Kind::Viewer { .. }))
                        .count();
                    let _ = reply.send(Ok(RoomStats {
                        editors: self.subscribers.len() - viewers,
                        viewers,
                        last_seq: self.state.last_seq(),
                    }));
                }
                // They read the store first: see `run_reading_store`.
                command @ (Command::Follow { .. } | Command::Restore { .. }) => {
                    command.refuse(RoomError::Busy);
                }
            }
        }
    }

    /// A command that reads the store before its CPU work: the read is
    /// awaited here, then the work runs on the CPU pool.
    async fn run_reading_store(
        &mut self,
        command: Command,
        fx: &mut Effects,
        deferred: &mut Vec<Deferred>,
    ) {
        match command {
            Command::Follow {
                conn,
                mut subscriber,
                resume,
                reply,
            } => {
                if let Err(full) = self.has_room() {
                    let _ = reply.send(Err(full));
                } else if reply.send(Ok(())).is_ok() {
                    // Changes up to here are in the opening payload;
                    // live events take over after them.
                    subscriber.kind = Kind::Viewer {
                        after: self.state.last_seq(),
                    };
                    let opening = self.opening_for_viewer(resume).await;
                    self.subscribers.insert(conn, subscriber);
                    fx.deliveries.push(Delivery::To(conn, opening));
                }
            }
            Command::Restore { snapshot, reply } => {
                let old = match self.cx.store.get_snapshot(&self.name, snapshot).await {
                    Ok(Some(old)) => old,
                    Ok(None) => {
                        let _ = reply.send(Err(RoomError::NotFound(format!(
                            "document {} has no snapshot {snapshot}",
                            self.name
                        ))));
                        return;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RoomError::StorageFailure(e.to_string())));
                        return;
                    }
                };
                let cpu = self.cx.cpu.clone();
                let state = &mut self.state;
                let restored = cpu
                    .run(|| state.apply_local(fx, |doc| restore::restore_into(doc, &old.state)))
                    .await;
                match restored {
                    Ok(change) => {
                        let id = change.map(|seq| self.event_id(seq));
                        deferred.push(Deferred::Changed(reply, id, SnapshotReason::Restore));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RoomError::Rejected(e)));
                    }
                }
            }
            other => {
                let cpu = self.cx.cpu.clone();
                cpu.run(|| self.run_commands(vec![other], fx, deferred))
                    .await;
            }
        }
    }

    /// Messages from one connection. Each update's CPU time is charged to
    /// the connection; past its budget the connection is closed, and the
    /// update stays (it was integrated, so it is stored like any other).
    fn receive(&mut self, conn: ConnId, messages: Vec<Inbound>, bytes: usize, fx: &mut Effects) {
        let Some((access, client)) = self.subscribers.get(&conn).map(|s| (s.access, s.client))
        else {
            return; // already closed; drop what it still sent
        };
        let writes = access == Access::ReadWrite && messages.iter().any(Inbound::is_update);
        if writes {
            if let Err(rejection) = self.state.admits(bytes) {
                warn!(doc = %self.name, conn, %rejection, "closing connection");
                self.kick(conn, CloseReason::TooLarge(rejection.to_string()), fx);
                return;
            }
        }
        for message in messages {
            if let (Inbound::Update(update), Access::ReadWrite) = (&message, access) {
                if let Err(wait) = self.may_create(client, update, fx) {
                    warn!(doc = %self.name, conn, "too many new documents from this address; closing connection");
                    let retry_after_secs = retry_after_secs(wait);
                    self.kick(
                        conn,
                        CloseReason::TooManyNewDocuments { retry_after_secs },
                        fx,
                    );
                    break;
                }
            }
            let before = message.is_update().then(|| self.cx.clock.thread_cpu());
            let result = self.state.receive(conn, access, message, fx);
            let within = match before {
                Some(before) => {
                    let took = self.cx.clock.thread_cpu().saturating_sub(before);
                    self.charge(conn, took)
                }
                None => Ok(()),
            };
            if let Err(rejection) = result {
                warn!(doc = %self.name, conn, %rejection, "closing connection");
                self.kick(conn, CloseReason::Rejected(rejection.to_string()), fx);
                break;
            }
            if let Err(overrun) = within {
                warn!(doc = %self.name, conn, %overrun, "closing connection: past its CPU budget");
                metrics::counter!("weft_cpu_budget_disconnects_total", "limit" => overrun.label())
                    .increment(1);
                self.kick(conn, CloseReason::TooCostly(overrun.to_string()), fx);
                break;
            }
        }
        // Others its presence crowded out of the document's budget.
        for (other, rejection) in std::mem::take(&mut fx.closes) {
            warn!(doc = %self.name, conn = other, %rejection, "closing connection");
            self.kick(other, CloseReason::Rejected(rejection.to_string()), fx);
        }
    }

    /// Charges an update's CPU time to `conn`; it also counts towards what
    /// loading the document would replay.
    fn charge(&mut self, conn: ConnId, took: Duration) -> Result<(), Overrun> {
        metrics::histogram!("weft_update_cpu_seconds").record(took.as_secs_f64());
        self.replay_cost += took;
        let now = Duration::from_millis(self.cx.clock.now_ms());
        self.budget.charge(conn, took, now)
    }

    /// The batch's changes made durable, then delivered and answered.
    /// `true` when the room must stop (its document was deleted).
    async fn store_and_deliver(
        &mut self,
        started: Instant,
        mut fx: Effects,
        mut deferred: Vec<Deferred>,
    ) -> bool {
        if !fx.changes.is_empty() {
            let mut entries = log_entries(&fx.changes);
            let appending = Instant::now();
            let mut appended = self.cx.store.append(&self.name, &self.meta, &entries).await;
            let mut tries = 0;
            while let Err(StorageError::Conflict { .. }) = appended {
                // Another node stored changes first (cluster mode): take
                // them in, renumber ours after them and try again.
                tries += 1;
                let first = entries.first().map_or(0, |e| e.seq);
                appended = match self.catch_up(first, &mut fx, &mut deferred).await {
                    Ok(rebased) if tries <= MAX_REBASES => {
                        entries = rebased;
                        self.cx.store.append(&self.name, &self.meta, &entries).await
                    }
                    Ok(_) => Err(StorageError::Busy(
                        "too many nodes are writing this document at once",
                    )),
                    Err(e) => Err(e),
                };
            }
            metrics::histogram!("weft_durable_append_seconds")
                .record(appending.elapsed().as_secs_f64());
            if let Err(e) = appended {
                metrics::counter!("weft_changes_refused_total", "reason" => "storage_failure")
                    .increment(entries.len() as u64);
                let reason = e.to_string();
                for d in deferred {
                    let failure = RoomError::StorageFailure(reason.clone());
                    match d {
                        Deferred::Applied(reply, _) => {
                            let _ = reply.send(Err(failure));
                        }
                        Deferred::Changed(reply, ..) => {
                            let _ = reply.send(Err(failure));
                        }
                        _ => {}
                    }
                }
                self.storage_failed(reason, fx).await;
                return false;
            }
            // The first stored change creates the document.
            self.exists = true;
            self.unsnapshotted += entries.len() as u64;
            metrics::counter!("weft_changes_accepted_total").increment(entries.len() as u64);
            if let (Some(feed), Some(last)) = (&self.cx.changes, entries.last()) {
                feed.record(&self.name, self.state.incarnation(), last.seq, last.at_ms);
            }
        }
        if self.state.is_poisoned() {
            // Memory may not match the disk after a panic inside yrs; the
            // disk holds everything anyone was sent, so start again from it.
            self.reload("the document engine failed internally").await;
        }
        let changed = !fx.changes.is_empty();
        self.publish_presence(&fx).await;
        self.deliver(fx);
        if changed {
            // From the batch arriving to every subscriber's queue holding it.
            metrics::histogram!("weft_fanout_delivery_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        let mut delete = None;
        let mut reopen = None;
        for d in deferred {
            match d {
                Deferred::Applied(reply, result) => {
                    let _ = reply.send(result);
                }
                Deferred::Read(reply, read) => {
                    let _ = reply.send(Ok(read));
                }
                Deferred::Snapshot(reply, reason) => {
                    let _ = reply.send(self.snapshot(reason).await);
                }
                Deferred::Changed(reply, change, reason) => {
                    let outcome = self
                        .snapshot(reason)
                        .await
                        .map(|snapshot| Restored { change, snapshot });
                    let _ = reply.send(outcome);
                }
                Deferred::Delete(reply) => delete = Some(reply),
                Deferred::Reopen(reply) => reopen = Some(reply),
            }
        }
        if let Some(reply) = delete {
            self.delete(reply).await;
            return true;
        }
        if let Some(reply) = reopen {
            self.let_go(CloseReason::StorageFailure(
                "the document was replaced from a backup".into(),
            ));
            info!(doc = %self.name, "stored copy replaced; unloaded");
            let _ = reply.send(Ok(()));
            return true;
        }

        self.idle_since = self.subscribers.is_empty().then(Instant::now);
        if self.unsnapshotted >= self.cx.config.snapshot_every || self.costly_to_replay() {
            let _ = self.snapshot(SnapshotReason::Periodic).await;
        }
        false
    }

    /// Whether the changes since the last snapshot took so long to integrate
    /// that loading the document would replay too much: a snapshot is due.
    fn costly_to_replay(&self) -> bool {
        let limit = self.cx.config.snapshot_after_cpu;
        self.unsnapshotted > 0 && !limit.is_zero() && self.replay_cost >= limit
    }

    /// After a refused append: reads what other nodes stored from `first`
    /// on, rebases this batch's changes after it and fixes up what already
    /// refers to their old numbers. Returns the batch's changes renumbered.
    async fn catch_up(
        &mut self,
        first: u64,
        fx: &mut Effects,
        deferred: &mut [Deferred],
    ) -> Result<Vec<LogEntry>, StorageError> {
        let remote = self
            .cx
            .store
            .read_log(&self.name, first.saturating_sub(1), usize::MAX)
            .await?;
        let cpu = self.cx.cpu.clone();
        let state = &mut self.state;
        let shift =
            cpu.run(|| state.rebase(&remote, fx))
                .await
                .map_err(|gap| StorageError::Io {
                    action: "catching up with other nodes",
                    reason: gap.to_string(),
                })?;
        self.unsnapshotted += shift;
        // Viewers that joined during the batch were told its old numbers.
        for sub in self.subscribers.values_mut() {
            if let Kind::Viewer { after } = &mut sub.kind {
                if *after >= first {
                    *after = first - 1;
                }
            }
        }
        for d in deferred.iter_mut() {
            let id = match d {
                Deferred::Applied(_, Ok(Some(id))) | Deferred::Changed(_, Some(id), _) => id,
                _ => continue,
            };
            if id.seq >= first {
                id.seq += shift;
            }
        }
        Ok(log_entries(&fx.changes))
    }

    /// Presence changes made here go to the other nodes (cluster mode).
    async fn publish_presence(&self, fx: &Effects) {
        use yrs::updates::encoder::Encode;
        // One process alone (the embedded store, which has no shared log to
        // follow): nobody to tell, and no reason to encode every cursor move
        // a second time. Keyed on the store, not on hearing other nodes: a
        // node whose subscription failed still tells the others.
        if self.remote.is_none() {
            return;
        }
        for d in &fx.deliveries {
            if let Delivery::Presence(update) = d {
                if let Err(e) = self
                    .cx
                    .store
                    .publish_presence(&self.name, &update.encode_v1())
                    .await
                {
                    debug!(doc = %self.name, error = %e, "presence not published");
                }
            }
        }
    }

    /// Changes other nodes stored (cluster mode), in order.
    async fn handle_stored_elsewhere(&mut self, entries: Vec<LogEntry>) {
        let mut fx = Effects::default();
        let cpu = self.cx.cpu.clone();
        let state = &mut self.state;
        let applied = cpu.run(|| state.apply_stored(&entries, &mut fx)).await;
        self.deliver(fx);
        match applied {
            Ok(fresh) => {
                self.unsnapshotted += fresh;
                // Another node stored a change: the document exists.
                self.exists |= fresh > 0;
            }
            // Trimmed past this node's position: the store has it all.
            Err(gap) => self.reload(&gap.to_string()).await,
        }
        if self.state.is_poisoned() {
            self.reload("a change stored by another node did not apply")
                .await;
        }
    }

    /// Applies a Yjs v1 update that came from outside any connection (the
    /// HTTP API, an import): the id of the change it made, if any.
    fn apply_from_outside(
        &mut self,
        update: &[u8],
        client: Option<ClientAddr>,
        fx: &mut Effects,
    ) -> Result<Option<EventId>, RoomError> {
        let before = fx.changes.len();
        self.state
            .admits(update.len())
            .map_err(|e| RoomError::TooLarge(e.to_string()))?;
        let update =
            protocol::decode_update(update).map_err(|e| RoomError::Rejected(e.to_string()))?;
        self.may_create(client, &update, fx)
            .map_err(|wait| RoomError::TooManyNewDocuments {
                retry_after_secs: retry_after_secs(wait),
            })?;
        let cpu_before = self.cx.clock.thread_cpu();
        let applied = self.state.apply_external(update, fx);
        self.replay_cost += self.cx.clock.thread_cpu().saturating_sub(cpu_before);
        applied.map_err(|r| RoomError::Rejected(r.to_string()))?;
        Ok(fx.changes[before..].last().map(|c| self.event_id(c.seq)))
    }

    /// Whether the document exists, counting a change this batch is about
    /// to store (which creates it).
    fn exists_with(&self, fx: &Effects) -> bool {
        self.exists || !fx.changes.is_empty()
    }

    /// Whether `client` may apply `update` as far as creating the document
    /// goes: yes unless it would create the document and the creation
    /// limit refuses (`Err`: how long until it may). Only the first change
    /// is asked about, so two first writes in one batch count once.
    fn may_create(
        &self,
        client: Option<ClientAddr>,
        update: &ClientUpdate,
        fx: &Effects,
    ) -> Result<(), Duration> {
        let (Some(limit), Some(client)) = (&self.cx.config.creation_limit, client) else {
            return Ok(());
        };
        if self.exists_with(fx) {
            return Ok(());
        }
        // A sync step 2 that brings nothing (every new editor's) creates
        // nothing; if yrs fails to tell, the change counts.
        let changes = guarded(|| self.state.would_change(&update.update)).unwrap_or(true);
        if !changes {
            return Ok(());
        }
        limit.admit(client).inspect_err(|_| {
            metrics::counter!("weft_changes_refused_total", "reason" => "too_many_new_documents")
                .increment(1);
        })
    }

    /// Whether another connection may join.
    fn has_room(&self) -> Result<(), RoomError> {
        let max = self.cx.config.max_connections_per_doc;
        if max > 0 && self.subscribers.len() >= max {
            return Err(RoomError::Full(max));
        }
        Ok(())
    }

    fn event_id(&self, seq: u64) -> EventId {
        EventId {
            incarnation: self.state.incarnation(),
            seq,
        }
    }

    /// Ends the document: everyone is told, the data goes, the room stops.
    async fn delete(&mut self, reply: Reply<bool>) {
        self.let_go(CloseReason::Deleted);
        let result = self
            .cx
            .store
            .delete(&self.name)
            .await
            .map_err(|e| RoomError::StorageFailure(e.to_string()));
        info!(doc = %self.name, "document deleted");
        let _ = reply.send(result);
    }

    /// Another node deleted the document (cluster mode): its connections
    /// here end as they would on the node that deleted it, and memory is
    /// not left holding what the store no longer has.
    fn deleted_elsewhere(&mut self) {
        self.let_go(CloseReason::Deleted);
        info!(doc = %self.name, "document deleted by another node");
    }

    /// The room stops serving the document: closes every connection with
    /// `reason`, and sends whatever was still on its way here back to try
    /// again (it will find what the store holds then).
    fn let_go(&mut self, reason: CloseReason) {
        self.kick_all(reason);
        self.cx.rooms.remove_if(&self.name, self.instance);
        self.refuse_waiting(RoomError::Retry);
    }

    /// What a new viewer is sent first: the changes after `resume` when they
    /// can all be had (from memory, else from the log), otherwise a snapshot;
    /// then everyone's presence. One buffer, so it takes one queue slot.
    async fn opening_for_viewer(&mut self, resume: Option<EventId>) -> Bytes {
        let replay = self.replay(resume).await;
        let cpu = self.cx.cpu.clone();
        cpu.run(|| self.opening(replay)).await
    }

    /// The opening itself, from the changes to replay if there are any.
    fn opening(&mut self, replay: Option<Vec<Change>>) -> Bytes {
        let incarnation = self.state.incarnation();
        let mut out = BytesMut::new();
        match replay {
            Some(changes) => {
                for change in &changes {
                    out.extend_from_slice(&viewer::update_event(incarnation, change));
                }
            }
            None => {
                let id = EventId {
                    incarnation,
                    seq: self.state.last_seq(),
                };
                match self.state.encode_state() {
                    Ok(state) => out.extend_from_slice(&viewer::snapshot_event(id, &state)),
                    // Nothing to send now; the room reloads the document
                    // after this batch and the viewer can reconnect.
                    Err(e) => warn!(doc = %self.name, error = %e, "could not encode a snapshot"),
                }
            }
        }
        // Always sent, even when empty: a viewer that resumed learns that
        // presence it still shows is gone.
        out.extend_from_slice(&viewer::awareness_event(&self.state.presence_all()));
        out.freeze()
    }

    /// Every change after `resume`, or `None` when that is not possible
    /// (an id from another incarnation, from the future, or older than
    /// what is retained).
    async fn replay(&self, resume: Option<EventId>) -> Option<Vec<Change>> {
        let id = resume?;
        let last = self.state.last_seq();
        if id.incarnation != self.state.incarnation() || id.seq > last {
            return None;
        }
        let recent = self.state.recent();
        let mut changes: Vec<Change> = if recent.front().is_some_and(|c| c.seq <= id.seq + 1)
            || id.seq == last
        {
            Vec::new()
        } else {
            let wanted = usize::try_from(last - id.seq).ok()?;
            let stored = self.cx.store.read_log(&self.name, id.seq, wanted).await;
            match stored {
                Ok(entries) => entries
                    .into_iter()
                    .map(|e| Change {
                        seq: e.seq,
                        at_ms: e.at_ms,
                        update: Bytes::from(e.update),
                    })
                    .collect(),
                Err(e) => {
                    warn!(doc = %self.name, error = %e, "could not read the log for a replay; sending a snapshot");
                    return None;
                }
            }
        };
        let have = changes.last().map_or(id.seq, |c| c.seq);
        changes.extend(recent.iter().filter(|c| c.seq > have).cloned());
        let contiguous = changes
            .iter()
            .enumerate()
            .all(|(i, c)| c.seq == id.seq + 1 + i as u64);
        (contiguous && changes.len() as u64 == last - id.seq).then_some(changes)
    }

    /// Puts frames on subscribers' queues. A full queue means the client has
    /// stopped reading: it is closed rather than skipped, since a Yjs client
    /// that silently misses an update would diverge.
    fn deliver(&mut self, fx: Effects) {
        let incarnation = self.state.incarnation();
        let mut queue = fx.deliveries;
        while !queue.is_empty() {
            let mut gone = Vec::new();
            for delivery in queue.drain(..) {
                match delivery {
                    Delivery::To(conn, frame) => {
                        if let Some(sub) = self.subscribers.get(&conn) {
                            offer(conn, sub, frame, &mut gone);
                        }
                    }
                    Delivery::Opening(conn, frame) => {
                        if let Some(sub) = self.subscribers.get(&conn) {
                            gone.extend(refused(conn, sub.offer_opening(frame)));
                        }
                    }
                    Delivery::Change { change, origin } => {
                        // Each encoding is built at most once, then shared.
                        let mut frame = None;
                        let mut event = None;
                        for (&conn, sub) in &self.subscribers {
                            let bytes = match sub.kind {
                                Kind::Editor if Some(conn) != origin => frame
                                    .get_or_insert_with(|| protocol::sync_update(&change.update))
                                    .clone(),
                                Kind::Viewer { after } if change.seq > after => event
                                    .get_or_insert_with(|| {
                                        viewer::update_event(incarnation, &change)
                                    })
                                    .clone(),
                                _ => continue,
                            };
                            offer(conn, sub, bytes, &mut gone);
                        }
                    }
                    Delivery::Presence(update) => {
                        let mut frame = None;
                        let mut event = None;
                        for (&conn, sub) in &self.subscribers {
                            let bytes = match sub.kind {
                                Kind::Editor => frame
                                    .get_or_insert_with(|| protocol::awareness(update.clone()))
                                    .clone(),
                                Kind::Viewer { .. } => event
                                    .get_or_insert_with(|| viewer::awareness_event(&update))
                                    .clone(),
                            };
                            offer(conn, sub, bytes, &mut gone);
                        }
                    }
                }
            }
            // Dropping a subscriber removes its presence, which is news for
            // the others: deliver that too.
            let mut fx = Effects::default();
            for (conn, reason) in gone {
                if let Some(sub) = self.subscribers.remove(&conn) {
                    self.budget.forget(conn);
                    if let Some(reason) = reason {
                        let transport = match sub.kind {
                            Kind::Editor => "ws",
                            Kind::Viewer { .. } => "sse",
                        };
                        metrics::counter!("weft_slow_client_disconnects_total", "transport" => transport)
                            .increment(1);
                        warn!(doc = %self.name, conn, "client stopped reading; closing it");
                        sub.close(reason);
                    }
                    self.state.leave(conn, &mut fx);
                }
            }
            queue = fx.deliveries;
        }
    }

    fn kick(&mut self, conn: ConnId, reason: CloseReason, fx: &mut Effects) {
        let label = match &reason {
            CloseReason::TooLarge(_) => Some("document_too_large"),
            CloseReason::Rejected(_) => Some("invalid"),
            // Counted where the creation limit refused.
            CloseReason::TooManyNewDocuments { .. } => None,
            // Its update was kept: nothing was refused.
            CloseReason::TooCostly(_) => None,
            _ => Some("other"),
        };
        if let Some(label) = label {
            metrics::counter!("weft_changes_refused_total", "reason" => label).increment(1);
        }
        if let Some(sub) = self.subscribers.remove(&conn) {
            self.budget.forget(conn);
            sub.close(reason);
            self.state.leave(conn, fx);
        }
    }

    fn kick_all(&mut self, reason: CloseReason) {
        for (conn, sub) in self.subscribers.drain() {
            self.budget.forget(conn);
            sub.close(reason.clone());
        }
    }

    /// The batch's changes could not be made durable. Nobody has been sent
    /// them; the document goes back to what the disk holds. Writers are
    /// closed (their clients hold changes the server dropped, and resync
    /// when they reconnect), and so is anyone owed a frame from this batch
    /// (it may contain those changes); everyone else, viewers and read-only
    /// editors, stays and goes on being served from memory. The batch's
    /// presence changes carry no document content and are still delivered.
    async fn storage_failed(&mut self, reason: String, batch: Effects) {
        error!(doc = %self.name, %reason, "could not store changes; closing the document's writers");
        let mut fx = Effects::default();
        let owed: std::collections::HashSet<ConnId> = batch
            .deliveries
            .iter()
            .filter_map(|d| match d {
                Delivery::To(conn, _) => Some(*conn),
                _ => None,
            })
            .collect();
        fx.deliveries.extend(
            batch
                .deliveries
                .into_iter()
                .filter(|d| matches!(d, Delivery::Presence(_))),
        );
        let closing: Vec<ConnId> = self
            .subscribers
            .iter()
            .filter(|(conn, sub)| {
                owed.contains(conn) || (sub.access == Access::ReadWrite && sub.kind == Kind::Editor)
            })
            .map(|(conn, _)| *conn)
            .collect();
        for conn in closing {
            if let Some(sub) = self.subscribers.remove(&conn) {
                sub.close(CloseReason::StorageFailure(reason.clone()));
                self.state.leave(conn, &mut fx);
            }
        }
        self.idle_since = self.subscribers.is_empty().then(Instant::now);
        self.reload(&reason).await;
        self.deliver(fx);
    }

    async fn reload(&mut self, why: &str) {
        let config = &self.cx.config;
        let (store, clock) = (&*self.cx.store, self.cx.clock.clone());
        let result = loading::load(store, &self.name, config, clock, &self.cx.cpu).await;
        match result {
            Ok(loaded) => {
                self.state.replace_with(loaded.state);
                self.meta = loaded.meta;
                self.exists = loaded.exists;
                info!(doc = %self.name, why, "document reloaded from storage");
            }
            Err(e) => {
                let reason = e.clone();
                // Without a trustworthy state the room must not serve; the
                // next connection loads the document afresh.
                error!(doc = %self.name, error = %e, "reload failed; unloading document");
                self.kick_all(CloseReason::StorageFailure(e));
                self.cx.rooms.remove_if(&self.name, self.instance);
                self.refuse_waiting(RoomError::LoadFailed(reason));
            }
        }
    }

    async fn snapshot(&mut self, reason: SnapshotReason) -> Result<u64, RoomError> {
        if !self.exists {
            // Nothing is stored for a name nobody wrote to, snapshots included.
            return Err(RoomError::NotFound(format!(
                "there is no document {}: nothing has been written to it",
                self.name
            )));
        }
        let started = Instant::now();
        let cpu = self.cx.cpu.clone();
        let encoding = &mut self.state;
        let state = cpu
            .run(|| encoding.encode_state())
            .await
            .map_err(RoomError::StorageFailure)?;
        let snapshot = NewSnapshot {
            seq: self.state.last_seq(),
            taken_at_ms: self.cx.clock.now_ms(),
            reason,
            state,
        };
        let size = snapshot.state.len();
        match self
            .cx
            .store
            .compact(&self.name, snapshot, self.cx.config.keep_log_tail)
            .await
        {
            Ok(id) => {
                debug!(doc = %self.name, id, size, reason = reason.as_str(), "snapshot stored");
                metrics::counter!("weft_snapshots_total", "reason" => reason.as_str()).increment(1);
                metrics::histogram!("weft_snapshot_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                self.unsnapshotted = 0;
                self.replay_cost = Duration::ZERO;
                self.state.set_size(size as u64);
                Ok(id)
            }
            // Another node holds the lease; its snapshot serves everyone.
            Err(e @ StorageError::Busy(_)) => {
                debug!(doc = %self.name, error = %e, "snapshot skipped");
                Err(RoomError::StorageFailure(e.to_string()))
            }
            // The log still holds every change; a later snapshot will retry.
            Err(e) => {
                warn!(doc = %self.name, error = %e, "snapshot failed");
                Err(RoomError::StorageFailure(e.to_string()))
            }
        }
    }

    /// Unloads the document if nobody joined during the grace period.
    async fn try_unload(&mut self) -> bool {
        if self.unsnapshotted > 0 {
            let _ = self.snapshot(SnapshotReason::Idle).await;
        }
        // Commands sent while snapshotting keep the room alive.
        if !self.rx.is_empty() || !self.subscribers.is_empty() {
            return false;
        }
        self.cx.rooms.remove_if(&self.name, self.instance);
        // Anyone who took a handle just before the removal retries and loads
        // a new room from storage, which already holds everything.
        self.refuse_waiting(RoomError::Retry);
        debug!(doc = %self.name, "document unloaded");
        metrics::counter!("weft_document_evictions_total").increment(1);
        true
    }

    /// Stops taking commands and answers every one still waiting with `error`.
    fn refuse_waiting(&mut self, error: RoomError) {
        if let Some(command) = self.batcher.take_held() {
            command.refuse(error.clone());
        }
        refuse_all(&mut self.rx, error);
    }

    async fn shut_down(&mut self) {
        self.rx.close();
        let mut batch: Vec<Command> = self.batcher.take_held().into_iter().collect();
        while let Ok(c) = self.rx.try_recv() {
            batch.push(c);
        }
        if !batch.is_empty() && self.handle(batch).await {
            return;
        }
        self.kick_all(CloseReason::ShuttingDown);
        if self.unsnapshotted > 0 {
            let _ = self.snapshot(SnapshotReason::Shutdown).await;
        }
        self.cx.rooms.remove_if(&self.name, self.instance);
    }
}

fn offer(
    conn: ConnId,
    sub: &Subscriber,
    frame: Bytes,
    gone: &mut Vec<(ConnId, Option<CloseReason>)>,
) {
    gone.extend(refused(conn, sub.offer(frame)));
}

/// A subscriber whose queue refused a frame, and why it must go.
fn refused(conn: ConnId, offered: Result<(), Offer>) -> Option<(ConnId, Option<CloseReason>)> {
    match offered {
        Ok(()) => None,
        Err(Offer::Full) => Some((conn, Some(CloseReason::TooSlow))),
        Err(Offer::Closed) => Some((conn, None)),
    }
}

fn refuse_all(rx: &mut mpsc::Receiver<Command>, error: RoomError) {
    rx.close();
    while let Ok(command) = rx.try_recv() {
        command.refuse(error.clone());
    }
}

/// Changes as the store keeps them.
fn log_entries(changes: &[Change]) -> Vec<LogEntry> {
    changes
        .iter()
        .map(|c| LogEntry {
            seq: c.seq,
            at_ms: c.at_ms,
            update: c.update.to_vec(),
        })
        .collect()
}

/// The next item of an optional channel; pending forever without one.
async fn recv_from<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
