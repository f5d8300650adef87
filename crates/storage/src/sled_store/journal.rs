//! The journal: what makes an append durable without flushing sled.
//!
//! A durable sled flush (see `durable.rs`) writes sled's log, lists its
//! blobs and syncs its data file, whose size sled keeps growing, so each
//! `fdatasync` also commits file metadata: about 1 ms per append where the
//! disk's own append + `fdatasync` takes a quarter of that. So an append
//! applies its writes to sled in memory only, and writes the same writes
//! as one record to this file, `weft-journal` in the data directory, and
//! `fdatasync`s it. The file is preallocated (written with zeros once), so
//! that sync carries data only. Concurrent appends share one sync (group
//! commit with tickets, as in `durable.rs`).
//!
//! A checkpoint makes sled durable (a durable flush) and then starts a new
//! epoch: the header names it and records of older epochs stop counting.
//! At open, the records of the header's epoch are applied to sled again,
//! in order, then a checkpoint follows. Records hold whole keys and values
//! (set or removed), so applying one twice, or over a sled that kept some
//! of them, ends in the same state.
//!
//! The invariant that makes replay safe: a write that removes what an
//! append wrote (compaction, deletion) holds the journal's lock and
//! checkpoints before it removes anything, so no record can bring back
//! what it removed. Appends hold the same lock while they apply and write
//! their record, so the journal's order is sled's. A restore writes only
//! a document without metadata, which no record names (one that did would
//! predate the document's deletion, which checkpointed), and no append
//! may create that document meanwhile (`restoring.rs`).
//!
//! Layout: two header slots (epoch `e` is written to slot `e % 2`, so a
//! torn header write leaves the previous one), then records from 8 KiB on:
//! `magic u32, epoch u64, length u32, crc32 u32, payload`, the CRC over
//! epoch, length and payload. A payload is a list of writes: `tree u8,
//! kind u8 (0 set, 1 remove), key length u32, key, [value length u32,
//! value]`, little-endian. Reading stops at the first record that is not
//! whole and of the epoch. A record too large for the file is not written:
//! its append checkpoints instead.
//!
//! Hand-written: a write-ahead log is this short, and one that replays
//! into sled's trees must know them; the well-kept ones (okaywal, sled's
//! own) would bring a second storage engine or sled's missing sync.
//!
//! A failed write or sync of the journal is final, as in `durable.rs`:
//! every later append is refused until the store is reopened.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::durable::Durable;

/// The journal's file in the data directory.
pub(super) const FILE_NAME: &str = "weft-journal";

/// Its size: a checkpoint at least every this many bytes of records.
const CAPACITY: u64 = 8 << 20;
/// One header slot; records start after two.
const SLOT: u64 = 4096;
const RECORDS_AT: u64 = 2 * SLOT;
const HEADER_MAGIC: [u8; 8] = *b"weftJH01";
const RECORD_MAGIC: [u8; 4] = *b"wJR1";
/// magic, epoch, length, crc.
const RECORD_HEAD: usize = 4 + 8 + 4 + 4;

/// A sled tree whose writes the journal carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tree {
    Meta = 0,
    Log = 1,
}

/// One write to a tree: a key set to a value, or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Write {
    pub(super) tree: Tree,
    pub(super) key: Vec<u8>,
    pub(super) value: Option<Vec<u8>>,
}

impl Write {
    pub(super) fn set(tree: Tree, key: Vec<u8>, value: Vec<u8>) -> Write {
        Write {
            tree,
            key,
            value: Some(value),
        }
    }

    pub(super) fn remove(tree: Tree, key: Vec<u8>) -> Write {
        Write {
            tree,
            key,
            value: None,
        }
    }
}

/// The journal of one data directory.
#[derive(Debug)]
pub(super) struct Journal {
    file: File,
    db: sled::Db,
    durable: Durable,
    tail: Mutex<Tail>,
    /// Tickets handed out: one per record written.
    written: AtomicU64,
    /// Every ticket up to this one is on stable storage.
    synced: Mutex<u64>,
    /// Why a write or sync of the journal failed, once one has.
    failed: OnceLock<String>,
}

