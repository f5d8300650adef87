//! The records weft keeps on disk and their MessagePack encoding.
//!
//! Every record starts with a schema version. Decoding checks it, so a data
//! directory written by a newer weft fails with a clear error instead of being
//! misread, and a later version can migrate older records on read.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::StorageError;

/// Schema version written by this build. 2: log records carry who made
/// the change and through what ([`Provenance`]); records of version 1 read
/// as of unknown provenance.
pub const SCHEMA_VERSION: u16 = 2;

/// One accepted change: a Yjs v1 update and the sequence number it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: u64,
    /// Milliseconds since the Unix epoch when the change was accepted.
    pub at_ms: u64,
    pub update: Vec<u8>,
    pub by: Provenance,
}

/// Who made a change, and through what. Either may be unknown: changes
/// stored before weft recorded them, and changes whose maker had no name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Provenance {
    /// The token's subject, or `anonymous#<connection>` without one, or
    /// `admin` for an operator's change.
    pub author: Option<String>,
    /// How it came: `ws`, `hocuspocus`, `http`, `y-sweet`, `admin`.
    pub via: Option<String>,
}

impl Provenance {
    pub fn new(author: Option<String>, via: &str) -> Provenance {
        Provenance {
            author,
            via: Some(via.to_owned()),
        }
    }
}

/// Why a snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotReason {
    /// Enough changes accumulated since the previous snapshot.
    Periodic,
    /// The document went idle and was unloaded.
    Idle,
    /// The server shut down.
    Shutdown,
    /// An operator asked for one.
    Manual,
    /// Taken right after restoring an older snapshot.
    Restore,
    /// Taken right after importing an update.
    Import,
}

impl std::str::FromStr for SnapshotReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "periodic" => SnapshotReason::Periodic,
            "idle" => SnapshotReason::Idle,
            "shutdown" => SnapshotReason::Shutdown,
            "manual" => SnapshotReason::Manual,
            "restore" => SnapshotReason::Restore,
            "import" => SnapshotReason::Import,
            other => return Err(format!("unknown snapshot reason {other:?}")),
        })
    }
}

impl SnapshotReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotReason::Periodic => "periodic",
            SnapshotReason::Idle => "idle",
            SnapshotReason::Shutdown => "shutdown",
            SnapshotReason::Manual => "manual",
            SnapshotReason::Restore => "restore",
            SnapshotReason::Import => "import",
        }
    }
}

/// The full state of a document as of sequence number `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Unique and increasing within one store; assigned when stored.
    pub id: u64,
    /// The last change this snapshot includes (0: none).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
    pub reason: SnapshotReason,
    /// The whole document as a Yjs v1 update.
    pub state: Vec<u8>,
}

/// A snapshot without its state: what a history listing shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: u64,
    pub seq: u64,
    pub taken_at_ms: u64,
    pub reason: SnapshotReason,
    /// Bytes of the encoded document.
    pub size: u64,
}

/// A stored change (or snapshot) that no longer replays, set aside so the
/// rest of its document loads. Kept, bytes and all, for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The change's sequence number; for a snapshot, the newest change it
    /// covers.
    pub seq: u64,
    /// The snapshot's id when what was set aside is a snapshot.
    pub snapshot: Option<u64>,
    /// When the change was accepted (for a snapshot: taken), ms since the
    /// Unix epoch.
    pub changed_at_ms: u64,
    /// When it was set aside, ms since the Unix epoch.
    pub quarantined_at_ms: u64,
    /// Why it does not replay.
    pub reason: String,
    /// The stored bytes, as they were: a Yjs v1 update.
    pub update: Vec<u8>,
}

/// Per-document facts that are not part of its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocMeta {
    /// Random, fixed when the document is created: tells a recreated document
    /// apart from an earlier one of the same name.
    pub incarnation: u64,
    pub created_at_ms: u64,
}

// On-disk shapes. Fields are encoded positionally (MessagePack arrays), so
// new fields go at the end and old ones are never reordered.

