//! The `join` scenario: K clients join one large document at the same
//! moment; each times connect → sync step 2 (the whole document). Run on
//! the document a trace builds and on one grown to a target size by
//! repeating the trace's text.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::SinkExt;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Text, Transact};

use crate::clients;
use crate::probe;
use crate::stats::{percentiles, Percentiles};
use crate::trace;

#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,
    #[arg(
        long,
        default_value = trace::DEFAULT_TRACE
    )]
    pub trace: PathBuf,
    #[arg(long, default_value = "bench-join")]
    pub doc: String,
    /// Clients joining at once.
    #[arg(long, default_value_t = 150)]
    pub clients: usize,
    /// Size of the large document, in MB (its encoded state).
    #[arg(long, default_value_t = 20)]
    pub large_mb: usize,
    /// The server's process id, to report the CPU time the joins took.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct JoinRun {
    pub document: String,
    pub document_bytes: usize,
    pub clients: usize,
    pub synced: usize,
    pub failed: usize,
    /// Connect to sync step 2, per client.
    pub latency: Option<Percentiles>,
    /// Bytes of sync messages that make up the whole document on this
    /// server (measured by one client that decoded them): a joiner counts
    /// as synced once it has received that much.
    pub sync_bytes: usize,
    /// Server CPU seconds while the clients joined (the load generator on
    /// the same machine is usually the limit: it reads clients × document).
    pub server_cpu_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct JoinResult {
    pub runs: Vec<JoinRun>,
}

pub async fn run(args: JoinArgs) -> anyhow::Result<JoinResult> {
    let trace = trace::load(&args.trace)?;

    // The trace's document, as one update.
    let doc = trace::trace_doc();
    for u in &trace.updates {
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(u)?)?;
    }
    let whole = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());

    // The large one: the trace's history, then its text again and again, a
    // change per repetition, until the state reaches the target size.
    let mut large = vec![whole.clone()];
    let mut size = whole.len();
    let text = doc.get_or_insert_text(trace::TEXT);
    while size < args.large_mb * 1_000_000 {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &trace.end_content);
        let u = txn.encode_update_v1();
        size += u.len();
        large.push(u);
    }

    let run_id = format!("{:x}", clients::now_micros());
    let mut runs = Vec::new();
    for (name, updates) in [("trace", vec![whole]), ("large", large)] {
        let url = clients::doc_url(&args.ws, &format!("{}-{name}-{run_id}", args.doc));
        let bytes = upload(&url, &updates).await?;
        // One client decodes everything it is sent until it has the whole
        // text: what the document costs on the wire from this server.
        let (_, sync_bytes) = tokio::time::timeout(
            Duration::from_secs(120),
            clients::join_until(&url, text_len(&updates)?),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{url}: the document did not arrive within 120 s"))??;
        let before = args.server_pid.map(probe::usage);
        let mut joins = Vec::new();
        for _ in 0..args.clients {
            let url = url.clone();
            joins.push(tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_secs(120),
                    clients::join_bytes(&url, sync_bytes),
                )
                .await
                .map_err(|_| anyhow::anyhow!("not synced within 120 s"))?
            }));
        }
        let mut took = Vec::new();
        let mut failed = 0;
        for j in joins {
            match j.await {
                Ok(Ok((d, _))) => took.push(d),
                Ok(Err(e)) => {
                    failed += 1;
                    eprintln!("join failed: {e:#}");
                }
                Err(_) => failed += 1,
            }
        }
        let after = args.server_pid.map(probe::usage);
        runs.push(JoinRun {
            document: name.into(),
            document_bytes: bytes,
            clients: args.clients,
            synced: took.len(),
            failed,
            latency: percentiles(&mut took),
            sync_bytes,
            server_cpu_seconds: before
                .zip(after)
                .map(|(b, a)| a.cpu_seconds - b.cpu_seconds),
        });
        // Let the server settle before the next document.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(JoinResult { runs })
}

/// The length of the text `updates` make.
fn text_len(updates: &[Vec<u8>]) -> anyhow::Result<usize> {
    let doc = trace::trace_doc();
    for u in updates {
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(u)?)?;
    }
    let text = doc.get_or_insert_text(trace::TEXT);
    let len = text.len(&doc.transact()) as usize;
    Ok(len)
}

/// Sends `updates` to the document, then a marker, and waits until a
/// joining client's sync step 2 holds the marker (an observer would be cut
/// off as a slow reader by a burst this size). Returns their size.
async fn upload(url: &str, updates: &[Vec<u8>]) -> anyhow::Result<usize> {
    let mut ws = clients::connect(url).await?;
    for u in updates {
        let frame = YMessage::Sync(SyncMessage::Update(u.clone())).encode_v1();
        ws.send(Message::Binary(frame.into())).await?;
    }
    let marker = clients::now_micros();
    ws.send(Message::Binary(clients::marker_frame(marker).into()))
        .await?;
    let needle = format!("wbts{marker:016x}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // A poll made while the upload still pours in may be cut off as a
        // slow reader; that only means "not yet".
        let poll = tokio::time::timeout(Duration::from_secs(10), clients::join_frame(url)).await;
        if let Ok(Ok((_, frame))) = poll {
            if frame.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{url}: the upload was not all there after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ws.close().await.ok();
    Ok(updates.iter().map(Vec::len).sum())
}
