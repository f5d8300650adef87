//! The `fanout` scenario: writers change one document at a fixed total rate
//! while WebSocket subscribers and SSE viewers receive every change; each
//! change's delivery delay is measured at every receiver.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::clients::{self, Writer};
use crate::probe::{self, Usage};
use crate::stats::{percentiles, Percentiles};

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// The server's y-websocket base URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,
    /// Where writers connect, if not to --ws: another node of a cluster,
    /// to measure fan-out across nodes.
    #[arg(long)]
    pub writer_ws: Option<String>,
    /// The server's address for SSE viewers (weft only); none: no viewers.
    #[arg(long)]
    pub sse: Option<String>,
    #[arg(long, default_value = "bench-fanout")]
    pub doc: String,
    /// WebSocket subscribers; a comma-separated ladder runs once per step.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1000, 5000])]
    pub subscribers: Vec<usize>,
    /// SSE viewers (with --sse): one count for every step, or a
    /// comma-separated ladder as long as --subscribers, one per step.
    #[arg(long, value_delimiter = ',', default_values_t = [0usize])]
    pub viewers: Vec<usize>,
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Changes per second, all writers together.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Bytes of text per change.
    #[arg(long, default_value_t = 32)]
    pub payload: usize,
    /// The server's process id, to report its CPU and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct FanoutResult {
    pub subscribers: usize,
    pub viewers: usize,
    pub writers: usize,
    pub changes_sent: usize,
    pub ws: Option<Percentiles>,
    pub sse: Option<Percentiles>,
    pub ws_deliveries_missing: usize,
    pub sse_deliveries_missing: usize,
    pub server_cpu_seconds: Option<f64>,
    pub server_rss_kib: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct FanoutLadder {
    pub steps: Vec<FanoutResult>,
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<FanoutLadder> {
    anyhow::ensure!(
        args.viewers.len() == 1 || args.viewers.len() == args.subscribers.len(),
        "--viewers takes one count or one per --subscribers step"
    );
    let mut steps = Vec::new();
    for (i, &n) in args.subscribers.iter().enumerate() {
        let viewers = args
            .viewers
            .get(i)
            .or(args.viewers.first())
            .copied()
            .unwrap_or(0);
        let doc = format!("{}-{n}-{viewers}-{}", args.doc, args.writers);
        steps.push(run_step(&args, &doc, n, viewers).await?);
        // Let the closed connections go before the next step.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(FanoutLadder { steps })
}

async fn run_step(
    args: &FanoutArgs,
    doc: &str,
    subscribers: usize,
    viewers: usize,
) -> anyhow::Result<FanoutResult> {
    let url = clients::doc_url(&args.ws, doc);
    let ws_lat = Arc::new(Mutex::new(Vec::new()));
    let sse_lat = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let ws = clients::connect(&url).await?;
        let lat = ws_lat.clone();
        tasks.push(tokio::spawn(clients::subscribe(ws, move |d, _| {
            lat.lock().map(|mut l| l.push(d)).ok();
        })));
    }
    if let Some(addr) = &args.sse {
        for _ in 0..viewers {
            let body = clients::open_sse(addr, &format!("/sse/{doc}"), false).await?;
            let lat = sse_lat.clone();
            tasks.push(tokio::spawn(clients::view(body, move |d, _| {
                lat.lock().map(|mut l| l.push(d)).ok();
            })));
        }
    }
    let writer_url = clients::doc_url(args.writer_ws.as_deref().unwrap_or(&args.ws), doc);
    let mut writers = Vec::new();
    for _ in 0..args.writers.max(1) {
        writers.push(Writer::connect(&writer_url, args.payload).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = args.server_pid.map(probe::usage);
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let started = Instant::now();
    let mut next = Instant::now();
    let mut sent = 0;
    while started.elapsed() < args.duration {
        let n = writers.len();
        let w = &mut writers[sent % n];
        w.send().await?;
        w.drain().await;
        sent += 1;
        next += interval;
        tokio::time::sleep_until(next.into()).await;
    }
    // Let the last changes arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = args.server_pid.map(probe::usage);
    for t in &tasks {
        t.abort();
    }

    let expected_ws = sent * subscribers;
    let expected_sse = if args.sse.is_some() {
        sent * viewers
    } else {
        0
    };
    let mut ws = ws_lat.lock().map(|l| l.clone()).unwrap_or_default();
    let mut sse = sse_lat.lock().map(|l| l.clone()).unwrap_or_default();
    Ok(FanoutResult {
        subscribers,
        viewers: if args.sse.is_some() { viewers } else { 0 },
        writers: writers.len(),
        changes_sent: sent,
        ws_deliveries_missing: expected_ws.saturating_sub(ws.len()),
        sse_deliveries_missing: expected_sse.saturating_sub(sse.len()),
        ws: percentiles(&mut ws),
        sse: percentiles(&mut sse),
        server_cpu_seconds: before
            .zip(after)
            .map(|(b, a): (Usage, Usage)| a.cpu_seconds - b.cpu_seconds),
        server_rss_kib: after.map(|a| a.rss_kib),
    })
}
