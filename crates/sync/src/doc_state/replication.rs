//! Changes other nodes stored (cluster mode): applied under the numbers
//! the store gave them, and the rebase of this node's pending changes
//! after them when its append was refused.

use yrs::updates::decoder::Decode;
use yrs::Update;

use weft_storage::LogEntry;

use super::{Change, Delivery, DocState, Effects};
use crate::guard::{guarded, with_txn};

/// Stored changes that do not follow on from the live document's newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stored changes jump from #{have} to #{got}")]
pub struct StoredGap {
    pub have: u64,
    pub got: u64,
}

impl DocState {
    /// Changes another node stored (cluster mode), oldest first. Those this
    /// document already has are skipped; the others are applied under the
    /// sequence numbers the store gave them and delivered to everyone, but
    /// not stored again. Returns how many were new. `Err(StoredGap)` when
    /// they do not follow on from `last_seq` (this node fell behind a trim):
    /// the caller reloads.
    pub fn apply_stored(
        &mut self,
        entries: &[LogEntry],
        fx: &mut Effects,
    ) -> Result<u64, StoredGap> {
        let before = self.last_seq;
        for e in entries {
            if e.seq <= self.last_seq {
                continue;
            }
            if e.seq != self.last_seq + 1 {
                return Err(StoredGap {
                    have: self.last_seq,
                    got: e.seq,
                });
            }
            let doc = self.awareness.doc();
            let applied = guarded(|| {
                let update = Update::decode_v1(&e.update).map_err(|e| e.to_string())?;
                with_txn(doc, |txn| txn.apply_update(update)).map_err(|e| e.to_string())
            });
            if !matches!(applied, Ok(Ok(()))) {
                // Every node stored and applied it; memory here is suspect.
                self.poisoned = true;
            }
            self.last_seq = e.seq;
            self.size_estimate += e.update.len() as u64;
            let change = Change::from(e);
            self.remember(change.clone());
            fx.deliveries.push(Delivery::Change {
                change,
                origin: None,
            });
        }
        Ok(self.last_seq - before)
    }

    /// Another node stored changes `remote` first (cluster mode): this
    /// node's pending changes in `fx`, numbered after the old `last_seq`,
    /// are renumbered to follow them, and `remote` is applied and delivered
    /// before them. Deliveries keep their order otherwise. Returns how far
    /// this node's changes moved.
    pub fn rebase(&mut self, remote: &[LogEntry], fx: &mut Effects) -> Result<u64, StoredGap> {
        self.rebase_with(None, remote, fx)
    }

    /// As [`rebase`](Self::rebase), when the changes other nodes stored are
    /// no longer logged one by one from this node's first pending one: a
    /// snapshot holds them, up to its sequence number. `held_in` (that
    /// snapshot as a stored change: its number, time and state) is applied
    /// and delivered as the last of them (an update holding them all;
    /// what this node already has of it changes nothing), then `remote`,
    /// the log after it.
    pub fn rebase_across(
        &mut self,
        held_in: &LogEntry,
        remote: &[LogEntry],
        fx: &mut Effects,
    ) -> Result<u64, StoredGap> {
        self.rebase_with(Some(held_in), remote, fx)
    }

