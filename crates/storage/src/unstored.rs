//! `Unstored`: log entries the embedded store was given but could not make
//! durable.
//!
//! sled applies a batch to its in-memory tree before flushing it, and when
//! the flush fails (a full disk) or never returns (a stuck one) the entries
//! stay readable in memory although they may never reach the disk. The
//! engine was told the append failed, so it never acknowledged them; serving
//! them as stored (to a reload, a replay, a backup) would show readers
//! changes a restart then takes away. So each document's range of such
//! sequence numbers is remembered here and skipped by every read, and the
//! next append that succeeds overwrites or removes them.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::{Mutex, MutexGuard};

use crate::DocName;

#[derive(Debug, Default)]
pub(crate) struct Unstored {
    ranges: Mutex<HashMap<DocName, RangeInclusive<u64>>>,
}

impl Unstored {
    /// An append of `first..=last` failed.
    pub(crate) fn failed(&self, doc: &DocName, first: u64, last: u64) {
        let mut ranges = self.lock();
        let range = match ranges.get(doc) {
            Some(r) => (*r.start()).min(first)..=(*r.end()).max(last),
            None => first..=last,
        };
        ranges.insert(doc.clone(), range);
    }

    /// Sequence numbers to skip when reading `doc`'s log, if any.
    pub(crate) fn range(&self, doc: &DocName) -> Option<RangeInclusive<u64>> {
        self.lock().get(doc).cloned()
    }

    /// Whether `seq` of `doc` must not be served.
    pub(crate) fn hides(&self, doc: &DocName, seq: u64) -> bool {
        self.lock().get(doc).is_some_and(|r| r.contains(&seq))
    }

    /// `doc`'s unstored entries were overwritten or removed durably.
    pub(crate) fn cleared(&self, doc: &DocName) {
        self.lock().remove(doc);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DocName, RangeInclusive<u64>>> {
        self.ranges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
