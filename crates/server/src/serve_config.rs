//! `ServeConfig`: every setting of `weft serve`, each a flag with an
//! environment variable behind it and a key of the `--config` file (see
//! `config_file`), and what the rest of the server makes of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::config_file;
use crate::creation_limit::NewDocumentLimit;
use crate::secret::Secret;

/// Everything `weft serve` can be told: each setting is a flag, an
/// environment variable, and a key of the `--config` TOML file (the flag's
/// name, with `-` or `_`), in that order of precedence.
#[derive(Debug, Clone, Args, Serialize)]
pub struct ServeConfig {
    /// A TOML file of settings (keys are flag names: `listen = "0.0.0.0:8080"`).
    #[arg(long, env = "WEFT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,

    /// Address to listen on.
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Serve `GET /metrics` (Prometheus) on this separate address only,
    /// instead of on the main one.
    #[arg(long, env = "WEFT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format: `pretty` for people, `json` for log pipelines.
    #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "pretty", value_parser = ["pretty", "json"])]
    pub log_format: String,

    /// Directory of the embedded database (created if missing).
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "./weft-data")]
    pub data_dir: PathBuf,

    /// Longest one disk operation of the embedded store may take (scans of
    /// the whole store 60 times this). Past it the request gets an error,
    /// the document's writers are closed with 1011, and the store takes no
    /// writes until the disk answers again.
    #[arg(long, env = "WEFT_STORAGE_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub storage_timeout: Duration,

    /// Cluster mode: keep documents in Redis at this URL
    /// (`redis://host:6379/0`) instead of --data-dir, so several weft nodes
    /// can serve the same documents behind any load balancer.
    #[arg(long, env = "WEFT_REDIS", hide_env_values = true)]
    pub redis: Option<Secret>,

    /// Cluster mode on a Redis Cluster: the URLs of some of its nodes,
    /// comma-separated (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`; one
    /// is enough, the others are found from it). Each document lives on
    /// the shard that holds its slot, its messages too (sharded pub/sub).
    #[arg(
        long,
        env = "WEFT_REDIS_CLUSTER",
        hide_env_values = true,
        conflicts_with = "redis"
    )]
    pub redis_cluster: Option<Secret>,

    /// Cluster mode: a change counts as stored, and is broadcast, only once
    /// this many Redis replicas have it too (`WAIT`), so that a failover to
    /// a replica loses nothing any client saw. 0: once the primary has it.
    #[arg(long, env = "WEFT_REDIS_MIN_REPLICAS", default_value_t = 0)]
    pub redis_min_replicas: u32,

    /// How long a change waits for --redis-min-replicas replicas; past it
    /// the change is refused (503, WebSocket 1011) and its writers resync.
    #[arg(long, env = "WEFT_REDIS_REPLICA_WAIT", default_value = "1s", value_parser = positive_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub redis_replica_wait: Duration,

    /// Largest WebSocket message accepted, in bytes; larger ones close the
    /// connection with 1009.
    #[arg(long, env = "WEFT_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// How often the server pings each WebSocket; a peer silent for two
    /// intervals is dropped.
    #[arg(long, env = "WEFT_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub ping_interval: Duration,

    /// How long a document stays loaded after its last connection leaves.
    #[arg(long, env = "WEFT_UNLOAD_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
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

    /// How long every change is kept behind snapshots, so that any point
    /// in that time can be shown or restored exactly (older points: the
    /// snapshots kept). 0 keeps only `--keep-log-tail`.
    #[arg(long, env = "WEFT_HISTORY_RETENTION", default_value = "30days", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub history_retention: Duration,

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
    #[serde(serialize_with = "config_file::exact_duration")]
    pub sse_keepalive: Duration,

    /// PEM certificate chain: serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN)
    /// instead of plain HTTP. Needs --tls-key.
    #[arg(long, env = "WEFT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "WEFT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Shared secret for HS256 document tokens (at least 32 bytes). With no
    /// secret and no public key, weft runs open: anyone may read and write.
    #[arg(long, env = "WEFT_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<Secret>,

    /// Read the HS256 secret from this file instead.
    #[arg(long, env = "WEFT_AUTH_SECRET_FILE", conflicts_with = "auth_secret")]
    pub auth_secret_file: Option<PathBuf>,

    /// PEM public key (RSA for RS256, P-256 for ES256) to verify tokens that
    /// another service signs.
    #[arg(long, env = "WEFT_AUTH_PUBLIC_KEY")]
    pub auth_public_key: Option<PathBuf>,

    /// Close connections when their token expires (4401), so revoking access
    /// takes effect within a token's lifetime.
    #[arg(long, env = "WEFT_AUTH_EXPIRY_DISCONNECTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub auth_expiry_disconnects: bool,

    /// Key for `POST /auth/token` and the admin API, sent as
    /// `Authorization: Bearer <key>`: at least 32 bytes (`openssl rand -hex
    /// 32` makes one). Without it those endpoints are off.
    #[arg(long, env = "WEFT_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<Secret>,

    /// Wrong admin keys one client address may send at once; then it gets
    /// 429 (even with the right key) until --admin-failure-interval passes.
    #[arg(long, env = "WEFT_ADMIN_FAILURE_BURST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_failure_burst: u32,

    /// After the burst, one more wrong admin key per address per this long.
    /// 0s: no throttle.
    #[arg(long, env = "WEFT_ADMIN_FAILURE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub admin_failure_interval: Duration,

    /// Origins (like https://app.example.com) allowed to open WebSockets and
    /// event streams and to call the HTTP API from a browser; comma-separated.
    /// Unset: any origin.
    #[arg(long, env = "WEFT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Snapshot retention: always keep this many newest snapshots per document.
    #[arg(long, env = "WEFT_SNAPSHOT_KEEP_LAST", default_value_t = 20)]
    pub snapshot_keep_last: usize,

    /// Snapshot retention: keep one per hour for this long.
    #[arg(long, env = "WEFT_SNAPSHOT_KEEP_HOURLY", default_value = "7days", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub snapshot_keep_hourly: Duration,

    /// Snapshot retention: keep one per day for this long.
    #[arg(long, env = "WEFT_SNAPSHOT_KEEP_DAILY", default_value = "90days", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub snapshot_keep_daily: Duration,

    /// Snapshot retention: for as long as daily ones, keep the newest
    /// snapshot of each run of this many changes, so that rebuilding any
    /// point in history replays at most about this many (0: none).
    #[arg(
        long,
        env = "WEFT_SNAPSHOT_KEEP_EVERY_CHANGES",
        default_value_t = 20_000
    )]
    pub snapshot_keep_every_changes: u64,

    /// How often old snapshots are pruned by the retention policy.
    #[arg(long, env = "WEFT_PRUNE_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub prune_interval: Duration,

    /// Bytes a connection may have queued before it counts as too slow and
    /// is closed (1013). One frame larger than this still goes into an
    /// empty queue.
    #[arg(long, env = "WEFT_OUTBOUND_QUEUE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub outbound_queue_bytes: usize,

    /// Largest a document may grow, in bytes (its last snapshot plus the
    /// changes since); a change that would pass it is refused (WebSocket
    /// close 4413, HTTP 413) and does not alter the document. 0: no limit.
    #[arg(long, env = "WEFT_MAX_DOCUMENT_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_document_bytes: u64,

    /// Largest presence (awareness) state one client may publish, in bytes.
    #[arg(long, env = "WEFT_MAX_PRESENCE_BYTES", default_value_t = 64 * 1024)]
    pub max_presence_bytes: usize,

    /// Presence client ids one connection may publish (a browser tab has
    /// one); an update introducing more is refused and the connection
    /// closed (4400). 0: no limit.
    #[arg(
        long,
        env = "WEFT_MAX_PRESENCE_CLIENTS_PER_CONNECTION",
        default_value_t = 4
    )]
    pub max_presence_clients_per_connection: usize,

    /// A document's presence in all, in bytes (what a joiner is sent); when
    /// an update would pass it, the connection holding the most presence is
    /// closed (4400) and its presence removed. 0: no limit.
    #[arg(long, env = "WEFT_MAX_DOCUMENT_PRESENCE_BYTES", default_value_t = 1024 * 1024)]
    pub max_document_presence_bytes: usize,

    /// Whether connections with a read token may publish presence of their
    /// own (they always receive everyone's).
    #[arg(long, env = "WEFT_READERS_PRESENCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub readers_presence: bool,

    /// Connections (editors and viewers) one document accepts; more are
    /// refused (WebSocket close 1013, HTTP 503 with Retry-After). 0: no limit.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS_PER_DOC", default_value_t = 10_000)]
    pub max_connections_per_doc: usize,

    /// Connections the server accepts in all (WebSocket and SSE); more are
    /// refused like the per-document limit. 0: no limit.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Connections one client address (IPv6: one /64) may hold at once,
    /// each event stream of an HTTP/2 connection counting as one; more are
    /// refused (WebSocket close 1013, HTTP 429), so that no one address can
    /// take a document's or the server's places. 0: no limit.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 1_000)]
    pub max_connections_per_client: usize,

    /// A connection must deliver a request's headers within this long (its
    /// first request's counted from the connection, TLS handshake included;
    /// a later one's from when the previous response ended), or it is closed.
    #[arg(long, env = "WEFT_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub header_timeout: Duration,

    /// A connection with no request in flight for this long is closed (an
    /// open event stream counts as in flight; WebSockets have their own
    /// ping).
    #[arg(long, env = "WEFT_IDLE_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub idle_timeout: Duration,

    /// Connections that have not yet delivered a request's headers; more
    /// are closed at once, so they cannot use up the descriptors open
    /// WebSockets and event streams need. As many Hocuspocus sockets may
    /// wait to authenticate a document (they count against
    /// --max-connections once they have).
    #[arg(long, env = "WEFT_MAX_PENDING_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_connections: u64,

    /// A request body (a posted update, an import, a backup) must arrive
    /// whole within this long, or the request is refused (408) and the
    /// connection closed.
    #[arg(long, env = "WEFT_BODY_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub body_timeout: Duration,

    /// Messages per second one WebSocket may send, sustained; beyond the
    /// burst it is closed (4429). 0: no limit.
    #[arg(long, env = "WEFT_MAX_MESSAGES_PER_SEC", default_value_t = 200)]
    pub max_messages_per_sec: u32,

    /// Messages a WebSocket may send at once above the sustained rate.
    #[arg(long, env = "WEFT_MESSAGE_BURST", default_value_t = 2000)]
    pub message_burst: u32,

    /// New documents one client address may create a minute (IPv6: per
    /// /64), at most 10 at once; a write that would create one more is
    /// refused (HTTP 429, WebSocket close 4429). Writes to documents that
    /// exist are never limited. 0: no limit.
    #[arg(long, env = "WEFT_MAX_NEW_DOCS_PER_MINUTE", default_value_t = 60)]
    pub max_new_docs_per_minute: u32,
    /// Most CPU time the server may spend integrating one update from a
    /// WebSocket; a connection's updates together may take twice that at
    /// once, and a fifth of it per second in the long run. Beyond either,
    /// the connection is closed (4429; its last update is kept). 0s: no limit.
    #[arg(long, env = "WEFT_MAX_UPDATE_CPU", default_value = "1s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub max_update_cpu: Duration,

    /// POST a signed notification here when a document changes (repeatable,
    /// or comma-separated in the environment variable).
    #[arg(long = "webhook-url", env = "WEFT_WEBHOOK_URLS", value_delimiter = ',')]
    #[serde(rename = "webhook_url")]
    pub webhook_urls: Vec<String>,

    /// Key for the webhooks' HMAC-SHA256 signature (required with a URL).
    #[arg(long, env = "WEFT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Secret>,

    /// A document's notification waits until it has been quiet this long.
    #[arg(long, env = "WEFT_WEBHOOK_DEBOUNCE", default_value = "2s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub webhook_debounce: Duration,

    /// ... but no longer than this after its first change.
    #[arg(long, env = "WEFT_WEBHOOK_MAX_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub webhook_max_wait: Duration,

    /// How long shutdown may take to close connections and store documents.
    #[arg(long, env = "WEFT_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "config_file::exact_duration")]
    pub shutdown_timeout: Duration,
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

