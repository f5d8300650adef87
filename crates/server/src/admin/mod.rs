//! Operating on stored documents: the admin HTTP API and the `weft docs`,
//! `weft snapshot`, `weft backup` and `weft verify` commands.
//!
//! [`Backend`] is every operation an operator has. [`ops::LocalAdmin`]
//! performs them on a store through the document engine (inside the
//! server for the HTTP API, or in the CLI process on a data directory
//! nobody else holds); [`client::RemoteAdmin`] asks a running server over
//! HTTP. The CLI is written once, against the trait.

pub mod api;
pub mod client;
pub mod commands;
mod diff;
pub mod model;
pub mod ops;

use std::io::{Read, Write};

use async_trait::async_trait;
use weft_storage::DocName;
use weft_sync::history::{HistoryPage, HistoryQuery};

pub use model::*;

/// Reports progress of a long operation (a backup): total, then steps.
pub trait Progress: Send + Sync {
    fn start(&self, total: Option<u64>, what: &str);
    fn advance(&self, by: u64);
    fn finish(&self);
}

/// Every admin operation.
#[async_trait]
pub trait Backend: Send + Sync {
    async fn list_docs(&self) -> Result<Vec<DocSummary>, AdminError>;
    async fn show_doc(&self, doc: &DocName) -> Result<DocDetail, AdminError>;
    async fn delete_doc(&self, doc: &DocName) -> Result<(), AdminError>;
    async fn list_snapshots(&self, doc: &DocName) -> Result<Vec<SnapshotView>, AdminError>;
    async fn create_snapshot(&self, doc: &DocName) -> Result<SnapshotView, AdminError>;
    /// The document now, or as snapshot `snapshot`, as a Yjs v1 update.
    async fn state(&self, doc: &DocName, snapshot: Option<u64>) -> Result<Vec<u8>, AdminError>;
    async fn restore(&self, doc: &DocName, snapshot: u64) -> Result<ChangeView, AdminError>;
    /// The document as it was at `at` (an event id or an RFC 3339 time),
    /// as a Yjs v1 update.
    async fn state_at(&self, doc: &DocName, at: &str) -> Result<Vec<u8>, AdminError>;
    /// Brings the document back to how it was at `at`, live.
    async fn restore_at(&self, doc: &DocName, at: &str) -> Result<ChangeView, AdminError>;
    /// Undoes `author`'s changes made after `since` (an event id or an RFC
    /// 3339 time) as one live change, leaving everyone else's.
    async fn revert(
        &self,
        doc: &DocName,
        author: &str,
        since: &str,
    ) -> Result<RevertView, AdminError>;
    async fn import(&self, doc: &DocName, update: Vec<u8>) -> Result<ChangeView, AdminError>;
    async fn backup(
        &self,
        out: &mut (dyn Write + Send),
        progress: &dyn Progress,
    ) -> Result<BackupSummary, AdminError>;
    async fn restore_backup(
        &self,
        input: &mut (dyn Read + Send),
        progress: &dyn Progress,
    ) -> Result<BackupSummary, AdminError>;
    async fn verify(&self) -> Result<VerifyReport, AdminError>;
    /// A page of a document's history.
    async fn history(&self, doc: &DocName, query: &HistoryQuery)
        -> Result<HistoryPage, AdminError>;
}
