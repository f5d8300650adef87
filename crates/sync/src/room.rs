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

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use weft_storage::{
    DocName, DocumentStore, LogEntry, NewSnapshot, PeerEvent, SnapshotReason, StorageError,
};

use yrs::StateVector;

use crate::changes::ChangeFeed;
use crate::doc_state::{Access, Change, ConnId, Delivery, DocState, Effects};
use crate::loading::{self, Loaded};
use crate::protocol::{self, Inbound};
use crate::rooms::RoomMap;
use crate::session::{CloseReason, Kind, Offer, Subscriber};
use crate::{
    restore, viewer, Clock, DocRead, EngineConfig, EventId, Restored, RoomError, RoomStats,
};

/// Most commands handled in one batch (one flush). A batch's changes reach
/// every subscriber at once, so a batch is also kept to half the frames a
/// subscriber may have queued (`outbound_queue`): a reader that keeps up
/// must never look slow because the writers were fast.
const MAX_BATCH: usize = 256;

/// How often one batch may be renumbered after other nodes' changes before
/// it is refused (cluster mode).
const MAX_REBASES: u32 = 16;

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
        /// Size of the frame they came in, for the document size limit.
        bytes: usize,
    },
    Leave {
        conn: ConnId,
    },
    /// A change from outside any connection (the HTTP API).
    Apply {
        /// A Yjs v1 update, decoded by the room.
        update: Bytes,
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
    /// Who is connected.
    Stats {
        reply: Reply<RoomStats>,
    },
}

impl Command {
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
}

