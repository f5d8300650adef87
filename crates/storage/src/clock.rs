//! The wall clock as the stores read it: milliseconds since the Unix epoch,
//! for a new document's creation time and the writes that probe a store.
//! (The engine's times come from its injected `Clock`; these are the
//! store's own.)

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is set before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
