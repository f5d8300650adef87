//! `AppState` and the router: which path goes to which handler.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::{Request, Uri};
use axum::middleware;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use weft_storage::DocumentStore;
use weft_sync::Rooms;

use crate::admin::{self, ops::LocalAdmin};
use crate::admin_throttle::FailureThrottle;
use crate::auth::Authenticator;
use crate::limits::ConnectionLimit;
use crate::serve_config::ServeConfig;
use crate::{
    docs_api, edits_api, history_api, hocuspocus, origin, sse, telemetry, token_api, web, ws,
    ysweet_api,
};

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    pub config: ServeConfig,
    /// `None`: open mode, every request may write.
    pub auth: Option<Authenticator>,
    pub rooms: Rooms,
    /// Operator actions, for the admin API.
    pub admin: LocalAdmin,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Live WebSocket and SSE connections, against `--max-connections`.
    pub connection_limit: ConnectionLimit,
    /// Hocuspocus sockets that have not yet authenticated a document,
    /// against `--max-pending-connections` (they count against
    /// `--max-connections` once they have), so sockets without a token
    /// cannot take the places of those with one.
    pub unauthenticated_limit: ConnectionLimit,
    /// Wrong admin keys per client address, to slow down guessing.
    pub admin_failures: FailureThrottle,
    /// The embedded store, for readiness checks.
    /// The store, for the readiness check.
    pub store_probe: Arc<dyn DocumentStore>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let router = if state.config.metrics_listen.is_none() {
        Router::new().route("/metrics", get(telemetry::render))
    } else {
        Router::new()
    };
    router
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(hocuspocus::at_root))
        .route("/hocuspocus", get(hocuspocus::upgrade))
        .route("/ws/", get(ws::empty_name))
        .route("/ws/{*doc}", get(ws::upgrade))
        .route("/sse/{doc}", get(sse::follow))
        .route("/docs/{doc}", get(docs_api::state))
        .route("/docs/{doc}/updates", post(docs_api::post_update))
        .route("/docs/{doc}/json", get(docs_api::as_json))
        .route("/docs/{doc}/history", get(history_api::history))
        .route("/docs/{doc}/attribution/{name}", get(history_api::attribution))
        .route("/docs/{doc}/text/{name}", post(edits_api::edit_text_root))
        .route("/docs/{doc}/map/{name}", post(edits_api::edit_map_root))
        .route("/auth/token", post(token_api::mint))
        .nest("/admin", admin::api::router())
        .merge(ysweet_api::router())
        .merge(web::router())
        .layer(DefaultBodyLimit::max(state.config.max_message_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            origin::refuse_cross_site,
        ))
        .layer(origin::cors(&state.config.allowed_origins))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<Body>| {
                    // An event stream's request lasts as long as the viewer
                    // watches: its span (a slab slot, a map and the
                    // formatted fields, ~400 B) only when debugging.
                    if req.uri().path().starts_with("/sse/") {
                        tracing::debug_span!("http", method = %req.method(), uri = %redacted(req.uri()))
                    } else {
                        tracing::info_span!("http", method = %req.method(), uri = %redacted(req.uri()))
                    }
                })
                // A 503 under load is weft working as configured, not a fault.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
        .with_state(state)
}

/// The URI with any `token=` value hidden: query tokens must not end up in
/// logs.
fn redacted(uri: &Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.path().to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("token", _)) => "token=<redacted>".to_owned(),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{}?{}", uri.path(), pairs.join("&"))
}

/// 200 while the process is up: the store was opened before it listened.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when weft can take work: the store accepts a write and the server is
/// not shutting down; 503 otherwise, so a load balancer stops sending.
async fn readyz(State(app): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    if app.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "shutting_down" })),
        );
    }
    match app.store_probe.check_writable().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "store_unwritable", "message": e.to_string() })),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_reach_the_access_log() {
        let uri: Uri = "/ws/doc?a=1&token=secret.jwt.here&b=2"
            .parse()
            .expect("uri");
        let shown = redacted(&uri);
        assert_eq!(shown, "/ws/doc?a=1&token=<redacted>&b=2");
        assert!(!shown.contains("secret"));
    }
}