/// Everything a room needs besides its document.
pub(crate) struct RoomContext {
    pub store: Arc<dyn DocumentStore>,
    pub config: Arc<EngineConfig>,
    pub clock: Arc<dyn Clock>,
    pub rooms: Arc<RoomMap>,
    pub shutdown: CancellationToken,
    /// Where stored changes are announced, if anyone listens.
    pub changes: Option<Arc<ChangeFeed>>,
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
        let loaded = loading::load(&*cx.store, &name, &cx.config, cx.clock.clone()).await;
        let Loaded {
            state,
            unsnapshotted,
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
        let mut room = Room {
            name,
            instance,
            state,
            subscribers: HashMap::new(),
            unsnapshotted,
            idle_since: Some(Instant::now()),
            rx,
            cx,
            remote,
            peers,
        };
        room.run_loop().await;
        metrics::gauge!("weft_documents_loaded").decrement(1.0);
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
                    let most = MAX_BATCH.min(self.cx.config.outbound_queue / 2).max(1);
                    while batch.len() < most {
                        match self.rx.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    if self.handle(batch).await {
                        return; // the document was deleted
                    }
                }
                Some(entries) = recv_from(&mut self.remote) => {
                    self.handle_stored_elsewhere(entries).await;
                }
                Some(event) = recv_from(&mut self.peers) => match event {
                    PeerEvent::Presence(update) => {
                        let mut fx = Effects::default();
                        self.state.apply_remote_presence(&update, &mut fx);
                        self.deliver(fx);
                    }
                    PeerEvent::Deleted => {
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

    /// Runs a batch; `true` when the room must stop (its document was deleted).
    async fn handle(&mut self, batch: Vec<Command>) -> bool {
        let started = Instant::now();
        let mut fx = Effects::default();
        let mut deferred = Vec::new();
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
                        self.state.join(conn, &mut fx);
                    }
                }
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
                Command::Receive {
                    conn,
                    messages,
                    bytes,
                } => {
                    let Some(access) = self.subscribers.get(&conn).map(|s| s.access) else {
                        continue; // already closed; drop what it still sent
                    };
                    let writes =
                        access == Access::ReadWrite && messages.iter().any(Inbound::is_update);
                    if writes {
                        if let Err(rejection) = self.state.admits(bytes) {
                            warn!(doc = %self.name, conn, %rejection, "closing connection");
                            self.kick(conn, CloseReason::TooLarge(rejection.to_string()), &mut fx);
                            continue;
                        }
                    }
                    for message in messages {
                        if let Err(rejection) = self.state.receive(conn, access, message, &mut fx) {
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
                Command::Apply { update, reply } => {
                    let result = self.apply_from_outside(&update, &mut fx);
                    deferred.push(Deferred::Applied(reply, result));
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
                Command::Restore { snapshot, reply } => {
                    let old = match self.cx.store.get_snapshot(&self.name, snapshot).await {
                        Ok(Some(old)) => old,
                        Ok(None) => {
                            let _ = reply.send(Err(RoomError::NotFound(format!(
                                "document {} has no snapshot {snapshot}",
                                self.name
                            ))));
                            continue;
                        }
                        Err(e) => {
                            let _ = reply.send(Err(RoomError::StorageFailure(e.to_string())));
                            continue;
                        }
                    };
                    let state = &mut self.state;
                    match state.apply_local(&mut fx, |doc| restore::restore_into(doc, &old.state)) {
                        Ok(change) => {
                            let id = change.map(|seq| self.event_id(seq));
                            deferred.push(Deferred::Changed(reply, id, SnapshotReason::Restore));
                        }
                        Err(e) => {
                            let _ = reply.send(Err(RoomError::Rejected(e)));
                        }
                    }
                }
                Command::Import { update, reply } => {
                    match self.apply_from_outside(&update, &mut fx) {
                        Ok(id) => {
                            deferred.push(Deferred::Changed(reply, id, SnapshotReason::Import))
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Command::Delete { reply } => deferred.push(Deferred::Delete(reply)),
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
            }
        }

        if !fx.changes.is_empty() {
            let mut entries = log_entries(&fx.changes);
            let appending = Instant::now();
            let mut appended = self.cx.store.append(&self.name, &entries).await;
            let mut tries = 0;
            while let Err(StorageError::Conflict { .. }) = appended {
                // Another node stored changes first (cluster mode): take
                // them in, renumber ours after them and try again.
                tries += 1;
                let first = entries.first().map_or(0, |e| e.seq);
                appended = match self.catch_up(first, &mut fx, &mut deferred).await {
                    Ok(rebased) if tries <= MAX_REBASES => {
                        entries = rebased;
                        self.cx.store.append(&self.name, &entries).await
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
                self.storage_failed(reason).await;
                return false;
            }
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
            }
        }
        if let Some(reply) = delete {
            self.delete(reply).await;
            return true;
        }

        self.idle_since = self.subscribers.is_empty().then(Instant::now);
        if self.unsnapshotted >= self.cx.config.snapshot_every {
            let _ = self.snapshot(SnapshotReason::Periodic).await;
        }
        false
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
        let shift = self
            .state
            .rebase(&remote, fx)
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
        let applied = self.state.apply_stored(&entries, &mut fx);
        self.deliver(fx);
        match applied {
            Ok(fresh) => self.unsnapshotted += fresh,
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
        fx: &mut Effects,
    ) -> Result<Option<EventId>, RoomError> {
        let before = fx.changes.len();
        self.state
            .admits(update.len())
            .map_err(|e| RoomError::TooLarge(e.to_string()))?;
        let update =
            protocol::decode_update(update).map_err(|e| RoomError::Rejected(e.to_string()))?;
        self.state
            .apply_external(update, fx)
            .map_err(|r| RoomError::Rejected(r.to_string()))?;
        Ok(fx.changes[before..].last().map(|c| self.event_id(c.seq)))
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
        self.let_go();
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
        self.let_go();
        info!(doc = %self.name, "document deleted by another node");
    }

    /// The document is gone: closes every connection with "deleted", and
    /// sends whatever was still on its way here back to try again (it will
    /// find a new, empty document).
    fn let_go(&mut self) {
        self.kick_all(CloseReason::Deleted);
        self.cx.rooms.remove_if(&self.name, self.instance);
        refuse_all(&mut self.rx, RoomError::Retry);
    }

    /// What a new viewer is sent first: the changes after `resume` when they
    /// can all be had (from memory, else from the log), otherwise a snapshot;
    /// then everyone's presence. One buffer, so it takes one queue slot.
    async fn opening_for_viewer(&mut self, resume: Option<EventId>) -> Bytes {
        let incarnation = self.state.incarnation();
        let mut out = BytesMut::new();
        match self.replay(resume).await {
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
            CloseReason::TooLarge(_) => "document_too_large",
            CloseReason::Rejected(_) => "invalid",
            _ => "other",
        };
        metrics::counter!("weft_changes_refused_total", "reason" => label).increment(1);
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
        let config = &self.cx.config;
        let result =
            loading::load(&*self.cx.store, &self.name, config, self.cx.clock.clone()).await;
        match result {
            Ok(loaded) => {
                self.state.replace_with(loaded.state);
                info!(doc = %self.name, why, "document reloaded from storage");
            }
            Err(e) => {
                let reason = e.clone();
                // Without a trustworthy state the room must not serve; the
                // next connection loads the document afresh.
                error!(doc = %self.name, error = %e, "reload failed; unloading document");
                self.kick_all(CloseReason::StorageFailure(e));
                self.cx.rooms.remove_if(&self.name, self.instance);
                refuse_all(&mut self.rx, RoomError::LoadFailed(reason));
            }
        }
    }

    async fn snapshot(&mut self, reason: SnapshotReason) -> Result<u64, RoomError> {
        let started = Instant::now();
        let state = self
            .state
            .encode_state()
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
        self.rx.close();
        refuse_all(&mut self.rx, RoomError::Retry);
        debug!(doc = %self.name, "document unloaded");
        metrics::counter!("weft_document_evictions_total").increment(1);
        true
    }

    async fn shut_down(&mut self) {
        self.rx.close();
        let mut batch = Vec::new();
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
    match sub.offer(frame) {
        Ok(()) => {}
        Err(Offer::Full) => gone.push((conn, Some(CloseReason::TooSlow))),
        Err(Offer::Closed) => gone.push((conn, None)),
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
