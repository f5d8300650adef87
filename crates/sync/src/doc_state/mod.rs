//! `DocState`: one live document and its presence, as a plain state machine.
//!
//! It owns the `yrs::Doc` (inside an `Awareness`, which yrs' sync helpers
//! take; the presence itself is kept by [`Presence`]), the sequence counter
//! and a window of recent changes. Every input (a connection joining, a decoded
//! message, a connection leaving) is a method call that records what must
//! happen in [`Effects`]: changes to make durable and frames to deliver. It
//! does no I/O and never waits, so it is tested without sockets or sleeps;
//! the [`room`](crate::room) task around it does the storing and sending.
//!
//! This file holds the type, how it is loaded from storage and its plain
//! accessors; the rest is by concern: `effects.rs` (what an input comes to,
//! and how a change is numbered and kept), `updates.rs` (applying clients'
//! and the server's own changes safely), `awareness.rs` (presence),
//! `replication.rs` (changes other nodes stored, and the rebase after a
//! refused append), `encoding.rs` (the document as updates and sync
//! replies) and `limits.rs` (what clients may make a document hold).

mod awareness;
mod effects;
mod encoding;
mod limits;
mod replication;
#[cfg(test)]
mod test_util;
mod updates;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use yrs::sync::Awareness;
use yrs::Doc;

use weft_storage::{LogEntry, Provenance, StoredDoc};

use crate::presence::Presence;
use crate::replay::{self, SetAside};
use crate::Clock;

pub use effects::{Change, Delivery, Effects, Rejection};
pub use limits::DocLimits;

/// Identifies one connection (or other subscriber) of a room.
pub type ConnId = u64;

/// What a connection may do to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Sync, presence and changes.
    ReadWrite,
    /// Sync and presence; changes are refused.
    ReadOnly,
}

/// A stored document that could not be turned back into a live one: its
/// snapshot does not load (changes that do not are set aside instead).
#[derive(Debug, Clone, thiserror::Error)]
#[error("stored {part} of the document does not load: {reason}")]
pub struct LoadError {
    pub part: String,
    pub reason: String,
    /// The id of the snapshot that does not load.
    pub snapshot: Option<u64>,
}

/// A live document.
pub struct DocState {
    awareness: Awareness,
    clock: Arc<dyn Clock>,
    incarnation: u64,
    last_seq: u64,
    recent: VecDeque<Change>,
    recent_capacity: usize,
    /// Everyone's presence and who holds which client id.
    presence: Presence,
    /// Set when yrs panicked mid-transaction: memory may no longer match
    /// storage, so the caller must rebuild from storage.
    poisoned: bool,
    /// Roughly how many bytes the document takes: its last snapshot plus
    /// every change since. An upper bound on its encoded size.
    size_estimate: u64,
    limits: DocLimits,
    /// Sync step 2 for an empty state vector (what every new client asks
    /// for), encoded once per document version and shared by every joiner
    /// until the next change: encoding a large document is the dominant
    /// cost of a join.
    full_step2: Option<(u64, Bytes)>,
    /// The same for viewers: the `snapshot` event of the whole document,
    /// shared by every viewer that joins before the next change, so that
    /// many viewers joining a large document cost one encoding and one
    /// copy of it rather than one each.
    snapshot_event: Option<(u64, Bytes)>,
    /// Stored changes left out when the document was loaded, because they
    /// do not replay.
    set_aside: Vec<SetAside>,
    /// Who the changes being made now come from: the room says before
    /// each input ([`DocState::changes_by`]); `None`, no one known.
    /// Shared, not copied: every change of an input, and every input of
    /// one connection, points at its subscriber's.
    making: Option<Arc<Provenance>>,
}

impl std::fmt::Debug for DocState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocState")
            .field("incarnation", &self.incarnation)
            .field("last_seq", &self.last_seq)
            .field("recent", &self.recent.len())
            .field("presence", &self.presence.len())
            .finish_non_exhaustive()
    }
}

