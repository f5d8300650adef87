//! Reverting one author's changes since a point in a document's history:
//! what they inserted is removed, what they deleted is put back where it
//! still fits, and everyone else's work stays. The revert is one forward
//! change, so live editors converge to it without reloading.
//!
//! It is Yjs' own undo, run on a copy. The copy is the document as it was
//! at the point (see [`Rooms::state_at`]), then every stored change since,
//! replayed with garbage collection off so that what the author deleted
//! keeps its content. yrs' `UndoManager` is then handed one undo step made
//! of everything the author's changes inserted and deleted, and undoes it:
//! insertions still there are deleted, deletions are redone as new items
//! next to their old neighbours, a map entry another author overwrote
//! since stays overwritten. The update that undo made is applied to the
//! live document as the operator's change, like a restore.
//!
//! The live document is not touched until then, and changes made while
//! the copy is built merge with the revert as any concurrent change does.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use weft_storage::{DocName, LogEntry, Provenance};
use yrs::branch::{Branch, BranchPtr};
use yrs::undo::{Options as UndoOptions, StackItem, UndoManager};
use yrs::updates::decoder::Decode;
use yrs::{Doc, IdSet, Options, Out, ReadTxn, StateVector, Transact, Update, ID};

use crate::guard::{guarded, with_txn};
use crate::history::{rebuild_turn, PointInTime, READ_CHUNK};
use crate::{EventId, RoomError, Rooms};

/// What a revert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reverted {
    /// The point it reverted to: the author's changes after it were undone.
    pub since: EventId,
    /// How many of the author's stored changes came after that point.
    pub changes: usize,
    /// The change the revert made; `None` when it had nothing to undo (no
    /// changes, or others already undid them).
    pub change: Option<EventId>,
}

/// One revert at a time on this node: two at once of the same author
/// would each put back what the author deleted.
static REVERTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How a revert's change is recorded: by `admin`, through `revert:<author>`,
/// so that a later revert of the same author can tell it is one.
fn revert_via(author: &str) -> String {
    format!("revert:{author}")
}

impl Rooms {
    /// Undoes `author`'s changes to `doc` made after `since`, as one change
    /// by `admin` (via `revert:<author>`). Refused when the history kept no
    /// longer holds every change since that point (the undo would be
    /// guesswork), and when the author was already reverted after it (a
    /// second undo would put back what they deleted twice).
    pub async fn revert(
        &self,
        doc: &DocName,
        author: &str,
        since: PointInTime,
    ) -> Result<Reverted, RoomError> {
        let _one_at_a_time = REVERTING.lock().await;
        let past = self.state_at(doc, since).await?;
        if !past.exact {
            return Err(RoomError::NotFound(format!(
                "the history kept no longer holds every change of {doc} since that point (the \
                 nearest it can rebuild is {}); revert from a later point",
                past.id
            )));
        }
        let _turn = rebuild_turn().await?;
        let skip = self.left_out(doc).await?.changes;
        let mut copy = self.cpu().run(|| Copy::of(&past.update)).await?;
        let mut after = past.id.seq;
        loop {
            let read = self
                .store()
                .read_log(doc, after, READ_CHUNK)
                .await
                .map_err(|e| RoomError::StorageFailure(e.to_string()))?;
            let Some(last) = read.last() else { break };
            unbroken(&read, after, doc)?;
            after = last.seq;
            self.cpu().run(|| copy.replay(&read, author, &skip)).await?;
            if let Some(seq) = copy.reverted_at {
                let earlier = EventId { seq, ..past.id };
                return Err(RoomError::Conflict(format!(
                    "{author}'s changes to {doc} after {} were already reverted by change \
                     {earlier}; to undo what they did after that, revert from {earlier}",
                    past.id
                )));
            }
        }
        let changes = copy.changes;
        let undo = self.cpu().run(|| copy.undo()).await?;
        let change = match undo {
            Some(update) => {
                let by = Provenance::new(Some("admin".to_owned()), &revert_via(author));
                self.apply_as(doc, Bytes::from(update), None, by).await?
            }
            None => None,
        };
        Ok(Reverted {
            since: past.id,
            changes,
            change,
        })
    }
}

