//! Creating documents: the engine's question to whoever limits it.
//!
//! A document exists once its first change is stored. When a change would
//! create one, the room asks the [`CreationLimit`] whether that client may
//! create a document now; the answer is a plain call (no I/O, no waiting),
//! so the engine stays free of clocks and sockets. The server answers it
//! with a per-address rate limit. Changes to documents that exist, and
//! changes with no client address (an operator's import), are never asked
//! about.

use std::fmt::Debug;
use std::time::Duration;

/// Where a change comes from, as the creation limit counts it: the
/// client's network address as the 128 bits of an IPv6 address (IPv4
/// mapped into IPv6). The engine only passes it along; it names no
/// network types, since it does no network I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub u128);

/// Decides whether a client may create one more document now.
pub trait CreationLimit: Debug + Send + Sync + 'static {
    /// `Ok` if `client` may create a document now (and counts it), or how
    /// long until it may.
    fn admit(&self, client: ClientAddr) -> Result<(), Duration>;
}

/// Whole seconds to tell a client to wait: at least one, rounded up.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(10)), 10);
    }
}
