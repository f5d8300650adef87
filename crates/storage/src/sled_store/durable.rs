//! Durable flushes: what `sled::Db::flush` leaves for us to do.
//!
//! sled 0.34 flushes its log with `pwrite` and `sync_file_range`, which
//! writes the pages back but flushes neither the drive's volatile write
//! cache nor the file's metadata, and a value too large for a log segment
//! (about 128 KiB) goes to a file of its own under `blobs/` that it writes
//! and never syncs; its only `fsync` comes from a background thread every
//! half second (sled issue 1452). A change sled has "flushed" can thus be
//! lost in a power cut after its frames went out, which ARCHITECTURE.md's
//! first invariant forbids. So each flush here goes on to `fdatasync` every
//! blob file written since the last, the `blobs` directory that names them,
//! and the `db` file.
//!
//! Hand-written, since no crate syncs what another library wrote; it is
//! the classic group commit. Concurrent flushes share one sync: each
//! caller takes a ticket once its own `flush` has returned, and a sync
//! covers every ticket taken before it began, so a caller whose ticket a
//! finished sync already covers returns without syncing again.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Makes what sled flushed in one data directory survive a power cut.
#[derive(Debug)]
pub(super) struct Durable {
    /// sled's data file (its log and pages); syncing any descriptor of it
    /// syncs the file.
    db: File,
    blobs: PathBuf,
    /// Tickets handed out: one per flush that returned.
    tickets: AtomicU64,
    synced: Mutex<Synced>,
}

/// What the last sync covered.
#[derive(Debug, Default)]
struct Synced {
    /// Every ticket up to this one.
    through: u64,
    /// Blob files already synced (sled removes them as it reclaims space).
    blobs: HashSet<std::ffi::OsString>,
}

impl Durable {
    /// Opens sled's files in `dir`, where sled has opened its database, and
    /// syncs the directories that name them, which sled does not.
    pub(super) fn open(dir: &Path) -> io::Result<Durable> {
        let durable = Durable {
            db: File::open(dir.join("db"))?,
            blobs: dir.join("blobs"),
            tickets: AtomicU64::new(0),
            synced: Mutex::new(Synced::default()),
        };
        sync_dir(dir)?;
        durable.sync(&mut Synced::default())?;
        Ok(durable)
    }

    /// Flushes `db` and returns once what it flushed is on stable storage.
    pub(super) fn flush(&self, db: &sled::Db) -> io::Result<()> {
        db.flush().map_err(io::Error::other)?;
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        // A poisoned lock only means another sync panicked; what it records
        // is still true, and this one syncs again if it must.
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if synced.through >= ticket {
            return Ok(());
        }
        let covers = self.tickets.load(Ordering::Acquire);
        self.sync(&mut synced)?;
        synced.through = covers;
        Ok(())
    }

    /// Syncs the blob files not synced yet, the directory naming them, then
    /// the data file.
    fn sync(&self, synced: &mut Synced) -> io::Result<()> {
        let present = blob_files(&self.blobs)?;
        let fresh: Vec<_> = present.difference(&synced.blobs).collect();
        if !fresh.is_empty() {
            for name in &fresh {
                match File::open(self.blobs.join(name)) {
                    Ok(blob) => blob.sync_data()?,
                    // Reclaimed by sled since the listing: nothing to keep.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            sync_dir(&self.blobs)?;
        }
        synced.blobs = present;
        self.db.sync_data()
    }
}

/// The names of the files in sled's `blobs` directory (none if it has none).
fn blob_files(dir: &Path) -> io::Result<HashSet<std::ffi::OsString>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e),
    };
    entries.map(|entry| entry.map(|e| e.file_name())).collect()
}

/// Syncs a directory, so the names of the files made in it last.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
