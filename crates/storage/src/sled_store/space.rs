//! `SpaceFloor`: the embedded store stops taking writes while its disk has
//! less free space than a floor, so that sled's own writes are not the
//! ones that meet a full disk.
//!
//! Why a floor and not just the write error: an append is durable once its
//! record is in the journal, which is preallocated, and sled writes the
//! append's pages later, on its own threads. When one of those writes fails
//! for want of space, sled 0.34 keeps the error until the database is
//! reopened, and from then on even reads can fail (a read may split or
//! merge a node of the tree, which writes). Refusing writes before the disk
//! is full keeps reads working, and writes resume in this process once
//! space returns.
//!
//! The floor is a twentieth of the file system, at least 1 MiB and at most
//! 64 MiB: more than sled writes between two of weft's writes. Below it
//! the store refuses every write ([`StorageError::DiskFull`], which marks
//! it failed); above it, a write that would not leave the floor plus twice
//! its size (sled may write it to its log and again when it rewrites the
//! page) is refused alone ([`StorageError::NoRoom`]). The store's probe
//! takes writes back only at one and a half floors, so that writes near
//! the floor do not flap between taken and refused. Checked with one
//! `statvfs` per write, outside any lock: writes running at the same time
//! each see the same free space, which the floor's margin covers; space
//! taken by other processes is not seen until the next check.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::StorageError;

const MIN_FLOOR: u64 = 1024 * 1024;
const MAX_FLOOR: u64 = 64 * 1024 * 1024;

/// The free space the data directory's disk must keep.
#[derive(Debug)]
pub(super) struct SpaceFloor {
    dir: PathBuf,
    floor: u64,
    /// Whether the last check found the disk below the floor (logged once
    /// each way, not on every refused write).
    below: AtomicBool,
}

impl SpaceFloor {
    /// The floor for the file system holding `dir`.
    pub(super) fn of(dir: &Path) -> std::io::Result<Self> {
        let total = fs2::total_space(dir)?;
        Ok(SpaceFloor {
            dir: dir.to_path_buf(),
            floor: (total / 20).clamp(MIN_FLOOR, MAX_FLOOR),
            below: AtomicBool::new(false),
        })
    }

    /// The bytes always kept free.
    pub(super) fn floor(&self) -> u64 {
        self.floor
    }

    /// Refuses a write of about `bytes`: all writes below the floor, this
    /// one if it would not leave the floor free.
    pub(super) fn admit(&self, action: &'static str, bytes: u64) -> Result<(), StorageError> {
        let free = self.free(action)?;
        if free < self.floor {
            return Err(StorageError::DiskFull { action });
        }
        if free < self.floor.saturating_add(bytes.saturating_mul(2)) {
            return Err(StorageError::NoRoom { action, bytes });
        }
        Ok(())
    }

    /// Refuses taking writes back until there is half a floor more than
    /// the floor free.
    pub(super) fn admit_recovery(&self, action: &'static str) -> Result<(), StorageError> {
        let free = self.free(action)?;
        if free < self.floor.saturating_add(self.floor / 2) {
            return Err(StorageError::DiskFull { action });
        }
        Ok(())
    }

    /// The disk's free space now, logging when it crosses the floor.
    fn free(&self, action: &'static str) -> Result<u64, StorageError> {
        let free = fs2::available_space(&self.dir).map_err(|e| StorageError::Io {
            action,
            reason: format!("reading the data directory's free space: {e}"),
        })?;
        let below = free < self.floor;
        if self.below.swap(below, Ordering::Relaxed) != below {
            if below {
                tracing::warn!(
                    free, floor = self.floor, dir = %self.dir.display(),
                    "the data directory's disk is nearly full: writes are refused until more \
                     than the floor is free; free space on it"
                );
            } else {
                tracing::info!(
                    free,
                    floor = self.floor,
                    "the data directory's disk has room again"
                );
            }
        }
        Ok(free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_would_leave_less_than_the_floor_is_refused_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let floor = SpaceFloor::of(dir.path()).expect("floor");
        assert!((MIN_FLOOR..=MAX_FLOOR).contains(&floor.floor()));
        floor
            .admit("writing", 4096)
            .expect("room for a small write");

        let free = fs2::available_space(dir.path()).expect("free space");
        let err = floor
            .admit("writing", free / 2 + 1)
            .expect_err("twice the write exceeds what is free");
        assert!(matches!(err, StorageError::NoRoom { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("too little free space"), "{text}");
        assert!(!text.contains(&dir.path().display().to_string()), "{text}");
    }
}