/// Where the next record goes.
#[derive(Debug)]
struct Tail {
    epoch: u64,
    end: u64,
    capacity: u64,
}

/// The journal's lock, held: appends write records under it, and writes
/// that remove what appends wrote checkpoint under it.
pub(super) struct Held<'a> {
    journal: &'a Journal,
    tail: MutexGuard<'a, Tail>,
}

impl Journal {
    /// Opens (creating and preallocating if needed) the journal in `dir`,
    /// applies its records to `trees` (meta, then log), and checkpoints.
    pub(super) fn open(
        dir: &Path,
        db: sled::Db,
        durable: Durable,
        trees: [&sled::Tree; 2],
    ) -> io::Result<Journal> {
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| with_context(e, "opening"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| with_context(e, "reading"))?;
        let capacity = preallocate(&file, dir, bytes.len() as u64)?;
        let epoch = match newest_header(&bytes) {
            Some(epoch) => epoch,
            // Records are only written under a header: none was ever synced.
            None if !has_a_record(&bytes) => 0,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{FILE_NAME}: both headers are damaged but records follow; move the file aside to open without it (losing its changes)"),
                ))
            }
        };
        for (at, payload) in records(&bytes, epoch) {
            replay(payload, trees).map_err(|why| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{FILE_NAME}: the record at byte {at} {why}; move the file aside to open without it (losing its changes)"),
                )
            })?;
        }
        let journal = Journal {
            file,
            db,
            durable,
            tail: Mutex::new(Tail {
                epoch,
                end: RECORDS_AT,
                capacity,
            }),
            written: AtomicU64::new(0),
            synced: Mutex::new(0),
            failed: OnceLock::new(),
        };
        journal.lock()?.checkpoint()?;
        Ok(journal)
    }

    /// Takes the journal's lock; refused once a write or sync failed.
    pub(super) fn lock(&self) -> io::Result<Held<'_>> {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        self.refuse_if_failed()?;
        Ok(Held {
            journal: self,
            tail,
        })
    }

    /// Returns once the record that got `ticket` is on stable storage.
    pub(super) fn sync(&self, ticket: u64) -> io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        self.refuse_if_failed()?;
        if *synced >= ticket {
            return Ok(());
        }
        let covers = self.written.load(Ordering::Acquire);
        self.file
            .sync_data()
            .map_err(|e| self.fail(with_context(e, "syncing")))?;
        *synced = covers;
        Ok(())
    }

    /// A durable flush of sled, for writes the journal does not carry.
    pub(super) fn flush_sled(&self) -> io::Result<()> {
        self.refuse_if_failed()?;
        self.durable.flush(&self.db)
    }

    /// Why the journal takes no more writes, if it does not.
    pub(super) fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    fn refuse_if_failed(&self) -> io::Result<()> {
        match self.failure() {
            Some(why) => Err(io::Error::other(format!(
                "an earlier write to {FILE_NAME} failed ({why}); restart weft"
            ))),
            None => Ok(()),
        }
    }

    /// Records `e` as final and returns it.
    fn fail(&self, e: io::Error) -> io::Error {
        let _ = self.failed.set(e.to_string());
        e
    }
}

