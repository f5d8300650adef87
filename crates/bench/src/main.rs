//! `weft-bench`: a load generator for y-websocket-compatible servers (weft
//! or any other) and weft's SSE viewers. Each scenario prints a table and
//! writes JSON with `--json FILE`; `compare` puts several servers' results
//! side by side.

mod clients;
mod coldload;
mod compare;
mod disk;
mod envelope;
mod fanout;
mod history;
mod idle;
mod ingest;
mod join;
mod probe;
mod sends;
mod stats;
mod trace;
mod transports;
mod wire;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::stats::Percentiles;

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
    /// Replays an editing trace from one client: time until all is durable.
    Ingest(ingest::IngestArgs),
    /// weft's history: bytes stored per byte of document, `?at=` times.
    History(history::HistoryArgs),
    /// Many clients join a large document at once: time until each is synced.
    Join(join::JoinArgs),
    /// WebSocket vs SSE (plain and gzip): delay and wire bytes per message.
    Transports(transports::TransportsArgs),
    /// Connect → sync step 2 for a stored document not in memory.
    Coldload(coldload::ColdloadArgs),
    /// Append + fdatasync in a data directory: the disk's own durable-write tail.
    Disk(disk::DiskArgs),
    /// Loopback sends with nothing else: the machine's floor under fan-out.
    Sends(sends::SendsArgs),
    /// One table of several servers' results, with ratios against weft.
    Compare(compare::CompareArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let json = match cli.scenario {
        Scenario::Fanout(args) => report(&fanout::run(args).await?, print_fanout)?,
        Scenario::Idle(args) => report(&idle::run(args).await?, print_idle)?,
        Scenario::Ingest(args) => report(&ingest::run(args).await?, print_ingest)?,
        Scenario::History(args) => report(&history::run(args).await?, print_history)?,
        Scenario::Join(args) => report(&join::run(args).await?, print_join)?,
        Scenario::Transports(args) => report(&transports::run(args).await?, print_transports)?,
        Scenario::Coldload(args) => report(&coldload::run(args).await?, print_coldload)?,
        Scenario::Disk(args) => report(&disk::run(args).await?, print_disk)?,
        Scenario::Sends(args) => report(&sends::run(args).await?, print_sends)?,
        Scenario::Compare(args) => {
            println!("{}", compare::run(args)?);
            return Ok(());
        }
    };
    if let Some(path) = cli.json {
        std::fs::write(&path, json)?;
    }
    Ok(())
}

/// Prints a scenario's result for a person and returns it as JSON.
fn report<T: Serialize>(result: &T, print: fn(&T)) -> anyhow::Result<String> {
    print(result);
    to_json(result)
}

/// What a fanout run found, for a person.
fn print_fanout(r: &fanout::FanoutLadder) {
    for s in &r.steps {
        println!(
            "fanout: {} writers, {} subscribers, {} viewers, {} changes",
            s.writers, s.subscribers, s.viewers, s.changes_sent
        );
        print_latency("ws", s.ws, s.ws_deliveries_missing);
        print_latency("sse", s.sse, s.sse_deliveries_missing);
        if let (Some(cpu), Some(rss)) = (s.server_cpu_seconds, s.server_rss_kib) {
            println!("  server: {cpu:.2} CPU s, {} MiB RSS", rss / 1024);
        }
    }
}

/// What a sends run found, for a person.
fn print_sends(r: &sends::SendsResult) {
    println!(
        "sends: {} bytes to {} connections {} times a second: {} sends",
        r.bytes, r.connections, r.rate, r.sends
    );
    println!(
        "  sender: {:.2} CPU s, {:.2} µs per send",
        r.sender_cpu_seconds, r.cpu_us_per_send
    );
    print_latency("delay", r.delay, r.missing);
}

/// What a idle run found, for a person.
fn print_idle(r: &idle::IdleResult) {
    println!(
        "idle: {} WebSocket connections, {} SSE viewers",
        r.connections, r.viewers
    );
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
}

/// What a ingest run found, for a person.
fn print_ingest(r: &ingest::IngestResult) {
    println!(
        "ingest: {} changes ({} KB of updates) from {}",
        r.changes,
        r.update_bytes / 1000,
        r.trace
    );
    println!("  in-process yrs apply: {:9.0} ms", r.in_process_ms);
    println!(
        "  server, all durable:  {:9.0} ms  ({:.0} changes/s, {:.2}× in-process)",
        r.server_ms, r.changes_per_second, r.ratio_to_in_process
    );
}

