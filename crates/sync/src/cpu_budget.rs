//! `CpuBudget`: how much of the server's time each connection's updates may
//! take.
//!
//! Integrating a Yjs update usually takes microseconds, but a crafted one (a
//! fresh client typing thousands of characters one at a time at the spot
//! where other such clients typed theirs) makes yrs compare every item with
//! every other: seconds of CPU, and yrs cannot be stopped midway. So the
//! room measures each update (CPU time of its thread, from the injected
//! clock) and charges it to the connection that sent it. A connection past
//! its budget is closed; the update that overran it was integrated, so it is
//! stored and delivered like any other (memory must match the disk). Two
//! limits, both from [`CpuLimits`]:
//!
//! - **per update**: one update may take at most `per_update`;
//! - **in total**: every update draws on an allowance of `allowance` that
//!   refills at `refill_per_sec` each second (a leaky bucket), so a
//!   connection may spend a burst, and a bounded share of a core for good.
//!
//! Plain values in, a verdict out: it reads no clock itself, so it is tested
//! with made-up durations and no sleeps.

use std::collections::HashMap;
use std::time::Duration;

use crate::doc_state::ConnId;

/// What one connection's updates may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuLimits {
    /// The most one update may take. Zero: no limits at all.
    pub per_update: Duration,
    /// What a connection's updates may take together, at once.
    pub allowance: Duration,
    /// How much of the allowance comes back every second.
    pub refill_per_sec: Duration,
}

impl CpuLimits {
    /// The limits `--max-update-cpu` sets: one update may take `limit`; a
    /// connection's updates together may take twice that at once, and a
    /// fifth of it per second in the long run.
    pub fn per_update(limit: Duration) -> Self {
        CpuLimits {
            per_update: limit,
            allowance: limit.saturating_mul(2),
            refill_per_sec: limit / 5,
        }
    }

    pub fn is_off(&self) -> bool {
        self.per_update.is_zero()
    }
}

/// Why a connection's updates cost too much.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overrun {
    #[error(
        "an update took {} ms of server time; the limit is {} ms per update",
        .took.as_millis(),
        .limit.as_millis()
    )]
    Update { took: Duration, limit: Duration },
    #[error(
        "updates took {} ms of server time in a short while; the limit is {} ms, refilled at {} ms per second",
        .used.as_millis(),
        .allowance.as_millis(),
        .refill.as_millis()
    )]
    Total {
        used: Duration,
        allowance: Duration,
        refill: Duration,
    },
}

impl Overrun {
    /// Which limit was passed, as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Overrun::Update { .. } => "update",
            Overrun::Total { .. } => "total",
        }
    }
}

/// Where one connection stands: what it has used (after refills) as of when.
#[derive(Debug, Clone, Copy)]
struct Spent {
    level: Duration,
    at: Duration,
}

/// Every connection's spending in one room.
#[derive(Debug)]
pub(crate) struct CpuBudget {
    limits: CpuLimits,
    spent: HashMap<ConnId, Spent>,
}

impl CpuBudget {
    pub fn new(limits: CpuLimits) -> Self {
        CpuBudget {
            limits,
            spent: HashMap::new(),
        }
    }

    /// Charges an update that took `took` to `conn`, at `now` (a reading of
    /// a clock that does not go back; if it does, nothing refills).
    pub fn charge(&mut self, conn: ConnId, took: Duration, now: Duration) -> Result<(), Overrun> {
        let limits = self.limits;
        if limits.is_off() {
            return Ok(());
        }
        let spent = self.spent.entry(conn).or_insert(Spent {
            level: Duration::ZERO,
            at: now,
        });
        let elapsed = now.saturating_sub(spent.at).as_secs_f64();
        let refilled = Duration::try_from_secs_f64(limits.refill_per_sec.as_secs_f64() * elapsed)
            .unwrap_or(Duration::MAX);
        spent.level = spent.level.saturating_sub(refilled).saturating_add(took);
        spent.at = spent.at.max(now);
        if took > limits.per_update {
            return Err(Overrun::Update {
                took,
                limit: limits.per_update,
            });
        }
        if spent.level > limits.allowance {
            return Err(Overrun::Total {
                used: spent.level,
                allowance: limits.allowance,
                refill: limits.refill_per_sec,
            });
        }
        Ok(())
    }

