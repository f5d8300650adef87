//! The `sends` scenario: the floor under any server's fan-out on this
//! machine. A thread of the load generator plays a server that does
//! nothing but fan out: `--rate` times a second it stamps the time and
//! writes one `--bytes` message to each of `--connections` loopback TCP
//! connections (one `send` each, as a server that writes every delivery
//! must), while the load generator's tasks read them, as its fan-out
//! subscribers do, and time each from its stamp.
//!
//! It reports the sending thread's CPU per send, user and kernel (on
//! loopback the receiving side of each send is charged to the sender too),
//! and the delivery delay. On the same machine, in the same run, a
//! server's CPU per delivery and its delay in `fanout` cannot be lower
//! than these; how far above them it is, is what the server itself costs.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::stats::{percentiles, Percentiles};

#[derive(Debug, Clone, Args)]
pub struct SendsArgs {
    /// Connections each message is sent to.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Messages a second, each sent to every connection.
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// How long to send for.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Bytes per message (a small change, framed, is about 60).
    #[arg(long, default_value_t = 60)]
    pub bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct SendsResult {
    pub connections: usize,
    pub rate: u32,
    pub bytes: usize,
    pub sends: u64,
    /// The sending thread's CPU time, user and kernel.
    pub sender_cpu_seconds: f64,
    pub cpu_us_per_send: f64,
    /// From the stamp to the reader's receipt.
    pub delay: Option<Percentiles>,
    /// Messages sent and never read.
    pub missing: usize,
}

/// The stamp at the head of each message: nanoseconds since the run began.
const STAMP: usize = 8;

pub async fn run(args: SendsArgs) -> anyhow::Result<SendsResult> {
    anyhow::ensure!(
        args.bytes >= STAMP,
        "--bytes must be at least {STAMP} (the time stamp)"
    );
    anyhow::ensure!(args.rate > 0, "--rate must be above 0");
    let began = Instant::now();
    let (senders, readers) = connect(args.connections, args.bytes, began).await?;
    let sending = args.clone();
    // A thread of its own, named, so that a profile can pick it out.
    let sender = std::thread::Builder::new()
        .name("sender".into())
        .spawn(move || send_all(senders, &sending, began))?;
    let (sends, cpu) = tokio::task::spawn_blocking(move || sender.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the sending thread panicked"))??;
    let mut delays = Vec::new();
    for reader in readers {
        delays.extend(reader.await.context("a reader failed")?);
    }
    let received = delays.len() as u64;
    Ok(SendsResult {
        connections: args.connections,
        rate: args.rate,
        bytes: args.bytes,
        sends,
        sender_cpu_seconds: cpu,
        cpu_us_per_send: cpu * 1e6 / sends.max(1) as f64,
        delay: percentiles(&mut delays),
        missing: usize::try_from(sends.saturating_sub(received)).unwrap_or(usize::MAX),
    })
}

/// `n` loopback connections: the sending ends, and a task reading each
/// receiving end until it closes, with the delay of every message.
async fn connect(
    n: usize,
    bytes: usize,
    began: Instant,
) -> anyhow::Result<(Vec<TcpStream>, Vec<tokio::task::JoinHandle<Vec<Duration>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let mut senders = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let receiving = tokio::net::TcpStream::connect(addr)
            .await
            .context("connecting over loopback (raise `ulimit -n`?)")?;
        // Connected, so it waits in the backlog: this returns at once.
        let (sending, _) = listener.accept()?;
        sending.set_nodelay(true)?;
        senders.push(sending);
        readers.push(tokio::spawn(read_all(receiving, bytes, began)));
    }
    Ok((senders, readers))
}

/// Reads `bytes`-byte messages until the connection closes, timing each.
async fn read_all(mut tcp: tokio::net::TcpStream, bytes: usize, began: Instant) -> Vec<Duration> {
    let mut delays = Vec::new();
    // As the fan-out scenario's subscribers read: 16 KiB at a time.
    let mut buf = vec![0u8; 16 * 1024];
    let mut partial = Vec::with_capacity(bytes);
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let now = began.elapsed();
        partial.extend_from_slice(&buf[..n]);
        let whole = partial.len() / bytes * bytes;
        for message in partial[..whole].chunks_exact(bytes) {
            let mut stamp = [0u8; STAMP];
            stamp.copy_from_slice(&message[..STAMP]);
            let sent = Duration::from_nanos(u64::from_le_bytes(stamp));
            delays.push(now.saturating_sub(sent));
        }
        partial.drain(..whole);
    }
    delays
}

/// Sends every message to every connection at the rate asked, and
/// returns how many sends were made and the thread's CPU seconds.
fn send_all(
    mut senders: Vec<TcpStream>,
    args: &SendsArgs,
    began: Instant,
) -> anyhow::Result<(u64, f64)> {
    let ticks = (args.duration.as_secs_f64() * f64::from(args.rate)).ceil() as u64;
    let every = Duration::from_secs(1) / args.rate;
    let mut message = vec![b'x'; args.bytes];
    let cpu_before = thread_cpu_seconds()?;
    let start = Instant::now();
    let mut sends = 0u64;
    for tick in 0..ticks {
        let due = start + every * u32::try_from(tick).unwrap_or(u32::MAX);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let stamp = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
        message[..STAMP].copy_from_slice(&stamp.to_le_bytes());
        for tcp in &mut senders {
            tcp.write_all(&message).context("sending over loopback")?;
            sends += 1;
        }
    }
    let cpu = thread_cpu_seconds()? - cpu_before;
    // Closing the sending ends ends the readers.
    drop(senders);
    Ok((sends, cpu))
}

/// The calling thread's CPU time, user and kernel, from /proc (in clock
/// ticks of 10 ms: a run of seconds of CPU is measured to well under 1 %).
fn thread_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")
        .context("reading /proc/thread-self/stat (Linux only)")?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .context("an unexpected /proc/thread-self/stat")
    };
    // utime and stime are fields 14 and 15, 100 ticks a second.
    Ok((tick(11)? + tick(12)?) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short run at 50 messages a second.
    fn args(connections: usize, millis: u64, bytes: usize) -> SendsArgs {
        SendsArgs {
            connections,
            rate: 50,
            duration: Duration::from_millis(millis),
            bytes,
        }
    }

    #[tokio::test]
    async fn every_message_reaches_every_connection_and_is_timed() {
        let r = run(args(10, 200, 60)).await.expect("run");
        assert_eq!(r.sends, 10 * 10);
        assert_eq!(r.missing, 0);
        assert_eq!(r.delay.expect("delays").samples, 100);
    }

    #[tokio::test]
    async fn a_message_too_short_for_its_stamp_is_refused() {
        let e = run(args(1, 20, 4)).await.expect_err("refused");
        assert!(e.to_string().contains("--bytes"), "{e}");
    }
}
