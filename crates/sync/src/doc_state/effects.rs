//! What handling an input asks of the room ([`Effects`]: changes to make
//! durable, frames to deliver, other connections to close), and how a
//! change the document made becomes one: numbered, kept in the window of
//! recent changes, and announced.

use bytes::Bytes;
use yrs::sync::AwarenessUpdate;

use std::sync::Arc;

use weft_storage::Provenance;

use super::{ConnId, DocState};
use crate::presence::PresenceRefusal;

/// A change the document accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub at_ms: u64,
    /// Exactly what the change added or deleted, as a Yjs v1 update.
    pub update: Bytes,
    /// Who made it, and through what (shared by the changes of one maker).
    pub by: Arc<Provenance>,
}

impl From<&weft_storage::LogEntry> for Change {
    /// A stored change, as the document holds it.
    fn from(e: &weft_storage::LogEntry) -> Change {
        Change {
            seq: e.seq,
            at_ms: e.at_ms,
            update: Bytes::from(e.update.clone()),
            by: Arc::new(e.by.clone()),
        }
    }
}

/// Something to tell subscribers. The room encodes each once per kind of
/// subscriber (editors get y-sync frames, viewers get events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A y-sync frame for one editor only (a sync reply).
    To(ConnId, Bytes),
    /// An accepted change: editors other than `origin` get a sync update,
    /// viewers an `update` event.
    Change {
        change: Change,
        origin: Option<ConnId>,
    },
    /// Presence changed: editors and viewers alike are told.
    Presence(AwarenessUpdate),
    /// Everyone's presence, for an editor that has just joined. Queued
    /// whatever the connection's byte limit and not counted against it:
    /// what others published must never be what gets a joiner closed.
    Opening(ConnId, Bytes),
    /// A stateless message (see `Inbound::Stateless`), as a frame for the
    /// document's other connections that understand it, from one of this
    /// process's (`origin`) or another's (`None`). It carries no document
    /// content.
    Stateless {
        origin: Option<ConnId>,
        frame: Bytes,
    },
}

/// What handling some input requires of the caller, in order.
#[derive(Debug, Default)]
pub struct Effects {
    /// Must be durable before any of `deliveries` is sent.
    pub changes: Vec<Change>,
    pub deliveries: Vec<Delivery>,
    /// Other connections to close because of what this input did to them
    /// (one crowded out of the document's presence budget).
    pub closes: Vec<(ConnId, Rejection)>,
}

/// Why a message from a connection was refused. The connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("update rejected: {0}")]
    InvalidUpdate(String),
    #[error("update rejected: it made the document engine fail internally ({0})")]
    UpdatePanicked(String),
    #[error("awareness update rejected: {0}")]
    InvalidAwareness(String),
    #[error("presence refused: {0}")]
    PresenceRefused(PresenceRefusal),
    #[error("change refused: the document would grow past its limit of {limit} bytes")]
    DocumentTooLarge { limit: u64 },
}

impl DocState {
    /// Records what a transaction changed as the next change.
    pub(super) fn record(
        &mut self,
        origin: Option<ConnId>,
        delta: Vec<u8>,
        fx: &mut Effects,
    ) -> Option<u64> {
        if is_empty_update(&delta) {
            return None;
        }
        self.last_seq += 1;
        self.size_estimate += delta.len() as u64;
        let change = Change {
            seq: self.last_seq,
            at_ms: self.clock.now_ms(),
            update: Bytes::from(delta),
            by: self.making.clone().unwrap_or_default(),
        };
        fx.deliveries.push(Delivery::Change {
            change: change.clone(),
            origin,
        });
        self.remember(change.clone());
        fx.changes.push(change);
        Some(self.last_seq)
    }

    pub(super) fn remember(&mut self, change: Change) {
        if self.recent.len() == self.recent_capacity {
            self.recent.pop_front();
        }
        if self.recent_capacity > 0 {
            self.recent.push_back(change);
        }
    }
}

/// A v1 update with no structs and no deletions.
pub(super) fn is_empty_update(update: &[u8]) -> bool {
    update == [0, 0]
}
