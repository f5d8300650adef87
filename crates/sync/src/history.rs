//! A document's history as people read it: its stored changes, each with
//! its id, time, author, how it came, its size and what it did (how much
//! it inserted and deleted), a page at a time and filtered by time and
//! author.
//!
//! Read from the store, not the room: what is listed is what is durable,
//! and listing does not load the document. It lists what the log still
//! holds: every change of the history window (`--history-retention`) and
//! at least the tail kept behind the newest snapshot (`--keep-log-tail`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use weft_storage::{DocName, LogEntry, Provenance, StoredDoc};
use yrs::updates::decoder::Decode;
use yrs::{IdSet, Update};

use crate::guard::guarded;
use crate::{EventId, RoomError, Rooms};

/// At most this many changes in one page.
pub const MAX_PAGE: usize = 1000;

/// Changes read from the store at a time while a filter skips some.
pub(crate) const READ_CHUNK: usize = 1000;

/// Which changes to list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Only changes after this one (the previous page's `next`).
    pub after: Option<u64>,
    /// Only changes at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Only changes before this time (ms since the epoch).
    pub until_ms: Option<u64>,
    /// Only this author's changes.
    pub author: Option<String>,
    /// At most this many (capped at [`MAX_PAGE`]; 100 unless given).
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    100
}

/// Most stored changes one request reads while filters skip them: past
/// that, the page ends early, and `next` says where to go on.
const MAX_SCANNED: usize = 20 * READ_CHUNK;

/// One change, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Its event id (as SSE viewers know it).
    pub id: String,
    pub seq: u64,
    pub at_ms: u64,
    /// `None` for changes stored before authors were recorded.
    pub author: Option<String>,
    pub via: Option<String>,
    /// The size of the stored change, in bytes.
    pub bytes: usize,
    /// Characters (or items: map entries, array elements, nodes) it
    /// inserted, and deleted.
    pub inserted: u64,
    pub deleted: u64,
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    pub changes: Vec<HistoryEntry>,
    /// Where the next page starts (`after=`), if there may be more.
    pub next: Option<u64>,
}

