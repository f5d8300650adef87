//! `EventId`: how a viewer names the last change it has.
//!
//! Written `<incarnation as 16 hex digits>-<seq>`. Clients treat it as opaque;
//! the server reads the sequence number to resume from, and the incarnation
//! to notice an id from a document that was deleted and created again.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId {
    pub incarnation: u64,
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.incarnation, self.seq)
    }
}

/// Not an event id weft wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a weft event id: {0:?}")]
pub struct BadEventId(pub String);

impl FromStr for EventId {
    type Err = BadEventId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadEventId(s.chars().take(64).collect());
        let (inc, seq) = s.trim().split_once('-').ok_or_else(bad)?;
        if inc.len() != 16 {
            return Err(bad());
        }
        Ok(EventId {
            incarnation: u64::from_str_radix(inc, 16).map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_ids() {
        let id = EventId {
            incarnation: 0xdead_beef,
            seq: 42,
        };
        assert_eq!(id.to_string(), "00000000deadbeef-42");
        assert_eq!("00000000deadbeef-42".parse(), Ok(id));
        for bad in [
            "",
            "42",
            "deadbeef-42",
            "00000000deadbeef-",
            "00000000deadbeef--1",
            "zzzzzzzzzzzzzzzz-1",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
    }
}