/// What a history run found, for a person.
fn print_history(r: &history::HistoryResult) {
    let pace = if r.one_by_one {
        "one by one"
    } else {
        "as a burst"
    };
    let ingest = r.ingest_ms.map_or("stored earlier".into(), |ms| {
        format!("ingested {pace} in {ms:.0} ms")
    });
    println!(
        "history: {} as {} ({} updates, {ingest})",
        r.trace, r.doc, r.trace_changes
    );
    println!("  document now      {:>12} B", r.document_bytes);
    println!(
        "  log               {:>12} B  in {} changes (listed in {:.0} ms)",
        r.log_bytes, r.stored_changes, r.listing_ms
    );
    println!(
        "  snapshots         {:>12} B  in {} snapshots",
        r.snapshot_bytes, r.snapshots
    );
    println!(
        "  history           {:>12} B  = {:.1} B per byte of document",
        r.history_bytes, r.history_per_document_byte
    );
    if let Some(disk) = r.data_dir_bytes {
        println!("  data dir on disk  {disk:>12} B");
    }
    println!(
        "  {:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "?at=", "seq", "snapshot", "replayed", "state B", "cold ms", "p50 ms", "p99 ms"
    );
    for p in &r.points {
        let (p50, p99) = p
            .warm
            .map_or((f64::NAN, f64::NAN), |w| (w.p50_ms, w.p99_ms));
        println!(
            "  {:>4}% {:>8} {:>9} {:>9} {:>9} {:>9.1} {:>9.1} {:>9.1}",
            p.percent,
            p.seq,
            p.from_snapshot_seq.map_or("none".into(), |s| s.to_string()),
            p.changes_replayed,
            p.state_bytes,
            p.cold_ms,
            p50,
            p99
        );
    }
}

/// What a join run found, for a person.
fn print_join(r: &join::JoinResult) {
    for run in &r.runs {
        println!(
            "join: {} clients, {} document ({:.1} MB): {} synced, {} failed",
            run.clients,
            run.document,
            run.document_bytes as f64 / 1e6,
            run.synced,
            run.failed
        );
        print_latency("  ", run.latency, 0);
        if let Some(cpu) = run.server_cpu_seconds {
            println!("      server: {cpu:.2} CPU s");
        }
    }
}

/// What a transports run found, for a person.
fn print_transports(r: &transports::TransportsResult) {
    println!(
        "{:10} {:>8} {:>9} {:>9} {:>9} {:>12} {:>8}",
        "transport", "payload", "received", "p50 ms", "p99 ms", "wire B/msg", "wire/text"
    );
    for run in &r.runs {
        let (p50, p99) = run
            .latency
            .map_or((f64::NAN, f64::NAN), |p| (p.p50_ms, p.p99_ms));
        println!(
            "{:10} {:>8} {:>9} {:>9.3} {:>9.3} {:>12.0} {:>8.2}",
            run.transport,
            run.payload_bytes,
            format!("{}/{}", run.received, run.messages),
            p50,
            p99,
            run.wire_bytes_per_message,
            run.wire_to_text_ratio
        );
    }
}

/// What a coldload run found, for a person.
fn print_coldload(r: &coldload::ColdloadResult) {
    println!(
        "coldload {}: {:.1} ms cold, {} warm (sync step 2 of {} KB)",
        r.doc,
        r.cold_ms,
        r.warm_ms.map_or("–".into(), |w| format!("{w:.1} ms")),
        r.step2_bytes / 1000
    );
}

fn print_latency(name: &str, p: Option<Percentiles>, missing: usize) {
    if let Some(p) = p {
        println!(
            "  {name:3} p50 {:8.3} ms  p99 {:8.3} ms  p999 {:8.3} ms  max {:8.3} ms  ({} deliveries, {missing} missing)",
            p.p50_ms, p.p99_ms, p.p999_ms, p.max_ms, p.samples
        );
    }
}

fn to_json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)?)
}

/// What a disk run found, for a person.
fn print_disk(r: &disk::DiskResult) {
    println!(
        "disk: append {} B + fdatasync in {}",
        r.bytes_per_write, r.dir
    );
    if let Some(p) = r.fdatasync {
        println!(
            "  p50 {:8.3} ms  p99 {:8.3} ms  p999 {:8.3} ms  max {:8.3} ms  ({} writes)",
            p.p50_ms, p.p99_ms, p.p999_ms, p.max_ms, p.samples
        );
    }
}
