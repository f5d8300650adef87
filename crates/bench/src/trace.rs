//! Real editing traces (`{startContent, endContent, txns: [{patches}]}`,
//! gzipped JSON) turned into Yjs updates: one v1 update per transaction, as
//! an editor would send them.
//!
//! A concurrent trace (`"kind": "concurrent"`) gives each transaction its
//! agent and its parents, and its positions refer to the document after
//! those parents. Each agent edits its own `Doc` under a client id of its
//! own; before a transaction, the agent's document takes every update its
//! parents' versions hold that it lacks (each client's updates are kept by
//! starting clock, so "what it lacks" is a range per client), so it is
//! exactly the merged parents. An agent whose document holds more than
//! that starts a new document, under a new client id. The updates come out in the file's order,
//! which respects the parents, so a server can apply them as they arrive.
//!
//! Producing the updates takes tens of seconds for the long traces, so they
//! are generated once and cached next to the build (length-prefixed records
//! in `target/weft-bench-cache`), keyed by the trace's name and size.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context};
use serde::Deserialize;
use std::collections::HashMap;

use yrs::updates::decoder::Decode;
use yrs::{
    ClientID, Doc, GetString, OffsetKind, Options, ReadTxn, StateVector, Text, Transact, Update,
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TraceFile {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    start_content: String,
    end_content: String,
    txns: Vec<Txn>,
}

#[derive(Debug, Deserialize)]
struct Txn {
    patches: Vec<(u32, u32, String)>,
    /// Concurrent traces: the transactions this one follows.
    #[serde(default)]
    parents: Vec<usize>,
    /// Concurrent traces: who made it.
    #[serde(default)]
    agent: usize,
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

/// A trace document for an agent of a concurrent trace, as `client`.
fn agent_doc(client: u64) -> Doc {
    Doc::with_options(Options {
        client_id: ClientID::new(client),
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
    if trace.kind.as_deref() == Some("concurrent") {
        return generate_concurrent(trace);
    }
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

fn apply_patches(text: &yrs::TextRef, txn: &mut yrs::TransactionMut, t: &Txn) {
    for (pos, del, ins) in &t.patches {
        if *del > 0 {
            text.remove_range(txn, *pos, *del);
        }
        if !ins.is_empty() {
            text.insert(txn, *pos, ins);
        }
    }
}

/// A concurrent trace's updates, in the file's order (see the module doc).
fn generate_concurrent(trace: &TraceFile) -> anyhow::Result<Vec<Vec<u8>>> {
    ensure!(
        trace.start_content.is_empty(),
        "a concurrent trace with start content is not supported"
    );
    let mut agents: HashMap<usize, Doc> = HashMap::new();
    let mut clients = 0u64;
    let mut updates: Vec<Vec<u8>> = Vec::with_capacity(trace.txns.len());
    // Each transaction's version, and each client's updates by first clock.
    let mut versions: Vec<StateVector> = Vec::with_capacity(trace.txns.len());
    let mut by_clock: HashMap<(ClientID, u32), usize> = HashMap::new();
    for (i, t) in trace.txns.iter().enumerate() {
        let mut target = StateVector::default();
        for &p in &t.parents {
            let parent = versions
                .get(p)
                .with_context(|| format!("transaction {i} follows {p}, which is not before it"))?;
            target.merge(parent.clone());
        }
        // An agent whose document holds what these parents do not (its
        // previous edit is not among them) starts again, as a new client.
        let fits = agents
            .get(&t.agent)
            .is_some_and(|doc| within(&doc.transact().state_vector(), &target));
        if !fits {
            clients += 1;
            agents.insert(t.agent, agent_doc(clients));
        }
        let doc = &agents[&t.agent];
        catch_up(doc, &target, &updates, &by_clock)
            .with_context(|| format!("bringing agent {} up to transaction {i}", t.agent))?;
        let client = doc.client_id();
        let start = doc.transact().state_vector().get(&client);
        let text = doc.get_or_insert_text(TEXT);
        let mut txn = doc.transact_mut();
        apply_patches(&text, &mut txn, t);
        let update = txn.encode_update_v1();
        drop(txn);
        if doc.transact().state_vector().get(&client) > start {
            by_clock.insert((client, start), i);
        }
        versions.push(doc.transact().state_vector());
        updates.push(update);
    }
    let merged = trace_doc();
    {
        let mut txn = merged.transact_mut();
        for u in &updates {
            txn.apply_update(Update::decode_v1(u)?)?;
        }
    }
    let end = merged
        .get_or_insert_text(TEXT)
        .get_string(&merged.transact());
    // Yjs may order two inserts made at one place at the same time
    // otherwise than the editor that recorded the trace did, so the text is
    // checked for its length, not letter for letter.
    ensure!(
        end.chars().count() == trace.end_content.chars().count(),
        "replaying the concurrent trace did not give its endContent's length ({} vs {} chars)",
        end.chars().count(),
        trace.end_content.chars().count()
    );
    Ok(updates)
}

/// Whether everything `have` holds is in `target`.
fn within(have: &StateVector, target: &StateVector) -> bool {
    have.iter()
        .all(|(client, &clock)| clock <= target.get(client))
}

/// Applies to `doc` every update, of any client, that `target` holds and
/// `doc` does not, until it holds exactly `target`.
fn catch_up(
    doc: &Doc,
    target: &StateVector,
    updates: &[Vec<u8>],
    by_clock: &HashMap<(ClientID, u32), usize>,
) -> anyhow::Result<()> {
    let mut txn = doc.transact_mut();
    // An update that builds on another client's waits in yrs until that
    // arrives: go round until nothing moves.
    loop {
        let mut moved = false;
        for (client, &want) in target.iter() {
            let have = txn.state_vector().get(client);
            if have >= want {
                continue;
            }
            let i = by_clock
                .get(&(*client, have))
                .with_context(|| format!("no update of client {client} starts at clock {have}"))?;
            txn.apply_update(Update::decode_v1(&updates[*i])?)?;
            moved |= txn.state_vector().get(client) > have;
        }
        if !moved {
            break;
        }
    }
    ensure!(
        within(target, &txn.state_vector()),
        "the parents' updates did not all apply"
    );
    Ok(())
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
            kind: None,
            start_content: "ab".into(),
            end_content: "aXé€b".into(),
            txns: vec![
                Txn {
                    patches: vec![(1, 0, "Xé".into())],
                    parents: vec![],
                    agent: 0,
                },
                Txn {
                    patches: vec![
                        (3, 0, "€".into()),
                        (4, 0, "!".into()),
                        (4, 1, String::new()),
                    ],
                    parents: vec![],
                    agent: 0,
                },
            ],
        };
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

    #[test]
    fn a_concurrent_trace_replays_each_transaction_after_its_parents() {
        let txn = |agent, parents: Vec<usize>, patches| Txn {
            patches,
            parents,
            agent,
        };
        let trace = TraceFile {
            kind: Some("concurrent".into()),
            start_content: String::new(),
            end_content: "XbY".into(),
            txns: vec![
                txn(0, vec![], vec![(0, 0, "ab".into())]),
                // Two edits after "ab", each unaware of the other.
                txn(1, vec![0], vec![(1, 0, "X".into())]),
                txn(0, vec![0], vec![(2, 0, "Y".into())]),
                // After both: positions count in "aXbY".
                txn(1, vec![1, 2], vec![(0, 1, String::new())]),
            ],
        };
        let updates = generate(&trace).expect("replays");
        assert_eq!(updates.len(), 4);
        let merged = trace_doc();
        for u in &updates {
            merged
                .transact_mut()
                .apply_update(Update::decode_v1(u).expect("decodes"))
                .expect("applies");
        }
        let text = merged.get_or_insert_text(TEXT);
        assert_eq!(text.get_string(&merged.transact()), "XbY");
        let bad = TraceFile {
            end_content: "aXbY".into(),
            ..trace
        };
        assert!(
            generate(&bad).is_err(),
            "the end content's length is checked"
        );
    }
}
