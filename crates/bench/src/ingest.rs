//! The `ingest` scenario: one WebSocket client replays a real editing trace
//! as fast as the server takes it (one Yjs update per transaction), and an
//! observer on a second connection waits for a stamped change sent after
//! the last one. Servers handle a connection's messages in order and weft
//! makes a change durable before it is broadcast, so the observer seeing
//! the stamp means every change before it is durable. The same updates
//! applied to an in-process `yrs::Doc` give the physical limit.
//! [`Replay`] also sends a trace one change at a time, each once the one
//! before came back (the `history` scenario's keystroke pace).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::Transact;

use crate::clients::{self, Conn};
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
    let mut replay = Replay::connect(&url).await?;
    let before = args.server_pid.map(probe::usage);
    let server_ms = replay.send_all(&trace.updates, args.timeout).await?;
    let after = args.server_pid.map(probe::usage);
    drop(replay);

    let changes = trace.updates.len();
    Ok(IngestResult {
        trace: trace_name(&args.trace),
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

/// A trace's sender, on one connection to the document, and an observer on
/// another that counts the changes it is sent and wakes when the stamped
/// change sent after a trace arrives: then every change of the trace is
/// durable. Dropping it ends both connections' tasks.
pub(crate) struct Replay {
    sink: SplitSink<Conn, Message>,
    seen: Arc<Seen>,
    observer: JoinHandle<()>,
    drain: JoinHandle<()>,
}

/// What the observer has been sent.
#[derive(Default)]
struct Seen {
    /// Update frames: a change each.
    updates: AtomicUsize,
    changed: Notify,
    /// A change carrying a stamp.
    stamped: Notify,
}

impl Replay {
    /// Connects the sender and the observer to the document at `url` (see
    /// [`clients::doc_url`]), and gives the server a moment to set both up.
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Replay> {
        let seen = Arc::new(Seen::default());
        let observer = {
            let mut ws = clients::connect(url).await?;
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = ws.next().await {
                    // Sync update frames only: 0 (sync), 2 (update).
                    if let Message::Binary(frame) = message {
                        if frame.starts_with(&[0, 2]) {
                            seen.updates.fetch_add(1, Ordering::SeqCst);
                            seen.changed.notify_one();
                            if !clients::stamps(&frame).is_empty() {
                                seen.stamped.notify_one();
                            }
                        }
                    }
                }
            })
        };
        let (sink, mut stream) = clients::connect(url).await?.split();
        // Keep reading: the server's own messages and pings must not back up.
        let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Replay {
            sink,
            seen,
            observer,
            drain,
        })
    }

    /// Sends every update as fast as the server takes them, then a stamped
    /// change, and waits (at most `timeout`) for the observer to see it.
    /// Returns the milliseconds from the first update sent until then.
    pub(crate) async fn send_all(
        &mut self,
        updates: &[Vec<u8>],
        timeout: Duration,
    ) -> anyhow::Result<f64> {
        let started = Instant::now();
        let waited = tokio::time::timeout(timeout, async {
            for (i, update) in updates.iter().enumerate() {
                let frame = YMessage::Sync(SyncMessage::Update(update.clone())).encode_v1();
                self.sink.feed(Message::Binary(frame.into())).await?;
                if i % 64 == 63 {
                    self.sink.flush().await?;
                }
            }
            // Sent last on the same connection, so it is handled after them all.
            self.sink
                .send(Message::Binary(clients::stamped_frame().into()))
                .await?;
            self.seen.stamped.notified().await;
            anyhow::Ok(())
        })
        .await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        waited
            .with_context(|| format!("the server did not take the trace within {timeout:?}"))??;
        Ok(ms)
    }

    /// Sends the updates one at a time, each once the observer has been
    /// sent the one before (so it is durable), as a typist's keystrokes
    /// reach a server: each is then stored as a change of its own, where
    /// [`send_all`](Self::send_all)'s burst is stored a batch to a change.
    /// Returns the milliseconds from the first update sent until the last
    /// was seen; gives up after `timeout` in all.
    pub(crate) async fn send_each(
        &mut self,
        updates: &[Vec<u8>],
        timeout: Duration,
    ) -> anyhow::Result<f64> {
        let started = Instant::now();
        let waited = tokio::time::timeout(timeout, async {
            for (i, update) in updates.iter().enumerate() {
                let want = self.seen.updates.load(Ordering::SeqCst) + 1;
                let frame = YMessage::Sync(SyncMessage::Update(update.clone())).encode_v1();
                self.sink.send(Message::Binary(frame.into())).await?;
                let echoed = async {
                    while self.seen.updates.load(Ordering::SeqCst) < want {
                        self.seen.changed.notified().await;
                    }
                };
                tokio::time::timeout(ECHO_WAIT, echoed)
                    .await
                    .with_context(|| {
                        format!(
                            "update {i} of the trace reached no other client within {ECHO_WAIT:?} \
                         (an update that changes nothing is not stored)"
                        )
                    })?;
            }
            anyhow::Ok(())
        })
        .await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        waited
            .with_context(|| format!("the server did not take the trace within {timeout:?}"))??;
        Ok(ms)
    }
}

/// How long [`Replay::send_each`] waits for each change to come back.
const ECHO_WAIT: Duration = Duration::from_secs(10);

impl Drop for Replay {
    fn drop(&mut self) {
        self.observer.abort();
        self.drain.abort();
    }
}

/// A trace as results name it: its file name.
pub(crate) fn trace_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
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