#[derive(Serialize, Deserialize)]
pub(crate) struct LogRecord {
    pub version: u16,
    pub at_ms: u64,
    #[serde(with = "serde_bytes")]
    pub update: Vec<u8>,
    /// Since version 2.
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub via: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub version: u16,
    pub seq: u64,
    pub taken_at_ms: u64,
    pub reason: SnapshotReason,
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

/// What listing a document's history needs, without the (large) state.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotIndexRecord {
    pub version: u16,
    pub seq: u64,
    pub taken_at_ms: u64,
    pub reason: SnapshotReason,
    pub size: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct MetaRecord {
    pub version: u16,
    pub incarnation: u64,
    pub created_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct QuarantineRecord {
    pub version: u16,
    pub seq: u64,
    pub snapshot: Option<u64>,
    pub changed_at_ms: u64,
    pub quarantined_at_ms: u64,
    pub reason: String,
    #[serde(with = "serde_bytes")]
    pub update: Vec<u8>,
}

impl QuarantineRecord {
    pub(crate) fn of(part: &Quarantined) -> Self {
        QuarantineRecord {
            version: SCHEMA_VERSION,
            seq: part.seq,
            snapshot: part.snapshot,
            changed_at_ms: part.changed_at_ms,
            quarantined_at_ms: part.quarantined_at_ms,
            reason: part.reason.clone(),
            update: part.update.clone(),
        }
    }

    pub(crate) fn into_part(self) -> Quarantined {
        Quarantined {
            seq: self.seq,
            snapshot: self.snapshot,
            changed_at_ms: self.changed_at_ms,
            quarantined_at_ms: self.quarantined_at_ms,
            reason: self.reason,
            update: self.update,
        }
    }
}

impl Versioned for QuarantineRecord {
    const KIND: &'static str = "quarantined change";
    fn version(&self) -> u16 {
        self.version
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct WebhookRecord {
    pub version: u16,
    pub delivery: crate::WebhookDelivery,
}

impl Versioned for WebhookRecord {
    const KIND: &'static str = "webhook delivery";
    fn version(&self) -> u16 {
        self.version
    }
}

impl LogRecord {
    pub(crate) fn of(entry: &LogEntry) -> Self {
        LogRecord {
            version: SCHEMA_VERSION,
            at_ms: entry.at_ms,
            update: entry.update.clone(),
            author: entry.by.author.clone(),
            via: entry.by.via.clone(),
        }
    }

    /// The change it holds; the sequence number lives in the key.
    pub(crate) fn into_entry(self, seq: u64) -> LogEntry {
        LogEntry {
            seq,
            at_ms: self.at_ms,
            update: self.update,
            by: Provenance {
                author: self.author,
                via: self.via,
            },
        }
    }
}

impl SnapshotRecord {
    pub(crate) fn of(snapshot: &Snapshot) -> Self {
        SnapshotRecord {
            version: SCHEMA_VERSION,
            seq: snapshot.seq,
            taken_at_ms: snapshot.taken_at_ms,
            reason: snapshot.reason,
            state: snapshot.state.clone(),
        }
    }

    /// The snapshot it holds; the id lives in the key.
    pub(crate) fn into_snapshot(self, id: u64) -> Snapshot {
        Snapshot {
            id,
            seq: self.seq,
            taken_at_ms: self.taken_at_ms,
            reason: self.reason,
            state: self.state,
        }
    }
}

impl SnapshotIndexRecord {
    pub(crate) fn of(snapshot: &Snapshot) -> Self {
        SnapshotIndexRecord {
            version: SCHEMA_VERSION,
            seq: snapshot.seq,
            taken_at_ms: snapshot.taken_at_ms,
            reason: snapshot.reason,
            size: snapshot.state.len() as u64,
        }
    }

    pub(crate) fn into_info(self, id: u64) -> SnapshotInfo {
        SnapshotInfo {
            id,
            seq: self.seq,
            taken_at_ms: self.taken_at_ms,
            reason: self.reason,
            size: self.size,
        }
    }
}

/// Implemented by every on-disk record so decoding can check its version.
pub(crate) trait Versioned: Serialize + DeserializeOwned {
    const KIND: &'static str;
    fn version(&self) -> u16;
}

impl Versioned for LogRecord {
    const KIND: &'static str = "log record";
    fn version(&self) -> u16 {
        self.version
    }
}

impl Versioned for SnapshotRecord {
    const KIND: &'static str = "snapshot";
    fn version(&self) -> u16 {
        self.version
    }
}

impl Versioned for SnapshotIndexRecord {
    const KIND: &'static str = "snapshot index entry";
    fn version(&self) -> u16 {
        self.version
    }
}

impl Versioned for MetaRecord {
    const KIND: &'static str = "document metadata";
    fn version(&self) -> u16 {
        self.version
    }
}

pub(crate) fn encode<R: Versioned>(record: &R) -> Result<Vec<u8>, StorageError> {
    rmp_serde::to_vec(record).map_err(|e| StorageError::Encode {
        kind: R::KIND,
        reason: e.to_string(),
        source: Box::new(e),
    })
}

pub(crate) fn decode<R: Versioned>(key: &str, bytes: &[u8]) -> Result<R, StorageError> {
    let record: R = rmp_serde::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        kind: R::KIND,
        key: key.to_owned(),
        reason: e.to_string(),
        source: Some(Box::new(e)),
    })?;
    if record.version() > SCHEMA_VERSION {
        return Err(StorageError::NewerSchema {
            kind: R::KIND,
            key: key.to_owned(),
            found: record.version(),
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let entry = LogEntry {
            seq: 4,
            at_ms: 7,
            update: vec![1, 2, 3],
            by: Provenance::new(Some("ada".into()), "ws"),
        };
        let back: LogRecord =
            decode("k", &encode(&LogRecord::of(&entry)).expect("encode")).expect("decode");
        assert_eq!(back.into_entry(4), entry);
    }

    #[test]
    fn a_log_record_of_version_1_reads_as_of_unknown_provenance() {
        // As version 1 wrote it: a MessagePack array of the version, the
        // time and the update, nothing more.
        #[derive(Serialize)]
        struct Version1 {
            version: u16,
            at_ms: u64,
            #[serde(with = "serde_bytes")]
            update: Vec<u8>,
        }
        let old = rmp_serde::to_vec(&Version1 {
            version: 1,
            at_ms: 7,
            update: vec![9],
        })
        .expect("encode");
        let back: LogRecord = decode("k", &old).expect("decode");
        let entry = back.into_entry(1);
        assert_eq!(
            (entry.at_ms, entry.update, entry.by),
            (7, vec![9], Provenance::default())
        );
    }

    #[test]
    fn quarantine_records_round_trip() {
        let part = Quarantined {
            seq: 9,
            snapshot: Some(2),
            changed_at_ms: 5,
            quarantined_at_ms: 6,
            reason: "does not replay".into(),
            update: vec![0, 0],
        };
        let back: QuarantineRecord =
            decode("k", &encode(&QuarantineRecord::of(&part)).expect("encode")).expect("decode");
        assert_eq!(back.into_part(), part);
    }

    #[test]
    fn newer_schema_is_refused() {
        let rec = MetaRecord {
            version: SCHEMA_VERSION + 1,
            incarnation: 1,
            created_at_ms: 2,
        };
        let err = decode::<MetaRecord>("doc", &encode(&rec).expect("encode"))
            .err()
            .expect("must fail");
        assert!(
            matches!(err, StorageError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1)
        );
    }

    #[test]
    fn garbage_is_reported_as_corrupt() {
        let err = decode::<SnapshotRecord>("doc/1", &[0xc1, 0x00])
            .err()
            .expect("must fail");
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }
}
