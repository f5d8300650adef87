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
use crate::stats::{percentiles, Percentiles};
use crate::trace;

#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,
    #[arg(
        long,
        default_value = "../shared/traces/sequential/automerge-paper.json.gz"
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
    /// The smallest sync step 2 a client got (a server that answers with
    /// less than the document has not synced it).
    pub min_step2_bytes: usize,
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
        let mut joins = Vec::new();
        for _ in 0..args.clients {
            let url = url.clone();
            joins.push(tokio::spawn(async move { clients::join(&url).await }));
        }
        let mut took = Vec::new();
        let mut failed = 0;
        let mut min_step2 = usize::MAX;
        for j in joins {
            match j.await {
                Ok(Ok((d, size))) => {
                    took.push(d);
                    min_step2 = min_step2.min(size);
                }
                Ok(Err(e)) => {
                    failed += 1;
                    eprintln!("join failed: {e:#}");
                }
                Err(_) => failed += 1,
            }
        }
        runs.push(JoinRun {
            document: name.into(),
            document_bytes: bytes,
            clients: args.clients,
            synced: took.len(),
            failed,
            latency: percentiles(&mut took),
            min_step2_bytes: if min_step2 == usize::MAX {
                0
            } else {
                min_step2
            },
        });
        // Let the server settle before the next document.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(JoinResult { runs })
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
        if let Ok((_, frame)) = clients::join_frame(url).await {
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
    ws.close(None).await.ok();
    Ok(updates.iter().map(Vec::len).sum())
}
