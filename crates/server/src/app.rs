//! `AppState` and the router: which path goes to which handler.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::TraceLayer;

use weft_sync::Rooms;

use crate::cli::ServeConfig;
use crate::{docs_api, sse, ws};

/// What every handler can reach.
#[derive(Debug)]
pub struct AppState {
    pub config: ServeConfig,
    pub rooms: Rooms,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub connections: TaskTracker,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/ws/", get(ws::empty_name))
        .route("/ws/{*doc}", get(ws::upgrade))
        .route("/sse/{doc}", get(sse::follow))
        .route("/docs/{doc}", get(docs_api::state))
        .route("/docs/{doc}/updates", post(docs_api::post_update))
        .route("/docs/{doc}/json", get(docs_api::as_json))
        .layer(DefaultBodyLimit::max(state.config.max_message_bytes))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// 200 once the server is up: the store was opened before it listened.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}
