//! Backup archives: every document with its whole stored history, as one
//! stream of MessagePack items.
//!
//! `Header`, then per document `Document`, its `Snapshot`s and `Change`s,
//! then `End`. Items are written and read one at a time, so neither side
//! holds more than one document in memory, and a truncated archive is
//! detected (no `End`).

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::{
    DocDump, DocMeta, DocName, LogEntry, Provenance, Snapshot, SnapshotReason, StorageError,
};

const MAGIC: &str = "weft-backup";
/// 2: changes carry their provenance (version 1 archives read as of
/// unknown provenance).
const ARCHIVE_VERSION: u16 = 2;

#[derive(Debug, Serialize, Deserialize)]
enum Item {
    Header {
        magic: String,
        version: u16,
        created_at_ms: u64,
        documents: u64,
    },
    Document {
        name: String,
        incarnation: u64,
        created_at_ms: u64,
    },
    Snapshot {
        id: u64,
        seq: u64,
        taken_at_ms: u64,
        reason: SnapshotReason,
        #[serde(with = "serde_bytes")]
        state: Vec<u8>,
    },
    Change {
        seq: u64,
        at_ms: u64,
        #[serde(with = "serde_bytes")]
        update: Vec<u8>,
        /// Absent from archives written before changes carried them.
        #[serde(default)]
        by: Provenance,
    },
    End {
        documents: u64,
    },
}

fn encode(item: &Item, out: &mut Vec<u8>) -> Result<(), StorageError> {
    rmp_serde::encode::write(out, item).map_err(|e| StorageError::Encode {
        kind: "backup item",
        reason: e.to_string(),
        source: Box::new(e),
    })
}

/// The archive's opening, announcing how many documents follow.
pub fn header(documents: u64, created_at_ms: u64) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    encode(
        &Item::Header {
            magic: MAGIC.into(),
            version: ARCHIVE_VERSION,
            created_at_ms,
            documents,
        },
        &mut out,
    )?;
    Ok(out)
}

/// One document with its history.
pub fn document(dump: &DocDump) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    encode(
        &Item::Document {
            name: dump.name.to_string(),
            incarnation: dump.meta.incarnation,
            created_at_ms: dump.meta.created_at_ms,
        },
        &mut out,
    )?;
    for s in &dump.snapshots {
        encode(
            &Item::Snapshot {
                id: s.id,
                seq: s.seq,
                taken_at_ms: s.taken_at_ms,
                reason: s.reason,
                state: s.state.clone(),
            },
            &mut out,
        )?;
    }
    for e in &dump.log {
        encode(
            &Item::Change {
                seq: e.seq,
                at_ms: e.at_ms,
                update: e.update.clone(),
                by: e.by.clone(),
            },
            &mut out,
        )?;
    }
    Ok(out)
}

/// The closing item, which tells a complete archive from a truncated one.
pub fn end(documents: u64) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    encode(&Item::End { documents }, &mut out)?;
    Ok(out)
}

/// Writes a whole archive of `dumps` to `out`.
pub fn write_all<W: Write>(
    out: &mut W,
    dumps: impl IntoIterator<Item = DocDump>,
    count: u64,
    created_at_ms: u64,
) -> Result<(), StorageError> {
    let io = |e: std::io::Error| StorageError::backend("writing a backup", e);
    out.write_all(&header(count, created_at_ms)?).map_err(io)?;
    let mut written = 0;
    for dump in dumps {
        out.write_all(&document(&dump)?).map_err(io)?;
        written += 1;
    }
    out.write_all(&end(written)?).map_err(io)?;
    Ok(())
}

/// Reads an archive one document at a time.
#[derive(Debug)]
pub struct ArchiveReader<R: Read> {
    input: R,
    /// How many documents the header announced.
    pub documents: u64,
    pending: Option<DocDump>,
    done: bool,
}

