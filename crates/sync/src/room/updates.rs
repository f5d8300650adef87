//! A writer's updates, from a connection or from outside any (the HTTP
//! API, an import), with what bounds them: the document's size limit, the
//! creation limit for a change that would create the document, and the
//! writer's CPU budget.
//!
//! **Each writer has a CPU budget.** Every update's integration is timed
//! (CPU time of the thread, from the injected [`Clock`](crate::Clock)) and
//! charged to its connection ([`CpuBudget`](crate::cpu_budget::CpuBudget));
//! a connection past its budget is closed with [`CloseReason::TooCostly`].
//! The update that overran was integrated, so it is stored and delivered
//! like any other: memory matches the disk. The same timings say what
//! loading the document would replay: once the changes since the last
//! snapshot took `snapshot_after_cpu` to integrate (or the load itself took
//! that long), the room snapshots at once, so a costly history is replayed
//! at most once.

use std::ops::ControlFlow;
use std::time::Duration;

use tracing::warn;

use super::Room;
use crate::cpu_budget::Overrun;
use crate::creation::{retry_after_secs, ClientAddr};
use crate::doc_state::{Access, ConnId, Effects, Rejection};
use crate::guard::guarded;
use crate::protocol::{self, ClientUpdate, Inbound};
use crate::session::CloseReason;
use crate::{EventId, RoomError};

impl Room {
    /// Messages from one connection. Each update's CPU time is charged to
    /// the connection; past its budget the connection is closed, and the
    /// update stays (it was integrated, so it is stored like any other).
    pub(super) fn receive(
        &mut self,
        conn: ConnId,
        messages: Vec<Inbound>,
        bytes: usize,
        fx: &mut Effects,
    ) {
        let Some((access, client)) = self.subscribers.get(&conn).map(|s| (s.access, s.client))
        else {
            return; // already closed; drop what it still sent
        };
        if let Some(sub) = self.subscribers.get(&conn) {
            self.state.changes_by(Some(&sub.by));
        }
        let writes = access == Access::ReadWrite && messages.iter().any(Inbound::is_update);
        if writes {
            if let Err(rejection) = self.state.admits(bytes) {
                warn!(doc = %self.name, conn, %rejection, "closing connection");
                self.kick(conn, CloseReason::TooLarge(rejection.to_string()), fx);
                return;
            }
        }
        // A writer's consecutive updates are applied as one run (one
        // change); anything else in between ends the run.
        let mut run: Vec<ClientUpdate> = Vec::new();
        // Whether the creation limit has had its say for this input: once
        // an update that would create the document is admitted, the rest
        // are part of the same change (or the document exists).
        let mut creation_asked = false;
        // A read-only connection is told once per input that it may not
        // write, however many changes it sent (each telling would be a
        // frame, and a batch counts its run of updates as one), and again
        // after each sync status, which answers for the changes before it.
        let mut denied = false;
        for message in messages {
            match message {
                Inbound::Update(update) if access == Access::ReadWrite => {
                    if !creation_asked {
                        match self.may_create(client, &update, fx) {
                            Ok(asked) => creation_asked = asked,
                            Err(wait) => {
                                warn!(doc = %self.name, conn, "too many new documents from this address; closing connection");
                                let retry_after_secs = retry_after_secs(wait);
                                self.kick(
                                    conn,
                                    CloseReason::TooManyNewDocuments { retry_after_secs },
                                    fx,
                                );
                                return self.close_crowded_out(fx);
                            }
                        }
                    }
                    run.push(update);
                }
                Inbound::Update(_) if denied => {}
                other => {
                    let applied = self.apply_run(conn, std::mem::take(&mut run), fx);
                    let told = fx.deliveries.len();
                    let is_update = other.is_update();
                    let is_status = matches!(other, Inbound::SyncStatus(_));
                    if !applied || !self.receive_one(conn, access, other, fx) {
                        return self.close_crowded_out(fx);
                    }
                    denied = !is_status && (denied || (is_update && fx.deliveries.len() > told));
                }
            }
        }
        self.apply_run(conn, run, fx);
        self.close_crowded_out(fx);
    }

    /// Applies a writer's run of updates, charging each one's CPU time to
    /// it. Whether the connection is still open: it is closed when an
    /// update is refused or its budget runs out (the updates integrated
    /// until then stay, stored like any others).
    fn apply_run(&mut self, conn: ConnId, run: Vec<ClientUpdate>, fx: &mut Effects) -> bool {
        if run.is_empty() {
            return true;
        }
        let mut overrun = None;
        let (state, budget, replay_cost) =
            (&mut self.state, &mut self.budget, &mut self.replay_cost);
        let now = Duration::from_millis(self.cx.clock.now_ms());
        let result = state.apply_run(Some(conn), run, fx, |took| {
            match charge(budget, replay_cost, (conn, took), now) {
                Ok(()) => ControlFlow::Continue(()),
                Err(o) => {
                    // The first overrun is what closes the connection.
                    overrun.get_or_insert(o);
                    ControlFlow::Break(())
                }
            }
        });
        self.closed_for(conn, result, overrun, fx)
    }