impl Rooms {
    /// A page of `doc`'s history ([`NotFound`](RoomError::NotFound) if it
    /// was never written).
    pub async fn history(
        &self,
        doc: &DocName,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, RoomError> {
        let store = self.store();
        let info = match store.head(doc).await {
            Ok(Some(info)) => info,
            Ok(None) => return Err(RoomError::NotFound(format!("there is no document {doc}"))),
            Err(e) => return Err(RoomError::StorageFailure(e.to_string())),
        };
        let limit = query.limit.clamp(1, MAX_PAGE);
        let mut after = query.after.unwrap_or(0);
        let mut changes = Vec::new();
        let mut scanned = 0;
        loop {
            if scanned >= MAX_SCANNED {
                return Ok(HistoryPage {
                    changes,
                    next: Some(after),
                });
            }
            let read = store
                .read_log(doc, after, READ_CHUNK)
                .await
                .map_err(|e| RoomError::StorageFailure(e.to_string()))?;
            scanned += read.len();
            let Some(last) = read.last().map(|e| e.seq) else {
                return Ok(HistoryPage {
                    changes,
                    next: None,
                });
            };
            let wanted: Vec<&LogEntry> = read
                .iter()
                .filter(|e| query.takes(e))
                .take(limit - changes.len())
                .collect();
            // Measuring decodes each change: yrs work, on the CPU pool.
            let incarnation = info.meta.incarnation;
            let listed_now: Vec<HistoryEntry> = self
                .cpu()
                .run(|| wanted.iter().map(|e| listed(incarnation, e)).collect())
                .await;
            changes.extend(listed_now);
            if changes.len() == limit {
                let next = changes.last().map(|c| c.seq);
                return Ok(HistoryPage { changes, next });
            }
            // Past the end of the time asked for: nothing later is wanted.
            if query
                .until_ms
                .is_some_and(|until| read.iter().any(|e| e.at_ms >= until))
            {
                return Ok(HistoryPage {
                    changes,
                    next: None,
                });
            }
            after = last;
        }
    }
}

impl HistoryQuery {
    fn takes(&self, entry: &LogEntry) -> bool {
        self.since_ms.is_none_or(|since| entry.at_ms >= since)
            && self.until_ms.is_none_or(|until| entry.at_ms < until)
            && self
                .author
                .as_ref()
                .is_none_or(|a| entry.by.author.as_ref() == Some(a))
    }
}

/// `entry` as listed.
fn listed(incarnation: u64, entry: &LogEntry) -> HistoryEntry {
    let (inserted, deleted) = measure(&entry.update);
    let Provenance { author, via } = entry.by.clone();
    HistoryEntry {
        id: EventId {
            incarnation,
            seq: entry.seq,
        }
        .to_string(),
        seq: entry.seq,
        at_ms: entry.at_ms,
        author,
        via,
        bytes: entry.update.len(),
        inserted,
        deleted,
    }
}

/// How much an update inserts and deletes, in clock units (a character
/// of text, an entry of a map or array, a node). A change that does not
/// decode (one set aside when the document loads) measures nothing.
fn measure(update: &[u8]) -> (u64, u64) {
    let measured = guarded(|| {
        let update = Update::decode_v1(update).ok()?;
        Some((span(&update.insertions(true)), span(update.delete_set())))
    });
    measured.ok().flatten().unwrap_or((0, 0))
}

fn span(set: &IdSet) -> u64 {
    set.iter()
        .flat_map(|(_, ranges)| ranges.iter().map(|r| u64::from(r.end - r.start)))
        .sum()
}

/// A point in a document's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointInTime {
    /// Just after this change.
    Change(EventId),
    /// As it was at this time (ms since the epoch).
    Time(u64),
}

/// The document as it was.
#[derive(Debug, Clone)]
pub struct PastState {
    /// The newest change it holds (sequence number 0: none yet). Where the
    /// log no longer holds every change up to the point asked for, the
    /// nearest earlier point it can be rebuilt at (a snapshot).
    pub id: EventId,
    /// The whole document then, as a Yjs v1 update.
    pub update: Vec<u8>,
    /// Whether it is the point asked for (not an earlier one).
    pub exact: bool,
}

