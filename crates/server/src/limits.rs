//! Connection limits: how many connections the server takes in all and
//! from one client address, and how fast one connection may send.
//!
//! The per-address count is a map of the addresses with live connections
//! (so it holds no more entries than there are connections), behind one
//! lock taken only when a connection comes and goes; IPv6 addresses count
//! by their /64, as the limit on new documents counts them.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::creation_limit::bucket_of;

/// Counts live connections (WebSocket and SSE) against a maximum, in all
/// and per client address.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    live: Arc<AtomicUsize>,
    max: usize,
    per_client: Option<Arc<PerClient>>,
}

/// Live connections per client address, and how many one may have.
#[derive(Debug)]
struct PerClient {
    max: usize,
    live: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Counts are whole after any panic: each change is one statement.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionSlot {
    live: Arc<AtomicUsize>,
    client: Option<(Arc<PerClient>, IpAddr)>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        if let Some((per_client, addr)) = &self.client {
            let mut counts = per_client.counts();
            if let Some(n) = counts.get_mut(addr) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(addr);
                }
            }
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server has its maximum of connections.
    ServerFull(usize),
    /// The client's address has its maximum.
    ClientFull(usize),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::ServerFull(max) => write!(
                f,
                "the server has its maximum of {max} connections; try again later"
            ),
            Refused::ClientFull(max) => write!(
                f,
                "your address has its maximum of {max} connections to this server; \
                 close some before opening more"
            ),
        }
    }
}

impl ConnectionLimit {
    /// `max` 0: no limit.
    pub fn new(max: usize) -> Self {
        ConnectionLimit {
            live: Arc::default(),
            max,
            per_client: None,
        }
    }

    /// The same, with at most `max` live connections from one address
    /// (0: no limit per address).
    pub fn per_client(self, max: usize) -> Self {
        let per_client = (max > 0).then(|| {
            Arc::new(PerClient {
                max,
                live: Mutex::default(),
            })
        });
        ConnectionLimit { per_client, ..self }
    }

    /// A place for one more connection, unless the server is full.
    pub fn try_admit(&self) -> Option<ConnectionSlot> {
        let admitted = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (self.max == 0 || n < self.max).then_some(n + 1)
            })
            .is_ok();
        admitted.then(|| ConnectionSlot {
            live: self.live.clone(),
            client: None,
        })
    }

    /// A place for one more connection from `client`, unless the server
    /// or that address has its maximum.
    pub fn admit(&self, client: IpAddr) -> Result<ConnectionSlot, Refused> {
        let mut slot = self.try_admit().ok_or(Refused::ServerFull(self.max))?;
        if let Some(per_client) = &self.per_client {
            let addr = bucket_of(client);
            let mut counts = per_client.counts();
            let n = counts.entry(addr).or_insert(0);
            if *n >= per_client.max {
                return Err(Refused::ClientFull(per_client.max));
            }
            *n += 1;
            slot.client = Some((per_client.clone(), addr));
        }
        Ok(slot)
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
    fn one_address_gets_its_share_and_no_more() {
        let limit = ConnectionLimit::new(10).per_client(2);
        let a: IpAddr = "192.0.2.1".parse().expect("an address");
        let b: IpAddr = "192.0.2.2".parse().expect("an address");
        let first = limit.admit(a).expect("first");
        let _second = limit.admit(a).expect("second");
        assert_eq!(limit.admit(a).err(), Some(Refused::ClientFull(2)));
        let _other = limit.admit(b).expect("another address");
        drop(first);
        let _again = limit.admit(a).expect("a freed place");

        // IPv6 counts by /64; the server's limit still holds.
        let v6 = |s: &str| s.parse::<IpAddr>().expect("an address");
        let _x = limit.admit(v6("2001:db8::1")).expect("first");
        let _y = limit.admit(v6("2001:db8::ffff:1")).expect("second");
        assert!(limit.admit(v6("2001:db8::2")).is_err(), "the same /64");
        let rest: Vec<_> = (3..=9)
            .filter_map(|i| limit.admit(v6(&format!("2001:db8:{i}::1"))).ok())
            .collect();
        assert_eq!(rest.len(), 5, "the rest of the server's 10 places");
        assert_eq!(
            limit.admit(v6("2001:db8:99::1")).err(),
            Some(Refused::ServerFull(10))
        );
        assert_eq!(
            limit.per_client.as_ref().map(|p| p.counts().len()),
            Some(8),
            "only addresses with live connections are kept"
        );
    }

    #[test]
    fn the_bucket_allows_a_burst_then_refuses() {
        let limiter = message_rate(1, 5).expect("limited");
        let allowed = (0..20).filter(|_| limiter.check().is_ok()).count();
        assert_eq!(allowed, 5);
        assert!(message_rate(0, 10).is_none());
    }
}
