//! `Rooms`: the registry of live documents.
//!
//! It maps names to running [`Room`] tasks, starting one on a document's first
//! connection (exactly one, however many connections race) and forgetting it
//! when the room unloads. The map's lock is held only to look up or insert a
//! handle, never while a document is loaded or used.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use weft_storage::{DocName, EngineStore, Provenance, SnapshotReason};

use crate::history::PointInTime;
use crate::room::{Command, RestoreFrom, Room, RoomContext};
use bytes::Bytes;
use yrs::StateVector;

use crate::changes::ChangeFeed;
use crate::cpu::CpuPool;
use crate::creation::ClientAddr;
use crate::doc_state::Access;
use crate::session::{Dialect, Follower, Joiner, Session};
use crate::{Clock, DocRead, EngineConfig, EventId, Restored, RoomError, RoomStats};

/// How often a join retries when it meets a room that is unloading.
const JOIN_ATTEMPTS: usize = 5;

#[derive(Clone)]
struct RoomHandle {
    instance: u64,
    tx: mpsc::Sender<Command>,
}

/// Name → running room.
#[derive(Default)]
pub(crate) struct RoomMap {
    rooms: Mutex<HashMap<DocName, RoomHandle>>,
}

impl RoomMap {
    fn lock(&self) -> MutexGuard<'_, HashMap<DocName, RoomHandle>> {
        // A panic elsewhere while holding this lock leaves the map itself
        // intact (every operation on it is a single insert or remove).
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes `name` only if it still refers to room `instance`.
    pub(crate) fn remove_if(&self, name: &DocName, instance: u64) {
        let mut rooms = self.lock();
        if rooms.get(name).is_some_and(|h| h.instance == instance) {
            rooms.remove(name);
        }
    }
}

/// The document engine: every live document, and the way in for connections.
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<Inner>,
}

struct Inner {
    map: Arc<RoomMap>,
    store: Arc<dyn EngineStore>,
    config: Arc<EngineConfig>,
    clock: Arc<dyn Clock>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    changes: Option<Arc<ChangeFeed>>,
    cpu: CpuPool,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("loaded", &self.loaded())
            .finish_non_exhaustive()
    }
}

impl Rooms {
    pub fn new(store: Arc<dyn EngineStore>, config: EngineConfig, clock: Arc<dyn Clock>) -> Self {
        Rooms {
            inner: Arc::new(Inner {
                cpu: CpuPool::new(config.cpu_slots, clock.clone()),
                map: Arc::default(),
                store,
                config: Arc::new(config),
                clock,
                next_id: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                changes: None,
            }),
        }
    }

    /// Rooms will record every stored change in `feed`. Call before use.
    pub fn with_change_feed(mut self, feed: Arc<ChangeFeed>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.changes = Some(feed);
        }
        self
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// How many documents are loaded now.
    pub fn loaded(&self) -> usize {
        self.inner.map.lock().len()
    }

    /// Whether `doc` is loaded now.
    pub fn is_loaded(&self, doc: &DocName) -> bool {
        self.inner.map.lock().contains_key(doc)
    }

    /// Joins `doc` as an editor, loading it if needed. The session's first
    /// frames are the room's sync step 1 and current presence. `client` is
    /// the connection's address: a change that would create the document
    /// counts against its allowance (`None`: not limited).
    pub async fn join(
        &self,
        doc: &DocName,
        access: Access,
        client: Option<ClientAddr>,
    ) -> Result<Session, RoomError> {
        let joiner = Joiner {
            access,
            client,
            dialect: Dialect::YSync,
            author: None,
            via: "ws",
        };
        self.join_as(doc, joiner).await
    }

    /// [`join`](Self::join) for `joiner`: its client may speak another
    /// dialect, and its changes are recorded as its author's.
    pub async fn join_as(&self, doc: &DocName, joiner: Joiner) -> Result<Session, RoomError> {
        let mut joined = None;
        self.call(doc, |room, reply| {
            let who = (joiner.access, joiner.client);
            let (session, mut subscriber) = self.session(doc, room, who);
            subscriber.dialect = joiner.dialect;
            let author = joiner
                .author
                .clone()
                .unwrap_or_else(|| format!("anonymous#{}", session.id()));
            subscriber.by = Arc::new(Provenance::new(Some(author), joiner.via));
            let conn = session.id();
            joined = Some(session);
            Command::Join {
                conn,
                subscriber,
                reply,
            }
        })
        .await?;
        joined.ok_or(RoomError::Busy)
    }

