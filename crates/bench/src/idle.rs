//! The `idle` scenario: many idle WebSocket connections and SSE viewers on
//! a few shared documents; the server's memory per connection (VmRSS delta
//! over the server before they came) and its CPU per idle connection.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::clients;
use crate::probe;

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,
    /// The server's address for SSE viewers (weft only); none: no viewers.
    #[arg(long)]
    pub sse: Option<String>,
    /// Idle WebSocket connections.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Idle SSE viewers, with --sse (default: as many as --connections).
    #[arg(long)]
    pub viewers: Option<usize>,
    /// Documents they share.
    #[arg(long, default_value_t = 10)]
    pub docs: usize,
    /// How long to measure idle CPU.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle_for: Duration,
    /// The server's process id (required: memory is read from /proc).
    #[arg(long)]
    pub server_pid: u32,
}

#[derive(Debug, Serialize)]
pub struct IdleResult {
    pub connections: usize,
    pub viewers: usize,
    pub base_rss_kib: u64,
    pub ws_bytes_per_connection: f64,
    pub sse_bytes_per_viewer: Option<f64>,
    pub idle_cpu_microseconds_per_connection_second: f64,
}

pub async fn run(args: IdleArgs) -> anyhow::Result<IdleResult> {
    let settle = || tokio::time::sleep(Duration::from_secs(2));
    // Open the documents first, so only connections are measured.
    let mut warm = Vec::new();
    for d in 0..args.docs {
        warm.push(clients::connect(&clients::doc_url(&args.ws, &format!("idle-{d}"))).await?);
    }
    settle().await;
    let base = probe::usage(args.server_pid);
    let mut held = Vec::new();
    for i in 0..args.connections {
        held.push(
            clients::connect(&clients::doc_url(
                &args.ws,
                &format!("idle-{}", i % args.docs),
            ))
            .await?,
        );
    }
    settle().await;
    let with_ws = probe::usage(args.server_pid);
    let ws_per = (with_ws.rss_kib.saturating_sub(base.rss_kib) * 1024) as f64
        / args.connections.max(1) as f64;
    let viewer_count = args
        .sse
        .as_ref()
        .map_or(0, |_| args.viewers.unwrap_or(args.connections));

    let mut viewers = Vec::new();
    let mut sse_per = None;
    if let Some(addr) = &args.sse {
        for i in 0..viewer_count {
            viewers.push(
                clients::open_sse(addr, &format!("/sse/idle-{}", i % args.docs), false).await?,
            );
        }
        settle().await;
        let with_sse = probe::usage(args.server_pid);
        sse_per = Some(
            (with_sse.rss_kib.saturating_sub(with_ws.rss_kib) * 1024) as f64
                / viewer_count.max(1) as f64,
        );
    }
    let idle_start = probe::usage(args.server_pid);
    tokio::time::sleep(args.idle_for).await;
    let idle_end = probe::usage(args.server_pid);
    let open = (held.len() + viewers.len()).max(1) as f64;
    let cpu = (idle_end.cpu_seconds - idle_start.cpu_seconds) * 1e6
        / (open * args.idle_for.as_secs_f64());
    drop((held, viewers, warm));
    Ok(IdleResult {
        connections: args.connections,
        viewers: viewer_count,
        base_rss_kib: base.rss_kib,
        ws_bytes_per_connection: ws_per,
        sse_bytes_per_viewer: sse_per,
        idle_cpu_microseconds_per_connection_second: cpu,
    })
}