/// Refuses a read of the log that does not go on from `after` one change
/// at a time: trimmed, the copy would lack what the author's changes build
/// on.
fn unbroken(read: &[LogEntry], after: u64, doc: &DocName) -> Result<(), RoomError> {
    match read
        .iter()
        .zip(after + 1..)
        .find(|(entry, want)| entry.seq != *want)
    {
        None => Ok(()),
        Some((entry, want)) => Err(RoomError::NotFound(format!(
            "the log of {doc} no longer holds change {want} (it goes on from {}): revert from \
             a point it still holds",
            entry.seq
        ))),
    }
}

/// The copy a revert works on, and what the author's changes did in it.
struct Copy {
    doc: Doc,
    inserted: IdSet,
    deleted: IdSet,
    changes: usize,
    /// The first earlier revert of the same author found, if any.
    reverted_at: Option<u64>,
}

impl Copy {
    /// A copy holding `state` (a whole document, Yjs v1), that keeps the
    /// content of what is deleted from now on.
    fn of(state: &[u8]) -> Result<Copy, RoomError> {
        let doc = Doc::with_options(Options {
            skip_gc: true,
            ..Options::default()
        });
        let update = Update::decode_v1(state)
            .map_err(|e| RoomError::LoadFailed(format!("the past state does not decode: {e}")))?;
        apply(&doc, update)?;
        Ok(Copy {
            doc,
            inserted: IdSet::new(),
            deleted: IdSet::new(),
            changes: 0,
            reverted_at: None,
        })
    }

    /// Replays `entries` (the next stored changes, in order), noting what
    /// those by `author` inserted and deleted. Changes in `skip`, and any
    /// that do not decode, are left out as when the document loads.
    fn replay(
        &mut self,
        entries: &[LogEntry],
        author: &str,
        skip: &BTreeSet<u64>,
    ) -> Result<(), RoomError> {
        let earlier_revert = revert_via(author);
        for entry in entries.iter().filter(|e| !skip.contains(&e.seq)) {
            if entry.by.via.as_deref() == Some(earlier_revert.as_str()) {
                self.reverted_at.get_or_insert(entry.seq);
            }
            let Ok(Ok(update)) = guarded(|| Update::decode_v1(&entry.update)) else {
                continue;
            };
            if entry.by.author.as_deref() == Some(author) {
                self.inserted.merge_with(update.insertions(true));
                self.deleted.merge_with(update.delete_set().clone());
                self.changes += 1;
            }
            apply(&self.doc, update)?;
        }
        Ok(())
    }

    /// Undoes, in one step, all the author's changes replayed; the update
    /// that made, or `None` if it changed nothing.
    fn undo(&mut self) -> Result<Option<Vec<u8>>, RoomError> {
        if self.changes == 0 {
            return Ok(None);
        }
        let (known, incomplete) = {
            let txn = self.doc.transact();
            let store = txn.store();
            let incomplete = store.pending_update().is_some() || store.pending_ds().is_some();
            (txn.state_vector(), incomplete)
        };
        if incomplete {
            return Err(RoomError::LoadFailed(
                "the history replayed into the copy leaves changes waiting for what it lacks"
                    .to_owned(),
            ));
        }
        let client = self.doc.client_id();
        if known.contains_client(&client) {
            // The copy's random id is one the document already uses: its
            // new items would clash with that client's.
            return Err(RoomError::TryAgain(
                "the revert drew a client id the document already has".to_owned(),
            ));
        }
        // Only ids the copy holds: yrs' undo panics on others (a change
        // the author's build on may have been set aside).
        let step = StackItem::new(
            self.doc.guid(),
            within(&self.deleted, &known),
            within(&self.inserted, &known),
        );
        let made: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let undone = guarded(|| {
            let mut undo: UndoManager<()> = UndoManager::with_options(UndoOptions {
                capture_timeout_millis: 0,
                init_undo_stack: vec![step],
                ..UndoOptions::default()
            });
            for root in roots(&self.doc) {
                undo.expand_scope(&self.doc, &root);
            }
            let sink = made.clone();
            let observed = self.doc.observe_update_v1("revert", move |_, e| {
                if let Ok(mut made) = sink.lock() {
                    made.push(e.update.clone());
                }
            });
            observed.map(|()| undo.undo_blocking())
        })
        .map_err(|e| RoomError::LoadFailed(format!("undoing failed: {e}")))?
        .map_err(|e| RoomError::LoadFailed(format!("undoing could not be observed: {e}")))?;
        let made = std::mem::take(&mut *made.lock().map_err(|_| poisoned())?);
        if !undone || made.is_empty() {
            return Ok(None);
        }
        yrs::merge_updates_v1(made)
            .map(Some)
            .map_err(|e| RoomError::LoadFailed(format!("the revert does not encode: {e}")))
    }
}

