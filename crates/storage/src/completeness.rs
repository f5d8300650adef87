//! What `verify` checks beyond each record decoding: that one document's
//! records add up, whichever store holds them.
//!
//! A record that vanished (a damaged page of the database file can take one
//! with it) decodes nothing wrong, so decoding alone reports nothing. What
//! can be checked is that the records agree with each other:
//! - the snapshots and the per-document snapshot index list the same ids,
//!   with the same facts (sequence number, size, reason, time);
//! - the snapshot loads start from exists;
//! - the log is contiguous: from the snapshot loads start from, every
//!   sequence number up to the newest is there (a gap there means changes
//!   the document no longer has), and the tail kept before that snapshot
//!   has no holes either (only replay for resuming viewers loses there);
//!   without a snapshot the log starts at 1;
//! - records belong to a document that has metadata.
//!
//! Each problem names the document, what is missing, and what to do.

use crate::{Corruption, SnapshotInfo};

/// One document's records, as a store read them. `None` where they could
/// not be read (what failed to decode is reported already).
#[derive(Debug, Default)]
pub(crate) struct DocRecords {
    pub doc: String,
    pub has_meta: bool,
    /// The snapshots themselves (what loads, restores and exports read),
    /// by id.
    pub snapshots: Option<Vec<SnapshotInfo>>,
    /// The snapshot index (what listings and retention read), by id.
    pub index: Option<Vec<SnapshotInfo>>,
    /// The snapshot loads start from, when the store names it (Redis'
    /// head); `None`: the newest snapshot.
    pub head: Option<u64>,
    /// Every logged sequence number, ascending.
    pub log: Option<Vec<u64>>,
    /// The newest sequence number, when the store keeps it apart from the
    /// log (Redis); `None`: the log's own.
    pub last_seq: Option<u64>,
}

/// Everything that does not add up in `records`.
pub(crate) fn check(records: &DocRecords) -> Vec<Corruption> {
    let mut found = Vec::new();
    orphans(records, &mut found);
    if let (Some(snapshots), Some(index)) = (&records.snapshots, &records.index) {
        snapshots_match_index(&records.doc, snapshots, index, &mut found);
    }
    if let (Some(snapshots), Some(log)) = (&records.snapshots, &records.log) {
        log_is_contiguous(records, snapshots, log, &mut found);
    }
    found
}

fn orphans(r: &DocRecords, found: &mut Vec<Corruption>) {
    let has_records = [&r.snapshots, &r.index]
        .iter()
        .any(|s| s.as_ref().is_some_and(|s| !s.is_empty()))
        || r.log.as_ref().is_some_and(|l| !l.is_empty());
    if !r.has_meta && has_records {
        found.push(Corruption {
            location: format!("{} (metadata)", r.doc),
            problem: "missing: the document has snapshots or logged changes but no \
                      metadata, so it is not listed and its next load starts a new \
                      incarnation (viewers resume from scratch). Restore the document \
                      from a backup, or take a backup and restore it to keep what is left"
                .into(),
        });
    }
}

fn snapshots_match_index(
    doc: &str,
    snapshots: &[SnapshotInfo],
    index: &[SnapshotInfo],
    found: &mut Vec<Corruption>,
) {
    const REBUILD: &str = "`weft backup` then `weft backup restore` into a fresh data \
                           directory rebuilds the index from the snapshots";
    for s in snapshots {
        let location = format!("{doc} snapshot {}", s.id);
        match index.iter().find(|i| i.id == s.id) {
            None => found.push(Corruption {
                location,
                problem: format!(
                    "missing from the snapshot index: listings and retention do not see it; {REBUILD}"
                ),
            }),
            Some(i) if i != s => found.push(Corruption {
                location,
                problem: format!(
                    "the snapshot index disagrees with the snapshot (index: change {}, {} bytes, \
                     {}, at {} ms; snapshot: change {}, {} bytes, {}, at {} ms); {REBUILD}",
                    i.seq,
                    i.size,
                    i.reason.as_str(),
                    i.taken_at_ms,
                    s.seq,
                    s.size,
                    s.reason.as_str(),
                    s.taken_at_ms
                ),
            }),
            Some(_) => {}
        }
    }
    for i in index
        .iter()
        .filter(|i| !snapshots.iter().any(|s| s.id == i.id))
    {
        found.push(Corruption {
            location: format!("{doc} snapshot {}", i.id),
            problem: format!(
                "missing: the snapshot index lists it ({}, change {}) but its state is gone, so it \
                 cannot be restored, exported or inspected; only a backup that holds it brings it \
                 back",
                i.reason.as_str(),
                i.seq
            ),
        });
    }
}

fn log_is_contiguous(
    r: &DocRecords,
    snapshots: &[SnapshotInfo],
    log: &[u64],
    found: &mut Vec<Corruption>,
) {
    let head = match r.head {
        Some(id) => match snapshots.iter().find(|s| s.id == id) {
            Some(s) => Some(s),
            None => {
                found.push(Corruption {
                    location: format!("{} snapshot {id}", r.doc),
                    problem: "missing: loads start from this snapshot, so the document does \
                              not load; restore the document from a backup"
                        .into(),
                });
                return;
            }
        },
        None => snapshots.iter().max_by_key(|s| s.id),
    };
    let from = head.map_or(0, |s| s.seq);
    let newest = r
        .last_seq
        .unwrap_or(0)
        .max(log.last().copied().unwrap_or(0))
        .max(from);
    let after = match head {
        Some(s) => format!("after snapshot {} (change {from})", s.id),
        None => "with no snapshot before them".into(),
    };
    // Every number from the log's first entry (from the snapshot on, at
    // the latest) up to the newest must be there.
    let mut missing = Vec::new();
    let mut next = None;
    for &seq in log {
        let expected = next.unwrap_or(if seq > from { from + 1 } else { seq });
        if seq > expected {
            missing.push((expected, seq - 1));
        }
        next = Some(seq + 1);
    }
    let expected = next.unwrap_or(from + 1);
    if newest >= expected {
        missing.push((expected, newest));
    }
    for (first, last) in missing {
        if first <= from {
            found.push(tail_hole(&r.doc, first, last.min(from), from));
        }
        if last > from {
            found.push(lost(&r.doc, first.max(from + 1), last, &after));
        }
    }
}