    /// Follows `doc` as a read-only viewer. The first chunk is a snapshot,
    /// or, when `resume` names a change the server can replay from, exactly
    /// the changes after it; then presence; then live events.
    pub async fn follow(
        &self,
        doc: &DocName,
        resume: Option<EventId>,
    ) -> Result<Follower, RoomError> {
        let mut joined = None;
        self.call(doc, |room, reply| {
            let (session, subscriber) = self.session(doc, room, (Access::ReadOnly, None));
            let conn = session.id();
            joined = Some(session);
            Command::Follow {
                conn,
                subscriber,
                resume,
                reply,
            }
        })
        .await?;
        joined.map(Follower::new).ok_or(RoomError::Busy)
    }

    /// Applies a Yjs v1 update from outside any connection. Returns once it
    /// is durable and sent to everyone: the id of the change, or `None` if
    /// it changed nothing. If it would create the document, it counts
    /// against `client`'s allowance (`None`: not limited).
    pub async fn apply(
        &self,
        doc: &DocName,
        update: Bytes,
        client: Option<ClientAddr>,
    ) -> Result<Option<EventId>, RoomError> {
        self.apply_as(doc, update, client, Provenance::new(None, "http"))
            .await
    }

    /// [`apply`](Self::apply), the change recorded as made `by`.
    pub async fn apply_as(
        &self,
        doc: &DocName,
        update: Bytes,
        client: Option<ClientAddr>,
        by: Provenance,
    ) -> Result<Option<EventId>, RoomError> {
        self.call(doc, |_, reply| Command::Apply {
            update: update.clone(),
            client,
            by: by.clone(),
            reply,
        })
        .await
    }

    /// The whole document, or only what `since` lacks, as a Yjs v1 update;
    /// [`RoomError::NoSuchDocument`] if nothing was ever written to it.
    pub async fn read(
        &self,
        doc: &DocName,
        since: Option<StateVector>,
    ) -> Result<DocRead, RoomError> {
        self.call(doc, |_, reply| Command::Read {
            since: since.clone(),
            reply,
        })
        .await
    }

    /// Takes a snapshot now (reason `manual`); answers its id.
    pub async fn snapshot_now(&self, doc: &DocName) -> Result<u64, RoomError> {
        self.require_stored(doc).await?;
        self.call(doc, |_, reply| Command::Snapshot {
            reason: SnapshotReason::Manual,
            reply,
        })
        .await
    }

    /// Brings `doc` back to snapshot `snapshot` as a new change, so live
    /// editors converge to it; the result is itself snapshotted (`restore`).
    pub async fn restore(&self, doc: &DocName, snapshot: u64) -> Result<Restored, RoomError> {
        self.require_stored(doc).await?;
        self.call(doc, |_, reply| Command::Restore {
            from: RestoreFrom::Snapshot(snapshot),
            reply,
        })
        .await
    }

    /// Brings `doc` back to how it was at `at` (see
    /// [`state_at`](Self::state_at)), live, as a restore does.
    /// Refused when the history kept no longer reaches that exact point:
    /// restoring an earlier one instead would undo more than asked.
    pub async fn restore_at(&self, doc: &DocName, at: PointInTime) -> Result<Restored, RoomError> {
        let past = self.state_at(doc, at).await?;
        if !past.exact {
            return Err(RoomError::NotFound(format!(
                "the history kept no longer holds every change up to that point of {doc}; \
                 the nearest earlier point it can rebuild is {}: restore that (--at {}) if it \
                 is what you want",
                past.id, past.id
            )));
        }
        let past = Bytes::from(past.update);
        self.call(doc, |_, reply| Command::Restore {
            from: RestoreFrom::State(past.clone()),
            reply,
        })
        .await
    }

    /// Merges a Yjs v1 update into `doc` (created if new, unless the update
    /// changes nothing) as a change, then snapshots it (`import`).
    pub async fn import(&self, doc: &DocName, update: Bytes) -> Result<Restored, RoomError> {
        self.call(doc, |_, reply| Command::Import {
            update: update.clone(),
            reply,
        })
        .await
    }

