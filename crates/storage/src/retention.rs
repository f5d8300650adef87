//! What of a document's history is kept: `RetentionPolicy` says which
//! snapshots, `LogRetention` how much of the update log behind them.
//!
//! Snapshots rotate like backups: the newest few, then one per hour for a
//! while, then one per day for longer. The log is kept for a time (every
//! point in that window can be rebuilt exactly) and at least a tail of
//! changes (for replay). Both are pure: given the snapshots and the time,
//! they say what to keep, so they are tested without a store or a clock.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use crate::SnapshotInfo;

const HOUR_MS: u64 = 3600 * 1000;
const DAY_MS: u64 = 24 * HOUR_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// The newest this many are always kept.
    pub keep_last: usize,
    /// Within this age, the newest snapshot of each hour is kept.
    pub hourly_for: Duration,
    /// Within this age, the newest snapshot of each day is kept.
    pub daily_for: Duration,
    /// Within `daily_for`, the newest snapshot of each run of this many
    /// changes is kept, so that rebuilding any point of a document edited
    /// fast replays at most about this many (0: none).
    pub every_changes: u64,
    /// The log's history window (`LogRetention::keep_for`): the newest
    /// snapshot taken before it is kept, for the log after it is, so that
    /// every point of the window rebuilds from it.
    pub history_window: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            keep_last: 20,
            hourly_for: Duration::from_secs(7 * 24 * 3600),
            daily_for: Duration::from_secs(90 * 24 * 3600),
            every_changes: 20_000,
            history_window: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// How much of the update log compaction keeps behind a new snapshot: at
/// least the newest `keep_tail` changes, and every change younger than
/// `keep_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRetention {
    pub keep_tail: u64,
    pub keep_for: Duration,
}

impl LogRetention {
    /// A tail of `keep_tail` changes, kept for no time beyond it.
    pub fn tail(keep_tail: u64) -> LogRetention {
        LogRetention {
            keep_tail,
            keep_for: Duration::ZERO,
        }
    }

