//! `DiskGuard`: how the embedded store calls sled, so that a stuck or full
//! disk never holds anyone without a deadline.
//!
//! sled calls block: on the disk, and inside sled itself (sled 0.34 sets a
//! sticky error when a background write fails, and a `flush` already
//! waiting for that write may never be woken). So each call runs on tokio's
//! blocking pool and its caller waits at most a deadline. A call that misses
//! it cannot be cancelled: it is counted as stuck until it returns, and
//! while [`MAX_STUCK`] calls are stuck every new one is refused at once
//! rather than tying up another thread.
//!
//! The first write that fails or misses its deadline marks the store
//! *failed*: from then on writes are refused at once (no thread waits on a
//! disk known to be bad), while reads go on. Whether it takes writes again
//! is found out by a probe that runs one at a time (single flight): callers
//! that arrive while one is running share its outcome, so a stuck probe
//! never piles up more threads.
//!
//! Hand-written: the deadline, the stuck count and the single flight are a
//! few lines each over tokio and `futures_util::future::Shared`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::StorageError;

/// Calls that missed their deadline and have not returned yet, beyond
/// which every call is refused at once.
pub(crate) const MAX_STUCK: usize = 8;

/// How much longer than an ordinary call a whole-store scan (verify, a
/// document's dump for a backup, a restore) may take.
const SCAN_FACTOR: u32 = 60;

/// What a call does, which decides its deadline and whether a failed store
/// refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Reads one document's records.
    Read,
    /// Writes (and usually flushes): refused once the store has failed.
    Write,
    /// Reads the whole store, or a whole document's history.
    Scan,
    /// Writes a whole document's history: refused once the store has failed.
    BulkWrite,
}

impl Op {
    pub(crate) fn writes(self) -> bool {
        matches!(self, Op::Write | Op::BulkWrite)
    }

    fn deadline(self, timeout: Duration) -> Duration {
        match self {
            Op::Scan | Op::BulkWrite => timeout.saturating_mul(SCAN_FACTOR),
            Op::Read | Op::Write => timeout,
        }
    }
}

/// Why the store stopped taking writes, and since when.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub reason: String,
    pub since: Instant,
}

#[derive(Debug)]
pub(crate) struct DiskGuard {
    timeout: Duration,
    failure: Mutex<Option<Failure>>,
    stuck: Arc<AtomicUsize>,
    /// Whether the store takes a write.
    pub(crate) probe: SingleFlight,
    /// Whether the disk itself takes writes and has room.
    pub(crate) disk_check: SingleFlight,
}

