//! A room's life: loading the document and starting to follow other
//! nodes, snapshots (every so many changes, or at once when replaying the
//! changes since the last would cost too much), unloading after the grace
//! period without subscribers, orderly shutdown (what was already sent is
//! handled, then a snapshot, then every subscriber is closed), and the end
//! of a document: deleted, or replaced by a backup restore.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use weft_storage::{DocName, LogRetention, NewSnapshot, SnapshotReason, StorageError};

use super::batch::Batcher;
use super::commands::refuse_all;
use super::commit::Ending;
use super::{Command, Reply, Room, RoomContext};
use crate::cpu_budget::CpuBudget;
use crate::loading::{self, Loaded};
use crate::session::CloseReason;
use crate::RoomError;

impl Room {
    /// Loads the document and runs the room until it unloads or shuts down.
    pub(crate) async fn run(
        name: DocName,
        instance: u64,
        rx: mpsc::Receiver<Command>,
        cx: RoomContext,
    ) {
        let Some(mut room) = Room::start(name, instance, rx, cx).await else {
            return;
        };
        if room.costly_to_replay() {
            // So that the next load is quick (a snapshot loads in a
            // fraction of the time its history takes to replay).
            info!(doc = %room.name, took = ?room.replay_cost, "loading replayed a costly history; snapshotting");
            let _ = room.snapshot(SnapshotReason::Periodic).await;
        }
        if room.learn_peers_presence().await {
            room.run_loop().await;
        }
        metrics::gauge!("weft_documents_loaded").decrement(1.0);
    }

    /// Loads the document and follows what other nodes store and say of it;
    /// `None` (every waiting command refused) when it cannot be served.
    async fn start(
        name: DocName,
        instance: u64,
        mut rx: mpsc::Receiver<Command>,
        cx: RoomContext,
    ) -> Option<Room> {
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
            Err(refused) => {
                error!(doc = %name, reason = %refused, "document failed to load; refusing connections to it");
                cx.rooms.remove_if(&name, instance);
                refuse_all(&mut rx, refused);
                return None;
            }
        };
        debug!(doc = %name, last_seq = state.last_seq(), elapsed = ?started.elapsed(), "document loaded");
        metrics::histogram!("weft_document_load_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("weft_documents_loaded").increment(1.0);
        // Followed from the newest change loaded, so nothing stored
        // meanwhile is missed.
        let remote = match cx.store.watch(&name, &meta, state.last_seq()).await {
            Ok(remote) => remote,
            Err(e) => {
                error!(doc = %name, error = %e, "cannot follow the shared log; refusing connections");
                cx.rooms.remove_if(&name, instance);
                refuse_all(&mut rx, loading::refusal(e));
                return None;
            }
        };
        let budget = CpuBudget::new(cx.config.cpu_limits);
        Some(Room {
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
            departed: Vec::new(),
        })
    }

    /// Whether the changes since the last snapshot took so long to integrate
    /// that loading the document would replay too much: a snapshot is due.
    pub(super) fn costly_to_replay(&self) -> bool {
        let limit = self.cx.config.snapshot_after_cpu;
        self.unsnapshotted > 0 && !limit.is_zero() && self.replay_cost >= limit
    }

    /// Snapshots when enough changes have piled up since the last snapshot,
    /// or they took long enough to integrate that replaying them would.
    pub(super) async fn snapshot_if_due(&mut self) {
        if self.unsnapshotted >= self.cx.config.snapshot_every || self.costly_to_replay() {
            let _ = self.snapshot(SnapshotReason::Periodic).await;
        }
    }

    /// What compaction keeps of the log behind a snapshot.
    fn log_retention(&self) -> LogRetention {
        LogRetention {
            keep_tail: self.cx.config.keep_log_tail,
            keep_for: self.cx.config.history_retention,
        }
    }

    /// Takes a snapshot now (never of a document that does not exist);
    /// answers its id.
    pub(super) async fn snapshot(&mut self, reason: SnapshotReason) -> Result<u64, RoomError> {
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
            .compact(&self.name, snapshot, self.log_retention())
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
    pub(super) async fn try_unload(&mut self) -> bool {
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
    pub(super) fn refuse_waiting(&mut self, error: RoomError) {
        if let Some(command) = self.batcher.take_held() {
            command.refuse(error.clone());
        }
        refuse_all(&mut self.rx, error);
    }

    /// Handles what was already sent, closes every subscriber and
    /// snapshots what changed.
    pub(super) async fn shut_down(&mut self) {
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

    /// Ends the room if the batch asked to (a delete wins over a reopen);
    /// `true` when it did.
    pub(super) async fn end_if_asked(&mut self, ending: Ending) -> bool {
        if let Some(reply) = ending.delete {
            self.delete(reply).await;
            return true;
        }
        if let Some(reply) = ending.reopen {
            self.reopen(reply);
            return true;
        }
        false
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

    /// The store's copy was replaced outside the room (a backup restore):
    /// every connection is closed (they reconnect and resync) and the room
    /// stops, so the next use loads what is stored now.
    fn reopen(&mut self, reply: Reply<()>) {
        self.let_go(CloseReason::StorageFailure(
            "the document was replaced from a backup".into(),
        ));
        info!(doc = %self.name, "stored copy replaced; unloaded");
        let _ = reply.send(Ok(()));
    }

    /// The room stops serving the document: closes every connection with
    /// `reason`, and sends whatever was still on its way here back to try
    /// again (it will find what the store holds then).
    pub(super) fn let_go(&mut self, reason: CloseReason) {
        self.kick_all(reason);
        self.cx.rooms.remove_if(&self.name, self.instance);
        self.refuse_waiting(RoomError::Retry);
    }
}
