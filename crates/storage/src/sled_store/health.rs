//! How the embedded store comes back after a failed write: a probe that
//! proves it takes writes again, a check that the disk itself has room,
//! and what to tell the operator when only a restart can help (sled 0.34
//! keeps a write error until the database is reopened).

use std::io::Write;
use std::time::Duration;

use super::{io, SledStore};
use crate::clock::now_ms;
use crate::StorageError;

/// How long a readiness check waits for the store to take a write.
pub(super) const READINESS_BUDGET: Duration = Duration::from_secs(1);

/// Free space the disk must have again before a store that cannot recover
/// in-process asks to be restarted (a restart into a full disk would only
/// fail again).
const RESTART_HEADROOM: u64 = 8 * 1024 * 1024;

/// Where a failed store stands; see [`SledStore::recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// It had not failed.
    Healthy,
    /// It takes writes again.
    Recovered,
    /// It still does not take writes, and neither does the disk (full,
    /// stuck): wait.
    Failed(String),
    /// The disk takes writes and has room again, but the store still fails:
    /// sled keeps a write error until the database is reopened, so only a
    /// restart of the process brings it back.
    RestartNeeded(String),
}

impl SledStore {
    /// Writes and flushes a no-op record within the storage timeout:
    /// proves the disk accepts writes (at startup). A disk below the space
    /// floor is no reason not to start: the store starts failed (reads go
    /// on) and takes writes once there is room.
    pub async fn check_disk_writable(&self) -> Result<(), StorageError> {
        match self.probe_writes(self.guard.timeout(), false).await {
            Err(e @ StorageError::DiskFull { .. }) => {
                tracing::warn!(error = %e, "starting with writes refused");
                self.guard.fail(e.to_string());
                Ok(())
            }
            checked => checked,
        }
    }

    /// Why the store is not taking writes, if it is not.
    pub fn failure(&self) -> Option<String> {
        self.guard.failure().map(|f| f.reason)
    }

    /// Checks whether a failed store takes writes again (and if so, marks
    /// it healthy), or whether it needs the process restarted. Cheap to call
    /// every second: one check of each kind runs at a time.
    pub async fn recover(&self) -> Recovery {
        let Some(failure) = self.guard.failure() else {
            return Recovery::Healthy;
        };
        let still = match self.probe_writes(READINESS_BUDGET, true).await {
            Ok(()) => {
                self.guard.recovered();
                tracing::info!(after = ?failure.since.elapsed(), "the store takes writes again");
                return Recovery::Recovered;
            }
            Err(e) => e,
        };
        // Refused for want of space: sled met nothing, wait for room.
        // A write still waiting may yet finish, as on a disk that was
        // frozen or slow: give it the storage timeout.
        let waiting = matches!(still, StorageError::Timeout { .. })
            && self.guard.probe.running_for() < self.guard.timeout();
        let no_space = matches!(still, StorageError::DiskFull { .. });
        if no_space || waiting || self.disk_has_room().await.is_err() {
            return Recovery::Failed(failure.reason);
        }
        Recovery::RestartNeeded(format!(
            "{}; the disk takes writes again but the store still fails ({still})",
            failure.reason
        ))
    }

    /// One write-and-flush probe at a time, waited for at most `budget`;
    /// refused ([`StorageError::DiskFull`]) below the space floor, or, for
    /// a failed store `recovering`, until there is half a floor more.
    /// (`statvfs` is asked here, not on the blocking pool: it does not wait
    /// on the disk's writes, and a frozen file system answers it.)
    pub(super) async fn probe_writes(
        &self,
        budget: Duration,
        recovering: bool,
    ) -> Result<(), StorageError> {
        const ACTION: &str = "checking the store takes writes";
        if recovering {
            self.space.admit_recovery(ACTION)?;
        } else {
            self.space.admit(ACTION, 0)?;
        }
        let (db, journal) = (self.db.clone(), self.journal.clone());
        self.guard
            .probe
            .run(budget, ACTION, move || {
                db.insert("weft:probe", &now_ms().to_be_bytes()[..])
                    .map_err(io(ACTION))?;
                journal
                    .flush_sled()
                    .map_err(|e| StorageError::backend(ACTION, e))?;
                Ok(())
            })
            .await
    }

    /// Whether the data directory's disk has room for a restart (more than
    /// the space floor) and takes a small durable write, outside sled. (Its outcome is shared as text
    /// by whoever asks meanwhile, so its failures are [`StorageError::Io`].)
    async fn disk_has_room(&self) -> Result<(), StorageError> {
        const ACTION: &str = "checking the disk has room";
        let (dir, headroom) = (self.dir.clone(), RESTART_HEADROOM.max(self.space.floor()));
        self.guard
            .disk_check
            .run(self.guard.timeout(), ACTION, move || {
                let fail = |reason: String| StorageError::Io {
                    action: ACTION,
                    reason,
                };
                let free = fs2::available_space(&dir).map_err(|e| fail(e.to_string()))?;
                if free < headroom {
                    return Err(fail(format!("{free} bytes free")));
                }
                let path = dir.join("weft-space-probe");
                let mut file = std::fs::File::create(&path).map_err(|e| fail(e.to_string()))?;
                let written = file.write_all(&[0; 4096]).and_then(|()| file.sync_all());
                let _ = std::fs::remove_file(&path);
                written.map_err(|e| fail(e.to_string()))
            })
            .await
    }
}
