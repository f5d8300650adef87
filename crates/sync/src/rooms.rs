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

use weft_storage::{DocName, DocumentStore};

use crate::room::{Command, Room, RoomContext};
use crate::session::Session;
use crate::{Clock, EngineConfig, JoinError};

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
    store: Arc<dyn DocumentStore>,
    config: Arc<EngineConfig>,
    clock: Arc<dyn Clock>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("loaded", &self.loaded())
            .finish_non_exhaustive()
    }
}

impl Rooms {
    pub fn new(store: Arc<dyn DocumentStore>, config: EngineConfig, clock: Arc<dyn Clock>) -> Self {
        Rooms {
            inner: Arc::new(Inner {
                map: Arc::default(),
                store,
                config: Arc::new(config),
                clock,
                next_id: AtomicU64::new(1),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
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

    /// Joins `doc`, loading it if needed. The session's first frames are the
    /// room's sync step 1 and current presence.
    pub async fn join(&self, doc: &DocName) -> Result<Session, JoinError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(JoinError::ShuttingDown);
        }
        for _ in 0..JOIN_ATTEMPTS {
            let room = self.room(doc);
            let conn = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let (session, subscriber) = Session::pair(
                conn,
                doc.clone(),
                room.tx.clone(),
                self.inner.config.outbound_queue,
                self.inner.tasks.clone(),
            );
            let (reply, answer) = oneshot::channel();
            let join = Command::Join {
                conn,
                subscriber,
                reply,
            };
            if room.tx.send(join).await.is_err() {
                continue; // the room unloaded meanwhile
            }
            match answer.await {
                Ok(Ok(())) => return Ok(session),
                Ok(Err(JoinError::Retry)) | Err(_) => continue,
                Ok(Err(e)) => return Err(e),
            }
        }
        if self.inner.shutdown.is_cancelled() {
            Err(JoinError::ShuttingDown)
        } else {
            Err(JoinError::Busy)
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
