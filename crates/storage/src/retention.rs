//! `RetentionPolicy`: which snapshots of a document's history to keep.
//!
//! Like a backup rotation: the newest few, then one per hour for a while,
//! then one per day for longer. Pure: given the snapshots and the time, it
//! says which to keep, so it is tested without a store or a clock.

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
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            keep_last: 20,
            hourly_for: Duration::from_secs(7 * 24 * 3600),
            daily_for: Duration::from_secs(90 * 24 * 3600),
        }
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
        let mut hours = BTreeSet::new();
        let mut days = BTreeSet::new();
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
        };
        let kept = policy.keep(&[snap(1, 0), snap(2, 5)], 1_000_000_000);
        assert_eq!(kept.into_iter().collect::<Vec<_>>(), vec![2]);
    }
}
