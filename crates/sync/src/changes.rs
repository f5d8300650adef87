//! `ChangeFeed`: which documents changed lately, for change notifications.
//!
//! Rooms record each stored batch; a consumer (the webhook sender) takes the
//! documents that have been quiet for a debounce period, or that have kept
//! changing past a maximum wait, one entry per document however many changes
//! it saw. Memory is one entry per recently changed document.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use weft_storage::DocName;

/// What changed in one document since it was last taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub incarnation: u64,
    pub last_seq: u64,
    pub first_change_ms: u64,
    pub last_change_ms: u64,
}

#[derive(Debug, Default)]
pub struct ChangeFeed {
    pending: Mutex<HashMap<DocName, Pending>>,
    notify: Notify,
}

impl ChangeFeed {
    pub fn record(&self, doc: &DocName, incarnation: u64, last_seq: u64, now_ms: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .entry(doc.clone())
            .and_modify(|p| {
                p.last_seq = last_seq;
                p.last_change_ms = now_ms;
                p.incarnation = incarnation;
            })
            .or_insert(Pending {
                incarnation,
                last_seq,
                first_change_ms: now_ms,
                last_change_ms: now_ms,
            });
        drop(pending);
        self.notify.notify_one();
    }

    /// Takes the documents that are due: quiet for `debounce_ms`, or first
    /// changed more than `max_wait_ms` ago.
    pub fn take_due(
        &self,
        now_ms: u64,
        debounce_ms: u64,
        max_wait_ms: u64,
    ) -> Vec<(DocName, Pending)> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let due: Vec<DocName> = pending
            .iter()
            .filter(|(_, p)| {
                now_ms.saturating_sub(p.last_change_ms) >= debounce_ms
                    || now_ms.saturating_sub(p.first_change_ms) >= max_wait_ms
            })
            .map(|(d, _)| d.clone())
            .collect();
        due.into_iter()
            .filter_map(|d| pending.remove(&d).map(|p| (d, p)))
            .collect()
    }

    /// Waits until something is recorded.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounces_per_document_with_a_maximum_wait() {
        let feed = ChangeFeed::default();
        let a = DocName::new("a").expect("name");
        let b = DocName::new("b").expect("name");
        for (seq, t) in [(1, 0), (2, 500), (3, 1500)] {
            feed.record(&a, 9, seq, t);
        }
        feed.record(&b, 9, 1, 1000);
        assert!(
            feed.take_due(2000, 2000, 10_000).is_empty(),
            "both still busy"
        );
        let due = feed.take_due(3100, 2000, 10_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, b);
        let due = feed.take_due(3600, 2000, 10_000);
        assert_eq!(
            due[0].1,
            Pending {
                incarnation: 9,
                last_seq: 3,
                first_change_ms: 0,
                last_change_ms: 1500
            }
        );
        // A document that never stops changing is still reported.
        for t in (0..20_000).step_by(100) {
            feed.record(&a, 9, t, 10_000 + t);
        }
        assert_eq!(feed.take_due(29_950, 2000, 10_000).len(), 1);
    }
}
