//! The browser pages, built from `web/` into `web/dist` and embedded in the
//! binary, so one `weft` file is the whole server.
//!
//! `/` the home page, `/edit/{doc}` the editor, `/view/{doc}` the live
//! viewer, `/history/{doc}` the version history (a timeline of changes,
//! the text at any of them, its diff against now, an admin restore),
//! `/follow?docs=…` the many-document follower; `/assets/…` are
//! content-hashed and cached for good, while pages are never cached.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rust_embed::RustEmbed;

use crate::admin::Backend;
use crate::admin_key;
use crate::app::AppState;

#[derive(RustEmbed)]
#[folder = "../../web/dist"]
struct Dist;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/edit/{doc}", get(|| async { page("edit.html") }))
        .route("/view/{doc}", get(|| async { page("view.html") }))
        .route("/history/{doc}", get(|| async { page("history.html") }))
        .route("/follow", get(|| async { page("follow.html") }))
        .route("/assets/{*file}", get(asset))
        .route("/docs", get(list_docs))
}

/// One of the built pages. (`/` is routed in `hocuspocus`, which serves
/// the index page to anything but a WebSocket.)
pub(crate) fn page(name: &str) -> Response {
    match Dist::get(name) {
        Some(file) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            file.data,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "this build has no web pages").into_response(),
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    match Dist::get(&format!("assets/{file}")) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.metadata.mimetype().to_owned()),
                // Names carry a content hash: a changed file is a new name.
                (
                    header::CACHE_CONTROL,
                    "public, max-age=31536000, immutable".to_owned(),
                ),
            ],
            asset.data,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /docs`: for the home page, each document's name, live connection
/// counts, stored size (`size_bytes`: the newest snapshot and the changes
/// logged after it) and last change (`last_change_ms`, milliseconds since
/// the epoch, `null` if unknown). Open when weft runs open; with tokens on,
/// it needs the admin key, since the names of documents can themselves be
/// private.
async fn list_docs(
    State(app): State<Arc<AppState>>,
    parts: axum::http::request::Parts,
) -> Result<Response, Response> {
    if app.auth.is_some() {
        admin_key::check(&parts, &app).map_err(IntoResponse::into_response)?;
    }
    let docs = app
        .admin
        .list_docs()
        .await
        .map_err(IntoResponse::into_response)?;
    let list: Vec<_> = docs
        .into_iter()
        .map(|d| {
            serde_json::json!({
                "name": d.name,
                "editors": d.editors,
                "viewers": d.viewers,
                "last_seq": d.last_seq,
                "size_bytes": d.size_bytes,
                "last_change_ms": d.last_change_ms,
            })
        })
        .collect();
    Ok(Json(list).into_response())
}
