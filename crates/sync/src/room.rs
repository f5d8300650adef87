//! `Room`: the task that owns one live document.
//!
//! Connections talk to it only through its command channel. Its loop takes
//! every command that is waiting (a batch), runs them through [`DocState`],
//! makes the batch's changes durable with one append (group commit), and only
//! then hands the resulting frames to the subscribers' bounded queues. Work on
//! one document never waits for another's.
//!
//! It also snapshots the document every so many changes, unloads it when it
//! has been without subscribers for the grace period, and on shutdown drains
//! what was already sent to it, snapshots, and closes every subscriber.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use weft_storage::{DocName, DocumentStore, LogEntry, NewSnapshot, SnapshotReason};

use crate::doc_state::{ConnId, Delivery, DocState, Effects};
use crate::protocol::Inbound;
use crate::rooms::RoomMap;
use crate::session::{CloseReason, Subscriber};
use crate::{Clock, EngineConfig, JoinError};

/// Most commands handled in one batch (one flush).
const MAX_BATCH: usize = 256;

pub(crate) enum Command {
    Join {
        conn: ConnId,
        subscriber: Subscriber,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    Receive {
        conn: ConnId,
        messages: Vec<Inbound>,
    },
    Leave {
        conn: ConnId,
    },
}

/// Everything a room needs besides its document.
pub(crate) struct RoomContext {
    pub store: Arc<dyn DocumentStore>,
    pub config: Arc<EngineConfig>,
    pub clock: Arc<dyn Clock>,
    pub rooms: Arc<RoomMap>,
    pub shutdown: CancellationToken,
}

pub(crate) struct Room {
    name: DocName,
    /// Tells this room apart from an earlier or later room of the same name
    /// in the registry.
    instance: u64,
    state: DocState,
    subscribers: HashMap<ConnId, Subscriber>,
    /// Changes since the last snapshot.
    unsnapshotted: u64,
    idle_since: Option<Instant>,
    rx: mpsc::Receiver<Command>,
    cx: RoomContext,
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
        let loaded = match cx.store.load(&name).await {
            Ok(stored) => DocState::load(&stored, cx.config.recent_changes, cx.clock.clone())
                .map(|state| (state, stored.log.len() as u64))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let (state, unsnapshotted) = match loaded {
            Ok(loaded) => loaded,
            Err(reason) => {
                error!(doc = %name, %reason, "document failed to load; refusing connections to it");
                cx.rooms.remove_if(&name, instance);
                refuse_all(&mut rx, JoinError::LoadFailed(reason));
                return;
            }
        };
        debug!(doc = %name, last_seq = state.last_seq(), elapsed = ?started.elapsed(), "document loaded");
        let mut room = Room {
            name,
            instance,
            state,
            subscribers: HashMap::new(),
            unsnapshotted,
            idle_since: Some(Instant::now()),
            rx,
            cx,
        };
        room.run_loop().await;
    }

    async fn run_loop(&mut self) {
        loop {
            let idle_deadline = self.idle_since.map(|t| t + self.cx.config.unload_grace);
            tokio::select! {
                biased;
                _ = self.cx.shutdown.cancelled() => {
                    self.shut_down().await;
                    return;
                }
                command = self.rx.recv() => {
                    let Some(command) = command else { return };
                    let mut batch = vec![command];
                    while batch.len() < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    self.handle(batch).await;
                }
                _ = sleep_until(idle_deadline), if idle_deadline.is_some() => {
                    if self.try_unload().await {
                        return;
                    }
                }
            }
        }
    }

    async fn handle(&mut self, batch: Vec<Command>) {
        let mut fx = Effects::default();
        for command in batch {
            match command {
                Command::Join {
                    conn,
                    subscriber,
                    reply,
                } => {
                    if reply.send(Ok(())).is_ok() {
                        // Subscribed before the initial sync is queued, so no
                        // change can fall between the two.
                        self.subscribers.insert(conn, subscriber);
                        self.state.join(conn, &mut fx);
                    }
                }
                Command::Receive { conn, messages } => {
                    if !self.subscribers.contains_key(&conn) {
                        continue; // already closed; drop what it still sent
                    }
                    for message in messages {
                        if let Err(rejection) = self.state.receive(conn, message, &mut fx) {
                            warn!(doc = %self.name, conn, %rejection, "closing connection");
                            self.kick(conn, CloseReason::Rejected(rejection.to_string()), &mut fx);
                            break;
                        }
                    }
                }
                Command::Leave { conn } => {
                    if self.subscribers.remove(&conn).is_some() {
                        self.state.leave(conn, &mut fx);
                    }
                }
            }
        }

        if !fx.changes.is_empty() {
            let entries: Vec<LogEntry> = fx
                .changes
                .iter()
                .map(|c| LogEntry {
                    seq: c.seq,
                    at_ms: c.at_ms,
                    update: c.update.to_vec(),
                })
                .collect();
            if let Err(e) = self.cx.store.append(&self.name, &entries).await {
                self.storage_failed(e.to_string()).await;
                return;
            }
            self.unsnapshotted += entries.len() as u64;
        }
        if self.state.is_poisoned() {
            // Memory may not match the disk after a panic inside yrs; the
            // disk holds everything anyone was sent, so start again from it.
            self.reload("the document engine failed internally").await;
        }
        self.deliver(fx);

        self.idle_since = self.subscribers.is_empty().then(Instant::now);
        if self.unsnapshotted >= self.cx.config.snapshot_every {
            self.snapshot(SnapshotReason::Periodic).await;
        }
    }

