//! Applying changes safely: a connection's messages (read-only ones
//! refused unless they change nothing), changes from outside any
//! connection, and the server's own (a restore). Every call into yrs on
//! client input is guarded; an update that would wait in yrs' pending
//! store is set aside, one holding legacy JSON is refused, and what a
//! transaction changed is recorded only if it reads back.

use std::ops::ControlFlow;
use std::time::Duration;

use yrs::updates::decoder::Decode;
use yrs::{Doc, IdSet, ReadTxn, Transact, TransactionMut, Update, ID};

use super::effects::is_empty_update;
use super::{Access, ConnId, Delivery, DocState, Effects, Rejection};
use crate::guard::{guarded, with_txn};
use crate::protocol::{self, ClientUpdate, Inbound};

impl DocState {
    /// Handles one decoded message from `conn`. A read-only connection may
    /// sync and publish presence, but a change it sends is not applied; it
    /// is answered with an auth "permission denied" message instead.
    pub fn receive(
        &mut self,
        conn: ConnId,
        access: Access,
        message: Inbound,
        fx: &mut Effects,
    ) -> Result<(), Rejection> {
        // Client input can leave state that makes yrs panic later (a
        // pending struct it cannot re-encode, say), so every step is guarded.
        match guarded(|| self.receive_unguarded(conn, access, message, fx)) {
            Ok(result) => result,
            Err(panic) => {
                self.poisoned = true;
                Err(Rejection::UpdatePanicked(panic))
            }
        }
    }

    fn receive_unguarded(
        &mut self,
        conn: ConnId,
        access: Access,
        message: Inbound,
        fx: &mut Effects,
    ) -> Result<(), Rejection> {
        match message {
            Inbound::Update(update) if access == Access::ReadOnly => {
                // A read-only client's sync step 2 usually repeats what the
                // document has (its delete set, at least); only a real change
                // is refused.
                if self.would_change(&update.update) {
                    metrics::counter!("weft_changes_refused_total", "reason" => "read_only")
                        .increment(1);
                    let reason = "read-only access: this connection may not change the document";
                    fx.deliveries
                        .push(Delivery::To(conn, protocol::permission_denied(reason)));
                }
                Ok(())
            }
            Inbound::SyncStep1(sv) => {
                let reply = if sv.is_empty() {
                    self.full_step2()
                } else {
                    protocol::sync_step2(&self.awareness, &sv)
                };
                fx.deliveries.push(Delivery::To(conn, reply));
                Ok(())
            }
            Inbound::Update(update) => self.apply_update(Some(conn), update, fx),
            Inbound::Awareness(update) => self.apply_awareness(conn, access, update, fx),
            Inbound::AwarenessQuery => {
                let update = self.presence_all();
                fx.deliveries
                    .push(Delivery::To(conn, protocol::awareness(update)));
                Ok(())
            }
            Inbound::Auth => Ok(()),
            Inbound::SyncStatus(payload) => {
                fx.deliveries
                    .push(Delivery::To(conn, protocol::sync_status(&payload)));
                Ok(())
            }
            Inbound::SyncStep1Request => {
                fx.deliveries
                    .push(Delivery::To(conn, protocol::sync_step1(&self.awareness)));
                Ok(())
            }
            Inbound::Stateless(payload) => {
                fx.deliveries.push(Delivery::Stateless {
                    origin: Some(conn),
                    frame: protocol::stateless(&payload),
                });
                Ok(())
            }
        }
    }

    /// Applies a change that did not come from a connection (an HTTP post,
    /// an import): everybody receives it.
    pub fn apply_external(
        &mut self,
        update: ClientUpdate,
        fx: &mut Effects,
    ) -> Result<(), Rejection> {
        self.apply_update(None, update, fx)
    }

