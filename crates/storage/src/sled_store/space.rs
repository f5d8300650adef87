//! `SpaceFloor`: the embedded store stops taking writes while its disk has
//! less free space than a floor, so that sled itself never meets a full
//! disk.
//!
//! Why a floor and not just the write error: an append is durable once its
//! record is in the journal, which is preallocated, and sled writes the
//! append's pages later, on its own threads. When one of those writes fails
//! for want of space, sled 0.34 keeps the error until the database is
//! reopened, and from then on even reads can fail (a read may split or
//! merge a node of the tree, which writes). Refusing writes before the disk
//! is full keeps every read working, and writes resume in this process
//! once space returns (the store's probe checks the floor too).
//!
//! The floor is a twentieth of the file system, at least 1 MiB and at most
//! 64 MiB: more than sled writes between two appends, and a write needs the
//! floor plus twice its own size (sled may write it to its log and again
//! when it rewrites the page). Checked with one `statvfs` per write.

use std::path::{Path, PathBuf};

use crate::StorageError;

const MIN_FLOOR: u64 = 1024 * 1024;
const MAX_FLOOR: u64 = 64 * 1024 * 1024;

/// The free space the data directory's disk must keep.
#[derive(Debug)]
pub(super) struct SpaceFloor {
    dir: PathBuf,
    floor: u64,
}

impl SpaceFloor {
    /// The floor for the file system holding `dir`.
    pub(super) fn of(dir: &Path) -> std::io::Result<Self> {
        let total = fs2::total_space(dir)?;
        Ok(SpaceFloor {
            dir: dir.to_path_buf(),
            floor: (total / 20).clamp(MIN_FLOOR, MAX_FLOOR),
        })
    }

    /// The bytes always kept free.
    pub(super) fn floor(&self) -> u64 {
        self.floor
    }

    /// Refuses a write of about `bytes` that would leave less than the
    /// floor free.
    pub(super) fn admit(&self, action: &'static str, bytes: u64) -> Result<(), StorageError> {
        let free = fs2::available_space(&self.dir).map_err(|e| StorageError::Io {
            action,
            reason: format!("reading the data directory's free space: {e}"),
        })?;
        let needed = self.floor.saturating_add(bytes.saturating_mul(2));
        if free < needed {
            return Err(StorageError::Io {
                action,
                reason: format!(
                    "the data directory's disk has {free} bytes free and weft keeps {} \
                     free (this write needs {needed}); free space on it and writes resume",
                    self.floor
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_would_leave_less_than_the_floor_is_refused() {
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
        let text = err.to_string();
        assert!(
            text.contains("bytes free") && text.contains("free space on it"),
            "{text}"
        );
    }
}
