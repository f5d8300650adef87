//! The `coldload` scenario: connect → sync step 2 for a stored document
//! that is not in memory (run it right after the server starts, on a
//! document an earlier `ingest` stored), then the same again while the
//! document is loaded, for contrast.

use clap::Args;
use serde::Serialize;

use crate::clients;
use crate::trace;

#[derive(Debug, Clone, Args)]
pub struct ColdloadArgs {
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: String,
    /// A stored document (e.g. the one `ingest` wrote).
    #[arg(long, default_value = "bench-ingest")]
    pub doc: String,
    /// The trace the document was built from: a join counts as done when
    /// the client's text is as long as the trace's (some servers answer
    /// before the stored document is loaded, and send it afterwards).
    #[arg(
        long,
        default_value = trace::DEFAULT_TRACE
    )]
    pub trace: std::path::PathBuf,
    /// Joins after the first, with the document loaded.
    #[arg(long, default_value_t = 5)]
    pub warm_runs: usize,
}

#[derive(Debug, Serialize)]
pub struct ColdloadResult {
    pub doc: String,
    /// Bytes of sync messages it took to get the whole document.
    pub step2_bytes: usize,
    pub cold_ms: f64,
    /// The best warm join.
    pub warm_ms: Option<f64>,
}

pub async fn run(args: ColdloadArgs) -> anyhow::Result<ColdloadResult> {
    let url = clients::doc_url(&args.ws, &args.doc);
    let want = trace::end_content(&args.trace)?.encode_utf16().count();
    let (cold, step2_bytes) = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        clients::join_until(&url, want),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "{url} did not send the stored document within 60 s (store it first: ingest)"
        )
    })??;
    let mut warm: Option<f64> = None;
    for _ in 0..args.warm_runs {
        let ms = clients::join_until(&url, want).await?.0.as_secs_f64() * 1000.0;
        warm = Some(warm.map_or(ms, |w| w.min(ms)));
    }
    Ok(ColdloadResult {
        doc: args.doc,
        step2_bytes,
        cold_ms: cold.as_secs_f64() * 1000.0,
        warm_ms: warm,
    })
}