    /// Makes a change of the server's own (a restore): `edit` runs a
    /// transaction on the document and returns its update, which is
    /// recorded and delivered like any change. Returns its sequence number,
    /// or `None` if it changed nothing.
    pub fn apply_local(
        &mut self,
        fx: &mut Effects,
        edit: impl FnOnce(&Doc) -> Result<Vec<u8>, String>,
    ) -> Result<Option<u64>, String> {
        let doc = self.awareness.doc();
        let delta = match guarded(|| edit(doc)) {
            Ok(result) => result?,
            Err(panic) => {
                self.poisoned = true;
                return Err(format!("the document engine failed internally: {panic}"));
            }
        };
        if !is_empty_update(&delta) && !readable(&delta) {
            self.poisoned = true;
            return Err("the change cannot be stored: it does not read back".into());
        }
        Ok(self.record(None, delta, fx))
    }

    /// Whether applying `update` would add or delete anything.
    pub fn would_change(&self, update: &Update) -> bool {
        let txn = self.doc().transact();
        let mut known = IdSet::new();
        for (&client, &clock) in txn.state_vector().iter() {
            known.insert(ID::new(client, 0), clock);
        }
        if !update.insertions(true).diff(&known).is_empty() {
            return true;
        }
        let deleted = txn.snapshot().delete_set;
        !update.delete_set().diff(&deleted).is_empty()
    }

    fn apply_update(
        &mut self,
        origin: Option<ConnId>,
        update: ClientUpdate,
        fx: &mut Effects,
    ) -> Result<(), Rejection> {
        self.apply_run(origin, vec![update], fx, |_| ControlFlow::Continue(()))
    }

    /// Applies a run of updates from one writer in one transaction: what
    /// they changed together is recorded as one change, so a burst (a
    /// paste, an editor catching up, a replayed trace) costs one commit,
    /// one stored record and one frame per subscriber rather than one per
    /// update. `after_each` is told what each update cost (CPU time of this
    /// thread, checks included, whether it applied, was set aside or
    /// failed) and may stop the run there; the updates already integrated
    /// stay and are recorded. It is told once more, at the end, what
    /// committing, encoding and reading back the run cost. An update that
    /// fails stops the run the same way, and its error is returned.
    pub fn apply_run(
        &mut self,
        origin: Option<ConnId>,
        updates: Vec<ClientUpdate>,
        fx: &mut Effects,
        mut after_each: impl FnMut(Duration) -> ControlFlow<()>,
    ) -> Result<(), Rejection> {
        let doc = self.awareness.doc();
        let clock = &self.clock;
        // After a panic the document is lost (see `with_txn`): the room
        // replaces it by reloading from disk.
        let outcome = guarded(|| {
            with_txn(doc, |txn| {
                let mut result = Ok(());
                for update in updates {
                    let before = clock.thread_cpu();
                    let applied = apply_one(txn, update);
                    let stop = after_each(clock.thread_cpu().saturating_sub(before)).is_break();
                    if let Err(rejection) = applied {
                        result = Err(rejection);
                        break;
                    }
                    if stop {
                        break;
                    }
                }
                let encoding = clock.thread_cpu();
                (result, txn.encode_update_v1(), encoding)
            })
        });
        let (result, delta, encoding) = match outcome {
            Ok(done) => done,
            Err(panic) => {
                self.poisoned = true;
                return Err(Rejection::UpdatePanicked(panic));
            }
        };
        let stored = is_empty_update(&delta) || readable(&delta);
        // The commit (when the transaction ended), the encoding and the
        // read-back are the writer's too.
        let _ = after_each(clock.thread_cpu().saturating_sub(encoding));
        if !stored {
            // yrs integrated something it cannot write back out: storing it
            // would make the document unloadable. Memory is now ahead of the
            // disk, so the room reloads from it.
            self.poisoned = true;
            return Err(Rejection::InvalidUpdate(
                "it left the document in a state that cannot be stored".into(),
            ));
        }
        self.record(origin, delta, fx);
        result
    }
}