impl DiskGuard {
    pub(crate) fn new(timeout: Duration) -> Self {
        DiskGuard {
            timeout,
            failure: Mutex::new(None),
            stuck: Arc::new(AtomicUsize::new(0)),
            probe: SingleFlight::default(),
            disk_check: SingleFlight::default(),
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `f` on the blocking pool and waits for it at most `op`'s deadline.
    pub(crate) async fn run<T, F>(
        &self,
        op: Op,
        action: &'static str,
        f: F,
    ) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    {
        self.admit(op, action)?;
        let deadline = op.deadline(self.timeout);
        let outcome = match self.call(deadline, f).await {
            Some(Ok(result)) => result,
            Some(Err(panicked)) => Err(StorageError::Backend {
                action,
                reason: format!("storage task failed: {panicked}"),
                source: Box::new(panicked),
            }),
            None => Err(StorageError::Timeout {
                action,
                after: deadline,
            }),
        };
        if let Err(
            e @ (StorageError::Io { .. }
            | StorageError::Backend { .. }
            | StorageError::Timeout { .. }
            | StorageError::DiskFull { .. }),
        ) = &outcome
        {
            self.fail(e.to_string());
        }
        outcome
    }

    /// Refuses at once what must not wait: writes to a failed store, and
    /// anything while too many calls are stuck.
    fn admit(&self, op: Op, action: &'static str) -> Result<(), StorageError> {
        if op.writes() {
            if let Some(failure) = self.failure() {
                return Err(StorageError::Unavailable {
                    action,
                    reason: failure.reason,
                });
            }
        }
        let stuck = self.stuck();
        if stuck >= MAX_STUCK {
            return Err(StorageError::Unavailable {
                action,
                reason: format!("{stuck} storage operations have not returned"),
            });
        }
        Ok(())
    }

    /// `None` when `deadline` passed first; the call then counts as stuck
    /// until it returns.
    async fn call<T, F>(
        &self,
        deadline: Duration,
        f: F,
    ) -> Option<Result<Result<T, StorageError>, tokio::task::JoinError>>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    {
        // Whichever of the call and its waiter finishes second settles the
        // stuck count: the waiter adds one if it gave up first, the call
        // takes it back when it finally returns.
        let settled = Arc::new(AtomicBool::new(false));
        let (stuck, call_settled) = (self.stuck.clone(), settled.clone());
        let task = tokio::task::spawn_blocking(move || {
            let out = f();
            if call_settled.swap(true, Ordering::SeqCst) {
                stuck.fetch_sub(1, Ordering::SeqCst);
            }
            out
        });
        match tokio::time::timeout(deadline, task).await {
            Ok(joined) => Some(joined),
            Err(_) => {
                if !settled.swap(true, Ordering::SeqCst) {
                    self.stuck.fetch_add(1, Ordering::SeqCst);
                }
                None
            }
        }
    }

    /// Marks the store failed (the first reason is kept).
    pub(crate) fn fail(&self, reason: String) {
        let mut failure = lock(&self.failure);
        if failure.is_none() {
            tracing::error!(%reason, "the store stopped taking writes");
            *failure = Some(Failure {
                reason,
                since: Instant::now(),
            });
        }
    }

    /// The store takes writes again.
    pub(crate) fn recovered(&self) {
        *lock(&self.failure) = None;
    }

    pub(crate) fn failure(&self) -> Option<Failure> {
        lock(&self.failure).clone()
    }

    pub(crate) fn stuck(&self) -> usize {
        self.stuck.load(Ordering::SeqCst)
    }
}

type ProbeOutcome = Shared<BoxFuture<'static, Result<(), String>>>;

/// At most one check of a kind in flight; who asks meanwhile shares it.
#[derive(Debug, Default)]
pub(crate) struct SingleFlight {
    slot: Mutex<Option<Probe>>,
}

#[derive(Debug)]
struct Probe {
    started: Instant,
    outcome: ProbeOutcome,
}

impl SingleFlight {
    /// Runs `f` as the one probe in flight, or waits for the one already
    /// running; either way for at most `budget`.
    pub(crate) async fn run<F>(
        &self,
        budget: Duration,
        action: &'static str,
        f: F,
    ) -> Result<(), StorageError>
    where
        F: FnOnce() -> Result<(), StorageError> + Send + 'static,
    {
        let (outcome, started) = self.join(f);
        match tokio::time::timeout(budget, outcome).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StorageError::Io { action, reason }),
            Err(_) => Err(StorageError::Timeout {
                action,
                after: started.elapsed(),
            }),
        }
    }

    /// The probe in flight, or a new one running `f`.
    fn join<F>(&self, f: F) -> (ProbeOutcome, Instant)
    where
        F: FnOnce() -> Result<(), StorageError> + Send + 'static,
    {
        let mut slot = lock(&self.slot);
        if let Some(probe) = slot.as_ref() {
            if probe.outcome.peek().is_none() {
                return (probe.outcome.clone(), probe.started);
            }
        }
        let outcome = tokio::task::spawn_blocking(f)
            .map(|joined| match joined {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("storage task failed: {e}")),
            })
            .boxed()
            .shared();
        let started = Instant::now();
        *slot = Some(Probe {
            started,
            outcome: outcome.clone(),
        });
        (outcome, started)
    }

    /// How long the probe in flight has been running (zero when none is).
    pub(crate) fn running_for(&self) -> Duration {
        lock(&self.slot)
            .as_ref()
            .filter(|p| p.outcome.peek().is_none())
            .map_or(Duration::ZERO, |p| p.started.elapsed())
    }
}

