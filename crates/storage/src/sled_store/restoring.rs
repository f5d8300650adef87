//! `Restoring`: the names of documents a backup is being restored into.
//!
//! A restore writes a document's snapshots and log without holding the
//! journal's lock (which every append of every document needs, and a
//! large history takes a while to write), and its metadata last. Until it
//! is done, an append that would create the same name is refused (the
//! room reloads and finds the restored document), so the two never mix.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::DocName;

#[derive(Debug, Default)]
pub(super) struct Restoring {
    names: Mutex<HashSet<DocName>>,
}

/// A name held for one restore; let go when dropped.
#[derive(Debug)]
pub(super) struct Claim {
    restoring: Arc<Restoring>,
    name: DocName,
}

impl Restoring {
    /// Holds `doc` for a restore; `None` if another restore holds it.
    pub(super) fn claim(self: &Arc<Self>, doc: &DocName) -> Option<Claim> {
        self.lock().insert(doc.clone()).then(|| Claim {
            restoring: self.clone(),
            name: doc.clone(),
        })
    }

    /// Whether a restore holds `doc`.
    pub(super) fn holds(&self, doc: &DocName) -> bool {
        self.lock().contains(doc)
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<DocName>> {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.restoring.lock().remove(&self.name);
    }
}
