//! Durable flushes: what `sled::Db::flush` leaves for us to do.
//!
//! sled 0.34 flushes its log with `pwrite` and `sync_file_range`, which
//! writes the pages back but flushes neither the drive's volatile write
//! cache nor the file's metadata; its data file gets an `fsync` only from a
//! background thread every half second; and a value too large for a log
//! segment (about 128 KiB) goes to a file of its own under `blobs/`, which
//! it writes and never syncs (sled issue 1452). A change sled has
//! "flushed" can thus be lost in a power cut after its frames went out,
//! which ARCHITECTURE.md's first invariant forbids. So each flush here goes
//! on to `fdatasync` every blob file written since the last (or grown since
//! it was last synced: sled may still be writing one while another flush
//! lists it), the `blobs` directory that names them, and the `db` file.
//!
//! Hand-written, since no crate syncs what another library wrote; it is
//! the classic group commit. Concurrent flushes share one sync: each
//! caller takes a ticket once its own `flush` has returned, and a sync
//! covers every ticket taken before it began, so a caller whose ticket a
//! finished sync already covers returns without syncing again.
//!
//! Each sync lists `blobs/` with each file's size: work in proportion to
//! the number of blob files (61 after a full `compare.sh` run; a listing
//! of 2,000 takes a few milliseconds). Appends do not pay it: they are
//! made durable by the journal (`journal.rs`), and a durable flush runs
//! only at the journal's checkpoints and for the writes it does not carry
//! (webhooks, changes set aside, deletions, restores, the health probe).
//!
//! A failed sync is final, as sled's own write errors are: Linux reports a
//! writeback error to `fdatasync` once and may drop the pages it could not
//! write, so a later sync that succeeds proves nothing about them. Every
//! flush after one fails is refused until the store is reopened.

use std::collections::HashMap;
use std::ffi::OsString;
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

/// What the syncs so far covered.
#[derive(Debug, Default)]
struct Synced {
    /// Every ticket up to this one.
    through: u64,
    /// Blob files synced, with their size then (sled removes them as it
    /// reclaims space).
    blobs: HashMap<OsString, u64>,
    /// Why a sync failed, once one has: nothing is durable after that.
    failed: Option<String>,
}

impl Durable {
    /// Opens sled's files in `dir`, where sled has opened its database, and
    /// syncs what sled may not have: its `conf` file, the directory naming
    /// its files, and its blobs.
    pub(super) fn open(dir: &Path) -> io::Result<Durable> {
        let durable = Durable {
            db: File::open(dir.join("db"))?,
            blobs: dir.join("blobs"),
            tickets: AtomicU64::new(0),
            synced: Mutex::new(Synced::default()),
        };
        match sync_path(&dir.join("conf"), File::sync_all) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            synced_conf => synced_conf?,
        }
        sync_path(dir, File::sync_all)?;
        let mut synced = durable.lock();
        durable.sync(&mut synced)?;
        drop(synced);
        Ok(durable)
    }

    /// Flushes `db` and returns once what it flushed is on stable storage.
    pub(super) fn flush(&self, db: &sled::Db) -> io::Result<()> {
        db.flush().map_err(|e| match e {
            sled::Error::Io(e) => e,
            other => io::Error::other(other),
        })?;
        let ticket = self.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        let mut synced = self.lock();
        if let Some(why) = &synced.failed {
            return Err(io::Error::other(format!(
                "an earlier sync failed ({why}); restart weft"
            )));
        }
        if synced.through >= ticket {
            return Ok(());
        }
        let covers = self.tickets.load(Ordering::Acquire);
        match self.sync(&mut synced) {
            Ok(()) => {
                synced.through = covers;
                Ok(())
            }
            Err(e) => {
                synced.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// A poisoned lock only means another sync panicked; what it records
    /// is still true (a failure is recorded before anything can panic).
    fn lock(&self) -> std::sync::MutexGuard<'_, Synced> {
        self.synced.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Syncs the blob files new or grown since their last sync, the
    /// directory naming them, then the data file.
    fn sync(&self, synced: &mut Synced) -> io::Result<()> {
        let present = blob_sizes(&self.blobs)?;
        let mut named = false;
        for (name, &size) in &present {
            match synced.blobs.get(name) {
                Some(&was) if was == size => continue,
                Some(_) => {}
                None => named = true,
            }
            match sync_path(&self.blobs.join(name), File::sync_data) {
                // Reclaimed by sled since the listing: nothing to keep.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                synced_blob => synced_blob?,
            }
        }
        if named {
            sync_path(&self.blobs, File::sync_all)?;
        }
        // Sizes as listed, before their sync: a blob that grew meanwhile
        // differs next time and is synced again.
        synced.blobs = present;
        self.db
            .sync_data()
            .map_err(|e| with_path(e, "fdatasync", Path::new("db")))
    }
}

/// The files in sled's `blobs` directory, with their sizes (none if it has
/// none).
fn blob_sizes(dir: &Path) -> io::Result<HashMap<OsString, u64>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(with_path(e, "listing", dir)),
    };
    let mut sizes = HashMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| with_path(e, "listing", dir))?;
        match entry.metadata() {
            Ok(meta) => {
                sizes.insert(entry.file_name(), meta.len());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(with_path(e, "reading the size of", &entry.path())),
        }
    }
    Ok(sizes)
}

/// Opens `path` (a file or a directory) and syncs it with `sync`.
fn sync_path(path: &Path, sync: fn(&File) -> io::Result<()>) -> io::Result<()> {
    File::open(path)
        .and_then(|f| sync(&f))
        .map_err(|e| with_path(e, "syncing", path))
}

/// `e`, saying what was being done to which file; its kind is kept.
fn with_path(e: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sync_refuses_every_later_flush_even_once_the_cause_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().path(dir.path()).open().expect("sled");
        let durable = Durable::open(dir.path()).expect("opens");
        db.insert("k", "v").expect("insert");
        durable.flush(&db).expect("a flush on a sound disk");

        // A `blobs` that cannot be listed: the sync fails.
        let blobs = dir.path().join("blobs");
        let aside = dir.path().join("blobs.aside");
        std::fs::rename(&blobs, &aside).expect("move blobs aside");
        std::fs::write(&blobs, b"not a directory").expect("file in its place");
        db.insert("k", "w").expect("insert");
        let failed = durable.flush(&db).expect_err("the sync fails");
        assert!(failed.to_string().contains("blobs"), "{failed}");

        // Put right, the store still refuses: what the failed sync held
        // may never have reached the disk.
        std::fs::remove_file(&blobs).expect("remove the file");
        std::fs::rename(&aside, &blobs).expect("blobs back");
        db.insert("k", "x").expect("insert");
        let refused = durable.flush(&db).expect_err("still refused");
        assert!(refused.to_string().contains("restart weft"), "{refused}");
    }

    #[test]
    fn blob_files_are_listed_with_their_sizes_and_a_missing_directory_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(blob_sizes(&dir.path().join("absent"))
            .expect("lists")
            .is_empty());
        std::fs::write(dir.path().join("17"), vec![0u8; 300]).expect("blob");
        let sizes = blob_sizes(dir.path()).expect("lists");
        assert_eq!(sizes.get(std::ffi::OsStr::new("17")), Some(&300));
    }
}
