//! The `history` scenario (weft only): what keeping every change costs and
//! how fast the document comes back as it was at a past point. It ingests
//! an editing trace (as `ingest` does), then adds up the stored size of
//! every change the history API lists and of every snapshot the admin API
//! lists, against the size of the final document; then times
//! `GET /docs/{doc}?at=<event id>` at the changes 10 %, 50 % and 90 %
//! through the log, checking each answer is the exact point asked for and
//! a Yjs update that applies. `--one-by-one` sends the trace at a typist's
//! pace (each change once the one before is stored), so that each is
//! stored as a change of its own, as keystrokes are.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use yrs::updates::decoder::Decode;
use yrs::{GetString, ReadTxn, Transact};

use crate::clients;
use crate::ingest;
use crate::stats::{self, Percentiles};
use crate::trace;

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,
    /// The same server's HTTP base URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub http: String,
    /// The server's admin key, to list the document's snapshots.
    #[arg(long, env = "WEFT_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: String,
    /// The trace to replay (gzipped JSON, sequential).
    #[arg(long, default_value = trace::DEFAULT_TRACE)]
    pub trace: PathBuf,
    /// A document nobody wrote to yet (unless --no-ingest).
    #[arg(long, default_value = "bench-history")]
    pub doc: String,
    /// Send each change once the one before is stored, as a typist's
    /// keystrokes arrive, so each is stored as a change of its own (slow:
    /// a durable write and a round trip each). Without it the trace goes
    /// as fast as the server takes it, and weft stores each batch of a
    /// writer's burst as one change.
    #[arg(long)]
    pub one_by_one: bool,
    /// Timed `?at=` requests per point, after the first.
    #[arg(long, default_value_t = 20)]
    pub requests: usize,
    /// Measure the document an earlier run stored from the same trace
    /// (after a restart, say: the first `?at=` is then cold) instead of
    /// ingesting it.
    #[arg(long)]
    pub no_ingest: bool,
    /// The server's data directory: its size on disk is reported too.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Give up waiting for the server to take the trace after this long.
    #[arg(long, default_value = "30min", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Serialize)]
pub struct HistoryResult {
    pub trace: String,
    pub doc: String,
    /// Updates the trace was sent as (one per transaction).
    pub trace_changes: usize,
    /// Sent one at a time (`--one-by-one`) rather than as a burst (false
    /// with `--no-ingest`).
    pub one_by_one: bool,
    /// Until the last was durable; `None` with `--no-ingest`.
    pub ingest_ms: Option<f64>,
    /// `GET /docs/{doc}`: the whole document now, as a Yjs v1 update.
    pub document_bytes: usize,
    /// Changes the history API lists (weft stores changes that reach it
    /// together as one), and the sum of their stored sizes.
    pub stored_changes: usize,
    pub log_bytes: u64,
    /// Snapshots the admin API lists, and the sum of their sizes.
    pub snapshots: usize,
    pub snapshot_bytes: u64,
    /// log_bytes + snapshot_bytes.
    pub history_bytes: u64,
    /// history_bytes / document_bytes.
    pub history_per_document_byte: f64,
    /// The whole data directory on disk, when `--data-dir` was given.
    pub data_dir_bytes: Option<u64>,
    /// Listing the whole history, 1,000 changes a page.
    pub listing_ms: f64,
    pub points: Vec<PointResult>,
}

/// `?at=` at one point of the log.
#[derive(Debug, Serialize)]
pub struct PointResult {
    /// How far through the listed changes, in percent.
    pub percent: u32,
    pub id: String,
    pub seq: u64,
    /// The newest snapshot at or before the point (what the server
    /// rebuilds from), and the stored changes it replays on top.
    pub from_snapshot_seq: Option<u64>,
    pub changes_replayed: u64,
    /// The answer: bytes, and the length of the text (UTF-16 units).
    pub state_bytes: usize,
    pub text_len: u32,
    /// The first request for the point.
    pub cold_ms: f64,
    /// The requests after it.
    pub warm: Option<Percentiles>,
}

/// One change as the history API lists it (the fields used here).
#[derive(Debug, Clone, Deserialize)]
struct Change {
    id: String,
    seq: u64,
    bytes: u64,
}

#[derive(Debug, Deserialize)]
struct Page {
    changes: Vec<Change>,
    next: Option<u64>,
}

/// One snapshot as the admin API lists it (the fields used here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Snapshot {
    id: u64,
    seq: u64,
    size_bytes: u64,
}

