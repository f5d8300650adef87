//! The admin HTTP API under `/admin`: every route needs the admin key.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use weft_storage::DocName;
use weft_sync::history::HistoryQuery;

use super::{AdminError, Backend, Progress};
use crate::admin_key::AdminKey;
use crate::api_error::ApiError;
use crate::app::AppState;
use crate::body::{ArchiveBody, JsonBodyError, LimitedBody, LimitedJson};
use crate::refusal::Refusal;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/docs", get(list))
        .route("/docs/{doc}", get(show).delete(delete))
        .route(
            "/docs/{doc}/snapshots",
            get(snapshots).post(create_snapshot),
        )
        .route("/docs/{doc}/snapshots/{id}", get(snapshot_state))
        .route("/docs/{doc}/state", get(current_state))
        .route("/docs/{doc}/restore", post(restore))
        .route("/docs/{doc}/revert", post(revert))
        .route("/docs/{doc}/import", post(import))
        .route(
            "/backup",
            get(backup)
                .post(restore_backup)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/verify", get(verify))
        .route("/docs/{doc}/history", get(history))
}

/// Answered like every other HTTP error (`ApiError`), and a refusal of the
/// engine exactly as the document API answers it.
impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        match self {
            AdminError::Room(e) => ApiError::from(e).into_response(),
            other => {
                ApiError::refused(Refusal::of_admin(&other), other.to_string()).into_response()
            }
        }
    }
}

/// Path parameters, with the document name validated.
struct Target {
    doc: DocName,
    id: Option<u64>,
}

fn target(params: HashMap<String, String>) -> Result<Target, AdminError> {
    let raw = params.get("doc").cloned().unwrap_or_default();
    let doc = DocName::new(raw).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    let id =
        match params.get("id") {
            Some(id) => Some(id.parse().map_err(|_| {
                AdminError::BadRequest(format!("snapshot id {id:?} is not a number"))
            })?),
            None => None,
        };
    Ok(Target { doc, id })
}

fn octets(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
}

async fn list(State(app): State<Arc<AppState>>, _: AdminKey) -> Result<Response, AdminError> {
    Ok(Json(app.admin.list_docs().await?).into_response())
}

