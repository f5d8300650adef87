//! `FailureThrottle`: slows down admin-key guessing, per client address.
//!
//! Each address has a bucket of wrong-key allowances: `burst` to start with,
//! one more back every `interval`, up to `burst`. A wrong key spends one.
//! While an address's bucket is empty, every admin-key request from it is
//! refused (429 with Retry-After) *without the key being compared*, the right
//! key included: a locked-out address learns nothing about its guesses. A
//! right key spends nothing, so an operator never notices the throttle.
//!
//! Hand-written rather than governor's keyed limiter, which can only spend a
//! cell, never ask whether one is left: the lockout has to be known before
//! the key is compared, and the check, the comparison and the spending have
//! to happen as one step (under one lock here), or concurrent requests could
//! each have a guess compared past the limit.
//!
//! Addresses: IPv6 ones count by their /64, the block one host usually
//! holds; a request with no known address shares one bucket with all such.
//! Memory is bounded: buckets that have filled up again are forgotten (swept
//! at most once a second, once there are many), and beyond `max_tracked`
//! addresses the newcomers share that one bucket too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses remembered at most (a few MiB).
const MAX_TRACKED: usize = 65_536;
/// Below this many addresses, no sweeping is needed.
const SWEEP_ABOVE: usize = 1024;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What became of one admin-key attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Right,
    /// Wrong, and one allowance spent.
    Wrong,
    /// Not compared: the address has no allowance left for this long.
    LockedOut(Duration),
}

#[derive(Debug)]
pub struct FailureThrottle {
    burst: f64,
    interval: Duration,
    max_tracked: usize,
    state: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    /// `None`: requests with no known address, and overflow.
    by_client: HashMap<Option<IpAddr>, Bucket>,
    next_sweep: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Wrong keys still allowed right now (fractions refill over time).
    allowance: f64,
    at: Instant,
}

impl FailureThrottle {
    /// `burst` wrong keys at once, then one per `interval` (a zero interval
    /// turns the throttle off).
    pub fn new(burst: u32, interval: Duration) -> FailureThrottle {
        Self::with_capacity(burst, interval, MAX_TRACKED)
    }

    fn with_capacity(burst: u32, interval: Duration, max_tracked: usize) -> FailureThrottle {
        FailureThrottle {
            burst: f64::from(burst.max(1)),
            interval,
            max_tracked: max_tracked.max(1),
            state: Mutex::new(Buckets {
                by_client: HashMap::new(),
                next_sweep: Instant::now(),
            }),
        }
    }

    /// Runs `is_right` (the key comparison) unless `client` is locked out,
    /// and spends an allowance if it says no.
    pub fn attempt(&self, client: Option<IpAddr>, is_right: impl FnOnce() -> bool) -> Attempt {
        self.attempt_at(client, Instant::now(), is_right)
    }