    /// Closes every connection to `doc` and removes it from storage.
    pub async fn delete(&self, doc: &DocName) -> Result<(), RoomError> {
        self.require_stored(doc).await?;
        match self.call(doc, |_, reply| Command::Delete { reply }).await {
            Ok(_) => Ok(()),
            // A document that cannot load can still be deleted.
            Err(RoomError::LoadFailed(_)) => self
                .inner
                .store
                .delete(doc)
                .await
                .map(drop)
                .map_err(|e| RoomError::StorageFailure(e.to_string())),
            Err(e) => Err(e),
        }
    }

    /// The store's copy of `doc` was replaced outside the engine (a backup
    /// restore): if a room holds it, it closes its connections (they
    /// reconnect and resync) and unloads, so the next use loads what is
    /// stored now. Nothing happens if it is not loaded.
    pub async fn reopen(&self, doc: &DocName) {
        let Some(room) = self.inner.map.lock().get(doc).cloned() else {
            return;
        };
        let (reply, answer) = oneshot::channel();
        if room.tx.send(Command::Reopen { reply }).await.is_ok() {
            let _ = answer.await;
        }
    }

    /// Who is connected to `doc`, if it is loaded (it is not loaded for this).
    pub async fn stats(&self, doc: &DocName) -> Option<RoomStats> {
        let room = self.inner.map.lock().get(doc).cloned()?;
        let (reply, answer) = oneshot::channel();
        room.tx.send(Command::Stats { reply }).await.ok()?;
        answer.await.ok()?.ok()
    }

    /// The store, for reads that need no room (history).
    pub(crate) fn store(&self) -> &Arc<dyn EngineStore> {
        &self.inner.store
    }

    /// Where yrs work runs.
    pub(crate) fn cpu(&self) -> &CpuPool {
        &self.inner.cpu
    }

    async fn require_stored(&self, doc: &DocName) -> Result<(), RoomError> {
        match self.inner.store.head(doc).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(RoomError::NotFound(format!("there is no document {doc}"))),
            Err(e) => Err(RoomError::StorageFailure(e.to_string())),
        }
    }

    fn session(
        &self,
        doc: &DocName,
        room: &RoomHandle,
        who: (Access, Option<ClientAddr>),
    ) -> (Session, crate::session::Subscriber) {
        let conn = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        Session::pair(
            conn,
            doc.clone(),
            room.tx.clone(),
            (
                self.inner.config.outbound_queue,
                self.inner.config.outbound_queue_bytes,
            ),
            who,
            self.inner.tasks.clone(),
        )
    }

    /// Sends a command to `doc`'s room and waits for its answer, retrying
    /// when it meets a room that is unloading.
    async fn call<T>(
        &self,
        doc: &DocName,
        mut make: impl FnMut(&RoomHandle, oneshot::Sender<Result<T, RoomError>>) -> Command,
    ) -> Result<T, RoomError> {
        for _ in 0..JOIN_ATTEMPTS {
            if self.inner.shutdown.is_cancelled() {
                return Err(RoomError::ShuttingDown);
            }
            let room = self.room(doc);
            let (reply, answer) = oneshot::channel();
            if room.tx.send(make(&room, reply)).await.is_err() {
                continue; // the room unloaded meanwhile
            }
            match answer.await {
                Ok(Err(RoomError::Retry)) | Err(_) => continue,
                Ok(result) => return result,
            }
        }
        if self.inner.shutdown.is_cancelled() {
            Err(RoomError::ShuttingDown)
        } else {
            Err(RoomError::Busy)
        }
    }

    /// The running room for `doc`, started if there is none.
    fn room(&self, doc: &DocName) -> RoomHandle {
        let mut rooms = self.inner.map.lock();
        if let Some(handle) = rooms.get(doc) {
            return handle.clone();
        }
        let (tx, rx) = mpsc::channel(self.inner.config.command_queue.max(1));
        let handle = RoomHandle {
            instance: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
        };
        rooms.insert(doc.clone(), handle.clone());
        let cx = RoomContext {
            store: self.inner.store.clone(),
            config: self.inner.config.clone(),
            clock: self.inner.clock.clone(),
            rooms: self.inner.map.clone(),
            shutdown: self.inner.shutdown.clone(),
            changes: self.inner.changes.clone(),
            cpu: self.inner.cpu.for_room(),
        };
        let span = tracing::info_span!("room", doc = %doc);
        self.inner
            .tasks
            .spawn(Room::run(doc.clone(), handle.instance, rx, cx).instrument(span));
        handle
    }

    /// Stops every room: each finishes what it was sent, snapshots, and
    /// closes its sessions. Returns when all have stopped.
    pub async fn shut_down(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}
