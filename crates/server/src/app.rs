//! `AppState` and the router: which path goes to which handler.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::trace::TraceLayer;

use weft_sync::Rooms;

use crate::cli::ServeConfig;
use crate::ws;

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
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// 200 once the server is up: the store was opened before it listened.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}