    fn attempt_at(
        &self,
        client: Option<IpAddr>,
        now: Instant,
        is_right: impl FnOnce() -> bool,
    ) -> Attempt {
        if self.interval.is_zero() {
            return if is_right() {
                Attempt::Right
            } else {
                Attempt::Wrong
            };
        }
        // A panic elsewhere while holding the lock leaves plain numbers
        // behind, still usable.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.sweep(&mut state, now);
        let key = self.key_for(&state, client.map(group));
        let bucket = state.by_client.entry(key).or_insert(Bucket {
            allowance: self.burst,
            at: now,
        });
        self.refill(bucket, now);
        if bucket.allowance < 1.0 {
            return Attempt::LockedOut(self.interval.mul_f64(1.0 - bucket.allowance));
        }
        if is_right() {
            Attempt::Right
        } else {
            bucket.allowance -= 1.0;
            Attempt::Wrong
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let earned =
            now.saturating_duration_since(bucket.at).as_secs_f64() / self.interval.as_secs_f64();
        bucket.allowance = (bucket.allowance + earned).min(self.burst);
        bucket.at = now;
    }

    /// The bucket `client` uses: its own, or the shared one when full.
    fn key_for(&self, state: &Buckets, client: Option<IpAddr>) -> Option<IpAddr> {
        if state.by_client.contains_key(&client) || state.by_client.len() < self.max_tracked {
            client
        } else {
            None
        }
    }

    /// Forgets buckets that have filled up again: they are as good as new.
    fn sweep(&self, state: &mut Buckets, now: Instant) {
        if state.by_client.len() < SWEEP_ABOVE.min(self.max_tracked) || now < state.next_sweep {
            return;
        }
        state.next_sweep = now + SWEEP_EVERY;
        state.by_client.retain(|_, b| {
            let mut b = *b;
            self.refill(&mut b, now);
            b.allowance < self.burst
        });
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_client
            .len()
    }
}

/// IPv4 as is (also when mapped into IPv6); IPv6 by its /64.
fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("address"))
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let t = FailureThrottle::new(3, SEC);
        let start = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(t.attempt_at(a, start, || false), Attempt::Wrong);
        }
        assert_eq!(t.attempt_at(a, start, || false), Attempt::LockedOut(SEC));
        let half = start + SEC / 2;
        assert_eq!(t.attempt_at(a, half, || false), Attempt::LockedOut(SEC / 2));
        assert_eq!(t.attempt_at(a, start + SEC, || false), Attempt::Wrong);
        assert!(matches!(
            t.attempt_at(a, start + SEC, || false),
            Attempt::LockedOut(_)
        ));
        // Another address is unaffected.
        assert_eq!(
            t.attempt_at(ip("192.0.2.2"), start, || false),
            Attempt::Wrong
        );
    }

    #[test]
    fn locked_out_keys_are_not_compared_and_right_keys_cost_nothing() {
        let t = FailureThrottle::new(1, SEC);
        let now = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..100 {
            assert_eq!(t.attempt_at(a, now, || true), Attempt::Right);
        }
        assert_eq!(t.attempt_at(a, now, || false), Attempt::Wrong);
        let mut compared = false;
        let result = t.attempt_at(a, now, || {
            compared = true;
            true
        });
        assert!(matches!(result, Attempt::LockedOut(_)));
        assert!(!compared, "the key was compared while locked out");
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let t = FailureThrottle::new(1, SEC);
        let now = Instant::now();
        assert_eq!(
            t.attempt_at(ip("2001:db8::1"), now, || false),
            Attempt::Wrong
        );
        assert!(matches!(
            t.attempt_at(ip("2001:db8::ffff:2"), now, || false),
            Attempt::LockedOut(_)
        ));
        assert_eq!(
            t.attempt_at(ip("2001:db8:0:1::1"), now, || false),
            Attempt::Wrong
        );
        assert_eq!(t.attempt_at(ip("192.0.2.9"), now, || false), Attempt::Wrong);
        assert!(matches!(
            t.attempt_at(ip("::ffff:192.0.2.9"), now, || false),
            Attempt::LockedOut(_)
        ));
    }

    #[test]
    fn memory_is_bounded_and_full_buckets_are_forgotten() {
        let t = FailureThrottle::with_capacity(1, SEC, 4);
        let start = Instant::now();
        for i in 1..=4 {
            t.attempt_at(ip(&format!("192.0.2.{i}")), start, || false);
        }
        // A fifth address shares the overflow bucket with unknown clients.
        assert_eq!(
            t.attempt_at(ip("192.0.2.5"), start, || false),
            Attempt::Wrong
        );
        assert!(matches!(
            t.attempt_at(None, start, || false),
            Attempt::LockedOut(_)
        ));
        assert_eq!(t.tracked(), 5, "four addresses and the shared bucket");
        // Once they have refilled, they are swept away.
        let later = start + 2 * SEC;
        assert_eq!(
            t.attempt_at(ip("192.0.2.6"), later, || false),
            Attempt::Wrong
        );
        assert_eq!(t.tracked(), 1);
    }

    #[test]
    fn a_zero_interval_turns_it_off() {
        let t = FailureThrottle::new(1, Duration::ZERO);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(t.attempt_at(ip("192.0.2.1"), now, || false), Attempt::Wrong);
        }
    }
}
