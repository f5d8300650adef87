//! Connection limits: how many connections the server takes in all, and how
//! fast one connection may send.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Counts live connections (WebSocket and SSE) against a maximum.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    live: Arc<AtomicUsize>,
    max: usize,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimit {
    /// `max` 0: no limit.
    pub fn new(max: usize) -> Self {
        ConnectionLimit {
            live: Arc::default(),
            max,
        }
    }

    /// A place for one more connection, unless the server is full.
    pub fn try_admit(&self) -> Option<ConnectionSlot> {
        let admitted = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (self.max == 0 || n < self.max).then_some(n + 1)
            })
            .is_ok();
        admitted.then(|| ConnectionSlot(self.live.clone()))
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// A token bucket for one connection's inbound messages: `per_sec`
/// sustained, `burst` at once. `None` when unlimited (0).
pub fn message_rate(per_sec: u32, burst: u32) -> Option<DefaultDirectRateLimiter> {
    let rate = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst.max(per_sec)).unwrap_or(rate);
    Some(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_freed() {
        let limit = ConnectionLimit::new(2);
        let a = limit.try_admit().expect("first");
        let _b = limit.try_admit().expect("second");
        assert!(limit.try_admit().is_none());
        drop(a);
        assert!(limit.try_admit().is_some());
        let unlimited = ConnectionLimit::new(0);
        let all: Vec<_> = (0..100).filter_map(|_| unlimited.try_admit()).collect();
        assert_eq!(all.len(), 100);
    }

    #[test]
    fn the_bucket_allows_a_burst_then_refuses() {
        let limiter = message_rate(1, 5).expect("limited");
        let allowed = (0..20).filter(|_| limiter.check().is_ok()).count();
        assert_eq!(allowed, 5);
        assert!(message_rate(0, 10).is_none());
    }
}