    /// A message other than a writer's update: sync, presence, or a
    /// read-only connection's update (refused unless it changes nothing).
    fn receive_one(
        &mut self,
        conn: ConnId,
        access: Access,
        message: Inbound,
        fx: &mut Effects,
    ) -> bool {
        let before = message.is_update().then(|| self.cx.clock.thread_cpu());
        let result = self.state.receive(conn, access, message, fx);
        let within = match before {
            Some(before) => {
                let took = self.cx.clock.thread_cpu().saturating_sub(before);
                self.charge(conn, took)
            }
            None => Ok(()),
        };
        self.closed_for(conn, result, within.err(), fx)
    }

    /// Closes `conn` if what it sent was refused or cost past its budget;
    /// whether it is still open.
    fn closed_for(
        &mut self,
        conn: ConnId,
        result: Result<(), Rejection>,
        overrun: Option<Overrun>,
        fx: &mut Effects,
    ) -> bool {
        if let Err(rejection) = result {
            warn!(doc = %self.name, conn, %rejection, "closing connection");
            self.kick(conn, CloseReason::Rejected(rejection.to_string()), fx);
            return false;
        }
        if let Some(overrun) = overrun {
            warn!(doc = %self.name, conn, %overrun, "closing connection: past its CPU budget");
            metrics::counter!("weft_cpu_budget_disconnects_total", "limit" => overrun.label())
                .increment(1);
            self.kick(conn, CloseReason::TooCostly(overrun.to_string()), fx);
            return false;
        }
        true
    }

    /// Closes the others a connection's presence crowded out of the
    /// document's budget.
    fn close_crowded_out(&mut self, fx: &mut Effects) {
        for (other, rejection) in std::mem::take(&mut fx.closes) {
            warn!(doc = %self.name, conn = other, %rejection, "closing connection");
            self.kick(other, CloseReason::Rejected(rejection.to_string()), fx);
        }
    }

    /// Charges an update's CPU time to `conn`; it also counts towards what
    /// loading the document would replay.
    fn charge(&mut self, conn: ConnId, took: Duration) -> Result<(), Overrun> {
        let now = Duration::from_millis(self.cx.clock.now_ms());
        charge(&mut self.budget, &mut self.replay_cost, (conn, took), now)
    }

    /// Applies a Yjs v1 update that came from outside any connection (the
    /// HTTP API, an import): the id of the change it made, if any.
    pub(super) fn apply_from_outside(
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
    pub(super) fn exists_with(&self, fx: &Effects) -> bool {
        self.exists || !fx.changes.is_empty()
    }

    /// Whether `client` may apply `update` as far as creating the document
    /// goes: yes unless it would create the document and the creation
    /// limit refuses (`Err`: how long until it may). `Ok(true)`: the
    /// question is settled (the document exists, there is no limit, or
    /// this update creates it and was admitted), so later updates of the
    /// same change need not ask; `Ok(false)`: this one creates nothing, so
    /// the next must still ask. Only the first change is asked about, so
    /// two first writes in one batch count once.
    fn may_create(
        &self,
        client: Option<ClientAddr>,
        update: &ClientUpdate,
        fx: &Effects,
    ) -> Result<bool, Duration> {
        let (Some(limit), Some(client)) = (&self.cx.config.creation_limit, client) else {
            return Ok(true);
        };
        if self.exists_with(fx) {
            return Ok(true);
        }
        // A sync step 2 that brings nothing (every new editor's) creates
        // nothing; if yrs fails to tell, the change counts.
        let changes = guarded(|| self.state.would_change(&update.update)).unwrap_or(true);
        if !changes {
            return Ok(false);
        }
        limit.admit(client).map(|()| true).inspect_err(|_| {
            metrics::counter!("weft_changes_refused_total", "reason" => "too_many_new_documents")
                .increment(1);
        })
    }
}

/// Charges CPU time `took` to `conn`'s budget and to what loading the
/// document would replay. A free function so a run can charge while the
/// room's document state is borrowed.
fn charge(
    budget: &mut crate::cpu_budget::CpuBudget,
    replay_cost: &mut Duration,
    (conn, took): (ConnId, Duration),
    now: Duration,
) -> Result<(), Overrun> {
    metrics::histogram!("weft_update_cpu_seconds").record(took.as_secs_f64());
    *replay_cost += took;
    budget.charge(conn, took, now)
}