    /// Puts frames on subscribers' queues. A full queue means the client has
    /// stopped reading: it is closed rather than skipped, since a Yjs client
    /// that silently misses an update would diverge.
    fn deliver(&mut self, fx: Effects) {
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
                    Delivery::Others(except, frame) => {
                        for (&conn, sub) in &self.subscribers {
                            if conn != except {
                                offer(conn, sub, frame.clone(), &mut gone);
                            }
                        }
                    }
                    Delivery::Everyone(frame) => {
                        for (&conn, sub) in &self.subscribers {
                            offer(conn, sub, frame.clone(), &mut gone);
                        }
                    }
                }
            }
            // Dropping a subscriber removes its presence, which is news for
            // the others: deliver that too.
            let mut fx = Effects::default();
            for (conn, reason) in gone {
                if let Some(sub) = self.subscribers.remove(&conn) {
                    if let Some(reason) = reason {
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
        if let Some(sub) = self.subscribers.remove(&conn) {
            sub.close(reason);
            self.state.leave(conn, fx);
        }
    }

    fn kick_all(&mut self, reason: CloseReason) {
        for (_, sub) in self.subscribers.drain() {
            sub.close(reason.clone());
        }
    }

    /// The batch's changes could not be made durable. Nobody has been sent
    /// them; the document goes back to what the disk holds and every
    /// connection resyncs from there.
    async fn storage_failed(&mut self, reason: String) {
        error!(doc = %self.name, %reason, "could not store changes; closing connections");
        self.kick_all(CloseReason::StorageFailure(reason.clone()));
        self.idle_since = Some(Instant::now());
        self.reload(&reason).await;
    }

    async fn reload(&mut self, why: &str) {
        let result = match self.cx.store.load(&self.name).await {
            Ok(stored) => self.state.reload(&stored).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => info!(doc = %self.name, why, "document reloaded from storage"),
            Err(e) => {
                let reason = e.clone();
                // Without a trustworthy state the room must not serve; the
                // next connection loads the document afresh.
                error!(doc = %self.name, error = %e, "reload failed; unloading document");
                self.kick_all(CloseReason::StorageFailure(e));
                self.cx.rooms.remove_if(&self.name, self.instance);
                refuse_all(&mut self.rx, JoinError::LoadFailed(reason));
            }
        }
    }

    async fn snapshot(&mut self, reason: SnapshotReason) {
        let snapshot = NewSnapshot {
            seq: self.state.last_seq(),
            taken_at_ms: self.cx.clock.now_ms(),
            reason,
            state: self.state.encode_state(),
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
                self.unsnapshotted = 0;
            }
            // The log still holds every change; a later snapshot will retry.
            Err(e) => warn!(doc = %self.name, error = %e, "snapshot failed"),
        }
    }

    /// Unloads the document if nobody joined during the grace period.
    async fn try_unload(&mut self) -> bool {
        if self.unsnapshotted > 0 {
            self.snapshot(SnapshotReason::Idle).await;
        }
        // Commands sent while snapshotting keep the room alive.
        if !self.rx.is_empty() || !self.subscribers.is_empty() {
            return false;
        }
        self.cx.rooms.remove_if(&self.name, self.instance);
        // Anyone who took a handle just before the removal retries and loads
        // a new room from storage, which already holds everything.
        self.rx.close();
        refuse_all(&mut self.rx, JoinError::Retry);
        debug!(doc = %self.name, "document unloaded");
        true
    }

    async fn shut_down(&mut self) {
        self.rx.close();
        let mut batch = Vec::new();
        while let Ok(c) = self.rx.try_recv() {
            batch.push(c);
        }
        if !batch.is_empty() {
            self.handle(batch).await;
        }
        self.kick_all(CloseReason::ShuttingDown);
        if self.unsnapshotted > 0 {
            self.snapshot(SnapshotReason::Shutdown).await;
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
    match sub.tx.try_send(frame) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => gone.push((conn, Some(CloseReason::TooSlow))),
        Err(mpsc::error::TrySendError::Closed(_)) => gone.push((conn, None)),
    }
}

fn refuse_all(rx: &mut mpsc::Receiver<Command>, error: JoinError) {
    rx.close();
    while let Ok(command) = rx.try_recv() {
        if let Command::Join { reply, .. } = command {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
