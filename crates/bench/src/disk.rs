//! The `disk` scenario: what the disk itself costs a durable write. It
//! appends records of a given size to a file in the directory a server
//! keeps its data in and makes each durable with `fdatasync` before the
//! next, as a server that stores before it broadcasts must, and reports
//! the latency percentiles. Run it in the same run as a fan-out: a server
//! that syncs before it broadcasts cannot have a tail shorter than this,
//! and one that does not sync is not paying it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use crate::stats::{percentiles, Percentiles};

#[derive(Debug, Clone, Args)]
pub struct DiskArgs {
    /// The directory to write in: the server's data directory, or one on the
    /// same file system. A scratch file is created there and removed.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Appends, each made durable before the next.
    #[arg(long, default_value_t = 2000)]
    pub writes: usize,
    /// Bytes per append (a typical change is a few hundred).
    #[arg(long, default_value_t = 200)]
    pub bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct DiskResult {
    pub dir: String,
    pub bytes_per_write: usize,
    /// One append + fdatasync each.
    pub fdatasync: Option<Percentiles>,
}

pub async fn run(args: DiskArgs) -> anyhow::Result<DiskResult> {
    let dir = args.dir.display().to_string();
    let bytes_per_write = args.bytes;
    let mut samples = tokio::task::spawn_blocking(move || timed_appends(&args)).await??;
    Ok(DiskResult {
        dir,
        bytes_per_write,
        fdatasync: percentiles(&mut samples),
    })
}

/// Appends `args.writes` records, syncing each, and times every one.
fn timed_appends(args: &DiskArgs) -> anyhow::Result<Vec<Duration>> {
    let path = args
        .dir
        .join(format!("weft-bench-disk-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("could not create a scratch file in {}", args.dir.display()))?;
    let record = vec![b'x'; args.bytes];
    let mut durations = Vec::with_capacity(args.writes);
    let outcome = (|| -> anyhow::Result<()> {
        for _ in 0..args.writes {
            let started = Instant::now();
            file.write_all(&record)?;
            file.sync_data()?;
            durations.push(started.elapsed());
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    outcome.context("appending to the scratch file")?;
    Ok(durations)
}