impl Rooms {
    /// `doc` as it was at `at`: the newest snapshot before that point,
    /// then the stored changes up to it, replayed (on the CPU pool) into a
    /// document of its own. The live document is not touched.
    pub async fn state_at(&self, doc: &DocName, at: PointInTime) -> Result<PastState, RoomError> {
        // Held from the first read: finding a time's change reads the log.
        let _turn = rebuild_turn().await?;
        let store = self.store();
        let failed = |e: weft_storage::StorageError| RoomError::StorageFailure(e.to_string());
        let info = store
            .head(doc)
            .await
            .map_err(failed)?
            .ok_or_else(|| RoomError::NotFound(format!("there is no document {doc}")))?;
        let incarnation = info.meta.incarnation;
        let snapshots = store.list_snapshots(doc).await.map_err(failed)?;
        let target = match at {
            PointInTime::Change(id) if id.incarnation != incarnation => {
                return Err(RoomError::NotFound(format!(
                    "{id} names a change of an earlier document called {doc}"
                )))
            }
            PointInTime::Change(id) => id.seq.min(info.last_seq),
            PointInTime::Time(ms) => {
                let logged = self.last_change_by(doc, ms).await?;
                let snapshotted = snapshots
                    .iter()
                    .filter(|s| s.taken_at_ms <= ms)
                    .map(|s| s.seq);
                snapshotted.chain(logged).max().unwrap_or(0)
            }
        };
        let LeftOut {
            snapshots: bad_snapshots,
            changes: skip,
        } = self.left_out(doc).await?;
        let base = match snapshots
            .iter()
            .filter(|s| s.seq <= target && !bad_snapshots.contains(&s.id))
            .max_by_key(|s| s.seq)
        {
            // Pruned meanwhile: asking again picks another.
            Some(info) => Some(
                store
                    .get_snapshot(doc, info.id)
                    .await
                    .map_err(failed)?
                    .ok_or_else(|| {
                        RoomError::TryAgain(format!(
                            "snapshot {} of {doc} was just pruned",
                            info.id
                        ))
                    })?,
            ),
            None => None,
        };
        let from = base.as_ref().map_or(0, |s| s.seq);
        let wanted = usize::try_from(target - from).unwrap_or(usize::MAX);
        let mut log = store.read_log(doc, from, wanted).await.map_err(failed)?;
        // Only an unbroken run of changes after the snapshot rebuilds it.
        let unbroken = log
            .iter()
            .enumerate()
            .take_while(|(i, e)| e.seq == from + 1 + *i as u64 && e.seq <= target)
            .count();
        log.truncate(unbroken);
        let seq = log.last().map_or(from, |e| e.seq);
        if base.is_none() && target > 0 && seq == 0 {
            return Err(RoomError::NotFound(format!(
                "{doc} before change {} is no longer kept (neither a snapshot nor the log \
                 reaches back that far)",
                log_start(store.as_ref(), doc).await.unwrap_or(target)
            )));
        }
        let stored = StoredDoc {
            meta: info.meta,
            exists: true,
            snapshot: base,
            log,
        };
        let update = self.cpu().run(|| rebuild(&stored, &skip)).await?;
        Ok(PastState {
            id: EventId { incarnation, seq },
            update,
            exact: seq == target,
        })
    }

    /// What loads of `doc` have set aside as not replaying, which rebuilds
    /// leave out as loads do.
    pub(crate) async fn left_out(&self, doc: &DocName) -> Result<LeftOut, RoomError> {
        let quarantined = self
            .store()
            .quarantined(doc)
            .await
            .map_err(|e| RoomError::StorageFailure(e.to_string()))?;
        Ok(LeftOut {
            snapshots: quarantined.iter().filter_map(|q| q.snapshot).collect(),
            changes: quarantined
                .iter()
                .filter(|q| q.snapshot.is_none())
                .map(|q| q.seq)
                .collect(),
        })
    }

    /// The sequence number of the newest stored change made at or before
    /// `ms`, among those the log holds.
    async fn last_change_by(&self, doc: &DocName, ms: u64) -> Result<Option<u64>, RoomError> {
        let mut after = 0;
        let mut found = None;
        loop {
            let read = self
                .store()
                .read_log(doc, after, READ_CHUNK)
                .await
                .map_err(|e| RoomError::StorageFailure(e.to_string()))?;
            let Some(last) = read.last() else {
                return Ok(found);
            };
            for e in &read {
                if e.at_ms > ms {
                    return Ok(found);
                }
                found = Some(e.seq);
            }
            after = last.seq;
        }
    }
}

/// A document's stored parts set aside as not replaying.
pub(crate) struct LeftOut {
    /// Snapshot ids.
    pub snapshots: BTreeSet<u64>,
    /// Change sequence numbers.
    pub changes: BTreeSet<u64>,
}

/// The oldest change the log holds, if any.
async fn log_start(store: &dyn weft_storage::EngineStore, doc: &DocName) -> Option<u64> {
    store.read_log(doc, 0, 1).await.ok()?.first().map(|e| e.seq)
}