    /// The newest sequence number compaction may drop the log through (0:
    /// none), for a document whose newest snapshot stands at `head_seq`,
    /// given its snapshots (the new one included) at `now_ms`.
    ///
    /// A change is old enough once a snapshot taken before the window
    /// includes it: a change is accepted before any snapshot holding it, so
    /// no log entry has to be read to know. Changes between that snapshot
    /// and the window are kept a little longer than asked; never less.
    pub fn drop_through(&self, head_seq: u64, snapshots: &[SnapshotInfo], now_ms: u64) -> u64 {
        let by_count = head_seq.saturating_sub(self.keep_tail);
        let window = u64::try_from(self.keep_for.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms.saturating_sub(window);
        let by_age = snapshots
            .iter()
            .filter(|s| s.taken_at_ms <= cutoff)
            .map(|s| s.seq)
            .max()
            .unwrap_or(0);
        by_count.min(by_age)
    }
}

impl RetentionPolicy {
    /// The ids of the snapshots to keep, out of `snapshots`, at `now_ms`.
    pub fn keep(&self, snapshots: &[SnapshotInfo], now_ms: u64) -> HashSet<u64> {
        let mut newest_first: Vec<&SnapshotInfo> = snapshots.iter().collect();
        newest_first.sort_by(|a, b| b.taken_at_ms.cmp(&a.taken_at_ms).then(b.id.cmp(&a.id)));

        // The newest snapshot always stays: compaction trims the log behind it.
        let mut keep: HashSet<u64> = newest_first
            .iter()
            .take(self.keep_last.max(1))
            .map(|s| s.id)
            .collect();
        let window = u64::try_from(self.history_window.as_millis()).unwrap_or(u64::MAX);
        let window_base = newest_first
            .iter()
            .find(|s| s.taken_at_ms <= now_ms.saturating_sub(window));
        keep.extend(window_base.map(|s| s.id));
        let mut hours = BTreeSet::new();
        let mut days = BTreeSet::new();
        let mut runs = BTreeSet::new();
        for s in newest_first {
            let age = now_ms.saturating_sub(s.taken_at_ms);
            if u128::from(age) <= self.hourly_for.as_millis()
                && hours.insert(s.taken_at_ms / HOUR_MS)
            {
                keep.insert(s.id);
            }
            if u128::from(age) <= self.daily_for.as_millis() && days.insert(s.taken_at_ms / DAY_MS)
            {
                keep.insert(s.id);
            }
            if self.every_changes > 0
                && u128::from(age) <= self.daily_for.as_millis()
                && runs.insert(s.seq / self.every_changes)
            {
                keep.insert(s.id);
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SnapshotReason;

    fn snap(id: u64, taken_at_ms: u64) -> SnapshotInfo {
        SnapshotInfo {
            id,
            seq: id,
            taken_at_ms,
            reason: SnapshotReason::Periodic,
            size: 1,
        }
    }

    #[test]
    fn keeps_the_newest_then_hourly_then_daily() {
        let policy = RetentionPolicy {
            keep_last: 2,
            hourly_for: Duration::from_secs(3 * 3600),
            daily_for: Duration::from_secs(3 * 24 * 3600),
            every_changes: 0,
            history_window: Duration::ZERO,
        };
        let now = 100 * DAY_MS;
        let snaps = vec![
            snap(1, now - 10 * DAY_MS),              // too old for any rule
            snap(2, now - 2 * DAY_MS - HOUR_MS),     // newest of its day
            snap(3, now - 2 * DAY_MS - 2 * HOUR_MS), // same day, older: dropped
            snap(4, now - 2 * HOUR_MS - 60_000),     // an hour bucket
            snap(5, now - 2 * HOUR_MS - 120_000),    // same hour, older: dropped
            snap(6, now - 1000),                     // newest
            snap(7, now - 2000),                     // second newest
            snap(8, now - 3000),                     // same hour as 6 and 7: dropped
        ];
        let mut kept: Vec<u64> = policy.keep(&snaps, now).into_iter().collect();
        kept.sort();
        assert_eq!(kept, vec![2, 4, 6, 7]);
    }

    #[test]
    fn the_newest_survives_any_policy() {
        let policy = RetentionPolicy {
            keep_last: 0,
            hourly_for: Duration::ZERO,
            daily_for: Duration::ZERO,
            every_changes: 0,
            history_window: Duration::ZERO,
        };
        let kept = policy.keep(&[snap(1, 0), snap(2, 5)], 1_000_000_000);
        assert_eq!(kept.into_iter().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn keeps_the_snapshot_the_history_window_rebuilds_from() {
        let policy = RetentionPolicy {
            keep_last: 1,
            hourly_for: Duration::ZERO,
            daily_for: Duration::ZERO,
            every_changes: 0,
            history_window: Duration::from_secs(30 * 24 * 3600),
        };
        let now = 100 * DAY_MS;
        let snaps = [
            snap(1, now - 40 * DAY_MS),
            snap(2, now - 35 * DAY_MS), // the newest before the window
            snap(3, now - 10 * DAY_MS),
            snap(4, now),
        ];
        let mut kept: Vec<u64> = policy.keep(&snaps, now).into_iter().collect();
        kept.sort();
        assert_eq!(kept, vec![2, 4]);
    }

    #[test]
    fn keeps_one_snapshot_per_run_of_changes_for_as_long_as_daily_ones() {
        let policy = RetentionPolicy {
            keep_last: 1,
            hourly_for: Duration::ZERO,
            daily_for: Duration::from_secs(3 * 24 * 3600),
            every_changes: 100,
            history_window: Duration::ZERO,
        };
        let now = 100 * DAY_MS;
        // A document typed fast: a snapshot every 40 changes within a minute.
        let mut snaps: Vec<SnapshotInfo> = (1..=10).map(|i| at(i * 40, now - 60_000 + i)).collect();
        snaps.push(at(20, now - 10 * DAY_MS)); // too old for any rule
        let mut kept: Vec<u64> = policy
            .keep(&snaps, now)
            .iter()
            .filter_map(|id| snaps.iter().find(|s| s.id == *id).map(|s| s.seq))
            .collect();
        kept.sort();
        // The newest of 0..100, 100..200, 200..300, 300..400, and 400.
        assert_eq!(kept, vec![80, 160, 280, 360, 400]);
    }

    fn at(seq: u64, taken_at_ms: u64) -> SnapshotInfo {
        SnapshotInfo {
            seq,
            ..snap(seq, taken_at_ms)
        }
    }

    #[test]
    fn the_log_is_kept_for_its_window_and_at_least_its_tail() {
        let now = 100 * DAY_MS;
        let month = LogRetention {
            keep_tail: 10,
            keep_for: Duration::from_secs(30 * 24 * 3600),
        };
        let snaps = [
            at(100, now - 40 * DAY_MS),
            at(500, now - 31 * DAY_MS),
            at(900, now - 29 * DAY_MS),
            at(1000, now),
        ];
        // Through the newest snapshot taken before the window, no further.
        assert_eq!(month.drop_through(1000, &snaps, now), 500);
        // Nothing old enough: nothing goes.
        assert_eq!(month.drop_through(1000, &snaps[2..], now), 0);
        // The tail holds even when everything is old.
        let old = [at(1000, now - 60 * DAY_MS), at(1005, now)];
        assert_eq!(month.drop_through(1005, &old, now), 995);
        // No window: the tail behind the new snapshot, as before history.
        assert_eq!(LogRetention::tail(10).drop_through(1000, &snaps, now), 990);
    }
}