/// The points timed, in percent through the log; the middle first, so its
/// first request is the first `?at=` the server sees.
const POINTS: [u32; 3] = [50, 10, 90];

pub async fn run(args: HistoryArgs) -> anyhow::Result<HistoryResult> {
    let http = Http::new(&args.http, &args.admin_key)?;
    let doc_path = format!("/docs/{}", args.doc);
    let trace = trace::load(&args.trace)?;
    let ingest_ms = if args.no_ingest {
        None
    } else {
        let (status, _) = http.get(&doc_path, false).await?;
        ensure!(
            status == 404,
            "{doc_path} answered {status}: give a --doc nobody wrote to (or --no-ingest)"
        );
        let mut replay = ingest::Replay::connect(&clients::doc_url(&args.ws, &args.doc)).await?;
        Some(if args.one_by_one {
            replay.send_each(&trace.updates, args.timeout).await?
        } else {
            replay.send_all(&trace.updates, args.timeout).await?
        })
    };
    let (status, document) = http.get(&doc_path, false).await?;
    ensure!(status == 200, "GET {doc_path}: {status}");
    let text = without_markers(&text_of(&document.body)?);
    ensure!(
        text.contains(&trace.end_content),
        "{doc_path} does not hold the trace's text (was it stored from another trace?)"
    );
    let snapshots = settled_snapshots(&http, &args.doc).await?;
    let listed = Instant::now();
    let changes = list_history(&http, &args.doc).await?;
    let listing_ms = listed.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        !changes.is_empty(),
        "the history of {} lists no changes",
        args.doc
    );
    let mut points = Vec::new();
    for percent in POINTS {
        let at = &changes[(changes.len() - 1) * percent as usize / 100];
        points.push(time_point(&http, &doc_path, at, percent, &snapshots, args.requests).await?);
    }
    points.sort_by_key(|p| p.percent);
    let log_bytes = changes.iter().map(|c| c.bytes).sum();
    let snapshot_bytes = snapshots.iter().map(|s| s.size_bytes).sum();
    let history_bytes = log_bytes + snapshot_bytes;
    Ok(HistoryResult {
        trace: ingest::trace_name(&args.trace),
        doc: args.doc,
        trace_changes: trace.updates.len(),
        one_by_one: args.one_by_one && !args.no_ingest,
        ingest_ms,
        document_bytes: document.body.len(),
        stored_changes: changes.len(),
        log_bytes,
        snapshots: snapshots.len(),
        snapshot_bytes,
        history_bytes,
        history_per_document_byte: history_bytes as f64 / document.body.len() as f64,
        data_dir_bytes: args.data_dir.as_deref().map(dir_bytes).transpose()?,
        listing_ms,
        points,
    })
}

/// Times `?at=` the change `at`: the first request, then `requests` more,
/// checking every answer.
async fn time_point(
    http: &Http,
    doc_path: &str,
    at: &Change,
    percent: u32,
    snapshots: &[Snapshot],
    requests: usize,
) -> anyhow::Result<PointResult> {
    let path = format!("{doc_path}?at={}", at.id);
    let mut timed = Vec::with_capacity(requests + 1);
    let mut first: Option<Answer> = None;
    for _ in 0..=requests {
        let started = Instant::now();
        let (status, answer) = http.get(&path, false).await?;
        timed.push(started.elapsed());
        ensure!(status == 200, "GET {path}: {status}");
        ensure!(
            answer.event_id.as_deref() == Some(at.id.as_str()),
            "GET {path} answered the point {:?}, not the one asked for",
            answer.event_id
        );
        match &first {
            // A rebuild of the same point is the same bytes; anything else
            // is checked on its own.
            Some(f) if f.body == answer.body => {}
            _ => {
                text_of(&answer.body).with_context(|| format!("GET {path}"))?;
            }
        }
        first.get_or_insert(answer);
    }
    let state = first.map(|a| a.body).unwrap_or_default();
    let from_snapshot_seq = snapshots
        .iter()
        .map(|s| s.seq)
        .filter(|&s| s <= at.seq)
        .max();
    let cold = timed.remove(0);
    Ok(PointResult {
        percent,
        id: at.id.clone(),
        seq: at.seq,
        from_snapshot_seq,
        changes_replayed: at.seq - from_snapshot_seq.unwrap_or(0),
        state_bytes: state.len(),
        text_len: text_of(&state)?.encode_utf16().count() as u32,
        cold_ms: cold.as_secs_f64() * 1000.0,
        warm: stats::percentiles(&mut timed),
    })
}

