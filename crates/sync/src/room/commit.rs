//! Group commit: a batch's changes made durable with one append before
//! anything derived from them is sent, then the replies that waited for
//! that. In cluster mode an append another node's changes beat is retried
//! after catching up (`cluster.rs`). When the changes cannot be stored,
//! nobody is sent them, the document goes back to what the disk holds and
//! the writers are closed; after a panic inside yrs the document is
//! reloaded the same way.

use tokio::time::Instant;
use tracing::{error, info};

use weft_storage::{LogEntry, SnapshotReason, StorageError};

use super::{Reply, Room};
use crate::doc_state::{Access, Change, ConnId, Delivery, Effects};
use crate::loading;
use crate::session::{CloseReason, Kind};
use crate::{DocRead, EventId, Restored, RoomError};

/// How often one batch may be renumbered after other nodes' changes before
/// it is refused (cluster mode).
const MAX_REBASES: u32 = 16;

/// Replies that must wait until the batch's changes are on disk.
pub(super) enum Deferred {
    Applied(Reply<Option<EventId>>, Result<Option<EventId>, RoomError>),
    Read(Reply<DocRead>, DocRead),
    /// Snapshot once the batch is stored, then answer with its id.
    Snapshot(Reply<u64>, SnapshotReason),
    /// A restore or import: snapshot once stored, then answer.
    Changed(Reply<Restored>, Option<EventId>, SnapshotReason),
    Delete(Reply<bool>),
    Reopen(Reply<()>),
}

/// A batch's changes that could not be stored.
pub(super) struct Unstored {
    reason: String,
    /// How many.
    changes: usize,
}

/// What a batch asked of the room's life, once stored: to delete the
/// document, or to let go of it after its stored copy was replaced.
pub(super) struct Ending {
    pub delete: Option<Reply<bool>>,
    pub reopen: Option<Reply<()>>,
}

impl Room {
    /// Makes the batch's changes durable with one append and records that
    /// they are; `Err` when they could not be stored.
    pub(super) async fn commit(
        &mut self,
        fx: &mut Effects,
        deferred: &mut [Deferred],
    ) -> Result<(), Unstored> {
        if fx.changes.is_empty() {
            return Ok(());
        }
        let entries = self.append(fx, deferred).await?;
        // The first stored change creates the document.
        self.exists = true;
        self.unsnapshotted += entries.len() as u64;
        metrics::counter!("weft_changes_accepted_total").increment(entries.len() as u64);
        if let (Some(feed), Some(last)) = (&self.cx.changes, entries.last()) {
            feed.record(&self.name, self.state.incarnation(), last.seq, last.at_ms);
        }
        Ok(())
    }

    /// Appends the batch's changes in one write; while another node stored
    /// changes first (cluster mode), takes them in, renumbers the batch
    /// after them and tries again. Returns the changes as stored.
    async fn append(
        &mut self,
        fx: &mut Effects,
        deferred: &mut [Deferred],
    ) -> Result<Vec<LogEntry>, Unstored> {
        let mut entries = log_entries(&fx.changes);
        let appending = Instant::now();
        let mut appended = self.cx.store.append(&self.name, &self.meta, &entries).await;
        let mut tries = 0;
        while let Err(StorageError::Conflict { .. }) = appended {
            // Another node stored changes first (cluster mode): take
            // them in, renumber ours after them and try again.
            tries += 1;
            let first = entries.first().map_or(0, |e| e.seq);
            appended = match self.catch_up(first, fx, deferred).await {
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
        match appended {
            Ok(()) => Ok(entries),
            Err(e) => Err(Unstored {
                reason: e.to_string(),
                changes: entries.len(),
            }),
        }
    }

    /// The batch's changes could not be stored: they count as refused, the
    /// replies waiting on them fail, and the document goes back to the disk.
    pub(super) async fn not_stored(
        &mut self,
        unstored: Unstored,
        fx: Effects,
        deferred: Vec<Deferred>,
    ) {
        metrics::counter!("weft_changes_refused_total", "reason" => "storage_failure")
            .increment(unstored.changes as u64);
        let reason = unstored.reason;
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
    }

    /// The batch's changes could not be made durable. Nobody has been sent
    /// them; the document goes back to what the disk holds. Writers are
    /// closed (their clients hold changes the server dropped, and resync
    /// when they reconnect), and so is anyone owed a frame from this batch
    /// (it may contain those changes); everyone else, viewers and read-only
    /// editors, stays and goes on being served from memory. The batch's
    /// presence changes and stateless messages carry no document content
    /// and are still delivered.
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
                .filter(|d| matches!(d, Delivery::Presence(_) | Delivery::Stateless { .. })),
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
        self.note_idle();
        self.reload(&reason).await;
        self.note_departed(&fx);
        self.deliver(fx);
    }

    /// Loads the document again from the store, keeping presence; if that
    /// fails, the room unloads (its connections closed, what waits
    /// refused). `true` if it reloaded.
    pub(super) async fn reload(&mut self, why: &str) -> bool {
        let config = &self.cx.config;
        let (store, clock) = (&*self.cx.store, self.cx.clock.clone());
        let result = loading::load(store, &self.name, config, clock, &self.cx.cpu).await;
        match result {
            Ok(loaded) => {
                self.state.replace_with(loaded.state);
                self.meta = loaded.meta;
                self.exists = loaded.exists;
                info!(doc = %self.name, why, "document reloaded from storage");
                true
            }
            Err(e) => {
                // Without a trustworthy state the room must not serve; the
                // next connection loads the document afresh.
                error!(doc = %self.name, error = %e, "reload failed; unloading document");
                self.kick_all(CloseReason::StorageFailure(e.to_string()));
                self.cx.rooms.remove_if(&self.name, self.instance);
                self.refuse_waiting(e);
                false
            }
        }
    }

    /// Memory may not match the disk after a panic inside yrs; the disk
    /// holds everything anyone was sent, so the room starts again from it.
    pub(super) async fn reload_if_poisoned(&mut self) {
        if self.state.is_poisoned() {
            self.reload("the document engine failed internally").await;
        }
    }

    /// Answers, in order, the replies that waited for the batch to be
    /// stored (a snapshot, restore or import snapshots first). A delete or
    /// reopen is left for the caller: it ends the room.
    pub(super) async fn answer(&mut self, deferred: Vec<Deferred>) -> Ending {
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
        Ending { delete, reopen }
    }
}

/// Changes as the store keeps them.
pub(super) fn log_entries(changes: &[Change]) -> Vec<LogEntry> {
    changes
        .iter()
        .map(|c| LogEntry {
            seq: c.seq,
            at_ms: c.at_ms,
            update: c.update.to_vec(),
            by: weft_storage::Provenance::clone(&c.by),
        })
        .collect()
}