/// The part of `set` that `known` (a state vector) holds.
fn within(set: &IdSet, known: &StateVector) -> IdSet {
    let mut out = IdSet::new();
    for (client, ranges) in set.iter() {
        let end = known.get(client);
        for range in ranges.iter() {
            let clipped = range.start..range.end.min(end);
            if clipped.start < clipped.end {
                out.insert(ID::new(*client, clipped.start), clipped.end - clipped.start);
            }
        }
    }
    out
}

fn poisoned() -> RoomError {
    RoomError::LoadFailed("the revert's update was lost to a panic".to_owned())
}

/// Applies `update` to `doc` in a transaction of its own.
fn apply(doc: &Doc, update: Update) -> Result<(), RoomError> {
    match guarded(|| with_txn(doc, |txn| txn.apply_update(update))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RoomError::LoadFailed(format!(
            "a change does not apply: {e}"
        ))),
        Err(panic) => Err(RoomError::LoadFailed(format!(
            "a change does not apply: {panic}"
        ))),
    }
}

/// Every root type of `doc`: the undo's scope.
fn roots(doc: &Doc) -> Vec<BranchPtr> {
    let txn = doc.transact();
    txn.root_refs()
        .filter_map(|(_, out)| match out {
            Out::YText(r) => Some(branch(&r)),
            Out::YArray(r) => Some(branch(&r)),
            Out::YMap(r) => Some(branch(&r)),
            Out::YXmlElement(r) => Some(branch(&r)),
            Out::YXmlFragment(r) => Some(branch(&r)),
            Out::YXmlText(r) => Some(branch(&r)),
            Out::UndefinedRef(b) => Some(b),
            _ => None,
        })
        .collect()
}

