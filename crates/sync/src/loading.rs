//! Loading a document from its store so that it always loads: what no
//! longer replays is quarantined, and the rest loads.
//!
//! The store gives the newest snapshot and the log after it; the document
//! is rebuilt from them ([`replay`](crate::replay)), leaving out the
//! changes quarantined before. A stored change that does not replay is
//! quarantined: its bytes, why and when go to the store
//! (`DocumentStore::quarantine`), it is counted in
//! `weft_changes_quarantined_total` and logged, and the rest of the
//! document loads. A snapshot that does not load is quarantined the same
//! way, and the document is rebuilt from the newest older snapshot that
//! loads (or from the log alone) plus the log after it. Sequence numbers
//! are never reused: a quarantined change keeps its number, and numbering
//! goes on after the newest change stored.
//!
//! If the quarantine cannot be written (a full disk), the document still
//! loads; the next load finds the same changes again.
//!
//! Replaying is yrs work like any integration, and a crafted history can
//! take seconds: it runs on the room's [`CpuPool`], and what it cost is
//! returned, so the room can snapshot a costly history at once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, warn};
use weft_storage::{
    DocMeta, DocName, DocumentStore, Quarantined, Snapshot, StorageError, StoredDoc,
};

use crate::cpu::CpuPool;
use crate::doc_state::{DocState, LoadError};
use crate::RoomError;
use crate::{Clock, EngineConfig};

/// A document as loaded.
pub(crate) struct Loaded {
    pub state: DocState,
    /// What the store holds about the document, or will at its first append.
    pub meta: DocMeta,
    /// Whether the store holds the document at all.
    pub exists: bool,
    /// Logged changes no snapshot holds.
    pub unsnapshotted: u64,
    /// The CPU time replaying took.
    pub cost: Duration,
}

/// Loads `name` from `store`, replaying on `cpu`; fails only if the store
/// cannot be read ([`RoomError::StoreUnavailable`] when it may answer
/// later, [`RoomError::LoadFailed`] when what it holds does not load).
pub(crate) async fn load(
    store: &dyn DocumentStore,
    name: &DocName,
    config: &EngineConfig,
    clock: Arc<dyn Clock>,
    cpu: &CpuPool,
) -> Result<Loaded, RoomError> {
    let mut stored = store.load(name).await.map_err(refusal)?;
    let newest = stored.last_seq();
    let before = store.quarantined(name).await.unwrap_or_else(|e| {
        warn!(doc = %name, error = %e, "could not read the changes set aside before; trying them again");
        Vec::new()
    });
    let skip: BTreeSet<u64> = before
        .iter()
        .filter(|p| p.snapshot.is_none())
        .map(|p| p.seq)
        .collect();
    let mut bad_snapshots: BTreeSet<u64> = before.iter().filter_map(|p| p.snapshot).collect();
    let mut found = Vec::new();
    let mut cost = Duration::ZERO;
    let mut state = loop {
        if let Some(id) = stored.snapshot.as_ref().map(|s| s.id) {
            if bad_snapshots.contains(&id) {
                stored = older(store, name, stored, &bad_snapshots)
                    .await
                    .map_err(refusal)?;
                continue;
            }
        }
        let (replayed, took) = cpu
            .run(|| {
                let before = clock.thread_cpu();
                let replayed =
                    DocState::load_skipping(&stored, &skip, config.recent_changes, clock.clone());
                (replayed, clock.thread_cpu().saturating_sub(before))
            })
            .await;
        cost += took;
        match replayed {
            Ok(state) => break state,
            Err(LoadError {
                snapshot: Some(id),
                reason,
                ..
            }) => {
                if let Some(bad) = stored.snapshot.as_ref() {
                    found.push(snapshot_set_aside(bad, reason, clock.now_ms()));
                }
                bad_snapshots.insert(id);
            }
            Err(e) => return Err(RoomError::LoadFailed(e.to_string())),
        }
    };
    state.continue_after(newest);
    state.set_limits(config.limits);
    let now = clock.now_ms();
    found.extend(state.set_aside().iter().filter_map(|p| {
        let entry = stored.log.iter().find(|e| e.seq == p.seq)?;
        Some(Quarantined {
            seq: p.seq,
            snapshot: None,
            changed_at_ms: entry.at_ms,
            quarantined_at_ms: now,
            reason: p.reason.clone(),
            update: entry.update.clone(),
        })
    }));
    record(store, name, &found).await;
    Ok(Loaded {
        state,
        meta: stored.meta,
        exists: stored.exists,
        unsnapshotted: stored.log.len() as u64,
        cost,
    })
}

/// What a store failure while loading tells the document's clients.
pub(crate) fn refusal(e: StorageError) -> RoomError {
    if e.is_unavailability() {
        RoomError::StoreUnavailable(e.to_string())
    } else {
        RoomError::LoadFailed(e.to_string())
    }
}

/// The document rebuilt from the newest snapshot not in `bad` that is
/// older than the one `than` starts from (or from the log alone), with
/// the log after it.
async fn older(
    store: &dyn DocumentStore,
    name: &DocName,
    than: StoredDoc,
    bad: &BTreeSet<u64>,
) -> Result<StoredDoc, StorageError> {
    let below = than.snapshot.as_ref().map_or(0, |s| s.seq);
    let base = store
        .list_snapshots(name)
        .await?
        .into_iter()
        .filter(|s| !bad.contains(&s.id) && s.seq <= below)
        .max_by_key(|s| (s.seq, s.id));
    let snapshot = match base {
        Some(info) => store.get_snapshot(name, info.id).await?,
        None => None,
    };
    let after = snapshot.as_ref().map_or(0, |s| s.seq);
    let log = store.read_log(name, after, usize::MAX).await?;
    Ok(StoredDoc {
        meta: than.meta,
        exists: than.exists,
        snapshot,
        log,
    })
}

fn snapshot_set_aside(snapshot: &Snapshot, reason: String, now: u64) -> Quarantined {
    Quarantined {
        seq: snapshot.seq,
        snapshot: Some(snapshot.id),
        changed_at_ms: snapshot.taken_at_ms,
        quarantined_at_ms: now,
        reason,
        update: snapshot.state.clone(),
    }
}

/// Keeps what was found in the store's quarantine, counts and logs it.
async fn record(store: &dyn DocumentStore, name: &DocName, found: &[Quarantined]) {
    if found.is_empty() {
        return;
    }
    metrics::counter!("weft_changes_quarantined_total").increment(found.len() as u64);
    for part in found {
        match part.snapshot {
            None => error!(doc = %name, seq = part.seq, reason = %part.reason,
                "stored change does not replay; quarantined, and the rest of the document loaded"),
            Some(id) => error!(doc = %name, snapshot = id, seq = part.seq, reason = %part.reason,
                "stored snapshot does not load; quarantined, and the document loaded from an older one"),
        }
    }
    if let Err(e) = store.quarantine(name, found).await {
        error!(doc = %name, error = %e, "could not keep the quarantined changes; the next load finds them again");
    }
}