    /// `conn` is gone.
    pub fn forget(&mut self, conn: ConnId) {
        self.spent.remove(&conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn budget() -> CpuBudget {
        CpuBudget::new(CpuLimits::per_update(Duration::from_secs(1)))
    }

    #[test]
    fn the_default_limits_follow_from_one_figure() {
        let limits = CpuLimits::per_update(Duration::from_secs(1));
        assert_eq!(limits.allowance, 2000 * MS);
        assert_eq!(limits.refill_per_sec, 200 * MS);
    }

    #[test]
    fn one_update_past_the_limit_overruns_at_once() {
        let mut b = budget();
        assert_eq!(b.charge(1, 1000 * MS, Duration::ZERO), Ok(()));
        let err = b
            .charge(2, 1001 * MS, Duration::ZERO)
            .expect_err("too long");
        assert_eq!(err.label(), "update");
        assert!(err.to_string().contains("1001 ms"), "{err}");
    }

    #[test]
    fn updates_together_may_take_the_allowance_and_no_more() {
        let mut b = budget();
        let now = Duration::from_secs(100);
        assert_eq!(b.charge(1, 900 * MS, now), Ok(()));
        assert_eq!(b.charge(1, 900 * MS, now), Ok(()));
        assert_eq!(b.charge(1, 200 * MS, now), Ok(()), "exactly the allowance");
        let err = b.charge(1, MS, now).expect_err("past the allowance");
        assert_eq!(err.label(), "total");
        // Each connection has its own.
        assert_eq!(b.charge(2, 900 * MS, now), Ok(()));
    }

    #[test]
    fn the_allowance_refills_with_time() {
        let mut b = budget();
        let t0 = Duration::from_secs(100);
        assert_eq!(b.charge(1, 1000 * MS, t0), Ok(()));
        assert_eq!(b.charge(1, 1000 * MS, t0), Ok(()));
        // One second later, 200 ms are back.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.charge(1, 200 * MS, t1), Ok(()));
        assert!(b.charge(1, MS, t1).is_err());
        // A steady fifth of a core is sustainable for good.
        let mut b = budget();
        for s in 0..1000 {
            let now = t0 + Duration::from_secs(s);
            assert_eq!(b.charge(1, 200 * MS, now), Ok(()), "second {s}");
        }
        // A steady quarter is not.
        let mut b = budget();
        let over = (0..100).find(|&s| b.charge(1, 250 * MS, t0 + Duration::from_secs(s)).is_err());
        assert!(over.is_some_and(|s| s > 10), "{over:?}");
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing() {
        let mut b = budget();
        let t0 = Duration::from_secs(100);
        assert_eq!(b.charge(1, 1000 * MS, t0), Ok(()));
        assert_eq!(b.charge(1, 900 * MS, t0), Ok(()));
        assert!(b.charge(1, 200 * MS, t0 - Duration::from_secs(50)).is_err());
    }

    #[test]
    fn a_forgotten_connection_starts_afresh_and_zero_turns_it_off() {
        let mut b = budget();
        let now = Duration::from_secs(1);
        assert_eq!(b.charge(1, 1000 * MS, now), Ok(()));
        assert_eq!(b.charge(1, 1000 * MS, now), Ok(()));
        b.forget(1);
        assert_eq!(b.charge(1, 1000 * MS, now), Ok(()));

        let mut off = CpuBudget::new(CpuLimits::per_update(Duration::ZERO));
        assert_eq!(off.charge(1, Duration::from_secs(60), now), Ok(()));

        // Absurd settings and readings saturate instead of overflowing.
        let mut huge = CpuBudget::new(CpuLimits::per_update(Duration::MAX));
        assert_eq!(huge.charge(1, Duration::MAX, now), Ok(()));
        assert_eq!(huge.charge(1, Duration::MAX, Duration::MAX), Ok(()));
    }
}