impl DocState {
    /// Rebuilds a live document from what storage holds. Stored changes
    /// that do not replay are left out (see [`set_aside`](Self::set_aside));
    /// it fails only when the snapshot does not load.
    pub fn load(
        stored: &StoredDoc,
        recent_capacity: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LoadError> {
        Self::load_skipping(stored, &BTreeSet::new(), recent_capacity, clock)
    }

    /// [`load`](Self::load), leaving out the changes numbered in `skip`
    /// (set aside before) without trying them.
    pub fn load_skipping(
        stored: &StoredDoc,
        skip: &BTreeSet<u64>,
        recent_capacity: usize,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LoadError> {
        let replayed = replay::replay(stored, skip)?;
        let awareness_clock = clock.clone();
        let awareness = Awareness::with_clock(replayed.doc, move || awareness_clock.now_ms());
        let left_out: BTreeSet<u64> = replayed.set_aside.iter().map(|p| p.seq).collect();
        let loaded: Vec<&LogEntry> = stored
            .log
            .iter()
            .filter(|e| !skip.contains(&e.seq) && !left_out.contains(&e.seq))
            .collect();
        let mut recent = VecDeque::with_capacity(recent_capacity.min(loaded.len()));
        for e in &loaded[loaded.len().saturating_sub(recent_capacity)..] {
            recent.push_back(Change::from(*e));
        }
        Ok(DocState {
            awareness,
            clock,
            incarnation: stored.meta.incarnation,
            last_seq: stored.last_seq(),
            recent,
            recent_capacity,
            presence: Presence::default(),
            poisoned: false,
            size_estimate: stored.snapshot.as_ref().map_or(0, |s| s.state.len() as u64)
                + stored
                    .log
                    .iter()
                    .map(|e| e.update.len() as u64)
                    .sum::<u64>(),
            limits: DocLimits::default(),
            full_step2: None,
            snapshot_event: None,
            set_aside: replayed.set_aside,
            making: None,
        })
    }

    /// The changes made from now on (until told otherwise) are `by`'s;
    /// `None`: no one known.
    pub fn changes_by(&mut self, by: Option<&Arc<Provenance>>) {
        self.making = by.cloned();
    }

    /// Stored changes the load left out because they do not replay (not
    /// those it was told to skip), oldest first.
    pub fn set_aside(&self) -> &[SetAside] {
        &self.set_aside
    }

    /// Numbers the next change after `seq` at the earliest: what was
    /// stored up to there stays numbered so even if it did not load.
    pub fn continue_after(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// Replaces the document's content with what storage holds, keeping
    /// presence. Used after a failure left memory ahead of the disk.
    pub fn reload(&mut self, stored: &StoredDoc) -> Result<(), LoadError> {
        let fresh = DocState::load(stored, self.recent_capacity, self.clock.clone())?;
        self.replace_with(fresh);
        Ok(())
    }

    /// Takes `fresh` (the same document, loaded again) as its content,
    /// keeping presence and limits.
    pub fn replace_with(&mut self, mut fresh: DocState) {
        fresh.presence = std::mem::take(&mut self.presence);
        fresh.limits = self.limits;
        *self = fresh;
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Sequence number of the newest accepted change (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The newest changes, oldest first, at most the configured window.
    pub fn recent(&self) -> &VecDeque<Change> {
        &self.recent
    }

    pub fn doc(&self) -> &Doc {
        self.awareness.doc()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{edit, empty, incoming, state, text_of, FixedClock};
    use super::*;
    use crate::protocol::Inbound;
    use weft_storage::{Snapshot, SnapshotReason};
    use yrs::updates::encoder::Encode;

    #[test]
    fn loads_snapshot_plus_log_and_continues_the_sequence() {
        let client = Doc::new();
        let first = edit(&client, 0, "ab").encode_v1();
        let second = edit(&client, 2, "cd").encode_v1();
        let stored = StoredDoc {
            snapshot: Some(Snapshot {
                id: 1,
                seq: 10,
                taken_at_ms: 0,
                reason: SnapshotReason::Periodic,
                state: first,
            }),
            log: vec![LogEntry {
                seq: 11,
                at_ms: 0,
                update: second,
                by: Default::default(),
            }],
            ..empty()
        };
        let mut s = state(&stored);
        assert_eq!(
            (text_of(s.doc()), s.last_seq(), s.incarnation()),
            ("abcd".into(), 11, 7)
        );
        let mut fx = Effects::default();
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Update(incoming(edit(&client, 4, "e"))),
            &mut fx,
        )
        .expect("ok");
        assert_eq!(fx.changes[0].seq, 12);
    }

    #[test]
    fn a_corrupt_log_entry_is_set_aside_with_its_seq() {
        let stored = StoredDoc {
            log: vec![LogEntry {
                seq: 3,
                at_ms: 0,
                update: vec![0xff, 0xff, 0xff],
                by: Default::default(),
            }],
            ..empty()
        };
        let s = DocState::load(&stored, 4, Arc::new(FixedClock)).expect("loads");
        assert_eq!(s.set_aside().len(), 1);
        assert_eq!(s.set_aside()[0].seq, 3);
        assert!(s.set_aside()[0].reason.contains("does not decode"));
        assert_eq!(s.last_seq(), 3);
    }

    #[test]
    fn a_snapshot_that_does_not_load_fails_the_load_naming_it() {
        let stored = StoredDoc {
            snapshot: Some(Snapshot {
                id: 4,
                seq: 10,
                taken_at_ms: 0,
                reason: SnapshotReason::Periodic,
                state: vec![0xff, 0xff, 0xff],
            }),
            ..empty()
        };
        let err = DocState::load(&stored, 4, Arc::new(FixedClock)).expect_err("fails");
        assert_eq!((err.part.as_str(), err.snapshot), ("snapshot 4", Some(4)));
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// A history an earlier build stored from two crafted updates (the
    /// fuzz finding `crash-history-with-legacy-json`): change #2 does not
    /// replay after #1 ("block parent <0#0> must be deleted or shared ref
    /// type"), since yrs reads the legacy JSON item in each with one more
    /// entry than it wrote, and misreads what follows.
    pub(crate) const UNREPLAYABLE: [&str; 2] = [
        "0203030000070003000101000002010101020101010102000100020301000b",
        "0109d9eadac109000401017401480201012e020101010101010101010101010101010101\
         01010101210101010101010101000001010901010100010101010109030000000101010101\
         310101010101f8010101010101010101010101d9eadac1090103fe01",
    ];

    #[test]
    fn a_stored_change_that_does_not_replay_is_set_aside_and_the_rest_loads() {
        let client = Doc::new();
        let entry = |seq: u64, update: Vec<u8>| LogEntry {
            seq,
            at_ms: seq,
            update,
            by: Default::default(),
        };
        let stored = StoredDoc {
            log: vec![
                entry(1, edit(&client, 0, "ab").encode_v1()),
                entry(2, unhex(UNREPLAYABLE[0])),
                entry(3, unhex(UNREPLAYABLE[1])),
                entry(4, vec![0xff, 0xff, 0xff]),
                entry(5, edit(&client, 2, "cd").encode_v1()),
            ],
            ..empty()
        };
        let s = DocState::load(&stored, 8, Arc::new(FixedClock)).expect("loads");
        assert_eq!(text_of(s.doc()), "abcd");
        assert_eq!(s.last_seq(), 5, "numbers go on after what was set aside");
        let seqs: Vec<u64> = s.set_aside().iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        let reasons: Vec<&str> = s.set_aside().iter().map(|p| p.reason.as_str()).collect();
        assert!(reasons[1].contains("legacy JSON"), "{reasons:?}");
        assert!(reasons[2].contains("does not decode"), "{reasons:?}");
        assert!(s.recent().iter().all(|c| c.seq == 1 || c.seq == 5));
        // Already set aside: skipped without being tried again.
        let skip = [2, 3, 4].into_iter().collect();
        let again =
            DocState::load_skipping(&stored, &skip, 8, Arc::new(FixedClock)).expect("loads");
        assert_eq!(text_of(again.doc()), "abcd");
        assert!(again.set_aside().is_empty());
    }
}