/// At most this many rebuilds of past states and attributions at once on
/// this node: each replays or decodes a document's history on the CPU
/// pool that live documents share, so readers asking for many cannot
/// crowd out editing. One that cannot start within [`TURN_WAIT`] is
/// refused as busy.
const MAX_REBUILDS: usize = 2;
static REBUILDS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_REBUILDS);
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub(crate) async fn rebuild_turn() -> Result<tokio::sync::SemaphorePermit<'static>, RoomError> {
    match tokio::time::timeout(TURN_WAIT, REBUILDS.acquire()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(RoomError::TryAgain(format!(
            "this server is already rebuilding {MAX_REBUILDS} past states or attributions"
        ))),
    }
}

/// The document `stored` holds, as one update; what does not replay (and
/// what was quarantined, `skip`) is left out, as when a document loads.
fn rebuild(stored: &StoredDoc, skip: &BTreeSet<u64>) -> Result<Vec<u8>, RoomError> {
    let replayed = crate::replay::replay(stored, skip)
        .map_err(|e| RoomError::LoadFailed(format!("{}: {}", e.part, e.reason)))?;
    guarded(|| {
        use yrs::{ReadTxn, StateVector, Transact};
        replayed
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    })
    .map_err(RoomError::LoadFailed)
}

/// A run of a text that one change inserted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributed {
    pub text: String,
    /// The change that inserted it: `None` for text older than the log
    /// kept (it came with a snapshot).
    pub id: Option<String>,
    pub seq: Option<u64>,
    pub at_ms: Option<u64>,
    pub author: Option<String>,
    pub via: Option<String>,
}

impl Rooms {
    /// Who wrote each part of the text root `name` as it is now: its
    /// characters as runs, each with the change that inserted it (found by
    /// the ids of the items each stored change inserted).
    pub async fn attribution(
        &self,
        doc: &DocName,
        name: &str,
    ) -> Result<Vec<Attributed>, RoomError> {
        // Held from the first read: the whole log is read into memory.
        let _turn = rebuild_turn().await?;
        let now = self.read(doc, None).await?;
        let info = self
            .store()
            .head(doc)
            .await
            .map_err(|e| RoomError::StorageFailure(e.to_string()))?
            .ok_or_else(|| RoomError::NotFound(format!("there is no document {doc}")))?;
        let log = self
            .store()
            .read_log(doc, 0, usize::MAX)
            .await
            .map_err(|e| RoomError::StorageFailure(e.to_string()))?;
        let incarnation = info.meta.incarnation;
        let name = name.to_owned();
        self.cpu()
            .run(move || attribute(&now.update, &name, &log, incarnation))
            .await
    }
}

/// The runs of text root `name` of the document `state`, each credited to
/// the change in `log` that inserted it.
fn attribute(
    state: &[u8],
    name: &str,
    log: &[LogEntry],
    incarnation: u64,
) -> Result<Vec<Attributed>, RoomError> {
    use yrs::types::text::{ChangeKind, YChange};
    use yrs::{ReadTxn, Snapshot, Text, Transact};
    let inserted = Inserted::of(log);
    let chunks = guarded(|| {
        let doc = yrs::Doc::new();
        let mut txn = doc.transact_mut();
        let update = Update::decode_v1(state).map_err(|e| e.to_string())?;
        txn.apply_update(update).map_err(|e| e.to_string())?;
        let Some(text) = txn.get_text(name) else {
            return Ok(None);
        };
        let now = txn.snapshot();
        let chunks = text.diff_range(
            &mut txn,
            Some(&now),
            Some(&Snapshot::default()),
            |c: YChange| (c.kind == ChangeKind::Added).then_some(c.id),
        );
        Ok::<_, String>(Some(chunks))
    })
    .map_err(RoomError::LoadFailed)?
    .map_err(RoomError::LoadFailed)?
    .ok_or_else(|| RoomError::NotFound(format!("the document has no text named {name:?}")))?;
    let mut runs: Vec<Attributed> = Vec::new();
    for chunk in chunks {
        let yrs::Out::Any(yrs::Any::String(text)) = &chunk.insert else {
            continue; // an embed: no text to show
        };
        let Some(Some(start)) = chunk.ychange else {
            continue;
        };
        let mut offset = 0u32;
        for ch in text.chars() {
            let clock = start.clock + offset;
            offset += ch.len_utf16() as u32;
            let by = inserted.find(start.client, clock).map(|i| &log[i]);
            push_char(&mut runs, ch, by, incarnation);
        }
    }
    Ok(runs)
}