impl Held<'_> {
    /// Writes `writes`, already applied to sled, as one record; returns the
    /// ticket to [`Journal::sync`] (0: already durable by a checkpoint).
    pub(super) fn record(&mut self, writes: &[Write]) -> io::Result<u64> {
        let record = encode(self.tail.epoch, writes);
        let len = record.len() as u64;
        if RECORDS_AT + len > self.tail.capacity {
            self.checkpoint()?;
            return Ok(0);
        }
        if self.tail.end + len > self.tail.capacity {
            self.checkpoint()?;
            // The epoch changed: encode again under the new one.
            return self.record(writes);
        }
        let journal = self.journal;
        journal
            .file
            .write_all_at(&record, self.tail.end)
            .map_err(|e| journal.fail(with_context(e, "writing")))?;
        self.tail.end += len;
        Ok(journal.written.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Makes everything applied to sled so far durable there, then starts
    /// a new epoch, so no record written before can be applied again.
    pub(super) fn checkpoint(&mut self) -> io::Result<()> {
        let journal = self.journal;
        journal.refuse_if_failed()?;
        let covers = journal.written.load(Ordering::Acquire);
        journal.durable.flush(&journal.db)?;
        let epoch = self.tail.epoch + 1;
        journal
            .file
            .write_all_at(&header(epoch), (epoch % 2) * SLOT)
            .and_then(|()| journal.file.sync_data())
            .map_err(|e| journal.fail(with_context(e, "writing the header of")))?;
        self.tail.epoch = epoch;
        self.tail.end = RECORDS_AT;
        let mut synced = journal.synced.lock().unwrap_or_else(|e| e.into_inner());
        *synced = (*synced).max(covers);
        Ok(())
    }
}

/// Fills the file with zeros up to its capacity (so a sync of a record
/// carries no metadata), and syncs it and the directory naming it (every
/// time: a process may have stopped after filling it, before syncing).
/// Returns the capacity: a larger file keeps its size.
fn preallocate(file: &File, dir: &Path, len: u64) -> io::Result<u64> {
    let zeros = vec![0u8; 1 << 16];
    let mut at = len;
    while at < CAPACITY {
        let n = zeros.len().min((CAPACITY - at) as usize);
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| with_context(e, "preallocating"))?;
        at += n as u64;
    }
    file.sync_all()
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(|e| with_context(e, "syncing"))?;
    Ok(len.max(CAPACITY))
}

