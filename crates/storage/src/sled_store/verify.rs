//! `weft verify` on the embedded store: every record decodes, and each
//! document's records add up (see `completeness`), including those of
//! names that have records but no metadata.

use super::{io, suffix_u64, SledStore};
use crate::completeness::{self, DocRecords};
use crate::record::{
    self, LogRecord, MetaRecord, QuarantineRecord, SnapshotIndexRecord, SnapshotRecord,
    WebhookRecord,
};
use crate::{Corruption, SnapshotInfo, StorageError};

impl SledStore {
    /// Every record that does not decode, and every document whose records
    /// do not add up. Blocks: called through [`SledStore::run`].
    pub(super) fn verify_all(&self) -> Result<Vec<Corruption>, StorageError> {
        let mut found = Vec::new();
        verify_tree::<MetaRecord>(&self.meta, &mut found, |k| {
            format!("{} (metadata)", String::from_utf8_lossy(k))
        })?;
        verify_tree::<LogRecord>(&self.log, &mut found, |k| {
            format!("{}#{}", key_name(k), suffix_u64(k))
        })?;
        verify_tree::<SnapshotRecord>(&self.snapshots, &mut found, |k| {
            format!("{} snapshot {}", key_name(k), suffix_u64(k))
        })?;
        verify_tree::<SnapshotIndexRecord>(&self.snapshot_index, &mut found, |k| {
            format!("{} snapshot {} (index)", key_name(k), suffix_u64(k))
        })?;
        verify_tree::<WebhookRecord>(&self.webhooks, &mut found, |k| {
            format!("webhook {}", suffix_u64(k))
        })?;
        for doc in self.names_in_any_tree()? {
            found.extend(completeness::check(&self.records_of(&doc)?));
        }
        verify_tree::<QuarantineRecord>(&self.quarantine, &mut found, |k| {
            format!("{} quarantined #{}", key_name(k), suffix_u64(k))
        })?;
        Ok(found)
    }

    /// Every document name that any tree has records for, sorted.
    fn names_in_any_tree(&self) -> Result<std::collections::BTreeSet<String>, StorageError> {
        let mut names = std::collections::BTreeSet::new();
        for k in self.meta.iter().keys() {
            names.insert(String::from_utf8_lossy(&k.map_err(io("verifying"))?).into_owned());
        }
        for tree in [&self.log, &self.snapshots, &self.snapshot_index] {
            // Keys are grouped by name: skip from one name to the next.
            let mut last: Option<String> = None;
            for k in tree.iter().keys() {
                let name = key_name(&k.map_err(io("verifying"))?);
                if last.as_ref() != Some(&name) {
                    names.insert(name.clone());
                    last = Some(name);
                }
            }
        }
        Ok(names)
    }

    /// What `verify` needs of one document's records; what does not decode
    /// (reported already) is left out.
    fn records_of(&self, name: &str) -> Result<DocRecords, StorageError> {
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        let mut snapshots = Some(Vec::new());
        for item in self.snapshots.scan_prefix(&prefix) {
            let (k, v) = item.map_err(io("verifying"))?;
            let id = suffix_u64(&k);
            match record::decode::<SnapshotRecord>(name, &v) {
                Ok(r) => {
                    let snapshot = r.into_snapshot(id);
                    if let Some(all) = snapshots.as_mut() {
                        all.push(SnapshotInfo {
                            id,
                            seq: snapshot.seq,
                            taken_at_ms: snapshot.taken_at_ms,
                            reason: snapshot.reason,
                            size: snapshot.state.len() as u64,
                        });
                    }
                }
                Err(_) => snapshots = None,
            }
        }
        let mut index = Some(Vec::new());
        for item in self.snapshot_index.scan_prefix(&prefix) {
            let (k, v) = item.map_err(io("verifying"))?;
            let id = suffix_u64(&k);
            match record::decode::<SnapshotIndexRecord>(name, &v) {
                Ok(r) => {
                    if let Some(all) = index.as_mut() {
                        all.push(r.into_info(id));
                    }
                }
                Err(_) => index = None,
            }
        }
        let mut log = Vec::new();
        for k in self.log.scan_prefix(&prefix).keys() {
            log.push(suffix_u64(&k.map_err(io("verifying"))?));
        }
        Ok(DocRecords {
            doc: name.to_owned(),
            has_meta: self.meta.contains_key(name).map_err(io("verifying"))?,
            snapshots,
            index,
            head: None,
            log: Some(log),
            last_seq: None,
        })
    }
}

/// Decodes every record of `tree` as `R`; what fails goes into `found`,
/// named by `label` from its key.
fn verify_tree<R: record::Versioned>(
    tree: &sled::Tree,
    found: &mut Vec<Corruption>,
    label: impl Fn(&[u8]) -> String,
) -> Result<(), StorageError> {
    for item in tree.iter() {
        let (k, v) = item.map_err(io("verifying"))?;
        let location = label(&k);
        if let Err(e) = record::decode::<R>(&location, &v) {
            found.push(Corruption {
                location,
                problem: e.to_string(),
            });
        }
    }
    Ok(())
}

/// The document name at the start of a `name 0x00 n` key.
fn key_name(key: &[u8]) -> String {
    let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
    String::from_utf8_lossy(&key[..end]).into_owned()
}
