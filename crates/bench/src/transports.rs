//! The `transports` scenario: one writer changes a document while a
//! WebSocket subscriber, an SSE viewer and a gzip SSE viewer receive every
//! change; for each payload size, delivery delay per message and the bytes
//! each receiver's socket read per message (TLS off).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::clients::{self, Writer};
use crate::stats::{percentiles, Percentiles};
use crate::trace;
use crate::wire::Counted;

#[derive(Debug, Clone, Args)]
pub struct TransportsArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,
    /// The server's address for SSE viewers (weft only); none: WebSocket only.
    #[arg(long)]
    pub sse: Option<String>,
    #[arg(long, default_value = "bench-transports")]
    pub doc: String,
    /// Text bytes per change (besides its 20-byte stamp), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 1024, 102_400])]
    pub payloads: Vec<usize>,
    /// Changes per payload size.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Where payload text comes from: a trace's final text (real prose).
    #[arg(
        long,
        default_value = trace::DEFAULT_TRACE
    )]
    pub text_from: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct TransportRun {
    pub transport: String,
    pub payload_bytes: usize,
    pub messages: usize,
    pub received: usize,
    pub latency: Option<Percentiles>,
    /// Bytes the receiver's socket read per change.
    pub wire_bytes_per_message: f64,
    /// wire bytes / (payload + stamp): what framing and encoding add
    /// (above 1) or compression saves (below 1).
    pub wire_to_text_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct TransportsResult {
    pub runs: Vec<TransportRun>,
}

struct Receiver {
    transport: &'static str,
    read: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<Duration>>>,
    task: tokio::task::JoinHandle<()>,
}

pub async fn run(args: TransportsArgs) -> anyhow::Result<TransportsResult> {
    let text: Vec<char> = trace::end_content(&args.text_from)?.chars().collect();
    let ws_host = ws_authority(&args.ws)?;
    let stamp = format!("{:x}", clients::now_micros());
    let mut runs = Vec::new();
    for &payload in &args.payloads {
        let doc = format!("{}-{payload}-{stamp}", args.doc);
        let url = clients::doc_url(&args.ws, &doc);
        let mut receivers = Vec::new();

        let (io, read) = Counted::connect(&ws_host).await?;
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), io).await?;
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let l = latencies.clone();
        let task = tokio::spawn(clients::subscribe(ws, move |d, _| {
            l.lock().map(|mut l| l.push(d)).ok();
        }));
        receivers.push(Receiver {
            transport: "websocket",
            read,
            latencies,
            task,
        });
        if let Some(addr) = &args.sse {
            for (transport, gzip) in [("sse", false), ("sse+gzip", true)] {
                let (io, read) = Counted::connect(addr).await?;
                let mut body = clients::open_sse_on(io, addr, &format!("/sse/{doc}"), gzip).await?;
                let latencies = Arc::new(Mutex::new(Vec::new()));
                let l = latencies.clone();
                let task = tokio::spawn(async move {
                    let mut seen = move |d, _| {
                        l.lock()
                            .map(|mut l: std::sync::MutexGuard<'_, Vec<Duration>>| l.push(d))
                            .ok();
                    };
                    clients::view_encoded(&mut body, gzip, &mut seen).await
                });
                receivers.push(Receiver {
                    transport,
                    read,
                    latencies,
                    task,
                });
            }
        }
        let mut writer = Writer::with_padding(&url, String::new()).await?;
        // Past the handshakes and the initial snapshot.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before: Vec<u64> = receivers
            .iter()
            .map(|r| r.read.load(Ordering::Relaxed))
            .collect();

        let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
        let mut next = Instant::now();
        for i in 0..args.messages {
            // A different slice of real text each time, so compression
            // cannot just point back at the previous message.
            let start = (i * 7919 * (payload.max(1))) % text.len().max(1);
            let padding: String = text.iter().cycle().skip(start).take(payload).collect();
            writer.send_text(&padding).await?;
            writer.drain().await;
            next += interval;
            tokio::time::sleep_until(next.into()).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;

        for (r, before) in receivers.into_iter().zip(before) {
            r.task.abort();
            let wire = (r.read.load(Ordering::Relaxed) - before) as f64 / args.messages as f64;
            let mut latencies = r.latencies.lock().map(|l| l.clone()).unwrap_or_default();
            runs.push(TransportRun {
                transport: r.transport.into(),
                payload_bytes: payload,
                messages: args.messages,
                received: latencies.len(),
                latency: percentiles(&mut latencies),
                wire_bytes_per_message: wire,
                wire_to_text_ratio: wire / (payload + 20) as f64,
            });
        }
    }
    Ok(TransportsResult { runs })
}

/// `host:port` of a ws:// URL.
fn ws_authority(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow::anyhow!("{url}: only ws:// URLs are measured (TLS off)"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    Ok(if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    })
}
