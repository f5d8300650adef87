//! The HTTP document API: read a document, post a change, see it as JSON.
//!
//! `POST /docs/{doc}/updates` goes through the same room as WebSocket edits,
//! so it is durable before it is broadcast and reaches editors and viewers.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use weft_sync::history::PointInTime;
use weft_sync::json::update_to_json;
use weft_sync::protocol::{decode_state_vector, StateVector};
use weft_sync::DocRead;

use crate::access::Credentials;
use crate::api_error::ApiError;
use crate::app::AppState;
use crate::auth::Mode;
use crate::body::{self, BodyLimits};
use crate::creation_limit::client_addr;
use crate::doc_path::DocPath;
use crate::history_api;
use crate::peer::PeerAddr;

#[derive(Debug, Deserialize)]
pub struct StateParams {
    /// Base64 state vector: answer only with what it lacks.
    sv: Option<String>,
    /// An event id or an RFC 3339 time: the document as it was then.
    at: Option<String>,
}

/// `GET /docs/{doc}`: the document (or what `?sv=` lacks) as a Yjs v1 update;
/// 404 `document_not_found` if nothing was ever written to it.
pub async fn state(
    State(app): State<Arc<AppState>>,
    DocPath(doc): DocPath,
    Query(params): Query<StateParams>,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    app.authorize(&credentials, &doc, Mode::Read)?;
    let read = match params.at.as_deref() {
        Some(at) if params.sv.is_some() => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("at={at} and sv= cannot be combined; ask for one"),
            ))
        }
        Some(at) => {
            let past = app.rooms.state_at(&doc, point_in_time(at)?).await?;
            DocRead {
                id: past.id,
                update: past.update,
            }
        }
        None => {
            let since = params.sv.as_deref().map(parse_state_vector).transpose()?;
            app.rooms.read(&doc, since).await?
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::HeaderName::from_static("weft-event-id"),
                read.id.to_string(),
            ),
        ],
        read.update,
    )
        .into_response())
}

/// `POST /docs/{doc}/updates`: apply a Yjs v1 update. Access is decided
/// from the headers before any byte of the body is read. A first write
/// creates the document, within the client address's allowance (429).
pub async fn post_update(
    State(app): State<Arc<AppState>>,
    DocPath(doc): DocPath,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    credentials: Credentials,
    request: Request,
) -> Result<Response, ApiError> {
    let grant = app.authorize(&credentials, &doc, Mode::Write)?;
    let declared = body::declared_length(&request);
    let update = body::read(request.into_body(), declared, BodyLimits::of(&app)).await?;
    let by = grant.provenance("http");
    match app
        .rooms
        .apply_as(&doc, update, Some(client_addr(peer.0.ip())), by)
        .await?
    {
        Some(id) => Ok(Json(json!({ "id": id.to_string() })).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `GET /docs/{doc}/json`: the root types as JSON (404 like `GET /docs/{doc}`).
pub async fn as_json(
    State(app): State<Arc<AppState>>,
    DocPath(doc): DocPath,
    Query(params): Query<JsonParams>,
    credentials: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&credentials, &doc, Mode::Read)?;
    let update = match params.at.as_deref() {
        Some(at) => app.rooms.state_at(&doc, point_in_time(at)?).await?.update,
        None => app.rooms.read(&doc, None).await?.update,
    };
    // Rendering a large document is real work: keep it off the async threads.
    let rendered = tokio::task::spawn_blocking(move || update_to_json(&update)).await;
    match rendered {
        Ok(Ok(value)) => Ok(Json(value)),
        Ok(Err(e)) => Err(ApiError::internal(e)),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
pub struct JsonParams {
    /// An event id or an RFC 3339 time: the document as it was then.
    at: Option<String>,
}

/// `?at=`, see [`history_api::point_in_time`].
fn point_in_time(at: &str) -> Result<PointInTime, ApiError> {
    history_api::point_in_time(at)
        .map_err(|why| ApiError::bad_request("invalid_point_in_time", why))
}

fn parse_state_vector(text: &str) -> Result<StateVector, ApiError> {
    let bad = |why: String| ApiError::bad_request("invalid_state_vector", why);
    let bytes = STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .map_err(|e| bad(format!("sv is not base64: {e}")))?;
    decode_state_vector(&bytes).map_err(|e| bad(format!("sv is not a Yjs state vector: {e}")))
}
