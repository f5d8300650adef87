//! The `weft` command line: subcommands and every `serve` setting, each a
//! flag with an environment variable behind it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "A real-time collaboration server for Yjs documents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    #[command(
        after_help = "Examples:\n  weft serve\n  weft serve --listen 0.0.0.0:8080 --data-dir /var/lib/weft"
    )]
    Serve(ServeConfig),
}

/// Everything `weft serve` can be told.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory of the embedded database (created if missing).
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "./weft-data")]
    pub data_dir: PathBuf,

    /// Largest WebSocket message accepted, in bytes; larger ones close the
    /// connection with 1009.
    #[arg(long, env = "WEFT_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// How often the server pings each WebSocket; a peer silent for two
    /// intervals is dropped.
    #[arg(long, env = "WEFT_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// How long a document stays loaded after its last connection leaves.
    #[arg(long, env = "WEFT_UNLOAD_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub unload_grace: Duration,

    /// Recent changes each live document keeps in memory for replay.
    #[arg(long, env = "WEFT_RECENT_CHANGES", default_value_t = 1024)]
    pub recent_changes: usize,

    /// Take a snapshot of a document after this many changes.
    #[arg(long, env = "WEFT_SNAPSHOT_EVERY", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,

    /// Logged changes kept behind the newest snapshot, for replay.
    #[arg(long, env = "WEFT_KEEP_LOG_TAIL", default_value_t = 10_000)]
    pub keep_log_tail: u64,

    /// Frames a connection may have queued before it counts as too slow
    /// and is closed (1013).
    #[arg(long, env = "WEFT_OUTBOUND_QUEUE", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub outbound_queue: u64,

    /// The `retry:` delay (milliseconds) SSE viewers are told to wait
    /// before reconnecting.
    #[arg(long, env = "WEFT_SSE_RETRY_MS", default_value_t = 3000)]
    pub sse_retry_ms: u64,

    /// How long an SSE stream may be silent before a `: keepalive` comment.
    #[arg(long, env = "WEFT_SSE_KEEPALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sse_keepalive: Duration,

    /// PEM certificate chain: serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN)
    /// instead of plain HTTP. Needs --tls-key.
    #[arg(long, env = "WEFT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "WEFT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// How long shutdown may take to close connections and store documents.
    #[arg(long, env = "WEFT_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}

impl ServeConfig {
    pub fn engine(&self) -> weft_sync::EngineConfig {
        weft_sync::EngineConfig {
            unload_grace: self.unload_grace,
            recent_changes: self.recent_changes,
            snapshot_every: self.snapshot_every,
            keep_log_tail: self.keep_log_tail,
            outbound_queue: usize::try_from(self.outbound_queue).unwrap_or(usize::MAX),
            ..weft_sync::EngineConfig::default()
        }
    }
}