fn branch(shared: &impl AsRef<Branch>) -> BranchPtr {
    BranchPtr::from(AsRef::<Branch>::as_ref(shared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, Map, MapRef, Text, TextRef, TransactionMut};

    /// Editors of one document, kept in sync, each change stored as the
    /// log would hold it: the update its transaction made, with its author.
    struct Editors {
        docs: Vec<Doc>,
        log: Vec<LogEntry>,
    }

    impl Editors {
        fn new(n: u64) -> Editors {
            Editors {
                docs: (1..=n).map(Doc::with_client_id).collect(),
                log: Vec::new(),
            }
        }

        /// Editor `who` makes a change; everyone receives it.
        fn edit(&mut self, who: usize, edit: impl FnOnce(&TextRef, &MapRef, &mut TransactionMut)) {
            let doc = &self.docs[who];
            let sent: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
            let sink = sent.clone();
            doc.observe_update_v1("test", move |_, e| {
                sink.lock().expect("lock").push(e.update.clone())
            })
            .expect("observes");
            let (text, map) = (doc.get_or_insert_text("t"), doc.get_or_insert_map("m"));
            edit(&text, &map, &mut doc.transact_mut());
            doc.unobserve_update_v1("test").expect("unobserves");
            let update =
                yrs::merge_updates_v1(sent.lock().expect("test data").clone()).expect("test data");
            for other in &self.docs {
                apply(other, Update::decode_v1(&update).expect("test data")).expect("test data");
            }
            self.log.push(LogEntry {
                seq: self.log.len() as u64 + 1,
                at_ms: 0,
                update,
                by: Provenance::new(Some(format!("author-{who}")), "ws"),
            });
        }

        fn text(&self) -> String {
            let doc = &self.docs[0];
            doc.get_or_insert_text("t").get_string(&doc.transact())
        }

        /// Reverts `who`'s changes after the first `since` stored ones, and
        /// applies the revert to every editor.
        fn revert(&mut self, who: usize, since: usize) -> bool {
            let base = Doc::new();
            for e in &self.log[..since] {
                apply(&base, Update::decode_v1(&e.update).expect("test data")).expect("test data");
            }
            let state = base
                .transact()
                .encode_state_as_update_v1(&yrs::StateVector::default());
            let mut copy = Copy::of(&state).expect("test data");
            let author = format!("author-{who}");
            copy.replay(&self.log[since..], &author, &BTreeSet::new())
                .expect("test data");
            let Some(update) = copy.undo().expect("test data") else {
                return false;
            };
            for doc in &self.docs {
                apply(doc, Update::decode_v1(&update).expect("test data")).expect("test data");
            }
            self.log.push(LogEntry {
                seq: self.log.len() as u64 + 1,
                at_ms: 0,
                update,
                by: Provenance::new(Some("admin".to_owned()), &revert_via(&author)),
            });
            true
        }
    }

    #[test]
    fn one_authors_changes_go_and_the_others_stay() {
        let mut e = Editors::new(3);
        e.edit(0, |t, _, txn| t.insert(txn, 0, "The quick fox jumps."));
        // After that first change, three authors edit the same sentence.
        e.edit(1, |t, _, txn| t.insert(txn, 9, " brown")); // The quick brown fox jumps.
        e.edit(2, |t, _, txn| t.remove_range(txn, 0, 4)); // quick brown fox jumps.
        e.edit(1, |t, _, txn| t.remove_range(txn, 12, 3)); // quick brown  jumps.
        e.edit(1, |t, _, txn| t.insert(txn, 12, "dog")); // quick brown dog jumps.
        e.edit(0, |t, _, txn| t.insert(txn, 22, "!")); // quick brown dog jumps.!
        e.edit(2, |t, _, txn| t.insert(txn, 0, "A ")); // A quick brown dog jumps.!
        assert_eq!(e.text(), "A quick brown dog jumps.!");

        // Author 1's words go, the fox they deleted comes back in its
        // place; author 2's deletion and insertion and author 0's stay.
        assert!(e.revert(1, 1));
        assert_eq!(e.text(), "A quick fox jumps.!");
        // From the revert on, author 1 did nothing; from before it, the
        // revert is found, and nothing is put back twice.
        assert!(!e.revert(1, e.log.len()));
        let mut copy = Copy::of(&[0, 0]).expect("empty");
        let author = "author-1".to_owned();
        copy.replay(&e.log, &author, &BTreeSet::new())
            .expect("replays");
        assert_eq!(copy.reverted_at, Some(8));
        // Author 2 can be reverted as well, the revert of 1 staying.
        assert!(e.revert(2, 1));
        assert_eq!(e.text(), "The quick fox jumps.!");
    }

    #[test]
    fn a_log_that_skips_a_change_is_refused() {
        let doc = DocName::new("d").expect("name");
        let at = |seq| LogEntry {
            seq,
            at_ms: 0,
            update: Vec::new(),
            by: Provenance::default(),
        };
        assert_eq!(unbroken(&[at(3), at(4)], 2, &doc), Ok(()));
        let err = unbroken(&[at(3), at(4)], 0, &doc).expect_err("trimmed");
        assert!(
            err.to_string().contains("no longer holds change 1"),
            "{err}"
        );
        assert!(unbroken(&[at(1), at(3)], 0, &doc).is_err());
    }

    #[test]
    fn only_changes_after_the_point_are_undone() {
        let mut e = Editors::new(2);
        e.edit(0, |t, _, txn| t.insert(txn, 0, "one"));
        e.edit(0, |t, _, txn| t.insert(txn, 3, " two"));
        e.edit(1, |t, _, txn| t.insert(txn, 7, " three"));
        e.edit(0, |t, _, txn| t.insert(txn, 13, " four"));
        assert!(e.revert(0, 2));
        assert_eq!(e.text(), "one two three");
    }

    #[test]
    fn a_map_entry_someone_else_set_since_stays_theirs() {
        let mut e = Editors::new(2);
        e.edit(0, |_, m, txn| {
            m.insert(txn, "title", "Draft");
            m.insert(txn, "owner", "ada");
        });
        e.edit(1, |_, m, txn| {
            m.insert(txn, "title", "Final");
            m.insert(txn, "owner", "grace");
        });
        e.edit(0, |_, m, txn| {
            m.insert(txn, "owner", "ada again");
        });
        // Author 1's title goes and the one it replaced comes back; their
        // owner was overwritten since by author 0, whose value stays.
        assert!(e.revert(1, 1));
        let doc = &e.docs[1];
        let m = doc.get_or_insert_map("m");
        let txn = doc.transact();
        assert_eq!(
            m.get(&txn, "title").map(|v| v.to_string(&txn)),
            Some("Draft".into())
        );
        assert_eq!(
            m.get(&txn, "owner").map(|v| v.to_string(&txn)),
            Some("ada again".into())
        );
    }
}