impl<R: Read> ArchiveReader<R> {
    pub fn new(mut input: R) -> Result<Self, StorageError> {
        match next_item(&mut input)? {
            Item::Header {
                magic,
                version,
                documents,
                ..
            } if magic == MAGIC => {
                if version > ARCHIVE_VERSION {
                    return Err(StorageError::BadArchive(format!(
                        "archive version {version} is newer than this weft understands; upgrade weft"
                    )));
                }
                Ok(ArchiveReader {
                    input,
                    documents,
                    pending: None,
                    done: false,
                })
            }
            _ => Err(StorageError::BadArchive(
                "it does not start with a weft backup header".into(),
            )),
        }
    }

    /// The next document, `None` after the end.
    pub fn next_document(&mut self) -> Result<Option<DocDump>, StorageError> {
        loop {
            if self.done {
                return Ok(self.pending.take());
            }
            match next_item(&mut self.input)? {
                Item::Document {
                    name,
                    incarnation,
                    created_at_ms,
                } => {
                    let name =
                        DocName::new(name).map_err(|e| StorageError::BadArchive(e.to_string()))?;
                    let finished = self.pending.replace(DocDump {
                        name,
                        meta: DocMeta {
                            incarnation,
                            created_at_ms,
                        },
                        snapshots: Vec::new(),
                        log: Vec::new(),
                    });
                    if finished.is_some() {
                        return Ok(finished);
                    }
                }
                Item::Snapshot {
                    id,
                    seq,
                    taken_at_ms,
                    reason,
                    state,
                } => self.current()?.snapshots.push(Snapshot {
                    id,
                    seq,
                    taken_at_ms,
                    reason,
                    state,
                }),
                Item::Change {
                    seq,
                    at_ms,
                    update,
                    by,
                } => self.current()?.log.push(LogEntry {
                    seq,
                    at_ms,
                    update,
                    by,
                }),
                Item::End { .. } => self.done = true,
                Item::Header { .. } => {
                    return Err(StorageError::BadArchive(
                        "a second header inside the archive".into(),
                    ))
                }
            }
        }
    }

    fn current(&mut self) -> Result<&mut DocDump, StorageError> {
        self.pending
            .as_mut()
            .ok_or_else(|| StorageError::BadArchive("history before any document".into()))
    }
}

fn next_item<R: Read>(input: &mut R) -> Result<Item, StorageError> {
    rmp_serde::decode::from_read(input).map_err(|e| match e {
        rmp_serde::decode::Error::InvalidMarkerRead(ref io)
            if io.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            StorageError::BadArchive(
                "the archive ends early (no end marker): it is truncated".into(),
            )
        }
        other => StorageError::BadArchive(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(name: &str, n: u64) -> DocDump {
        DocDump {
            name: DocName::new(name).expect("valid"),
            meta: DocMeta {
                incarnation: n,
                created_at_ms: 5,
            },
            snapshots: vec![Snapshot {
                id: 1,
                seq: n,
                taken_at_ms: 9,
                reason: SnapshotReason::Idle,
                state: vec![1, 2, 3],
            }],
            log: (1..=n)
                .map(|seq| LogEntry {
                    seq,
                    at_ms: seq,
                    update: vec![seq as u8],
                    by: Provenance::new(Some(format!("author-{seq}")), "ws"),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips_and_detects_truncation() {
        let dumps = vec![dump("a", 3), dump("b", 0), dump("c", 2)];
        let mut bytes = Vec::new();
        write_all(&mut bytes, dumps.clone(), 3, 1).expect("write");

        let mut reader = ArchiveReader::new(bytes.as_slice()).expect("header");
        assert_eq!(reader.documents, 3);
        let mut back = Vec::new();
        while let Some(d) = reader.next_document().expect("read") {
            back.push(d);
        }
        assert_eq!(back, dumps);

        let cut = &bytes[..bytes.len() - 3];
        let mut reader = ArchiveReader::new(cut).expect("header");
        let result: Result<Vec<_>, _> =
            std::iter::from_fn(|| reader.next_document().transpose()).collect();
        assert!(matches!(result, Err(StorageError::BadArchive(_))));
        assert!(ArchiveReader::new(&b"not an archive"[..]).is_err());
    }
}