    fn rebase_with(
        &mut self,
        held_in: Option<&LogEntry>,
        remote: &[LogEntry],
        fx: &mut Effects,
    ) -> Result<u64, StoredGap> {
        let pending = fx.changes.len() as u64;
        let first_pending = self.last_seq + 1 - pending;
        // Take this node's changes back out of the window and the deliveries.
        for _ in 0..pending {
            if self.recent.back().is_some_and(|c| c.seq >= first_pending) {
                self.recent.pop_back();
            }
        }
        self.last_seq = first_pending - 1;
        let mut mine = Vec::new();
        let mut others = Vec::new();
        for d in fx.deliveries.drain(..) {
            match d {
                Delivery::Change { change, origin } if change.seq >= first_pending => {
                    mine.push((change, origin));
                }
                other => others.push(other),
            }
        }
        fx.deliveries = others;
        fx.changes.clear();
        if let Some(snapshot) = held_in.filter(|s| s.seq > self.last_seq) {
            // The numbers before it are in it: no change stands for them.
            self.last_seq = snapshot.seq - 1;
            self.apply_stored(std::slice::from_ref(snapshot), fx)?;
            // The document is now about the snapshot's size, with this
            // node's pending changes on top (not the sum of both).
            let mine_bytes: usize = mine.iter().map(|(c, _)| c.update.len()).sum();
            self.size_estimate = (snapshot.update.len() + mine_bytes) as u64;
        }
        self.apply_stored(remote, fx)?;
        let moved = self.last_seq - (first_pending - 1);
        for (change, origin) in mine {
            self.last_seq += 1;
            let change = Change {
                seq: self.last_seq,
                ..change
            };
            self.remember(change.clone());
            fx.changes.push(change.clone());
            fx.deliveries.push(Delivery::Change { change, origin });
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{edit, empty, incoming, state, stored_entry, text_of};
    use super::*;
    use crate::protocol::Inbound;
    use crate::{Access, ConnId};
    use yrs::Doc;

    /// The changes `fx` delivers: their numbers, and whose they are.
    fn delivered(fx: &Effects) -> Vec<(u64, Option<ConnId>)> {
        fx.deliveries
            .iter()
            .filter_map(|d| match d {
                Delivery::Change { change, origin } => Some((change.seq, *origin)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn changes_stored_elsewhere_apply_in_order_skip_repeats_and_report_gaps() {
        let mut s = state(&empty());
        let other = Doc::new();
        let one = stored_entry(1, &other, 0, "a");
        let two = stored_entry(2, &other, 1, "b");
        let mut fx = Effects::default();
        let fresh = s
            .apply_stored(&[one.clone(), two.clone()], &mut fx)
            .expect("in order");
        assert_eq!(fresh, 2);
        assert_eq!((s.last_seq(), text_of(s.doc())), (2, "ab".to_owned()));
        assert_eq!(fx.deliveries.len(), 2);
        assert!(fx.changes.is_empty(), "already stored: not stored again");

        let mut fx = Effects::default();
        let fresh = s
            .apply_stored(&[two], &mut fx)
            .expect("a repeat is skipped");
        assert_eq!(fresh, 0);
        assert!(fx.deliveries.is_empty());
        let four = stored_entry(4, &other, 2, "d");
        assert_eq!(
            s.apply_stored(&[four], &mut Effects::default()),
            Err(StoredGap { have: 2, got: 4 })
        );
    }

    #[test]
    fn a_rebase_puts_changes_stored_elsewhere_first_and_renumbers_ours() {
        let mut s = state(&empty());
        let mine = Doc::new();
        let mut fx = Effects::default();
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Update(incoming(edit(&mine, 0, "m"))),
            &mut fx,
        )
        .expect("applies");
        assert_eq!(fx.changes[0].seq, 1);

        // Meanwhile another node stored #1 and #2.
        let other = Doc::new();
        let remote = [
            stored_entry(1, &other, 0, "x"),
            stored_entry(2, &other, 1, "y"),
        ];
        let moved = s.rebase(&remote, &mut fx).expect("rebases");
        assert_eq!(moved, 2);
        assert_eq!(fx.changes.len(), 1);
        assert_eq!(fx.changes[0].seq, 3, "ours now follows theirs");
        assert_eq!(s.last_seq(), 3);
        assert_eq!(delivered(&fx), vec![(1, None), (2, None), (3, Some(1))]);
        let recent: Vec<u64> = s.recent().iter().map(|c| c.seq).collect();
        assert_eq!(recent, vec![1, 2, 3]);
        let t = text_of(s.doc());
        assert!(t.contains('m') && t.contains("xy"), "{t}");
    }

    #[test]
    fn a_rebase_across_a_snapshot_takes_its_state_for_the_changes_it_holds() {
        use yrs::{ReadTxn, StateVector, Transact};
        let mut s = state(&empty());
        let mine = Doc::new();
        let mut fx = Effects::default();
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Update(incoming(edit(&mine, 0, "m"))),
            &mut fx,
        )
        .expect("applies");

        // Meanwhile another node stored #1..#5, then compacted them into a
        // snapshot at #5 and trimmed the log; #6 follows it.
        let other = Doc::new();
        for (i, c) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            stored_entry(i as u64 + 1, &other, i as u32, c);
        }
        let held_in = LogEntry {
            seq: 5,
            at_ms: 7,
            update: other
                .transact()
                .encode_state_as_update_v1(&StateVector::default()),
            by: Default::default(),
        };
        let tail = [stored_entry(6, &other, 5, "f")];
        let moved = s.rebase_across(&held_in, &tail, &mut fx).expect("rebases");
        assert_eq!(moved, 6);
        assert_eq!(fx.changes.len(), 1);
        assert_eq!(fx.changes[0].seq, 7, "ours follows the newest stored");
        assert_eq!(
            delivered(&fx),
            vec![(5, None), (6, None), (7, Some(1))],
            "the snapshot stands for #1..#5"
        );
        let t = text_of(s.doc());
        assert!(t.contains('m') && t.contains("abcdef"), "{t}");
    }
}
