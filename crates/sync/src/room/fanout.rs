//! Delivery: frames onto the subscribers' bounded queues, each encoding
//! built at most once per kind of subscriber and shared. A full queue means
//! the client stopped reading: it is closed rather than skipped, since a
//! Yjs client that silently misses an update diverges. Closing connections
//! (`kick`) lives here too, since it delivers the presence they leave.

use bytes::Bytes;
use tokio::time::Instant;
use tracing::warn;

use super::Room;
use crate::doc_state::{ConnId, Delivery, Effects};
use crate::protocol;
use crate::session::{CloseReason, Dialect, Kind, Offer, Subscriber};
use crate::viewer;

/// Subscribers whose queues refused a frame, and why each must go.
type Gone = Vec<(ConnId, Option<CloseReason>)>;

impl Room {
    /// The batch's frames, now that its changes are stored: its presence
    /// to the other nodes, everything to the subscribers here.
    pub(super) async fn fan_out(&mut self, fx: Effects, started: Instant) {
        let changed = !fx.changes.is_empty();
        self.publish_ephemeral(&fx).await;
        self.deliver(fx);
        if changed {
            // From the batch arriving to every subscriber's queue holding it.
            metrics::histogram!("weft_fanout_delivery_seconds")
                .record(started.elapsed().as_secs_f64());
        }
    }

    /// Puts frames on subscribers' queues. A full queue means the client has
    /// stopped reading: it is closed rather than skipped, since a Yjs client
    /// that silently misses an update would diverge.
    pub(super) fn deliver(&mut self, fx: Effects) {
        let mut queue = fx.deliveries;
        while !queue.is_empty() {
            let mut gone = Vec::new();
            for delivery in queue.drain(..) {
                self.offer_delivery(delivery, &mut gone);
            }
            // Dropping a subscriber removes its presence, which is news for
            // the others, here and on other nodes: deliver that too.
            let dropped = self.drop_gone(gone);
            self.note_departed(&dropped);
            queue = dropped.deliveries;
        }
    }

    /// Offers one delivery to whom it is for.
    fn offer_delivery(&self, delivery: Delivery, gone: &mut Gone) {
        let incarnation = self.state.incarnation();
        match delivery {
            Delivery::To(conn, frame) => {
                if let Some(sub) = self.subscribers.get(&conn) {
                    offer(conn, sub, frame, gone);
                }
            }
            Delivery::Opening(conn, frame) => {
                if let Some(sub) = self.subscribers.get(&conn) {
                    gone.extend(refused(conn, sub.offer_opening(frame)));
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
                            .get_or_insert_with(|| viewer::update_event(incarnation, &change))
                            .clone(),
                        _ => continue,
                    };
                    offer(conn, sub, bytes, gone);
                }
            }
            Delivery::Stateless { origin, frame } => {
                for (&conn, sub) in &self.subscribers {
                    if sub.dialect == Dialect::Hocuspocus && Some(conn) != origin {
                        offer_stateless(conn, sub, frame.clone(), gone);
                    }
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
                    offer(conn, sub, bytes, gone);
                }
            }
        }
    }

    /// Removes the subscribers whose queues refused a frame, closing those
    /// too slow; returns the presence they leave.
    fn drop_gone(&mut self, gone: Gone) -> Effects {
        let mut fx = Effects::default();
        for (conn, reason) in gone {
            if let Some(sub) = self.subscribers.remove(&conn) {
                self.budget.forget(conn);
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
        fx
    }

    /// Closes `conn` for `reason` and delivers the presence it leaves.
    pub(super) fn kick(&mut self, conn: ConnId, reason: CloseReason, fx: &mut Effects) {
        let label = match &reason {
            CloseReason::TooLarge(_) => Some("document_too_large"),
            CloseReason::Rejected(_) => Some("invalid"),
            // Counted where the creation limit refused.
            CloseReason::TooManyNewDocuments { .. } => None,
            // Its update was kept: nothing was refused.
            CloseReason::TooCostly(_) => None,
            _ => Some("other"),
        };
        if let Some(label) = label {
            metrics::counter!("weft_changes_refused_total", "reason" => label).increment(1);
        }
        if let Some(sub) = self.subscribers.remove(&conn) {
            self.budget.forget(conn);
            sub.close(reason);
            self.state.leave(conn, fx);
        }
    }

    /// Closes every connection for `reason`.
    pub(super) fn kick_all(&mut self, reason: CloseReason) {
        for (conn, sub) in self.subscribers.drain() {
            self.budget.forget(conn);
            sub.close(reason.clone());
        }
    }
}

/// Offers `frame` to one subscriber, noting it in `gone` if refused.
fn offer(conn: ConnId, sub: &Subscriber, frame: Bytes, gone: &mut Gone) {
    gone.extend(refused(conn, sub.offer(frame)));
}

/// Offers a stateless message: unlike a change, one a full queue has no
/// room for is dropped, not a reason to close the reader. It carries no
/// document content, so a reader that misses it does not diverge, and
/// another client's messages must not be what closes it.
fn offer_stateless(conn: ConnId, sub: &Subscriber, frame: Bytes, gone: &mut Gone) {
    match sub.offer(frame) {
        Err(Offer::Full) => {
            metrics::counter!("weft_hocuspocus_dropped_total", "reason" => "reader_full")
                .increment(1);
        }
        offered => gone.extend(refused(conn, offered)),
    }
}

/// A subscriber whose queue refused a frame, and why it must go.
fn refused(conn: ConnId, offered: Result<(), Offer>) -> Option<(ConnId, Option<CloseReason>)> {
    match offered {
        Ok(()) => None,
        Err(Offer::Full) => Some((conn, Some(CloseReason::TooSlow))),
        Err(Offer::Closed) => Some((conn, None)),
    }
}
