//! The `ingest` scenario: one WebSocket client replays a real editing trace
//! as fast as the server takes it (one Yjs update per transaction), and an
//! observer on a second connection waits for a stamped change sent after
//! the last one. Servers handle a connection's messages in order and weft
//! makes a change durable before it is broadcast, so the observer seeing
//! the stamp means every change before it is durable. The same updates
//! applied to an in-process `yrs::Doc` give the physical limit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::Transact;

use crate::clients;
use crate::probe;
use crate::trace;

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,
    /// The trace to replay (gzipped JSON, sequential).
    #[arg(
        long,
        default_value = trace::DEFAULT_TRACE
    )]
    pub trace: PathBuf,
    #[arg(long, default_value = "bench-ingest")]
    pub doc: String,
    /// Give up waiting for the server after this long.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct IngestResult {
    pub trace: String,
    pub changes: usize,
    pub update_bytes: usize,
    /// Applying every update to an in-process `yrs::Doc`.
    pub in_process_ms: f64,
    /// From the first update sent to the observer seeing the last.
    pub server_ms: f64,
    pub changes_per_second: f64,
    /// server_ms / in_process_ms.
    pub ratio_to_in_process: f64,
    pub server_cpu_seconds: Option<f64>,
    pub server_rss_kib: Option<u64>,
}

pub async fn run(args: IngestArgs) -> anyhow::Result<IngestResult> {
    let trace = trace::load(&args.trace)?;
    let in_process_ms = apply_in_process(&trace.updates)?;

    let url = clients::doc_url(&args.ws, &args.doc);
    let arrived = Arc::new(Notify::new());
    let observer = {
        let ws = clients::connect(&url).await?;
        let arrived = arrived.clone();
        tokio::spawn(clients::subscribe(ws, move |_, _| arrived.notify_one()))
    };
    let (mut sink, mut stream) = clients::connect(&url).await?.split();
    // Keep reading: the server's own messages and pings must not back up.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = args.server_pid.map(probe::usage);
    let started = Instant::now();
    let waited = tokio::time::timeout(args.timeout, async {
        for (i, update) in trace.updates.iter().enumerate() {
            let frame = YMessage::Sync(SyncMessage::Update(update.clone())).encode_v1();
            sink.feed(Message::Binary(frame.into())).await?;
            if i % 64 == 63 {
                sink.flush().await?;
            }
        }
        // Sent last on the same connection, so it is handled after them all.
        sink.send(Message::Binary(clients::stamped_frame().into()))
            .await?;
        arrived.notified().await;
        anyhow::Ok(())
    })
    .await;
    let server_ms = started.elapsed().as_secs_f64() * 1000.0;
    let after = args.server_pid.map(probe::usage);
    observer.abort();
    drain.abort();
    waited.with_context(|| {
        format!(
            "the server did not take the trace within {:?}",
            args.timeout
        )
    })??;

    let changes = trace.updates.len();
    Ok(IngestResult {
        trace: args.trace.file_name().map_or_else(
            || args.trace.display().to_string(),
            |n| n.to_string_lossy().into(),
        ),
        changes,
        update_bytes: trace.bytes(),
        in_process_ms,
        server_ms,
        changes_per_second: changes as f64 / (server_ms / 1000.0),
        ratio_to_in_process: server_ms / in_process_ms,
        server_cpu_seconds: before
            .zip(after)
            .map(|(b, a)| a.cpu_seconds - b.cpu_seconds),
        server_rss_kib: after.map(|a| a.rss_kib),
    })
}

/// Milliseconds to decode and apply every update to a fresh document.
pub fn apply_in_process(updates: &[Vec<u8>]) -> anyhow::Result<f64> {
    let doc = trace::trace_doc();
    let started = Instant::now();
    for u in updates {
        let update = yrs::Update::decode_v1(u)?;
        doc.transact_mut().apply_update(update)?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}
