//! Prometheus metrics: the recorder, `GET /metrics`, and the few helpers
//! the transports use to count what they carry.
//!
//! Every family is named `weft_…` with its unit in the name. The engine
//! (weft-sync) records its own through the `metrics` facade: changes
//! accepted and refused, durable-append and fan-out latency, snapshots,
//! loads, evictions, slow-client disconnects.

use std::sync::OnceLock;

use metrics::Counter;

use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: from 50 µs to 10 s.
const SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Installs the process-wide recorder (once).
pub fn install() -> anyhow::Result<()> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .install_recorder()?;
    let _ = HANDLE.set(handle);
    describe();
    // Present from the first scrape, not only once something happened.
    metrics::gauge!("weft_documents_loaded").set(0.0);
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "weft_connections",
        "Open connections, by transport (ws, sse) and mode (read, write)"
    );
    describe_gauge!("weft_documents_loaded", "Documents loaded in memory");
    describe_counter!(
        "weft_changes_accepted_total",
        "Changes stored and broadcast"
    );
    describe_counter!("weft_changes_refused_total", "Changes refused, by reason");
    describe_counter!(
        "weft_changes_quarantined_total",
        "Stored changes (and snapshots) set aside on loading because they do not replay"
    );
    describe_counter!(
        "weft_messages_total",
        "Messages carried, by transport and direction"
    );
    describe_counter!(
        "weft_bytes_total",
        Unit::Bytes,
        "Bytes carried, by transport and direction"
    );
    describe_histogram!(
        "weft_fanout_delivery_seconds",
        Unit::Seconds,
        "From a change's arrival to every subscriber's queue holding it"
    );
    describe_histogram!(
        "weft_durable_append_seconds",
        Unit::Seconds,
        "Appending and flushing a batch of changes to disk"
    );
    describe_counter!("weft_snapshots_total", "Snapshots taken, by reason");
    describe_histogram!(
        "weft_snapshot_duration_seconds",
        Unit::Seconds,
        "Encoding and storing a snapshot"
    );
    describe_histogram!(
        "weft_document_load_seconds",
        Unit::Seconds,
        "Loading a document from storage"
    );
    describe_counter!("weft_document_evictions_total", "Idle documents unloaded");
    describe_counter!(
        "weft_auth_failures_total",
        "Requests refused for their token, by reason"
    );
    describe_counter!(
        "weft_ws_closes_total",
        "WebSocket closes sent, by close code"
    );
    describe_counter!(
        "weft_slow_client_disconnects_total",
        "Clients closed for not reading, by transport"
    );
    describe_counter!(
        "weft_connections_closed_total",
        "Connections the accept loop closed: header_timeout, evicted (to make room among \
         pending connections), idle"
    );
    describe_counter!(
        "weft_accept_errors_total",
        "Failed accepts, by reason (fd_exhausted: out of descriptors; the loop backs off)"
    );
}

/// `GET /metrics`, in Prometheus' text format.
pub async fn render() -> impl IntoResponse {
    let body = HANDLE
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// One open connection in `weft_connections`, for as long as it lives.
#[derive(Debug)]
pub struct LiveConnection {
    transport: &'static str,
    mode: &'static str,
}

impl LiveConnection {
    pub fn new(transport: &'static str, mode: &'static str) -> Self {
        metrics::gauge!("weft_connections", "transport" => transport, "mode" => mode)
            .increment(1.0);
        LiveConnection { transport, mode }
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        metrics::gauge!("weft_connections", "transport" => self.transport, "mode" => self.mode)
            .decrement(1.0);
    }
}

/// Counts one message of `bytes` on `transport` (`ws`, `sse`, `hocuspocus`) going
/// `direction` (`in`, `out`). Called for every frame every connection
/// sends, so the counters are looked up once, not per call (a lookup hashes
/// the name and labels).
pub fn carried(transport: &'static str, direction: &'static str, bytes: usize) {
    static TRAFFIC: OnceLock<[(Counter, Counter); 6]> = OnceLock::new();
    let all = TRAFFIC.get_or_init(|| {
        [
            ("ws", "in"),
            ("ws", "out"),
            ("sse", "in"),
            ("sse", "out"),
            ("hocuspocus", "in"),
            ("hocuspocus", "out"),
        ]
        .map(|(t, d)| {
            (
                metrics::counter!("weft_messages_total", "transport" => t, "direction" => d),
                metrics::counter!("weft_bytes_total", "transport" => t, "direction" => d),
            )
        })
    });
    let kind = match transport {
        "sse" => 1,
        "hocuspocus" => 2,
        _ => 0,
    };
    let i = kind * 2 + usize::from(direction == "out");
    all[i].0.increment(1);
    all[i].1.increment(bytes as u64);
}
