//! What a room hears from and tells other nodes (cluster mode): changes
//! they stored, the rebase after an append they beat, presence both ways,
//! and the document's deletion. Once loaded, a room asks the other nodes
//! for the presence their connections hold before serving anyone, so that
//! no connection here can claim a client id that is live on another node.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use weft_storage::{LogEntry, PeerEvent, Provenance, StorageError};

use super::commit::{log_entries, Deferred};
use super::{recv_from, Room};
use crate::doc_state::{Delivery, Effects};
use crate::session::{CloseReason, Kind};

/// How long a room that has just loaded waits for other nodes to tell it
/// their presence (cluster mode) before it serves anyone regardless.
const PEER_PRESENCE_WAIT: Duration = Duration::from_secs(1);

impl Room {
    /// Cluster mode: asks the other nodes for the presence their
    /// connections hold and takes every answer (or waits
    /// `PEER_PRESENCE_WAIT`) before serving anyone. `false` when the
    /// document was deleted meanwhile.
    pub(super) async fn learn_peers_presence(&mut self) -> bool {
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
    pub(super) async fn on_peer_event(&mut self, event: PeerEvent) -> bool {
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
            PeerEvent::Stateless(frame) => self.deliver(Effects {
                deliveries: vec![Delivery::Stateless {
                    origin: None,
                    frame: frame.into(),
                }],
                ..Effects::default()
            }),
            PeerEvent::Deleted => {
                self.deleted_elsewhere();
                return false;
            }
        }
        true
    }

    /// After a refused append: reads what other nodes stored from `first`
    /// on, rebases this batch's changes after it and fixes up what already
    /// refers to their old numbers. Returns the batch's changes renumbered.
    pub(super) async fn catch_up(
        &mut self,
        first: u64,
        fx: &mut Effects,
        deferred: &mut [Deferred],
    ) -> Result<Vec<LogEntry>, StorageError> {
        let mut remote = self
            .cx
            .store
            .read_log(&self.name, first.saturating_sub(1), usize::MAX)
            .await?;
        // Compacted away behind a snapshot meanwhile: the snapshot holds
        // them, and stands for them.
        let mut held_in = None;
        if remote.first().map(|e| e.seq) != Some(first) {
            let stored = self.cx.store.load(&self.name).await?;
            if let Some(snapshot) = stored.snapshot.filter(|s| s.seq >= first) {
                held_in = Some(LogEntry {
                    seq: snapshot.seq,
                    at_ms: snapshot.taken_at_ms,
                    update: snapshot.state,
                    by: Provenance::default(),
                });
                remote = stored.log;
            }
        }
        let cpu = self.cx.cpu.clone();
        let state = &mut self.state;
        let rebased = cpu
            .run(|| match &held_in {
                Some(snapshot) => state.rebase_across(snapshot, &remote, fx),
                None => state.rebase(&remote, fx),
            })
            .await;
        let shift = rebased.map_err(|gap| StorageError::Io {
            action: "catching up with other nodes",
            reason: gap.to_string(),
        })?;
        // Changes a snapshot holds are not waiting for one.
        self.unsnapshotted = match held_in {
            Some(_) => remote.len() as u64,
            None => self.unsnapshotted + shift,
        };
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
                // A read made during the batch holds none of theirs: it
                // names the newest change before them, and resuming from it
                // sends theirs and ours again.
                Deferred::Read(_, read) => {
                    read.id.seq = read.id.seq.min(first.saturating_sub(1));
                    continue;
                }
                _ => continue,
            };
            if id.seq >= first {
                id.seq += shift;
            }
        }
        Ok(log_entries(&fx.changes))
    }

    /// Presence changes made here, and stateless messages sent here, go to
    /// the other nodes (cluster mode).
    pub(super) async fn publish_ephemeral(&self, fx: &Effects) {
        use yrs::updates::encoder::Encode;
        // One process alone (the embedded store, which has no shared log to
        // follow): nobody to tell, and no reason to encode every cursor move
        // a second time. Keyed on the store, not on hearing other nodes: a
        // node whose subscription failed still tells the others.
        if self.remote.is_none() {
            return;
        }
        for d in &fx.deliveries {
            let published = match d {
                Delivery::Presence(update) => {
                    let update = update.encode_v1();
                    self.cx.store.publish_presence(&self.name, &update).await
                }
                // Only this node's: another's came from the bus.
                Delivery::Stateless {
                    origin: Some(_),
                    frame,
                } => self.cx.store.publish_stateless(&self.name, frame).await,
                _ => continue,
            };
            if let Err(e) = published {
                debug!(doc = %self.name, error = %e, "presence or stateless message not published");
            }
        }
    }

    /// Keeps the presence removals in `fx` for other nodes (cluster mode):
    /// `publish_departed` sends them.
    pub(super) fn note_departed(&mut self, fx: &Effects) {
        if self.remote.is_none() {
            return;
        }
        for d in &fx.deliveries {
            if let Delivery::Presence(update) = d {
                self.departed.push(update.clone());
            }
        }
    }

    /// Tells other nodes of the connections dropped since the last time.
    pub(super) async fn publish_departed(&mut self) {
        for update in std::mem::take(&mut self.departed) {
            self.publish_ephemeral(&Effects {
                deliveries: vec![Delivery::Presence(update)],
                ..Effects::default()
            })
            .await;
        }
    }

    /// Changes other nodes stored (cluster mode), in order.
    pub(super) async fn handle_stored_elsewhere(&mut self, entries: Vec<LogEntry>) {
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
            Err(gap) => {
                self.reload(&gap.to_string()).await;
            }
        }
        if self.state.is_poisoned() {
            self.reload("a change stored by another node did not apply")
                .await;
        }
    }

    /// The stored history changed under this node (cluster mode: Redis
    /// came back empty or from an older state, or the document was
    /// deleted and created anew without this node hearing it): what this
    /// room holds may be in no store. Everyone connected is closed with
    /// 1011, so that clients resync and send back what they hold; the
    /// document is reloaded from the store and followed afresh.
    pub(super) async fn history_lost(&mut self, reason: String) {
        error!(doc = %self.name, %reason, "the stored history changed; reloading the document and resyncing its clients");
        metrics::counter!("weft_documents_history_lost_total").increment(1);
        self.kick_all(CloseReason::StorageFailure(format!(
            "the stored document changed under this server ({reason}); reconnect to resync"
        )));
        if !self.reload(&reason).await {
            return; // unloaded: the next connection loads it afresh
        }
        self.remote = match self
            .cx
            .store
            .watch(&self.name, &self.meta, self.state.last_seq())
            .await
        {
            Ok(remote) => remote,
            Err(e) => {
                error!(doc = %self.name, error = %e, "cannot follow the shared log again");
                None
            }
        };
    }

    /// Another node deleted the document (cluster mode): its connections
    /// here end as they would on the node that deleted it, and memory is
    /// not left holding what the store no longer has.
    pub(super) fn deleted_elsewhere(&mut self) {
        self.let_go(CloseReason::Deleted);
        info!(doc = %self.name, "document deleted by another node");
    }
}
