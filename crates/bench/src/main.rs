//! `weft-bench`: a load generator for y-websocket-compatible servers (weft
//! or any other) and weft's SSE viewers. Each scenario prints a table and
//! writes JSON with `--json FILE`.

mod clients;
mod fanout;
mod idle;
mod probe;
mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "weft-bench",
    about = "Load generator for y-websocket servers and weft's SSE viewers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Also write the result as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Writers change one document; subscribers and viewers time each change.
    Fanout(fanout::FanoutArgs),
    /// Idle connections: server memory and CPU per connection.
    Idle(idle::IdleArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let json = match cli.scenario {
        Scenario::Fanout(args) => {
            let r = fanout::run(args).await?;
            println!(
                "fanout: {} writers, {} subscribers, {} viewers, {} changes",
                r.writers, r.subscribers, r.viewers, r.changes_sent
            );
            for (name, p, missing) in [
                ("ws", r.ws, r.ws_deliveries_missing),
                ("sse", r.sse, r.sse_deliveries_missing),
            ] {
                if let Some(p) = p {
                    println!(
                        "  {name:3} p50 {:8.3} ms  p99 {:8.3} ms  p999 {:8.3} ms  max {:8.3} ms  ({} deliveries, {missing} missing)",
                        p.p50_ms, p.p99_ms, p.p999_ms, p.max_ms, p.samples
                    );
                }
            }
            if let (Some(cpu), Some(rss)) = (r.server_cpu_seconds, r.server_rss_kib) {
                println!("  server: {cpu:.2} CPU s, {} MiB RSS", rss / 1024);
            }
            to_json(&r)?
        }
        Scenario::Idle(args) => {
            let r = idle::run(args).await?;
            println!("idle: {} connections", r.connections);
            println!(
                "  ws:  {:.0} bytes of server RSS per connection",
                r.ws_bytes_per_connection
            );
            if let Some(sse) = r.sse_bytes_per_viewer {
                println!("  sse: {sse:.0} bytes of server RSS per viewer");
            }
            println!(
                "  idle CPU: {:.2} µs per connection per second",
                r.idle_cpu_microseconds_per_connection_second
            );
            to_json(&r)?
        }
    };
    if let Some(path) = cli.json {
        std::fs::write(&path, json)?;
    }
    Ok(())
}

fn to_json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)?)
}