/// A poisoned lock only means another thread panicked while holding it;
/// the values kept here are valid whatever it was doing.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call that blocks until the returned sender is dropped or used.
    fn hanging() -> (
        std::sync::mpsc::Sender<()>,
        impl FnOnce() -> Result<(), StorageError> + Send + 'static,
    ) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        (tx, move || {
            let _ = rx.recv();
            Ok(())
        })
    }

    #[tokio::test]
    async fn a_stuck_write_times_out_fails_the_store_and_later_writes_are_refused_at_once() {
        let guard = DiskGuard::new(Duration::from_millis(100));
        let (release, call) = hanging();
        let started = Instant::now();
        let err = guard
            .run(Op::Write, "appending", call)
            .await
            .expect_err("must time out");
        assert!(matches!(err, StorageError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(guard.stuck(), 1);
        assert!(guard.failure().is_some());

        // Writes are refused without running; reads still run.
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let err = guard
            .run(Op::Write, "appending", move || {
                flag.store(true, Ordering::SeqCst);
                Ok(())
            })
            .await
            .expect_err("refused");
        assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
        assert!(!ran.load(Ordering::SeqCst));
        assert_eq!(
            guard
                .run(Op::Read, "reading", || Ok(7))
                .await
                .expect("read"),
            7
        );

        // The stuck call returning takes itself off the count.
        drop(release);
        let deadline = Instant::now() + Duration::from_secs(5);
        while guard.stuck() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(guard.stuck(), 0);
        guard.recovered();
        guard
            .run(Op::Write, "appending", || Ok(()))
            .await
            .expect("writes again");
    }

    #[tokio::test]
    async fn stuck_calls_are_bounded() {
        let guard = DiskGuard::new(Duration::from_millis(20));
        let mut releases = Vec::new();
        for _ in 0..MAX_STUCK {
            let (release, call) = hanging();
            releases.push(release);
            let _ = guard.run(Op::Read, "reading", call).await;
        }
        assert_eq!(guard.stuck(), MAX_STUCK);
        let err = guard
            .run(Op::Read, "reading", || Ok(()))
            .await
            .expect_err("refused while too many calls are stuck");
        assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    }

    #[tokio::test]
    async fn one_probe_at_a_time_however_many_ask() {
        let guard = Arc::new(DiskGuard::new(Duration::from_secs(1)));
        let started = Arc::new(AtomicUsize::new(0));
        let (release, rx) = {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            (tx, Arc::new(Mutex::new(rx)))
        };
        let mut askers = Vec::new();
        for _ in 0..20 {
            let (guard, started, rx) = (guard.clone(), started.clone(), rx.clone());
            askers.push(tokio::spawn(async move {
                let t = Instant::now();
                let outcome = guard
                    .probe
                    .run(Duration::from_millis(100), "probing", move || {
                        started.fetch_add(1, Ordering::SeqCst);
                        let _ = lock(&rx).recv();
                        Ok(())
                    })
                    .await;
                (outcome, t.elapsed())
            }));
        }
        for asker in askers {
            let (outcome, took) = asker.await.expect("task");
            assert!(matches!(outcome, Err(StorageError::Timeout { .. })));
            assert!(took < Duration::from_secs(1), "{took:?}");
        }
        assert_eq!(started.load(Ordering::SeqCst), 1, "a single probe ran");
        assert!(guard.probe.running_for() > Duration::ZERO);
        drop(release);
        // The next asker gets the finished probe's outcome, then a fresh one runs.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let outcome = guard
                .probe
                .run(Duration::from_millis(100), "probing", || Ok(()))
                .await;
            if outcome.is_ok() || Instant::now() > deadline {
                assert!(outcome.is_ok(), "{outcome:?}");
                break;
            }
        }
    }
}