/// Every change the history API lists, a page of 1,000 at a time.
async fn list_history(http: &Http, doc: &str) -> anyhow::Result<Vec<Change>> {
    let mut changes = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let mut path = format!("/docs/{doc}/history?limit=1000");
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, answer) = http.get(&path, false).await?;
        ensure!(status == 200, "GET {path}: {status}");
        let page: Page = serde_json::from_slice(&answer.body)
            .with_context(|| format!("GET {path}: not a page of history"))?;
        changes.extend(page.changes);
        match page.next {
            Some(next) if Some(next) != cursor => cursor = Some(next),
            _ => return Ok(changes),
        }
    }
}

/// The document's snapshots, once two listings half a second apart agree
/// (a periodic snapshot is taken just after the change that makes it due
/// is stored, so the last may still be on its way).
async fn settled_snapshots(http: &Http, doc: &str) -> anyhow::Result<Vec<Snapshot>> {
    let path = format!("/admin/docs/{doc}/snapshots");
    let mut last: Option<Vec<Snapshot>> = None;
    for _ in 0..20 {
        let (status, answer) = http.get(&path, true).await?;
        ensure!(
            status == 200,
            "GET {path}: {status} (is --admin-key the server's?)"
        );
        let list: Vec<Snapshot> = serde_json::from_slice(&answer.body)
            .with_context(|| format!("GET {path}: not a list of snapshots"))?;
        if last.as_ref() == Some(&list) {
            return Ok(list);
        }
        last = Some(list);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let list = last.unwrap_or_default();
    let ids: Vec<u64> = list.iter().map(|s| s.id).collect();
    bail!("the snapshots of {doc} kept changing for 10 s (now {ids:?})")
}

/// The text of the trace's text root in a Yjs v1 update, which must apply
/// to an empty document with nothing missing.
fn text_of(update: &[u8]) -> anyhow::Result<String> {
    let doc = trace::trace_doc();
    let text = doc.get_or_insert_text(trace::TEXT);
    let mut txn = doc.transact_mut();
    txn.apply_update(yrs::Update::decode_v1(update).context("not a Yjs v1 update")?)
        .context("the update does not apply")?;
    ensure!(
        !txn.has_missing_updates(),
        "the update depends on changes it does not hold"
    );
    Ok(text.get_string(&txn))
}

/// `text` without the stamped markers ingest sends after a trace (`wbts`
/// and 16 hex digits), wherever Yjs put them.
fn without_markers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("wbts") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 4..];
        let stamp = after
            .get(..16)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        match stamp {
            Some(_) => rest = &after[16..],
            None => {
                out.push_str("wbts");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// An answer's body and the `weft-event-id` it named.
#[derive(Debug)]
struct Answer {
    body: bytes::Bytes,
    event_id: Option<String>,
}

/// Plain HTTP/1.1 GETs to one server, a connection each.
#[derive(Debug)]
struct Http {
    /// host:port
    addr: String,
    /// The base URL's path, without its trailing slash.
    prefix: String,
    admin_key: String,
}

impl Http {
    fn new(base: &str, admin_key: &str) -> anyhow::Result<Http> {
        let uri: hyper::Uri = base
            .parse()
            .with_context(|| format!("--http {base} is not a URL"))?;
        ensure!(
            uri.scheme_str() == Some("http"),
            "--http {base}: only plain http:// is supported"
        );
        let host = uri
            .host()
            .with_context(|| format!("--http {base} names no host"))?;
        Ok(Http {
            addr: format!("{host}:{}", uri.port_u16().unwrap_or(80)),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            admin_key: admin_key.to_owned(),
        })
    }

    /// GETs `path` (under the base URL), with the admin key if `admin`.
    async fn get(&self, path: &str, admin: bool) -> anyhow::Result<(u16, Answer)> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(format!("{}{path}", self.prefix))
            .header("host", self.addr.as_str());
        if admin {
            req = req.header("authorization", format!("Bearer {}", self.admin_key));
        }
        let resp = send
            .send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new())?)
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = resp.status().as_u16();
        let event_id = resp
            .headers()
            .get("weft-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, Answer { body, event_id }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_taken_out_of_the_text() {
        let text = format!("ab{}cd wbts no", format_args!("wbts{:016x}", 7));
        assert_eq!(without_markers(&text), "abcd wbts no");
    }
}