fn header(epoch: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(&HEADER_MAGIC);
    h.extend_from_slice(&epoch.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// The epoch of the newest whole header, if any slot holds one.
fn newest_header(bytes: &[u8]) -> Option<u64> {
    (0..2)
        .filter_map(|slot| {
            let h = bytes.get(slot * SLOT as usize..)?.get(..20)?;
            let crc = u32::from_le_bytes(h[16..20].try_into().ok()?);
            let whole = h[..8] == HEADER_MAGIC && crc32fast::hash(&h[..16]) == crc;
            whole.then(|| u64::from_le_bytes(h[8..16].try_into().unwrap_or_default()))
        })
        .max()
}

/// Whether a record (of any epoch) starts where records do.
fn has_a_record(bytes: &[u8]) -> bool {
    bytes
        .get(RECORDS_AT as usize..)
        .is_some_and(|records| records.starts_with(&RECORD_MAGIC))
}

/// One record, in one buffer: the head is filled in once the payload
/// behind it is written.
fn encode(epoch: u64, writes: &[Write]) -> Vec<u8> {
    let mut record = vec![0u8; RECORD_HEAD];
    for w in writes {
        record.push(w.tree as u8);
        record.push(u8::from(w.value.is_none()));
        put_bytes(&mut record, &w.key);
        if let Some(value) = &w.value {
            put_bytes(&mut record, value);
        }
    }
    let len = (record.len() - RECORD_HEAD) as u32;
    record[..4].copy_from_slice(&RECORD_MAGIC);
    record[4..12].copy_from_slice(&epoch.to_le_bytes());
    record[12..16].copy_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&record[4..16]);
    crc.update(&record[RECORD_HEAD..]);
    let crc = crc.finalize();
    record[16..RECORD_HEAD].copy_from_slice(&crc.to_le_bytes());
    record
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The payloads of `epoch`'s whole records, in order, with their offsets.
fn records(bytes: &[u8], epoch: u64) -> Vec<(usize, &[u8])> {
    let mut out = Vec::new();
    let mut at = RECORDS_AT as usize;
    while let Some(head) = bytes.get(at..at + RECORD_HEAD) {
        let field = |from: usize, to: usize| &head[from..to];
        let len = u32::from_le_bytes(field(12, 16).try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(field(16, 20).try_into().unwrap_or_default());
        let ours = field(0, 4) == RECORD_MAGIC && field(4, 12) == epoch.to_le_bytes();
        let Some(payload) = bytes.get(at + RECORD_HEAD..at + RECORD_HEAD + len) else {
            break;
        };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(field(4, 16));
        hasher.update(payload);
        if !ours || hasher.finalize() != crc {
            break;
        }
        out.push((at, payload));
        at += RECORD_HEAD + len;
    }
    out
}

/// Applies one record's writes to `trees`; says what is wrong with a
/// record that is whole but cannot be read.
fn replay(payload: &[u8], trees: [&sled::Tree; 2]) -> Result<(), String> {
    for w in decode(payload)? {
        let tree = trees[w.tree as usize];
        let applied = match w.value {
            Some(value) => tree.insert(w.key, value).map(drop),
            None => tree.remove(w.key).map(drop),
        };
        applied.map_err(|e| format!("could not be applied: {e}"))?;
    }
    Ok(())
}

fn decode(mut payload: &[u8]) -> Result<Vec<Write>, String> {
    let mut writes = Vec::new();
    while !payload.is_empty() {
        let (tree, kind) = match payload {
            [0, kind, ..] => (Tree::Meta, *kind),
            [1, kind, ..] => (Tree::Log, *kind),
            _ => return Err("names no tree".into()),
        };
        payload = &payload[2..];
        let key = take_bytes(&mut payload)?;
        let value = match kind {
            0 => Some(take_bytes(&mut payload)?),
            1 => None,
            _ => return Err(format!("has a write of unknown kind {kind}")),
        };
        writes.push(Write { tree, key, value });
    }
    Ok(writes)
}

fn take_bytes(payload: &mut &[u8]) -> Result<Vec<u8>, String> {
    let len = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(|b| u32::from_le_bytes(b) as usize)
        .ok_or("ends inside a length")?;
    let bytes = payload
        .get(4..4 + len)
        .ok_or("ends inside a key or value")?;
    let out = bytes.to_vec();
    *payload = &payload[4 + len..];
    Ok(out)
}

/// `e`, saying what was being done to the journal; its kind is kept.
fn with_context(e: io::Error, doing: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {FILE_NAME}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(n: u8) -> Vec<Write> {
        vec![
            Write::set(Tree::Log, vec![b'k', n], vec![n; 3]),
            Write::remove(Tree::Meta, vec![b'm', n]),
        ]
    }

    /// A journal file's bytes: the header of `epoch`, then `records`.
    fn file_with(epoch: u64, records: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = vec![0u8; RECORDS_AT as usize];
        let slot = (epoch % 2 * SLOT) as usize;
        bytes[slot..slot + 20].copy_from_slice(&header(epoch));
        for r in records {
            bytes.extend_from_slice(r);
        }
        bytes.resize(bytes.len() + 64, 0);
        bytes
    }

    #[test]
    fn records_of_the_epoch_read_back_in_order_with_their_writes() {
        let bytes = file_with(3, &[encode(3, &writes(1)), encode(3, &writes(2))]);
        assert_eq!(newest_header(&bytes), Some(3));
        let read = records(&bytes, 3);
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].0, RECORDS_AT as usize);
        assert_eq!(decode(read[0].1), Ok(writes(1)));
        assert_eq!(decode(read[1].1), Ok(writes(2)));
    }

    #[test]
    fn reading_stops_at_a_torn_record_and_at_an_older_epoch() {
        let (first, second) = (encode(5, &writes(1)), encode(5, &writes(2)));
        let mut torn = file_with(5, &[first.clone(), second.clone()]);
        let last_byte = RECORDS_AT as usize + first.len() + second.len() - 1;
        torn[last_byte] ^= 0xff;
        assert_eq!(records(&torn, 5).len(), 1, "the torn record is not read");

        // A new epoch's record over the start of an older one's: what is
        // left of the older epoch does not count.
        let older = file_with(5, &[encode(4, &writes(9)), encode(5, &writes(1))]);
        assert!(records(&older, 5).is_empty());
        let zeros = file_with(5, &[]);
        assert!(records(&zeros, 5).is_empty());
    }

    #[test]
    fn a_torn_header_leaves_the_previous_epoch() {
        let mut bytes = file_with(6, &[]);
        bytes[SLOT as usize..SLOT as usize + 20].copy_from_slice(&header(7));
        assert_eq!(newest_header(&bytes), Some(7));
        bytes[SLOT as usize + 9] ^= 1;
        assert_eq!(newest_header(&bytes), Some(6), "slot 1 is torn");
        assert_eq!(newest_header(&[0u8; 100]), None);
    }

    #[test]
    fn a_whole_record_that_cannot_be_read_is_an_error_not_a_panic() {
        assert!(decode(&[7, 0]).is_err(), "no such tree");
        assert!(decode(&[1, 9, 0, 0, 0, 0]).is_err(), "no such kind");
        assert!(
            decode(&[1, 0, 200, 0, 0, 0, 1]).is_err(),
            "key past the end"
        );
        assert!(decode(&[1, 0, 1, 0, 0, 0, b'k', 5]).is_err(), "length cut");
        assert_eq!(decode(&[]), Ok(vec![]));
    }

    #[test]
    fn opening_replays_the_records_then_starts_a_new_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().path(dir.path()).open().expect("sled");
        let (meta, log) = (
            db.open_tree("meta").expect("t"),
            db.open_tree("log").expect("t"),
        );
        let journal = || {
            let durable = Durable::open(dir.path()).expect("durable");
            Journal::open(dir.path(), db.clone(), durable, [&meta, &log]).expect("journal")
        };
        let first = journal();
        let ticket = first
            .lock()
            .expect("lock")
            .record(&writes(1))
            .expect("record");
        first.sync(ticket).expect("sync");
        drop(first);
        // Replayed into sled without it having applied them itself.
        let second = journal();
        assert_eq!(
            log.get([b'k', 1]).expect("get").as_deref(),
            Some(&[1u8; 3][..])
        );
        let bytes = std::fs::read(dir.path().join(FILE_NAME)).expect("read");
        assert_eq!(bytes.len() as u64, CAPACITY);
        let epoch = newest_header(&bytes).expect("a header");
        assert!(records(&bytes, epoch).is_empty(), "checkpointed at open");
        let ticket = second
            .lock()
            .expect("lock")
            .record(&writes(2))
            .expect("record");
        second.sync(ticket).expect("sync");
        drop(second);

        // Both headers damaged with records behind them: refused, not
        // opened as if empty.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[..RECORDS_AT as usize].fill(0);
        std::fs::write(&path, &bytes).expect("write");
        let durable = Durable::open(dir.path()).expect("durable");
        let refused =
            Journal::open(dir.path(), db.clone(), durable, [&meta, &log]).expect_err("refused");
        assert!(refused.to_string().contains("both headers"), "{refused}");
    }

    #[test]
    fn a_full_journal_checkpoints_and_starts_over_with_what_did_not_fit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new().path(dir.path()).open().expect("sled");
        let (meta, log) = (
            db.open_tree("meta").expect("t"),
            db.open_tree("log").expect("t"),
        );
        let durable = Durable::open(dir.path()).expect("durable");
        let journal =
            Journal::open(dir.path(), db.clone(), durable, [&meta, &log]).expect("journal");
        // Ten appends of 1 MiB each, applied as the store applies them:
        // seven fit in the 8 MiB file, the eighth checkpoints first.
        for n in 0..10u8 {
            let big = vec![Write::set(Tree::Log, vec![b'b', n], vec![n; 1 << 20])];
            log.insert([b'b', n], vec![n; 1 << 20]).expect("apply");
            let ticket = journal.lock().expect("lock").record(&big).expect("record");
            journal.sync(ticket).expect("sync");
        }
        let bytes = std::fs::read(dir.path().join(FILE_NAME)).expect("read");
        assert_eq!(bytes.len() as u64, CAPACITY, "the file does not grow");
        let epoch = newest_header(&bytes).expect("a header");
        assert_eq!(epoch, 2, "one checkpoint at open, one when full");
        let kept: Vec<Vec<Write>> = records(&bytes, epoch)
            .into_iter()
            .map(|(_, payload)| decode(payload).expect("decodes"))
            .collect();
        let first_kept = kept.first().map(|w| w[0].key.clone());
        assert_eq!(kept.len(), 3, "the appends after the checkpoint");
        assert_eq!(first_kept, Some(vec![b'b', 7]));
    }
}
