//! `CpuPool`: where rooms do their yrs work, off the async runtime's workers.
//!
//! Integrating an update, encoding a document, loading one: yrs work is
//! usually quick, but one crafted document can make a single call take
//! seconds. Done on a tokio worker, that call would hold up every task
//! queued behind it (other documents, `/healthz`, new connections). So a
//! room runs that work through [`CpuPool::run`]: it waits, asynchronously,
//! for a slot, then runs the work with `tokio::task::block_in_place`, which
//! hands the worker's other tasks to a fresh worker thread for as long as the
//! work lasts. The work borrows the room's own state in place (nothing is
//! moved or locked), so the room stays its document's only owner; its store
//! I/O and channels stay async, outside this pool.
//!
//! Two kinds of slot bound how many threads do yrs work at once:
//!
//! - **slots**, taken by all work: well above the core count
//!   ([`default_slots`]). More work than cores only shares the cores, while
//!   too few slots would let a few costly documents hold up every other
//!   document's quick work. They keep the threads bounded, so tokio's
//!   blocking pool (which storage I/O also uses) always has some to spare.
//! - **heavy slots**, one fewer than the cores (at least one), taken also by
//!   a room whose work lately took long ([`HEAVY_WORK`] of CPU in one go,
//!   within the last [`HEAVY_FOR`]). However many documents are costly,
//!   they share those, and a core stays free for everything else: their
//!   own work waits its turn, nobody else's does.
//!
//! What bounds a single writer's cost is its CPU budget (`cpu_budget.rs`).
//! Each room has its own handle ([`CpuPool::for_room`]) that remembers how
//! costly its work has been.
//!
//! On a current-thread runtime (some tests) there is no other worker to
//! hand tasks to, and the work simply runs in place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;

use crate::Clock;

/// Work that takes this much CPU in one go makes its room costly...
pub(crate) const HEAVY_WORK: Duration = Duration::from_millis(20);
/// ... for this long after.
pub(crate) const HEAVY_FOR: Duration = Duration::from_secs(10);

/// Slots unless configured: four per core, and at least eight.
pub(crate) fn default_slots() -> usize {
    (cores() * 4).max(8)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Bounded room for CPU work, shared by every room of an engine; each room
/// holds its own handle.
#[derive(Clone)]
pub(crate) struct CpuPool {
    slots: Arc<Semaphore>,
    heavy_slots: Arc<Semaphore>,
    clock: Arc<dyn Clock>,
    /// This room's work counts as heavy until then (ms, by `clock`).
    heavy_until_ms: Arc<AtomicU64>,
}

impl std::fmt::Debug for CpuPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPool")
            .field("free_slots", &self.slots.available_permits())
            .field("free_heavy_slots", &self.heavy_slots.available_permits())
            .finish_non_exhaustive()
    }
}

impl CpuPool {
    pub fn new(slots: usize, clock: Arc<dyn Clock>) -> Self {
        CpuPool {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            heavy_slots: Arc::new(Semaphore::new(cores().saturating_sub(1).max(1))),
            clock,
            heavy_until_ms: Arc::default(),
        }
    }

    /// A handle for one room, sharing the slots.
    pub fn for_room(&self) -> Self {
        CpuPool {
            heavy_until_ms: Arc::default(),
            ..self.clone()
        }
    }

    /// Runs `work` once a slot is free, on a thread that is not one of the
    /// runtime's workers, and returns what it returns.
    pub async fn run<R>(&self, work: impl FnOnce() -> R) -> R {
        // The semaphores are never closed; should one be, the work runs.
        let _heavy = match self.is_heavy() {
            true => Some(self.heavy_slots.acquire().await.ok()),
            false => None,
        };
        let _slot = self.slots.acquire().await.ok();
        let started = std::time::Instant::now();
        let cpu_before = self.clock.thread_cpu();
        let result = if on_multi_thread_runtime() {
            tokio::task::block_in_place(work)
        } else {
            work()
        };
        if self.clock.thread_cpu().saturating_sub(cpu_before) >= HEAVY_WORK {
            let until = self
                .clock
                .now_ms()
                .saturating_add(HEAVY_FOR.as_millis() as u64);
            self.heavy_until_ms.store(until, Ordering::Relaxed);
        }
        metrics::histogram!("weft_room_cpu_work_seconds").record(started.elapsed().as_secs_f64());
        result
    }

    /// Whether this room's work lately took long.
    fn is_heavy(&self) -> bool {
        self.clock.now_ms() < self.heavy_until_ms.load(Ordering::Relaxed)
    }
}

fn on_multi_thread_runtime() -> bool {
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A clock whose thread CPU time moves only when told.
    #[derive(Default)]
    struct ManualClock {
        now_ms: AtomicU64,
        cpu: Mutex<Duration>,
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.now_ms.load(Ordering::Relaxed)
        }
        fn thread_cpu(&self) -> Duration {
            *self.cpu.lock().expect("lock")
        }
    }

    impl ManualClock {
        fn spend(&self, d: Duration) {
            *self.cpu.lock().expect("lock") += d;
        }
    }

    #[tokio::test]
    async fn a_room_whose_work_took_long_is_heavy_for_a_while() {
        let clock = Arc::new(ManualClock::default());
        let pool = CpuPool::new(8, clock.clone());
        let room = pool.for_room();
        let other = pool.for_room();
        room.run(|| clock.spend(Duration::from_millis(5))).await;
        assert!(!room.is_heavy(), "quick work");
        room.run(|| clock.spend(HEAVY_WORK)).await;
        assert!(room.is_heavy());
        assert!(!other.is_heavy(), "each room has its own record");
        clock
            .now_ms
            .store(HEAVY_FOR.as_millis() as u64, Ordering::Relaxed);
        assert!(!room.is_heavy(), "it wears off");
    }

    #[tokio::test]
    async fn heavy_rooms_wait_for_each_other_and_nobody_else_does() {
        let clock = Arc::new(ManualClock::default());
        let pool = CpuPool::new(8, clock.clone());
        pool.heavy_until_ms.store(u64::MAX, Ordering::Relaxed);
        // Every heavy slot taken, as by heavy rooms' long work.
        let slots = pool.heavy_slots.available_permits() as u32;
        let taken = pool.heavy_slots.clone().acquire_many_owned(slots).await;
        let heavy = pool.run(|| ());
        tokio::pin!(heavy);
        assert!(
            futures_poll_once(&mut heavy).await.is_none(),
            "waits its turn"
        );
        let quick = pool.for_room();
        assert_eq!(
            quick.run(|| 7).await,
            7,
            "a room that is not heavy does not wait"
        );
        drop(taken);
        heavy.await;
    }

    /// Polls a future once: its output if it is ready.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            _ = std::future::ready(()) => None,
        }
    }
}
