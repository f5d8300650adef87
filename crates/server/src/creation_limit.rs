//! `NewDocumentLimit`: how many documents one client address may create
//! (`--max-new-docs-per-minute`); the server's answer to the engine's
//! [`CreationLimit`] question, asked only for a change that would create a
//! document.
//!
//! One token bucket per address, from governor's keyed rate limiter:
//! `per_minute` sustained, at most [`BURST`] at once. IPv6 clients count
//! by their /64 (one host usually holds a whole /64, so single addresses
//! would cost an attacker nothing), IPv4-mapped IPv6 as the IPv4 address.
//! Every [`FORGET_EVERY`] checks, addresses whose bucket has refilled are
//! dropped, so memory follows the addresses creating documents lately,
//! not every address ever seen.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use weft_sync::{ClientAddr, CreationLimit};

/// The most documents one address may create at once, however high the
/// rate (lower rates allow a burst of the rate itself).
pub const BURST: u32 = 10;

/// How many checks go by between two sweeps of refilled buckets.
const FORGET_EVERY: u64 = 1024;

/// Per-address limit on creating documents.
pub struct NewDocumentLimit {
    per_minute: u32,
    buckets: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
}

impl std::fmt::Debug for NewDocumentLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDocumentLimit")
            .field("per_minute", &self.per_minute)
            .field("addresses", &self.buckets.len())
            .finish()
    }
}

impl NewDocumentLimit {
    /// `per_minute` documents a minute per address; `None` for 0 (no limit).
    pub fn per_minute(per_minute: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_minute)?;
        let burst = NonZeroU32::new(per_minute.min(BURST)).unwrap_or(rate);
        Some(NewDocumentLimit {
            per_minute,
            buckets: RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst)),
            checks: AtomicU64::new(0),
        })
    }

    fn forget_refilled_now_and_then(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
    }
}

impl CreationLimit for NewDocumentLimit {
    fn admit(&self, client: ClientAddr) -> Result<(), Duration> {
        self.forget_refilled_now_and_then();
        let address = IpAddr::V6(Ipv6Addr::from(client.0));
        self.buckets
            .check_key(&bucket_of(address))
            .map_err(|not_until| not_until.wait_time_from(self.buckets.clock().now()))
    }
}

/// A client's address as the engine passes it along.
pub fn client_addr(ip: IpAddr) -> ClientAddr {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    ClientAddr(u128::from(v6))
}

/// The key an address counts under: IPv4 as is, IPv6 by its /64.
pub(crate) fn bucket_of(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(net))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> ClientAddr {
        client_addr(s.parse().expect("an address"))
    }

    #[test]
    fn an_address_gets_its_burst_then_waits_and_others_are_not_affected() {
        let limit = NewDocumentLimit::per_minute(60).expect("limited");
        let a = ip("192.0.2.1");
        let admitted = (0..50).filter(|_| limit.admit(a).is_ok()).count();
        assert_eq!(admitted, BURST as usize);
        let wait = limit.admit(a).expect_err("over the limit");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limit.admit(ip("192.0.2.2")).is_ok());
        assert!(NewDocumentLimit::per_minute(0).is_none());
    }

    #[test]
    fn a_low_rate_allows_a_burst_of_itself() {
        let limit = NewDocumentLimit::per_minute(3).expect("limited");
        let a = ip("192.0.2.1");
        assert_eq!((0..10).filter(|_| limit.admit(a).is_ok()).count(), 3);
        let wait = limit.admit(a).expect_err("over the limit");
        assert!(wait > Duration::from_secs(15), "{wait:?}");
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let limit = NewDocumentLimit::per_minute(2).expect("limited");
        assert!(limit.admit(ip("2001:db8::1")).is_ok());
        assert!(limit.admit(ip("2001:db8::ffff:2")).is_ok());
        assert!(
            limit.admit(ip("2001:db8::3")).is_err(),
            "one /64, one bucket"
        );
        assert!(limit.admit(ip("2001:db8:0:1::1")).is_ok(), "another /64");
        assert!(limit.admit(ip("192.0.2.9")).is_ok());
        assert!(limit.admit(ip("::ffff:192.0.2.9")).is_ok());
        assert!(limit.admit(ip("192.0.2.9")).is_err());
    }

    #[test]
    fn refilled_addresses_are_forgotten() {
        let limit = NewDocumentLimit::per_minute(600_000).expect("limited");
        for i in 0..FORGET_EVERY - 1 {
            let _ = limit.admit(ClientAddr(u128::from(i) << 64 | 1 << 127));
        }
        assert_eq!(limit.buckets.len() as u64, FORGET_EVERY - 1);
        // Each bucket refills in a tenth of a millisecond at this rate.
        std::thread::sleep(Duration::from_millis(20));
        let _ = limit.admit(ip("192.0.2.1"));
        assert!(limit.buckets.len() <= 1, "{} left", limit.buckets.len());
    }
}
