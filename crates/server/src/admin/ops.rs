//! `LocalAdmin`: admin operations on a store, through the document engine.
//!
//! Changes (restore, import, delete, snapshots) go through the document's
//! room, exactly as in a running server, so live editors see them and the
//! durability rules hold. Read-only operations read the store. Restoring a
//! backup writes whole documents into a store that takes them (the embedded
//! one); on any other it is refused before anything is read.

use std::io::{Read, Write};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use weft_storage::archive::{self, ArchiveReader};
use weft_storage::{
    Archive, ArchiveRestore, Catalogue, DocDump, DocName, DocumentStore, StoredDoc,
};
use weft_sync::history::{HistoryPage, HistoryQuery};

use crate::history_api::point_in_time;
use weft_sync::protocol::decode_update;
use weft_sync::{Clock, DocState, Rooms, SystemClock};

use super::{
    AdminError, Backend, BackupSummary, ChangeView, DocDetail, DocSummary, Problem, Progress,
    QuarantineView, RevertView, SnapshotView, VerifyReport,
};

/// What the admin operations read of a store: its documents, which exist,
/// and whole documents (backups, verify).
pub trait AdminStore: DocumentStore + Catalogue + Archive {}

impl<S: DocumentStore + Catalogue + Archive + ?Sized> AdminStore for S {}

/// Why a backup cannot be restored into a cluster's store.
pub const RESTORE_UNSUPPORTED: &str = "restoring a backup into Redis (cluster mode) is not \
     supported; restore it into a data directory instead (weft backup restore FILE --data-dir DIR)";

#[derive(Debug, Clone)]
pub struct LocalAdmin {
    store: Arc<dyn AdminStore>,
    /// Where restored backups go; `None` when the store takes none (Redis).
    restore: Option<Arc<dyn ArchiveRestore>>,
    rooms: Rooms,
}

impl LocalAdmin {
    /// Admin operations on `store`, which takes no backup restores.
    pub fn new(store: Arc<dyn AdminStore>, rooms: Rooms) -> Self {
        LocalAdmin {
            store,
            restore: None,
            rooms,
        }
    }

    /// The same, restoring backups into `restore` (the same store).
    pub fn with_restore(mut self, restore: Arc<dyn ArchiveRestore>) -> Self {
        self.restore = Some(restore);
        self
    }

    /// The backup archive of every document, as a stream of chunks: the
    /// header, one chunk per document, the end marker.
    pub fn archive_chunks(&self) -> impl Stream<Item = Result<Bytes, AdminError>> + Send + 'static {
        enum Step {
            Start,
            Doc(Vec<DocName>, usize, u64),
            Done,
        }
        let admin = self.clone();
        futures_util::stream::unfold(Step::Start, move |step| {
            let admin = admin.clone();
            async move {
                match step {
                    Step::Start => {
                        let first = match admin.store.list().await {
                            Ok(docs) => archive::header(docs.len() as u64, SystemClock.now_ms())
                                .map(|h| (Bytes::from(h), Step::Doc(docs, 0, 0))),
                            Err(e) => Err(e),
                        };
                        Some(match first {
                            Ok((chunk, next)) => (Ok(chunk), next),
                            Err(e) => (Err(e.into()), Step::Done),
                        })
                    }
                    Step::Doc(docs, i, written) if i == docs.len() => Some((
                        archive::end(written).map(Bytes::from).map_err(Into::into),
                        Step::Done,
                    )),
                    Step::Doc(docs, i, written) => {
                        let chunk = match admin.store.dump(&docs[i]).await {
                            Ok(Some(dump)) => archive::document(&dump).map(|b| (Bytes::from(b), 1)),
                            Ok(None) => Ok((Bytes::new(), 0)), // deleted meanwhile
                            Err(e) => Err(e),
                        };
                        Some(match chunk {
                            Ok((bytes, n)) => (Ok(bytes), Step::Doc(docs, i + 1, written + n)),
                            Err(e) => (Err(e.into()), Step::Done),
                        })
                    }
                    Step::Done => None,
                }
            }
        })
    }

    async fn quarantined(&self, doc: &DocName) -> Result<Vec<QuarantineView>, AdminError> {
        let parts = self.store.quarantined(doc).await?;
        Ok(parts
            .iter()
            .map(|q| QuarantineView::new(doc.as_str(), q))
            .collect())
    }

    async fn summary(&self, doc: &DocName) -> Result<DocSummary, AdminError> {
        let info = self.store.info(doc).await?.ok_or_else(|| not_found(doc))?;
        Ok(DocSummary::new(info, self.rooms.stats(doc).await))
    }
}

