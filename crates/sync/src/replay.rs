//! Rebuilding a `yrs::Doc` from what storage holds, so that a document
//! always loads.
//!
//! A stored document is its newest snapshot plus the changes logged after
//! it. The quick way applies them in batches of [`BATCH`] changes, a
//! transaction each (yrs 0.28's commit of one transaction holding many
//! more is quadratic: 130,000 keystrokes took 607 ms in one transaction,
//! 75 ms in batches of a thousand). If that fails, or
//! leaves structs waiting in yrs' pending store (something they build on is
//! missing), the document is rebuilt change by change, each in a
//! transaction of its own as it was first applied, and a change that does
//! not decode, would wait for content the document lacks, or that yrs
//! refuses or panics on is set aside ([`SetAside`]); the rest loads. If yrs
//! integrated part of a change before failing, the rebuild starts over
//! without it, so nothing of a set-aside change stays in the document.
//!
//! Changes already set aside (the caller's `skip`) are left out without
//! being tried. A snapshot that does not load is an error here
//! ([`LoadError`] naming it): the caller falls back to an older one.
//!
//! Why a stored change may not replay although the live document took it:
//! yrs 0.28 reads legacy JSON content with one entry more than it wrote
//! (see [`sections`](crate::sections)), and fuzzing found a history stored
//! that way; a later yrs, or a bug not found yet, may do the same.

use std::collections::{BTreeMap, BTreeSet};

use weft_storage::{LogEntry, Snapshot, StoredDoc};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, Transact, TransactionMut, Update};

use crate::doc_state::LoadError;
use crate::guard::{guarded, with_txn};
use crate::protocol::ClientUpdate;

/// A stored change left out of a document because it does not replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub seq: u64,
    /// Why it does not replay.
    pub reason: String,
}

/// A rebuilt document and what was left out of it.
pub(crate) struct Replayed {
    pub doc: Doc,
    /// Oldest first; never one of the changes the caller skipped.
    pub set_aside: Vec<SetAside>,
}

/// Rebuilds the document `stored` holds, leaving out the changes in `skip`
/// and any that do not replay. Fails only if the snapshot does not load.
pub(crate) fn replay(stored: &StoredDoc, skip: &BTreeSet<u64>) -> Result<Replayed, LoadError> {
    if let Some(doc) = all_at_once(stored, skip) {
        return Ok(Replayed {
            doc,
            set_aside: Vec::new(),
        });
    }
    one_by_one(stored, skip)
}

/// Changes applied in one transaction by the quick way.
const BATCH: usize = 1000;

/// The snapshot, then every change in batches: `None` if anything failed
/// or is left waiting.
fn all_at_once(stored: &StoredDoc, skip: &BTreeSet<u64>) -> Option<Doc> {
    let doc = Doc::new();
    let applies = |work: &dyn Fn(&mut TransactionMut) -> bool| {
        matches!(guarded(|| with_txn(&doc, work)), Ok(true))
    };
    if let Some(snapshot) = &stored.snapshot {
        let state = |txn: &mut TransactionMut| {
            Update::decode_v1(&snapshot.state).is_ok_and(|update| txn.apply_update(update).is_ok())
        };
        if !applies(&state) {
            return None;
        }
    }
    let changes: Vec<&LogEntry> = stored
        .log
        .iter()
        .filter(|e| !skip.contains(&e.seq))
        .collect();
    for batch in changes.chunks(BATCH) {
        if !applies(&|txn| apply_batch(txn, batch)) {
            return None;
        }
    }
    let waiting = doc.transact().store().pending_update().is_some();
    (!waiting).then_some(doc)
}

/// Applies `batch` in `txn`, stopping at the first change that fails:
/// whether all applied.
fn apply_batch(txn: &mut TransactionMut, batch: &[&LogEntry]) -> bool {
    batch.iter().all(|e| match ClientUpdate::decode(&e.update) {
        Ok(change) if change.unstorable().is_none() => txn.apply_update(change.update).is_ok(),
        _ => false,
    })
}

/// The snapshot, then each change in a transaction of its own, leaving out
/// what does not replay.
fn one_by_one(stored: &StoredDoc, skip: &BTreeSet<u64>) -> Result<Replayed, LoadError> {
    let mut set_aside = BTreeMap::new();
    'rebuild: loop {
        let doc = Doc::new();
        if let Some(snapshot) = &stored.snapshot {
            apply_snapshot(&doc, snapshot)?;
        }
        for e in &stored.log {
            if skip.contains(&e.seq) || set_aside.contains_key(&e.seq) {
                continue;
            }
            match apply_change(&doc, &e.update) {
                Outcome::Applied => {}
                Outcome::Refused(reason) => {
                    set_aside.insert(e.seq, reason);
                }
                Outcome::Partly(reason) => {
                    set_aside.insert(e.seq, reason);
                    continue 'rebuild;
                }
            }
        }
        let set_aside = set_aside
            .into_iter()
            .map(|(seq, reason)| SetAside { seq, reason })
            .collect();
        return Ok(Replayed { doc, set_aside });
    }
}

fn apply_snapshot(doc: &Doc, snapshot: &Snapshot) -> Result<(), LoadError> {
    let fail = |reason: String| LoadError {
        part: format!("snapshot {}", snapshot.id),
        reason,
        snapshot: Some(snapshot.id),
    };
    let outcome = guarded(|| {
        let update = Update::decode_v1(&snapshot.state).map_err(|e| e.to_string())?;
        with_txn(doc, |txn| txn.apply_update(update)).map_err(|e| e.to_string())
    });
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(fail(reason)),
        Err(panic) => Err(fail(format!(
            "the document engine failed internally: {panic}"
        ))),
    }
}

/// What applying one stored change came to.
enum Outcome {
    Applied,
    /// Not applied, and nothing of it is in the document.
    Refused(String),
    /// Not applied, but part of it may be in the document.
    Partly(String),
}

fn apply_change(doc: &Doc, bytes: &[u8]) -> Outcome {
    let update = match guarded(|| ClientUpdate::decode(bytes)) {
        Ok(Ok(update)) => update,
        Ok(Err(e)) => return Outcome::Refused(format!("it does not decode: {e}")),
        Err(panic) => return Outcome::Refused(format!("it does not decode: {panic}")),
    };
    if let Some(why) = update.unstorable() {
        // It would not be stored as it was replayed either: what it holds
        // reads back as something else.
        return Outcome::Refused(why);
    }
    let before = doc.transact().state_vector();
    if update.would_wait(&before) {
        return Outcome::Refused(
            "it builds on content the document does not have (a change before it was set aside)"
                .into(),
        );
    }
    let outcome = guarded(|| {
        with_txn(doc, |txn| {
            let result = txn.apply_update(update.update);
            let after = txn.state_vector();
            let waiting = txn.store().pending_update().is_some();
            (result, after, waiting)
        })
    });
    match outcome {
        Ok((Ok(()), _, false)) => Outcome::Applied,
        Ok((Ok(()), _, true)) => {
            Outcome::Partly("part of it waits for content the document does not have".into())
        }
        Ok((Err(e), after, false)) if after == before => Outcome::Refused(e.to_string()),
        Ok((Err(e), ..)) => Outcome::Partly(e.to_string()),
        Err(panic) => Outcome::Partly(format!(
            "the document engine failed internally while replaying it: {panic}"
        )),
    }
}
