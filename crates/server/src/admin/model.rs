//! What admin operations return, as JSON on the wire and in `--json` output.

use serde::{Deserialize, Serialize};

use weft_storage::{DocInfo, Quarantined, SnapshotInfo, StorageError};
use weft_sync::{Restored, Reverted, RoomError, RoomStats};

/// One document, as `docs list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocSummary {
    pub name: String,
    pub size_bytes: u64,
    pub last_seq: u64,
    /// Milliseconds since the epoch.
    pub last_change_ms: Option<u64>,
    pub created_at_ms: u64,
    pub snapshots: usize,
    /// Live connections (0 when the document is not loaded).
    pub editors: usize,
    pub viewers: usize,
    /// Cluster mode: memory Redis holds for the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_bytes: Option<u64>,
}

impl DocSummary {
    pub fn new(info: DocInfo, live: Option<RoomStats>) -> Self {
        let live = live.unwrap_or_default();
        DocSummary {
            name: info.name.to_string(),
            size_bytes: info.size_bytes,
            last_seq: info.last_seq.max(live.last_seq),
            last_change_ms: info.last_change_ms,
            created_at_ms: info.meta.created_at_ms,
            snapshots: info.snapshots,
            editors: live.editors,
            viewers: live.viewers,
            redis_bytes: info.held_bytes,
        }
    }
}

/// One document with its snapshot history, as `docs show` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocDetail {
    #[serde(flatten)]
    pub summary: DocSummary,
    pub history: Vec<SnapshotView>,
    /// Stored changes (or snapshots) set aside because they do not replay.
    #[serde(default)]
    pub quarantined: Vec<QuarantineView>,
}

/// A stored change (or snapshot) set aside because it does not replay;
/// its bytes stay in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineView {
    pub doc: String,
    /// The change's sequence number (a snapshot's: the newest it covers).
    pub seq: u64,
    /// The snapshot's id, when a snapshot was set aside.
    pub snapshot: Option<u64>,
    /// When the change was accepted (the snapshot taken).
    pub changed_at_ms: u64,
    pub quarantined_at_ms: u64,
    pub reason: String,
    pub size_bytes: u64,
}

impl QuarantineView {
    pub fn new(doc: &str, q: &Quarantined) -> Self {
        QuarantineView {
            doc: doc.to_owned(),
            seq: q.seq,
            snapshot: q.snapshot,
            changed_at_ms: q.changed_at_ms,
            quarantined_at_ms: q.quarantined_at_ms,
            reason: q.reason.clone(),
            size_bytes: q.update.len() as u64,
        }
    }

    /// Where it is: `doc#seq`, or `doc snapshot id`.
    pub fn location(&self) -> String {
        match self.snapshot {
            None => format!("{}#{}", self.doc, self.seq),
            Some(id) => format!("{} snapshot {id}", self.doc),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    pub id: u64,
    pub seq: u64,
    pub taken_at_ms: u64,
    pub reason: String,
    pub size_bytes: u64,
}

impl From<SnapshotInfo> for SnapshotView {
    fn from(s: SnapshotInfo) -> Self {
        SnapshotView {
            id: s.id,
            seq: s.seq,
            taken_at_ms: s.taken_at_ms,
            reason: s.reason.as_str().to_owned(),
            size_bytes: s.size,
        }
    }
}

/// What a restore or import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeView {
    /// The event id of the change, or `None` when nothing changed.
    pub change: Option<String>,
    /// The snapshot taken right after.
    pub snapshot: u64,
}

impl From<Restored> for ChangeView {
    fn from(r: Restored) -> Self {
        ChangeView {
            change: r.change.map(|id| id.to_string()),
            snapshot: r.snapshot,
        }
    }
}

/// What a revert did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevertView {
    /// The point it reverted to: the author's changes after it were undone.
    pub since: String,
    /// How many of the author's stored changes came after that point.
    pub changes: usize,
    /// The event id of the revert, or `None` when there was nothing to undo.
    pub change: Option<String>,
}

impl From<Reverted> for RevertView {
    fn from(r: Reverted) -> Self {
        RevertView {
            since: r.since.to_string(),
            changes: r.changes,
            change: r.change.map(|id| id.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    pub documents: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub documents: usize,
    pub records: usize,
    pub problems: Vec<Problem>,
    /// What loads already set aside: reported, not a problem (each of
    /// those documents loads without it).
    #[serde(default)]
    pub quarantined: Vec<QuarantineView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub location: String,
    pub problem: String,
}

/// Why an admin operation failed, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
    /// The document engine refused: answered as the document API answers.
    #[error(transparent)]
    Room(#[from] RoomError),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}
