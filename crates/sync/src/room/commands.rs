//! The commands a room takes, and running a batch of them.
//!
//! **CPU work never runs on the runtime's workers.** The room is an async
//! task, but whatever makes yrs work (running a batch's commands through
//! [`DocState`](crate::DocState), loading or reloading the document,
//! encoding a snapshot or a viewer's opening, applying other nodes'
//! changes) goes through the engine's [`CpuPool`](crate::cpu::CpuPool): a
//! bounded number of slots, each running its work with `block_in_place`,
//! so the worker hands its other tasks on and `/healthz`, other documents
//! and new connections keep being served while one document takes
//! seconds. Only light commands (joins, leaves, small presence messages)
//! run in place. The room awaits each piece of work before going on, so it
//! stays the document's one owner; store I/O and channels stay async.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use yrs::StateVector;

use weft_storage::{Provenance, SnapshotReason};

use super::commit::Deferred;
use super::{Reply, Room};
use crate::creation::ClientAddr;
use crate::doc_state::{ConnId, Effects};
use crate::protocol::Inbound;
use crate::session::{Dialect, Kind, Subscriber};
use crate::{restore, DocRead, EventId, Restored, RoomError, RoomStats};

/// A frame of presence messages up to this size is light work: handled
/// in place, without a trip to the CPU pool.
const LIGHT_BYTES: usize = 64 * 1024;