/// One update of a run, in the run's transaction. An update that would
/// wait in yrs' pending store (it starts past what the document has, or
/// builds on items nobody sent) is set aside: that store and the
/// integration around it have crashed on crafted input (found by fuzzing).
/// A client only sends one when it typed just before its sync step 2 on a
/// fresh connection, and that step 2 brings it all anyway. Whatever was
/// integrated before an error is in the document, and is recorded with
/// the run like any change.
fn apply_one(txn: &mut TransactionMut<'_>, update: ClientUpdate) -> Result<(), Rejection> {
    if let Some(why) = update.unstorable() {
        return Err(Rejection::InvalidUpdate(why));
    }
    if update.would_wait(&txn.state_vector()) {
        metrics::counter!("weft_changes_refused_total", "reason" => "gap").increment(1);
        return Ok(());
    }
    txn.apply_update(update.update)
        .map_err(|e| Rejection::InvalidUpdate(e.to_string()))
}

/// Whether a change yrs encoded decodes again (what is stored must load).
fn readable(update: &[u8]) -> bool {
    matches!(guarded(|| Update::decode_v1(update)), Ok(Ok(_)))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{edit, empty, incoming, state, text_of};
    use super::*;
    use yrs::updates::encoder::Encode;
    use yrs::{GetString, StateVector, Text};

    #[test]
    fn a_sync_status_is_answered_after_the_changes_sent_before_it() {
        let mut s = state(&empty());
        let mut fx = Effects::default();
        let frame = [
            protocol::sync_update(&edit(&Doc::with_client_id(1), 0, "hi").encode_v1()).to_vec(),
            protocol::sync_status(&[7]).to_vec(),
        ]
        .concat();
        for message in protocol::decode_frame(&frame).expect("decodes") {
            s.receive(1, Access::ReadWrite, message, &mut fx)
                .expect("accepted");
        }
        // The change must be stored before any delivery goes out; the
        // answer is the last of them, to the sender alone.
        assert_eq!(fx.changes.len(), 1);
        let last = fx.deliveries.last().expect("an answer");
        assert!(
            matches!(last, Delivery::To(1, frame) if frame[..] == protocol::sync_status(&[7])[..]),
            "{last:?}"
        );
    }

    #[test]
    fn a_stateless_message_goes_to_others_as_a_frame_and_changes_nothing() {
        let mut s = state(&empty());
        let mut fx = Effects::default();
        // Read-only connections may send them too: they are not content.
        s.receive(
            3,
            Access::ReadOnly,
            Inbound::Stateless("{\"ping\":1}".into()),
            &mut fx,
        )
        .expect("accepted");
        assert!(fx.changes.is_empty());
        let [Delivery::Stateless {
            origin: Some(3),
            frame,
        }] = fx.deliveries.as_slice()
        else {
            panic!("{:?}", fx.deliveries)
        };
        // Hocuspocus' stateless message: type 5, then a lib0 varString.
        assert_eq!(frame[..], [&[5u8, 10][..], b"{\"ping\":1}"].concat()[..]);
    }

    #[test]
    fn a_change_building_on_items_nobody_sent_is_set_aside() {
        let mut s = state(&empty());
        let (ann, bob) = (Doc::with_client_id(1), Doc::with_client_id(2));
        let from_ann = edit(&ann, 0, "ab");
        bob.transact_mut()
            .apply_update(Update::decode_v1(&from_ann.encode_v1()).expect("valid"))
            .expect("applies");
        // Bob types between Ann's letters; the server has none of Ann's.
        let from_bob = edit(&bob, 1, "x");
        let mut fx = Effects::default();
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Update(incoming(
                Update::decode_v1(&from_bob.encode_v1()).expect("valid"),
            )),
            &mut fx,
        )
        .expect("not an error: the connection stays");
        assert!(fx.changes.is_empty() && !s.is_poisoned());
        assert_eq!(text_of(s.doc()), "");
        assert!(
            s.doc().transact().store().pending_update().is_none(),
            "nothing waits in yrs' pending store"
        );
        // Once Ann's change is in, Bob's applies.
        for update in [from_ann, from_bob] {
            s.receive(
                1,
                Access::ReadWrite,
                Inbound::Update(incoming(update)),
                &mut fx,
            )
            .expect("applies");
        }
        assert_eq!(text_of(s.doc()), "axb");
    }

    #[test]
    fn changes_get_increasing_seqs_and_go_to_the_others() {
        let mut s = state(&empty());
        let client = Doc::new();
        for (i, word) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let mut fx = Effects::default();
            s.receive(
                1,
                Access::ReadWrite,
                Inbound::Update(incoming(edit(&client, i as u32, word))),
                &mut fx,
            )
            .expect("applies");
            assert_eq!(fx.changes.len(), 1);
            assert_eq!(fx.changes[0].seq, i as u64 + 1);
            assert_eq!(fx.changes[0].at_ms, 42);
            let [Delivery::Change {
                change,
                origin: Some(1),
            }] = fx.deliveries.as_slice()
            else {
                panic!("{:?}", fx.deliveries);
            };
            assert_eq!(change, &fx.changes[0]);
        }
        assert_eq!(s.last_seq(), 5);
        // The window keeps the newest four.
        let seqs: Vec<u64> = s.recent().iter().map(|c| c.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4, 5]);
        assert_eq!(text_of(s.doc()), "abcde");
    }

    /// One client's edits, one update each, as a run.
    fn run_of(words: &[&str]) -> Vec<ClientUpdate> {
        let client = Doc::new();
        let at = |i: usize| u32::try_from(i).expect("small");
        words
            .iter()
            .enumerate()
            .map(|(i, w)| incoming(edit(&client, at(i), w)))
            .collect()
    }

    /// A document holding just `update`.
    fn doc_of(update: &[u8]) -> Doc {
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).expect("valid"))
            .expect("applies");
        doc
    }

    #[test]
    fn a_run_of_updates_is_one_change_holding_them_all() {
        let mut s = state(&empty());
        let run = run_of(&["a", "b", "c"]);
        let mut fx = Effects::default();
        let mut told = 0;
        s.apply_run(Some(1), run, &mut fx, |_| {
            told += 1;
            ControlFlow::Continue(())
        })
        .expect("applies");
        assert_eq!(told, 4, "each update's cost is reported, then the commit's");
        assert_eq!(fx.changes.len(), 1);
        assert_eq!(fx.changes[0].seq, 1);
        let stored = doc_of(&fx.changes[0].update);
        assert_eq!(text_of(&stored), "abc");
        assert_eq!(text_of(s.doc()), "abc");
    }

    #[test]
    fn a_run_stopped_midway_keeps_and_records_what_it_integrated() {
        let mut s = state(&empty());
        let run = run_of(&["a", "b", "c"]);
        let mut fx = Effects::default();
        let mut told = 0;
        s.apply_run(Some(1), run, &mut fx, |_| {
            told += 1;
            if told == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("applies");
        assert_eq!(text_of(s.doc()), "ab", "the third was not applied");
        assert_eq!(fx.changes.len(), 1);
        let stored = doc_of(&fx.changes[0].update);
        assert_eq!(
            text_of(&stored),
            "ab",
            "what was integrated is what is stored"
        );
    }

    #[test]
    fn a_duplicate_update_is_not_a_change() {
        let mut s = state(&empty());
        let client = Doc::new();
        let update = edit(&client, 0, "x");
        let bytes = update.encode_v1();
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Update(incoming(update)),
            &mut Effects::default(),
        )
        .expect("ok");
        let mut fx = Effects::default();
        let again = Update::decode_v1(&bytes).expect("valid");
        s.receive(
            2,
            Access::ReadWrite,
            Inbound::Update(incoming(again)),
            &mut fx,
        )
        .expect("ok");
        assert!(fx.changes.is_empty() && fx.deliveries.is_empty());
        assert_eq!(s.last_seq(), 1);
    }

    #[test]
    fn the_broadcast_is_the_delta_not_the_whole_message() {
        let mut s = state(&empty());
        let client = Doc::new();
        let first = edit(&client, 0, &"abc".repeat(100));
        let first_bytes = first.encode_v1();
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Update(incoming(first)),
            &mut Effects::default(),
        )
        .expect("ok");
        edit(&client, 300, "def");
        // A full-state update containing old and new content.
        let full = client
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let mut fx = Effects::default();
        s.receive(
            2,
            Access::ReadWrite,
            Inbound::Update(incoming(Update::decode_v1(&full).expect("valid"))),
            &mut fx,
        )
        .expect("ok");
        let delta = &fx.changes[0].update;
        let check = Doc::new();
        check
            .transact_mut()
            .apply_update(Update::decode_v1(&first_bytes).expect("valid"))
            .expect("ok");
        check
            .transact_mut()
            .apply_update(Update::decode_v1(delta).expect("valid"))
            .expect("ok");
        assert_eq!(text_of(&check), format!("{}def", "abc".repeat(100)));
        assert!(delta.len() < full.len());
    }

    #[test]
    fn legacy_json_content_is_refused_before_it_is_applied() {
        let mut s = state(&empty());
        // Client 7 at clock 0: an item of Yjs' legacy JSON content (ref 2)
        // in root type "t", which yrs decodes with one entry more than it
        // encodes, so it would not be stored as it was applied.
        let update = [1, 1, 7, 0, 2, 1, 1, b't', 0, 1, b'1', 0];
        let update = crate::protocol::decode_update(&update).expect("well formed");
        let mut fx = Effects::default();
        let err = s
            .receive(1, Access::ReadWrite, Inbound::Update(update), &mut fx)
            .expect_err("refused");
        assert!(matches!(err, Rejection::InvalidUpdate(_)), "{err}");
        assert!(err.to_string().contains("JSON"), "{err}");
        assert!(fx.changes.is_empty() && s.last_seq() == 0);
        assert!(!s.is_poisoned(), "refused before anything was applied");
    }

    #[test]
    fn read_only_changes_are_refused_but_repeats_are_not() {
        let mut s = state(&empty());
        let writer = Doc::new();
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Update(incoming(edit(&writer, 0, "hello"))),
            &mut Effects::default(),
        )
        .expect("ok");
        {
            let text = writer.get_or_insert_text("t");
            let mut txn = writer.transact_mut();
            text.remove_range(&mut txn, 0, 1);
            let delete = Update::decode_v1(&txn.encode_update_v1()).expect("valid");
            drop(txn);
            s.receive(
                1,
                Access::ReadWrite,
                Inbound::Update(incoming(delete)),
                &mut Effects::default(),
            )
            .expect("ok");
        }

        // A reader whose step 2 repeats the document (with its delete set).
        let reader = Doc::new();
        let full = s.encode_state().expect("encodes");
        reader
            .transact_mut()
            .apply_update(Update::decode_v1(&full).expect("valid"))
            .expect("ok");
        let step2 = reader
            .transact()
            .encode_state_as_update_v1(&s.doc().transact().state_vector());
        let mut fx = Effects::default();
        s.receive(
            2,
            Access::ReadOnly,
            Inbound::Update(incoming(Update::decode_v1(&step2).expect("valid"))),
            &mut fx,
        )
        .expect("ok");
        assert!(fx.deliveries.is_empty() && fx.changes.is_empty());

        // An insertion and a deletion from the reader are both refused.
        for change in [edit(&reader, 0, "x"), {
            let text = reader.get_or_insert_text("t");
            let mut txn = reader.transact_mut();
            text.remove_range(&mut txn, 1, 1);
            Update::decode_v1(&txn.encode_update_v1()).expect("valid")
        }] {
            let mut fx = Effects::default();
            s.receive(
                2,
                Access::ReadOnly,
                Inbound::Update(incoming(change)),
                &mut fx,
            )
            .expect("not an error: the connection stays");
            assert!(fx.changes.is_empty());
            let [Delivery::To(2, frame)] = fx.deliveries.as_slice() else {
                panic!("{:?}", fx.deliveries);
            };
            assert_eq!(frame[0], 2, "an auth message");
        }
        assert_eq!(
            s.doc()
                .get_or_insert_text("t")
                .get_string(&s.doc().transact()),
            "ello"
        );
        assert_eq!(s.last_seq(), 2);
    }
}