async fn show(
    State(app): State<Arc<AppState>>,
    _: AdminKey,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, AdminError> {
    let t = target(p)?;
    Ok(Json(app.admin.show_doc(&t.doc).await?).into_response())
}

async fn delete(
    State(app): State<Arc<AppState>>,
    _: AdminKey,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, AdminError> {
    let t = target(p)?;
    app.admin.delete_doc(&t.doc).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn snapshots(
    State(app): State<Arc<AppState>>,
    _: AdminKey,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, AdminError> {
    let t = target(p)?;
    Ok(Json(app.admin.list_snapshots(&t.doc).await?).into_response())
}

async fn create_snapshot(
    State(app): State<Arc<AppState>>,
    _: AdminKey,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, AdminError> {
    let t = target(p)?;
    let view = app.admin.create_snapshot(&t.doc).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn snapshot_state(
    State(app): State<Arc<AppState>>,
    _: AdminKey,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, AdminError> {
    let t = target(p)?;
    Ok(octets(app.admin.state(&t.doc, t.id).await?))
}

#[derive(Debug, Deserialize)]
struct StateQuery {
    /// An event id or an RFC 3339 time: the document as it was then.
    at: Option<String>,
}

async fn current_state(
    State(app): State<Arc<AppState>>,
    _: AdminKey,
    Path(p): Path<HashMap<String, String>>,
    Query(query): Query<StateQuery>,
) -> Result<Response, AdminError> {
    let t = target(p)?;
    let state = match &query.at {
        Some(at) => app.admin.state_at(&t.doc, at).await?,
        None => app.admin.state(&t.doc, None).await?,
    };
    Ok(octets(state))
}

/// `{"snapshot": <id>}` or `{"at": "<event id or RFC 3339 time>"}`.
#[derive(Debug, Deserialize)]
struct RestoreRequest {
    snapshot: Option<u64>,
    at: Option<String>,
}

async fn restore(
    State(app): State<Arc<AppState>>,
    _: AdminKey,
    Path(p): Path<HashMap<String, String>>,
    body: Result<LimitedJson<RestoreRequest>, JsonBodyError>,
) -> Result<Response, Response> {
    let t = target(p).map_err(IntoResponse::into_response)?;
    let LimitedJson(req) = body.map_err(|e| match e {
        JsonBodyError::Json(e) => AdminError::BadRequest(format!(
            "the body is not the JSON expected: {e}; send {{\"snapshot\": <id>}} or {{\"at\": \"<event id or time>\"}}"
        ))
        .into_response(),
        e => e.into_response(),
    })?;
    let restored = match (req.snapshot, req.at) {
        (Some(snapshot), None) => app.admin.restore(&t.doc, snapshot).await,
        (None, Some(at)) => app.admin.restore_at(&t.doc, &at).await,
        _ => Err(AdminError::BadRequest(
            "send either {\"snapshot\": <id>} or {\"at\": \"<event id or time>\"}".into(),
        )),
    };
    Ok(Json(restored.map_err(IntoResponse::into_response)?).into_response())
}

/// `{"author": "<who>", "since": "<event id or RFC 3339 time>"}`.
#[derive(Debug, Deserialize)]
struct RevertRequest {
    author: String,
    since: String,
}

/// Authors are a token's subject, `anonymous#N` or `admin`: never longer.
const MAX_AUTHOR_BYTES: usize = 1024;

async fn revert(
    State(app): State<Arc<AppState>>,
    _: AdminKey,
    Path(p): Path<HashMap<String, String>>,
    body: Result<LimitedJson<RevertRequest>, JsonBodyError>,
) -> Result<Response, Response> {
    let t = target(p).map_err(IntoResponse::into_response)?;
    let LimitedJson(req) = body.map_err(|e| match e {
        JsonBodyError::Json(e) => AdminError::BadRequest(format!(
            "the body is not the JSON expected: {e}; send {{\"author\": \"<who>\", \"since\": \"<event id or time>\"}}"
        ))
        .into_response(),
        e => e.into_response(),
    })?;
    if req.author.is_empty() || req.author.len() > MAX_AUTHOR_BYTES {
        return Err(AdminError::BadRequest(format!(
            "author must be 1 to {MAX_AUTHOR_BYTES} bytes: the name `weft history` lists"
        ))
        .into_response());
    }
    let reverted = app.admin.revert(&t.doc, &req.author, &req.since).await;
    Ok(Json(reverted.map_err(IntoResponse::into_response)?).into_response())
}

async fn import(
    State(app): State<Arc<AppState>>,
    _: AdminKey,
    Path(p): Path<HashMap<String, String>>,
    LimitedBody(body): LimitedBody,
) -> Result<Response, AdminError> {
    let t = target(p)?;
    Ok(Json(app.admin.import(&t.doc, body.to_vec()).await?).into_response())
}

async fn backup(State(app): State<Arc<AppState>>, _: AdminKey) -> Response {
    let body = Body::from_stream(app.admin.archive_chunks());
    (
        [(header::CONTENT_TYPE, "application/vnd.weft.backup")],
        body,
    )
        .into_response()
}

struct Silent;

impl Progress for Silent {
    fn start(&self, _: Option<u64>, _: &str) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

async fn restore_backup(
    State(app): State<Arc<AppState>>,
    _: AdminKey,
    ArchiveBody(body): ArchiveBody,
) -> Result<Response, AdminError> {
    let mut input: &[u8] = &body;
    let summary = app.admin.restore_backup(&mut input, &Silent).await?;
    Ok(Json(summary).into_response())
}

async fn verify(State(app): State<Arc<AppState>>, _: AdminKey) -> Result<Response, AdminError> {
    Ok(Json(app.admin.verify().await?).into_response())
}

async fn history(
    State(app): State<Arc<AppState>>,
    _: AdminKey,
    Path(p): Path<HashMap<String, String>>,
    Query(query): Query<HistoryQuery>,
) -> Result<Response, AdminError> {
    let t = target(p)?;
    Ok(Json(app.admin.history(&t.doc, &query).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sync::RoomError;

    #[test]
    fn every_refusal_of_the_engine_is_answered_as_the_document_api_answers_it() {
        for e in [
            RoomError::LoadFailed("corrupt".into()),
            RoomError::ShuttingDown,
            RoomError::Busy,
            RoomError::Rejected("bad".into()),
            RoomError::StorageFailure("disk full".into()),
            RoomError::NotFound("no snapshot".into()),
            RoomError::NoSuchDocument("d".into()),
            RoomError::TooManyNewDocuments {
                retry_after_secs: 7,
            },
            RoomError::TooLarge("big".into()),
            RoomError::Full(3),
            RoomError::Retry,
            RoomError::TryAgain("rebuilding".into()),
        ] {
            let docs = ApiError::from(e.clone()).into_response();
            let admin = AdminError::from(e.clone()).into_response();
            assert_eq!(docs.status(), admin.status(), "{e:?}");
            assert_eq!(
                docs.headers().get(header::RETRY_AFTER),
                admin.headers().get(header::RETRY_AFTER),
                "{e:?}"
            );
        }
    }
}