/// What a room is asked to do, through its channel.
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
        /// Who it is recorded as made by.
        by: Provenance,
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
    /// Bring the content back to an earlier state, as a change.
    Restore {
        from: RestoreFrom,
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
                            Inbound::Awareness(_)
                                | Inbound::AwarenessQuery
                                | Inbound::Auth
                                | Inbound::SyncStatus(_)
                                | Inbound::Stateless(_)
                                | Inbound::SyncStep1Request
                        )
                    })
            }
            _ => false,
        }
    }

    /// Answers the command with `error` instead of running it.
    pub(super) fn refuse(self, error: RoomError) {
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

/// Stops `rx` and answers every command still in it with `error`.
pub(super) fn refuse_all(rx: &mut mpsc::Receiver<Command>, error: RoomError) {
    rx.close();
    while let Ok(command) = rx.try_recv() {
        command.refuse(error.clone());
    }
}

/// A batch with each run of adjacent messages from one connection made one
/// command, so a writer's burst of updates is applied as one run (one
/// change: see `Room::receive`).
fn coalesce(batch: Vec<Command>) -> Vec<Command> {
    let mut out: Vec<Command> = Vec::with_capacity(batch.len());
    for command in batch {
        let Command::Receive {
            conn,
            messages,
            bytes,
        } = command
        else {
            out.push(command);
            continue;
        };
        if let Some(Command::Receive {
            conn: last,
            messages: into,
            bytes: total,
        }) = out.last_mut()
        {
            if *last == conn {
                into.extend(messages);
                *total = total.saturating_add(bytes);
                continue;
            }
        }
        out.push(Command::Receive {
            conn,
            messages,
            bytes,
        });
    }
    out
}

impl Room {
    /// Runs a batch's commands in order. Those that need nothing from the
    /// store run together as one piece of CPU work, off the runtime's
    /// workers (see `cpu.rs`) unless all are light; a viewer's opening and
    /// a restore read the store first, then do their CPU work the same way.
    pub(super) async fn run_batch(
        &mut self,
        batch: Vec<Command>,
        fx: &mut Effects,
        deferred: &mut Vec<Deferred>,
    ) {
        let mut commands = coalesce(batch).into_iter().peekable();
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
            // Whatever records a change says whose it is; until then, a
            // change is of no one known, never the previous command's.
            self.state.changes_by(None);
            match command {
                Command::Join {
                    conn,
                    subscriber,
                    reply,
                } => self.join(conn, subscriber, reply, fx),
                Command::Receive {
                    conn,
                    messages,
                    bytes,
                } => self.receive(conn, messages, bytes, fx),
                Command::Leave { conn } => self.leave(conn, fx),
                Command::Apply {
                    update,
                    client,
                    by,
                    reply,
                } => {
                    self.state.changes_by(Some(&Arc::new(by)));
                    let result = self.apply_from_outside(&update, client, fx);
                    deferred.push(Deferred::Applied(reply, result));
                }
                Command::Read { since, reply } => self.read(since, reply, fx, deferred),
                Command::Snapshot { reason, reply } => {
                    deferred.push(Deferred::Snapshot(reply, reason));
                }
                Command::Import { update, reply } => self.import(&update, reply, fx, deferred),
                Command::Delete { reply } => deferred.push(Deferred::Delete(reply)),
                Command::Reopen { reply } => deferred.push(Deferred::Reopen(reply)),
                Command::Stats { reply } => {
                    let _ = reply.send(Ok(self.stats()));
                }
                // They read the store first: see `run_reading_store`.
                command @ (Command::Follow { .. } | Command::Restore { .. }) => {
                    command.refuse(RoomError::Busy);
                }
            }
        }
    }

    /// An editor joins, if the document has room for it.
    fn join(&mut self, conn: ConnId, subscriber: Subscriber, reply: Reply<()>, fx: &mut Effects) {
        if let Err(full) = self.has_room() {
            let _ = reply.send(Err(full));
        } else if reply.send(Ok(())).is_ok() {
            // Subscribed before the initial sync is queued, so no
            // change can fall between the two.
            let opens_sync = subscriber.dialect == Dialect::YSync;
            self.subscribers.insert(conn, subscriber);
            self.state.join(conn, opens_sync, fx);
        }
    }

    /// A connection is gone: its presence goes with it.
    fn leave(&mut self, conn: ConnId, fx: &mut Effects) {
        if self.subscribers.remove(&conn).is_some() {
            self.budget.forget(conn);
            self.state.leave(conn, fx);
        }
    }

    /// The document's state (or what `since` lacks), answered once the
    /// batch is stored; a document that does not exist is refused.
    fn read(
        &mut self,
        since: Option<StateVector>,
        reply: Reply<DocRead>,
        fx: &Effects,
        deferred: &mut Vec<Deferred>,
    ) {
        if !self.exists_with(fx) {
            let _ = reply.send(Err(RoomError::NoSuchDocument(self.name.to_string())));
            return;
        }
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

    /// Merges an update as a change, answered (after a snapshot) once the
    /// batch is stored.
    fn import(
        &mut self,
        update: &[u8],
        reply: Reply<Restored>,
        fx: &mut Effects,
        deferred: &mut Vec<Deferred>,
    ) {
        self.state.changes_by(Some(&operator()));
        match self.apply_from_outside(update, None, fx) {
            Ok(id) => deferred.push(Deferred::Changed(reply, id, SnapshotReason::Import)),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Who is connected.
    fn stats(&self) -> RoomStats {
        let viewers = self
            .subscribers
            .values()
            .filter(|s| matches!(s.kind, Kind::Viewer { .. }))
            .count();
        RoomStats {
            editors: self.subscribers.len() - viewers,
            viewers,
            last_seq: self.state.last_seq(),
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
                subscriber,
                resume,
                reply,
            } => self.follow(conn, subscriber, resume, reply, fx).await,
            Command::Restore { from, reply } => {
                self.restore(from, reply, fx, deferred).await;
            }
            other => {
                let cpu = self.cx.cpu.clone();
                cpu.run(|| self.run_commands(vec![other], fx, deferred))
                    .await;
            }
        }
    }

    /// Brings the content back to an earlier state, as a change answered
    /// (after a snapshot) once the batch is stored.
    async fn restore(
        &mut self,
        from: RestoreFrom,
        reply: Reply<Restored>,
        fx: &mut Effects,
        deferred: &mut Vec<Deferred>,
    ) {
        let old = match from {
            RestoreFrom::State(state) => state,
            RestoreFrom::Snapshot(snapshot) => {
                match self.cx.store.get_snapshot(&self.name, snapshot).await {
                    Ok(Some(old)) => Bytes::from(old.state),
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
                }
            }
        };
        let cpu = self.cx.cpu.clone();
        self.state.changes_by(Some(&operator()));
        let state = &mut self.state;
        let restored = cpu
            .run(|| state.apply_local(fx, |doc| restore::restore_into(doc, &old)))
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

    /// Whether another connection may join.
    pub(super) fn has_room(&self) -> Result<(), RoomError> {
        let max = self.cx.config.max_connections_per_doc;
        if max > 0 && self.subscribers.len() >= max {
            return Err(RoomError::Full(max));
        }
        Ok(())
    }
}

/// What a restore brings the document back to.
#[derive(Debug)]
pub enum RestoreFrom {
    /// A stored snapshot.
    Snapshot(u64),
    /// A state (a Yjs v1 update of the whole document), as it was at a
    /// point in its history.
    State(Bytes),
}

/// Who an operator's change (a restore, an import) is recorded as made by.
fn operator() -> Arc<Provenance> {
    Arc::new(Provenance::new(Some("admin".to_owned()), "admin"))
}