fn not_found(doc: &DocName) -> AdminError {
    AdminError::NotFound(format!(
        "there is no document {doc}; `weft docs list` shows what there is"
    ))
}

fn io_failed(e: std::io::Error) -> AdminError {
    AdminError::Failed(format!("writing the backup failed: {e}"))
}

#[async_trait]
impl Backend for LocalAdmin {
    async fn list_docs(&self) -> Result<Vec<DocSummary>, AdminError> {
        let mut out = Vec::new();
        for doc in self.store.list().await? {
            if let Some(info) = self.store.info(&doc).await? {
                out.push(DocSummary::new(info, self.rooms.stats(&doc).await));
            }
        }
        Ok(out)
    }

    async fn show_doc(&self, doc: &DocName) -> Result<DocDetail, AdminError> {
        let summary = self.summary(doc).await?;
        let history = self.list_snapshots(doc).await?;
        let quarantined = self.quarantined(doc).await?;
        Ok(DocDetail {
            summary,
            history,
            quarantined,
        })
    }

    async fn delete_doc(&self, doc: &DocName) -> Result<(), AdminError> {
        Ok(self.rooms.delete(doc).await?)
    }

    async fn list_snapshots(&self, doc: &DocName) -> Result<Vec<SnapshotView>, AdminError> {
        self.summary(doc).await?;
        let list = self.store.list_snapshots(doc).await?;
        Ok(list.into_iter().map(SnapshotView::from).collect())
    }

    async fn create_snapshot(&self, doc: &DocName) -> Result<SnapshotView, AdminError> {
        let id = self.rooms.snapshot_now(doc).await?;
        let list = self.store.list_snapshots(doc).await?;
        list.into_iter()
            .find(|s| s.id == id)
            .map(SnapshotView::from)
            .ok_or_else(|| {
                AdminError::Failed(format!("snapshot {id} vanished right after it was taken"))
            })
    }

    async fn state(&self, doc: &DocName, snapshot: Option<u64>) -> Result<Vec<u8>, AdminError> {
        self.summary(doc).await?;
        match snapshot {
            Some(id) => self
                .store
                .get_snapshot(doc, id)
                .await?
                .map(|s| s.state)
                .ok_or_else(|| {
                    AdminError::NotFound(format!(
                        "document {doc} has no snapshot {id}; `weft snapshot list {doc}` shows them"
                    ))
                }),
            None => Ok(self.rooms.read(doc, None).await?.update),
        }
    }

    async fn restore(&self, doc: &DocName, snapshot: u64) -> Result<ChangeView, AdminError> {
        Ok(self.rooms.restore(doc, snapshot).await?.into())
    }

    async fn state_at(&self, doc: &DocName, at: &str) -> Result<Vec<u8>, AdminError> {
        let at = point_in_time(at).map_err(AdminError::BadRequest)?;
        Ok(self.rooms.state_at(doc, at).await?.update)
    }

    async fn restore_at(&self, doc: &DocName, at: &str) -> Result<ChangeView, AdminError> {
        let at = point_in_time(at).map_err(AdminError::BadRequest)?;
        Ok(self.rooms.restore_at(doc, at).await?.into())
    }

    async fn revert(
        &self,
        doc: &DocName,
        author: &str,
        since: &str,
    ) -> Result<RevertView, AdminError> {
        let since = point_in_time(since).map_err(AdminError::BadRequest)?;
        Ok(self.rooms.revert(doc, author, since).await?.into())
    }

    async fn import(&self, doc: &DocName, update: Vec<u8>) -> Result<ChangeView, AdminError> {
        Ok(self.rooms.import(doc, Bytes::from(update)).await?.into())
    }