/// Changes missing before the snapshot loads start from: only replay loses.
fn tail_hole(doc: &str, first: u64, last: u64, from: u64) -> Corruption {
    Corruption {
        location: changes(doc, first, last),
        problem: format!(
            "missing from the log kept before the newest snapshot (change {from}): the document \
             is whole, but viewers resuming from before change {} get a fresh snapshot instead \
             of the changes; the disk lost records: check it",
            last + 1
        ),
    }
}

fn lost(doc: &str, first: u64, last: u64, after: &str) -> Corruption {
    Corruption {
        location: changes(doc, first, last),
        problem: format!(
            "missing from the log {after}: the document loads without {}; restore the document \
             from a backup taken after change {last}",
            if first == last {
                "that change".to_owned()
            } else {
                format!("those {} changes", last - first + 1)
            }
        ),
    }
}

/// `doc#5`, or `doc#5-9` for a range.
fn changes(doc: &str, first: u64, last: u64) -> String {
    if first == last {
        format!("{doc}#{first}")
    } else {
        format!("{doc}#{first}-{last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SnapshotReason;

    fn snap(id: u64, seq: u64) -> SnapshotInfo {
        SnapshotInfo {
            id,
            seq,
            taken_at_ms: id * 10,
            reason: SnapshotReason::Periodic,
            size: 3,
        }
    }

    fn whole() -> DocRecords {
        DocRecords {
            doc: "d".into(),
            has_meta: true,
            snapshots: Some(vec![snap(1, 4), snap(2, 8)]),
            index: Some(vec![snap(1, 4), snap(2, 8)]),
            head: None,
            log: Some((5..=12).collect()),
            last_seq: None,
        }
    }

    fn locations(r: &DocRecords) -> Vec<String> {
        check(r).into_iter().map(|c| c.location).collect()
    }

    #[test]
    fn records_that_add_up_pass() {
        assert!(check(&whole()).is_empty());
        let fresh = DocRecords {
            doc: "new".into(),
            has_meta: true,
            snapshots: Some(vec![]),
            index: Some(vec![]),
            log: Some(vec![1, 2, 3]),
            ..DocRecords::default()
        };
        assert!(check(&fresh).is_empty());
    }

    #[test]
    fn gaps_after_the_snapshot_name_the_lost_changes() {
        let mut r = whole();
        r.log = Some(vec![5, 6, 7, 8, 9, 11, 12]);
        let found = check(&r);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].location, "d#10");
        assert!(
            found[0].problem.contains("after snapshot 2 (change 8)"),
            "{}",
            found[0].problem
        );

        // Changes 7-8 went from the kept tail, 9-11 from the document.
        r.log = Some(vec![5, 6, 12]);
        let found = check(&r);
        assert_eq!(locations(&r), vec!["d#7-8", "d#9-11"]);
        assert!(
            found[0].problem.contains("the document is whole"),
            "{}",
            found[0].problem
        );
        assert!(
            found[1].problem.contains("loads without those 3 changes"),
            "{}",
            found[1].problem
        );
    }

    #[test]
    fn without_a_snapshot_the_log_starts_at_one() {
        let r = DocRecords {
            doc: "d".into(),
            has_meta: true,
            snapshots: Some(vec![]),
            index: Some(vec![]),
            log: Some(vec![3, 4]),
            ..DocRecords::default()
        };
        assert_eq!(locations(&r), vec!["d#1-2"]);
    }

    #[test]
    fn a_recorded_newest_change_beyond_the_log_is_missing() {
        let mut r = whole();
        r.last_seq = Some(14);
        assert_eq!(locations(&r), vec!["d#13-14"]);
    }

    #[test]
    fn snapshots_and_the_index_must_agree() {
        let mut r = whole();
        r.snapshots = Some(vec![snap(2, 8)]);
        let found = check(&r);
        assert_eq!(locations(&r), vec!["d snapshot 1"]);
        assert!(
            found[0].problem.contains("state is gone"),
            "{}",
            found[0].problem
        );

        let mut r = whole();
        r.index = Some(vec![snap(1, 4)]);
        let found = check(&r);
        assert_eq!(locations(&r), vec!["d snapshot 2"]);
        assert!(found[0].problem.contains("missing from the snapshot index"));

        let mut r = whole();
        r.index = Some(vec![snap(1, 4), snap(2, 7)]);
        assert!(check(&r)[0].problem.contains("disagrees"));
    }

    #[test]
    fn a_missing_head_and_missing_metadata_are_reported() {
        let mut r = whole();
        r.head = Some(3);
        assert_eq!(locations(&r), vec!["d snapshot 3"]);
        let mut r = whole();
        r.has_meta = false;
        assert_eq!(locations(&r), vec!["d (metadata)"]);
    }
}
