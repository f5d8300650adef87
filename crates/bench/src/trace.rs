//! Real editing traces (`{startContent, endContent, txns: [{patches}]}`,
//! gzipped JSON) turned into Yjs updates: one v1 update per transaction, as
//! an editor would send them.
//!
//! Producing the updates takes tens of seconds for the long traces, so they
//! are generated once and cached next to the build (length-prefixed records
//! in `target/weft-bench-cache`), keyed by the trace's name and size.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context};
use serde::Deserialize;
use yrs::{Doc, GetString, OffsetKind, Options, Text, Transact};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TraceFile {
    #[serde(default)]
    start_content: String,
    end_content: String,
    txns: Vec<Txn>,
}

#[derive(Debug, Deserialize)]
struct Txn {
    patches: Vec<(u32, u32, String)>,
}

/// A trace as the updates an editor would send, and the text they make.
#[derive(Debug)]
pub struct TraceUpdates {
    pub updates: Vec<Vec<u8>>,
    pub end_content: String,
}

impl TraceUpdates {
    pub fn bytes(&self) -> usize {
        self.updates.iter().map(Vec::len).sum()
    }
}

/// The trace scenarios replay unless told otherwise (relative to the
/// repository root): automerge-paper, 259,778 transactions.
pub const DEFAULT_TRACE: &str = "../shared/traces/sequential/automerge-paper.json.gz";

/// The text type every trace edits (the name y-codemirror and the bench
/// writers use).
pub const TEXT: &str = "t";

/// A document whose offsets count UTF-16 code units, as the traces' do.
pub fn trace_doc() -> Doc {
    Doc::with_options(Options {
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    })
}

fn read(path: &Path) -> anyhow::Result<(TraceFile, usize)> {
    let raw = std::fs::read(path).with_context(|| format!("reading trace {}", path.display()))?;
    let mut json = String::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_string(&mut json)
        .with_context(|| format!("{} is not gzipped JSON", path.display()))?;
    let trace = serde_json::from_str(&json)
        .with_context(|| format!("{} is not an editing trace", path.display()))?;
    Ok((trace, raw.len()))
}

/// The text a trace ends with: real prose or source, for payloads.
pub fn end_content(path: &Path) -> anyhow::Result<String> {
    Ok(read(path)?.0.end_content)
}

/// The trace's updates, from the cache when it has them.
pub fn load(path: &Path) -> anyhow::Result<TraceUpdates> {
    let (trace, size) = read(path)?;
    let cache = cache_path(path, size);
    if let Some(updates) = std::fs::read(&cache).ok().and_then(|b| decode(&b)) {
        if updates.len() == trace.txns.len() + usize::from(!trace.start_content.is_empty()) {
            return Ok(TraceUpdates {
                updates,
                end_content: trace.end_content,
            });
        }
    }
    let started = Instant::now();
    eprintln!(
        "generating {} updates from {} (once; cached in {})",
        trace.txns.len(),
        path.display(),
        cache.display()
    );
    let updates = generate(&trace)?;
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&cache, encode(&updates))
        .with_context(|| format!("writing {}", cache.display()))?;
    eprintln!("  done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(TraceUpdates {
        updates,
        end_content: trace.end_content,
    })
}

fn generate(trace: &TraceFile) -> anyhow::Result<Vec<Vec<u8>>> {
    let doc = trace_doc();
    let text = doc.get_or_insert_text(TEXT);
    let mut updates = Vec::with_capacity(trace.txns.len() + 1);
    if !trace.start_content.is_empty() {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &trace.start_content);
        updates.push(txn.encode_update_v1());
    }
    for t in &trace.txns {
        let mut txn = doc.transact_mut();
        for (pos, del, ins) in &t.patches {
            if *del > 0 {
                text.remove_range(&mut txn, *pos, *del);
            }
            if !ins.is_empty() {
                text.insert(&mut txn, *pos, ins);
            }
        }
        updates.push(txn.encode_update_v1());
    }
    let end = text.get_string(&doc.transact());
    ensure!(
        end == trace.end_content,
        "replaying the trace did not give its endContent ({} vs {} chars)",
        end.chars().count(),
        trace.end_content.chars().count()
    );
    Ok(updates)
}

fn cache_path(trace: &Path, size: usize) -> PathBuf {
    let name = trace
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("trace")
        .trim_end_matches(".json.gz");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    dir.join("weft-bench-cache")
        .join(format!("{name}-{size}.updates"))
}

fn encode(updates: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(updates.iter().map(|u| u.len() + 4).sum());
    for u in updates {
        out.extend_from_slice(&(u.len() as u32).to_le_bytes());
        out.extend_from_slice(u);
    }
    out
}

fn decode(mut bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut updates = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        updates.push(bytes.get(4..4 + len)?.to_vec());
        bytes = &bytes[4 + len..];
    }
    Some(updates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_records_round_trip_and_truncation_is_refused() {
        let updates = vec![vec![1, 2, 3], vec![], vec![9; 300]];
        let bytes = encode(&updates);
        assert_eq!(decode(&bytes), Some(updates));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn a_trace_replays_to_its_end_content() {
        let trace = TraceFile {
            start_content: "ab".into(),
            end_content: "aXé€b".into(),
            txns: vec![
                Txn {
                    patches: vec![(1, 0, "Xé".into())],
                },
                Txn {
                    patches: vec![
                        (3, 0, "€".into()),
                        (4, 0, "!".into()),
                        (4, 1, String::new()),
                    ],
                },
            ],
        };
        use yrs::updates::decoder::Decode;
        let updates = generate(&trace).expect("replays");
        assert_eq!(updates.len(), 3);
        let doc = trace_doc();
        for u in &updates {
            let u = yrs::Update::decode_v1(u).expect("decodes");
            doc.transact_mut().apply_update(u).expect("applies");
        }
        let text = doc.get_or_insert_text(TEXT);
        assert_eq!(text.get_string(&doc.transact()), "aXé€b");
    }
}