    async fn backup(
        &self,
        out: &mut (dyn Write + Send),
        progress: &dyn Progress,
    ) -> Result<BackupSummary, AdminError> {
        let docs = self.store.list().await?.len() as u64;
        progress.start(Some(docs), "documents");
        let mut bytes = 0;
        let mut chunks = std::pin::pin!(self.archive_chunks());
        let mut first = true;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            out.write_all(&chunk).map_err(io_failed)?;
            bytes += chunk.len() as u64;
            // Every chunk after the header is a document (or the end).
            if !std::mem::take(&mut first) {
                progress.advance(1);
            }
        }
        out.flush().map_err(io_failed)?;
        progress.finish();
        Ok(BackupSummary {
            documents: docs,
            bytes,
        })
    }

    async fn restore_backup(
        &self,
        input: &mut (dyn Read + Send),
        progress: &dyn Progress,
    ) -> Result<BackupSummary, AdminError> {
        let target = self
            .restore
            .as_ref()
            .ok_or_else(|| AdminError::Failed(RESTORE_UNSUPPORTED.into()))?;
        let mut reader = ArchiveReader::new(input)?;
        progress.start(Some(reader.documents), "documents");
        let mut restored = 0;
        while let Some(dump) = reader.next_document()? {
            let name = dump.name.clone();
            target.restore_dump(dump).await?;
            // A room may hold the name, never written until now.
            self.rooms.reopen(&name).await;
            restored += 1;
            progress.advance(1);
        }
        progress.finish();
        Ok(BackupSummary {
            documents: restored,
            bytes: 0,
        })
    }

    async fn history(
        &self,
        doc: &DocName,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, AdminError> {
        Ok(self.rooms.history(doc, query).await?)
    }

    async fn verify(&self) -> Result<VerifyReport, AdminError> {
        let mut problems: Vec<Problem> = self
            .store
            .verify()
            .await?
            .into_iter()
            .map(|c| Problem {
                location: c.location,
                problem: c.problem,
            })
            .collect();
        let docs = self.store.list().await?;
        let mut records = 0;
        let mut quarantined = Vec::new();
        for doc in &docs {
            // Records that decode may still not be Yjs updates.
            let dump = match self.store.dump(doc).await {
                Ok(Some(dump)) => dump,
                Ok(None) => continue,
                Err(_) => continue, // already reported by the store
            };
            records += 1 + dump.snapshots.len() + dump.log.len();
            for s in &dump.snapshots {
                if let Err(e) = decode_update(&s.state) {
                    problems.push(Problem {
                        location: format!("{doc} snapshot {}", s.id),
                        problem: format!("not a Yjs update: {e}"),
                    });
                }
            }
            for e in &dump.log {
                if let Err(err) = decode_update(&e.update) {
                    problems.push(Problem {
                        location: format!("{doc}#{}", e.seq),
                        problem: format!("not a Yjs update: {err}"),
                    });
                }
            }
            let set_aside = self.quarantined(doc).await?;
            problems.extend(replay_problems(dump, &set_aside).await);
            quarantined.extend(set_aside);
        }
        Ok(VerifyReport {
            documents: docs.len(),
            records,
            problems,
            quarantined,
        })
    }
}

/// Replays a document as a load would (newest snapshot, the log after it,
/// without what is already quarantined): what would not replay, and would
/// be quarantined when it next loads. On a blocking thread: replaying a
/// large document takes a while.
async fn replay_problems(dump: DocDump, quarantined: &[QuarantineView]) -> Vec<Problem> {
    let skip = quarantined
        .iter()
        .filter(|q| q.snapshot.is_none())
        .map(|q| q.seq)
        .collect();
    let bad_snapshots: Vec<u64> = quarantined.iter().filter_map(|q| q.snapshot).collect();
    let replayed = tokio::task::spawn_blocking(move || {
        let name = dump.name.to_string();
        let snapshot = dump
            .snapshots
            .into_iter()
            .filter(|s| !bad_snapshots.contains(&s.id))
            .max_by_key(|s| (s.seq, s.id));
        let after = snapshot.as_ref().map_or(0, |s| s.seq);
        let stored = StoredDoc {
            meta: dump.meta,
            exists: true,
            snapshot,
            log: dump.log.into_iter().filter(|e| e.seq > after).collect(),
        };
        let problems: Vec<Problem> =
            match DocState::load_skipping(&stored, &skip, 0, Arc::new(SystemClock)) {
                Ok(state) => state
                    .set_aside()
                    .iter()
                    .map(|p| Problem {
                        location: format!("{name}#{}", p.seq),
                        problem: format!(
                            "does not replay, and will be quarantined when the document next \
                             loads: {}",
                            p.reason
                        ),
                    })
                    .collect(),
                Err(e) => vec![Problem {
                    location: format!("{name} {}", e.part),
                    problem: format!(
                        "does not load, and will be quarantined when the document next loads: {}",
                        e.reason
                    ),
                }],
            };
        problems
    })
    .await;
    replayed.unwrap_or_else(|e| {
        vec![Problem {
            location: "verify".into(),
            problem: format!("replaying a document failed: {e}"),
        }]
    })
}