impl ServeConfig {
    /// Whether documents are in Redis (one server or a Redis Cluster).
    pub fn is_cluster(&self) -> bool {
        self.redis.is_some() || self.redis_cluster.is_some()
    }

    pub fn retention(&self) -> weft_storage::RetentionPolicy {
        weft_storage::RetentionPolicy {
            keep_last: self.snapshot_keep_last,
            hourly_for: self.snapshot_keep_hourly,
            daily_for: self.snapshot_keep_daily,
            every_changes: self.snapshot_keep_every_changes,
            history_window: self.history_retention,
        }
    }

    pub fn admin_key(&self) -> Option<&str> {
        self.admin_key
            .as_ref()
            .map(Secret::expose)
            .filter(|k| !k.is_empty())
    }

    /// The deadlines and caps of the accept loop.
    pub fn edge(&self) -> crate::accept::EdgeLimits {
        crate::accept::EdgeLimits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_pending: usize::try_from(self.max_pending_connections).unwrap_or(usize::MAX),
        }
    }

    pub fn engine(&self) -> weft_sync::EngineConfig {
        weft_sync::EngineConfig {
            unload_grace: self.unload_grace,
            recent_changes: self.recent_changes,
            snapshot_every: self.snapshot_every,
            keep_log_tail: self.keep_log_tail,
            history_retention: self.history_retention,
            outbound_queue: usize::try_from(self.outbound_queue).unwrap_or(usize::MAX),
            outbound_queue_bytes: self.outbound_queue_bytes,
            limits: weft_sync::DocLimits {
                max_document_bytes: self.max_document_bytes,
                max_presence_bytes: self.max_presence_bytes,
                max_presence_clients_per_connection: self.max_presence_clients_per_connection,
                max_document_presence_bytes: self.max_document_presence_bytes,
                readers_presence: self.readers_presence,
            },
            max_connections_per_doc: self.max_connections_per_doc,
            creation_limit: NewDocumentLimit::per_minute(self.max_new_docs_per_minute)
                .map(|limit| Arc::new(limit) as Arc<dyn weft_sync::CreationLimit>),
            cpu_limits: weft_sync::CpuLimits::per_update(self.max_update_cpu),
            ..weft_sync::EngineConfig::default()
        }
    }
}
