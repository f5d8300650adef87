//! Delivery: frames onto the subscribers' bounded queues, each encoding
//! built at most once per kind of subscriber and shared. A full queue means
//! the client stopped reading: it is closed rather than skipped, since a
//! Yjs client that silently misses an update diverges. Closing connections
//! (`kick`) lives here too, since it delivers the presence they leave.
//!
//! Consecutive changes from one origin (those another node stored, read
//! together when this room fell behind) go out as one frame per editor,
//! their updates merged, and one chunk of events per viewer: the room
//! writes to every subscriber itself, so a run sent change by change
//! would cost a `send` per change per subscriber and leave the room
//! further behind with each.

use bytes::Bytes;
use tokio::time::Instant;
use tracing::warn;

use super::Room;
use crate::doc_state::{Change, ConnId, Delivery, Effects};
use crate::guard::guarded;
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
            for group in group_runs(std::mem::take(&mut queue)) {
                match group {
                    Group::One(delivery) => self.offer_delivery(delivery, &mut gone),
                    Group::Run { changes, origin } => self.offer_run(&changes, origin, &mut gone),
                }
            }
            // Dropping a subscriber removes its presence, which is news for
            // the others, here and on other nodes: deliver that too.
            let dropped = self.drop_gone(gone);
            self.note_departed(&dropped);
            queue = dropped.deliveries;
        }
    }

    /// Offers a run of changes from `origin`: one merged frame to each
    /// editor but the origin, and to each viewer the events of those it
    /// has not had, together. Change by change if the updates do not merge.
    fn offer_run(&self, run: &[Change], origin: Option<ConnId>, gone: &mut Gone) {
        let editors = self
            .subscribers
            .iter()
            .any(|(&conn, sub)| sub.kind == Kind::Editor && Some(conn) != origin);
        // With no editor to send it to, no merged frame is needed.
        let frame = if editors {
            merged_frame(run)
        } else {
            Some(Bytes::new())
        };
        let Some(frame) = frame else {
            for change in run {
                let change = change.clone();
                self.offer_delivery(Delivery::Change { change, origin }, gone);
            }
            return;
        };
        let incarnation = self.state.incarnation();
        let mut events: Option<Vec<Bytes>> = None;
        let mut all = None;
        for (&conn, sub) in &self.subscribers {
            let bytes = match sub.kind {
                Kind::Editor if Some(conn) != origin => frame.clone(),
                Kind::Viewer { after } => {
                    let from = run.partition_point(|c| c.seq <= after);
                    if from == run.len() {
                        continue;
                    }
                    let events = events.get_or_insert_with(|| {
                        run.iter()
                            .map(|c| viewer::update_event(incarnation, c))
                            .collect()
                    });
                    if from == 0 {
                        all.get_or_insert_with(|| Bytes::from(events.concat()))
                            .clone()
                    } else {
                        Bytes::from(events[from..].concat())
                    }
                }
                _ => continue,
            };
            offer(conn, sub, bytes, gone);
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

/// Deliveries as they are offered: alone, or a run of consecutive changes
/// from one origin.
#[derive(Debug)]
enum Group {
    One(Delivery),
    Run {
        changes: Vec<Change>,
        origin: Option<ConnId>,
    },
}

/// Groups consecutive changes from one origin into runs, keeping the
/// deliveries' order.
fn group_runs(deliveries: Vec<Delivery>) -> Vec<Group> {
    let mut groups = Vec::with_capacity(deliveries.len());
    let mut run = Vec::new();
    let mut run_origin = None;
    for delivery in deliveries {
        match delivery {
            Delivery::Change { change, origin } => {
                if !run.is_empty() && origin != run_origin {
                    groups.push(close_run(std::mem::take(&mut run), run_origin));
                }
                run_origin = origin;
                run.push(change);
            }
            other => {
                if !run.is_empty() {
                    groups.push(close_run(std::mem::take(&mut run), run_origin));
                }
                groups.push(Group::One(other));
            }
        }
    }
    if !run.is_empty() {
        groups.push(close_run(run, run_origin));
    }
    groups
}

/// A run of one change is that change alone.
fn close_run(mut changes: Vec<Change>, origin: Option<ConnId>) -> Group {
    match (changes.pop(), changes.is_empty()) {
        (Some(change), true) => Group::One(Delivery::Change { change, origin }),
        (last, _) => {
            changes.extend(last);
            Group::Run { changes, origin }
        }
    }
}

/// One y-sync update frame holding every change of `run`, merged as Yjs
/// merges updates; `None` if they do not merge (or yrs panics on them:
/// another node's change may be one this node's yrs could not apply).
fn merged_frame(run: &[Change]) -> Option<Bytes> {
    let merged = guarded(|| yrs::merge_updates_v1(run.iter().map(|c| &c.update[..])));
    Some(protocol::sync_update(&merged.ok()?.ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, Text, Transact};

    fn change(seq: u64, update: Vec<u8>) -> Change {
        Change {
            seq,
            at_ms: 0,
            update: Bytes::from(update),
            by: Default::default(),
        }
    }

    fn shape(groups: &[Group]) -> Vec<String> {
        groups
            .iter()
            .map(|g| match g {
                Group::One(Delivery::Change { change, origin }) => {
                    format!("{}@{origin:?}", change.seq)
                }
                Group::One(_) => "other".into(),
                Group::Run { changes, origin } => {
                    let seqs: Vec<String> = changes.iter().map(|c| c.seq.to_string()).collect();
                    format!("{}@{origin:?}", seqs.join("+"))
                }
            })
            .collect()
    }

    #[test]
    fn consecutive_changes_from_one_origin_form_a_run_in_order() {
        let c = |seq, origin| Delivery::Change {
            change: change(seq, Vec::new()),
            origin,
        };
        let presence = || Delivery::Stateless {
            origin: None,
            frame: Bytes::new(),
        };
        let groups = group_runs(vec![
            c(1, None),
            c(2, None),
            c(3, None),
            presence(),
            c(4, Some(7)),
            c(5, Some(8)),
            c(6, Some(8)),
            presence(),
            c(7, None),
        ]);
        assert_eq!(
            shape(&groups),
            [
                "1+2+3@None",
                "other",
                "4@Some(7)",
                "5+6@Some(8)",
                "other",
                "7@None"
            ]
        );
    }

    #[test]
    fn a_runs_frame_brings_an_editor_every_change_of_it() {
        let source = yrs::Doc::new();
        let text = source.get_or_insert_text("t");
        let mut run = Vec::new();
        for (seq, word) in [(1, "one "), (2, "two "), (3, "three")] {
            let mut txn = source.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, word);
            run.push(change(seq, txn.encode_update_v1()));
        }
        let frame = merged_frame(&run).expect("merges");
        assert_eq!(text_after(&frame), "one two three");
        assert!(merged_frame(&[change(1, vec![0xff, 0xff])]).is_none());
    }

    /// The document an editor has after applying `frame`'s one update.
    fn text_after(frame: &Bytes) -> String {
        let mut messages = protocol::decode_frame(frame).expect("one y-sync frame");
        assert_eq!(messages.len(), 1, "one message");
        let protocol::Inbound::Update(update) = messages.remove(0) else {
            panic!("an update");
        };
        let doc = yrs::Doc::new();
        let applied = doc.transact_mut().apply_update(update.update);
        assert!(applied.is_ok());
        let text = doc.get_or_insert_text("t").get_string(&doc.transact());
        text
    }

    #[test]
    fn a_run_of_concurrent_edits_deletes_and_a_repeat_merges_to_the_same_text() {
        let (a, b) = (yrs::Doc::with_client_id(1), yrs::Doc::with_client_id(2));
        let edit = |doc: &yrs::Doc, f: &dyn Fn(&yrs::TextRef, &mut yrs::TransactionMut)| {
            let text = doc.get_or_insert_text("t");
            let mut txn = doc.transact_mut();
            f(&text, &mut txn);
            txn.encode_update_v1()
        };
        let u1 = edit(&a, &|t, txn| t.insert(txn, 0, "hello world"));
        let u2 = edit(&b, &|t, txn| t.insert(txn, 0, "hey "));
        let u3 = edit(&a, &|t, txn| t.remove_range(txn, 0, 6));
        // In order, each applied as it came (the second copy of u1 is one
        // a second node also stored).
        let reference = yrs::Doc::new();
        for u in [&u1, &u2, &u3, &u1] {
            let update = yrs::Update::decode_v1(u).expect("decodes");
            assert!(reference.transact_mut().apply_update(update).is_ok());
        }
        let expected = reference
            .get_or_insert_text("t")
            .get_string(&reference.transact());
        let run: Vec<Change> = [u1.clone(), u2, u3, u1]
            .into_iter()
            .enumerate()
            .map(|(i, u)| change(i as u64 + 1, u))
            .collect();
        let frame = merged_frame(&run).expect("merges");
        assert_eq!(text_after(&frame), expected);
    }
}