/// Adds `ch` to the last run if the same change inserted it, else starts
/// a run.
fn push_char(runs: &mut Vec<Attributed>, ch: char, by: Option<&LogEntry>, incarnation: u64) {
    let seq = by.map(|e| e.seq);
    if let Some(last) = runs.last_mut().filter(|r| r.seq == seq) {
        last.text.push(ch);
        return;
    }
    runs.push(Attributed {
        text: ch.to_string(),
        id: by.map(|e| {
            EventId {
                incarnation,
                seq: e.seq,
            }
            .to_string()
        }),
        seq,
        at_ms: by.map(|e| e.at_ms),
        author: by.and_then(|e| e.by.author.clone()),
        via: by.and_then(|e| e.by.via.clone()),
    });
}

/// Which change inserted which ids: per client, clock ranges with the
/// index of the change in the log, sorted.
struct Inserted(std::collections::HashMap<yrs::ClientID, Vec<(std::ops::Range<u32>, usize)>>);

impl Inserted {
    fn of(log: &[LogEntry]) -> Inserted {
        let mut map: std::collections::HashMap<yrs::ClientID, Vec<(std::ops::Range<u32>, usize)>> =
            std::collections::HashMap::new();
        for (i, entry) in log.iter().enumerate() {
            let Ok(Some(ids)) = guarded(|| {
                Update::decode_v1(&entry.update)
                    .ok()
                    .map(|u| u.insertions(true))
            }) else {
                continue;
            };
            for (client, ranges) in ids.iter() {
                let list = map.entry(*client).or_default();
                list.extend(ranges.iter().map(|r| (r.clone(), i)));
            }
        }
        for list in map.values_mut() {
            list.sort_by_key(|(r, _)| r.start);
        }
        Inserted(map)
    }

    /// The change that inserted `(client, clock)`, if the log holds it.
    fn find(&self, client: yrs::ClientID, clock: u32) -> Option<usize> {
        let list = self.0.get(&client)?;
        let at = list.partition_point(|(r, _)| r.start <= clock);
        let (range, i) = list.get(at.checked_sub(1)?)?;
        range.contains(&clock).then_some(*i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, Text, Transact};

    #[test]
    fn a_change_is_measured_by_what_it_inserts_and_deletes() {
        let doc = Doc::with_client_id(1);
        let text = doc.get_or_insert_text("t");
        let typed = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello");
            txn.encode_update_v1()
        };
        assert_eq!(measure(&typed), (5, 0));
        let trimmed = {
            let mut txn = doc.transact_mut();
            text.remove_range(&mut txn, 1, 3);
            text.insert(&mut txn, 0, ">");
            txn.encode_update_v1()
        };
        assert_eq!(measure(&trimmed), (1, 3));
        assert_eq!(measure(&[0xff, 0xff]), (0, 0));
    }

    #[test]
    fn a_query_filters_by_time_and_author() {
        let entry = |at_ms, author: &str| LogEntry {
            seq: 1,
            at_ms,
            update: Vec::new(),
            by: Provenance::new(Some(author.into()), "ws"),
        };
        let q = HistoryQuery {
            since_ms: Some(10),
            until_ms: Some(20),
            author: Some("ada".into()),
            ..HistoryQuery::default()
        };
        assert!(q.takes(&entry(10, "ada")));
        assert!(!q.takes(&entry(9, "ada")));
        assert!(!q.takes(&entry(20, "ada")));
        assert!(!q.takes(&entry(15, "bob")));
    }
}
