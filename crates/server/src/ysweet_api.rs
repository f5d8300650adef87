//! The y-sweet API, so that applications written against `@y-sweet/sdk`
//! and `@y-sweet/client` switch to weft by changing their connection
//! string: `ys://<admin key>@host:port`.
//!
//! - `POST /doc/new` (`{"docId"?}`): a document name, made up if none is
//!   given (a document exists once written, as everywhere in weft).
//! - `POST /doc/{docId}/auth` (`{"authorization"?: "full" | "read-only",
//!   "validForSeconds"?}`): a client token, `{url, baseUrl, docId, token,
//!   authorization}`, whose `token` is a weft document token (read-only is
//!   read-only everywhere), and whose `url` is weft's WebSocket endpoint,
//!   to which the y-sweet client appends the document name.
//! - `GET …/as-update` and `POST …/update` under `/doc/{docId}` and
//!   `/d/{docId}` (the client token's `baseUrl`): the document as one Yjs
//!   update, and a change to it, exactly as `GET /docs/{doc}` and
//!   `POST /docs/{doc}/updates` (a document never written reads as empty,
//!   as y-sweet answers).
//! - `POST /check_store`: `{"ok": true}` when the store takes writes.
//!
//! The server token is the admin key (`Authorization: Bearer`). A weft
//! running open (no `--auth-secret`) hands out client tokens without a
//! token, as y-sweet's development server does.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use weft_storage::DocName;
use weft_sync::RoomError;

use crate::access::Credentials;
use crate::admin_key::AdminKey;
use crate::api_error::ApiError;
use crate::app::AppState;
use crate::auth::Mode;
use crate::body::{self, BodyLimits};
use crate::creation_limit::client_addr;
use crate::doc_path::DocPath;
use crate::peer::PeerAddr;
use crate::token_api::{public_bases, sign};

/// How long a client token lasts unless asked otherwise (y-sweet's default
/// is an hour).
const DEFAULT_VALID_SECS: u64 = 3600;

/// The longest a client token may last.
const MAX_VALID_SECS: u64 = 7 * 24 * 3600;

/// The largest request body the y-sweet API reads (its JSON requests are
/// a few fields).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// An empty document as a Yjs v1 update.
const EMPTY_UPDATE: [u8; 2] = [0, 0];

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/doc/new", post(new_doc))
        .route("/doc/{doc}/auth", post(auth))
        .route("/doc/{doc}/as-update", get(as_update))
        .route("/doc/{doc}/update", post(update))
        .route("/d/{doc}/as-update", get(as_update))
        .route("/d/{doc}/update", post(update))
        .route("/check_store", post(check_store))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewDoc {
    doc_id: Option<String>,
}

/// The server token's check: the admin key, or nothing at all when weft
/// runs open and has no admin key (y-sweet's development server).
fn server_token(app: &AppState, key: Result<AdminKey, ApiError>) -> Result<(), ApiError> {
    match key {
        Ok(AdminKey) => Ok(()),
        Err(_) if app.auth.is_none() && app.config.admin_key().is_none() => Ok(()),
        Err(e) => Err(e),
    }
}

/// `POST /doc/new`.
async fn new_doc(
    State(app): State<Arc<AppState>>,
    key: Result<AdminKey, ApiError>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let req: NewDoc = json_after_token(&app, key, request).await?;
    let name = match req.doc_id {
        Some(id) => id,
        None => random_name()?,
    };
    let doc = doc_name(name)?;
    Ok(Json(json!({ "docId": doc.as_str() })))
}

/// The request's JSON body (an empty one is `{}`), read only once the
/// server token is found good, and at most [`MAX_REQUEST_BYTES`].
async fn json_after_token<T: DeserializeOwned + Default>(
    app: &AppState,
    key: Result<AdminKey, ApiError>,
    request: Request,
) -> Result<T, ApiError> {
    server_token(app, key)?;
    let limits = BodyLimits {
        max_bytes: Some(MAX_REQUEST_BYTES),
        ..BodyLimits::of(app)
    };
    let declared = body::declared_length(&request);
    let bytes = body::read(request.into_body(), declared, limits).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("the body is not the JSON expected: {e}"),
        )
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthRequest {
    authorization: Option<String>,
    valid_for_seconds: Option<u64>,
    user_id: Option<String>,
}

/// `POST /doc/{docId}/auth`: a client token.
async fn auth(
    State(app): State<Arc<AppState>>,
    DocPath(doc): DocPath,
    headers: HeaderMap,
    key: Result<AdminKey, ApiError>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let req: AuthRequest = json_after_token(&app, key, request).await?;
    client_token(&app, &headers, &doc, req).map(Json)
}

fn client_token(
    app: &AppState,
    headers: &HeaderMap,
    doc: &DocName,
    req: AuthRequest,
) -> Result<Value, ApiError> {
    let (mode, authorization) = match req.authorization.as_deref() {
        None | Some("full") => (Mode::Write, "full"),
        Some("read-only") => (Mode::Read, "read-only"),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_authorization",
                format!("authorization is \"full\" or \"read-only\", not {other:?}"),
            ))
        }
    };
    let valid = req.valid_for_seconds.unwrap_or(DEFAULT_VALID_SECS);
    if valid == 0 || valid > MAX_VALID_SECS {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("validForSeconds must be between 1 and {MAX_VALID_SECS}"),
        ));
    }
    let token = match app.auth {
        None => None,
        Some(_) => Some(sign(app, doc.as_str(), mode, valid, req.user_id)?.0),
    };
    let (ws, http) = public_bases(app, headers);
    let mut answer = json!({
        "url": format!("{ws}/ws"),
        "baseUrl": format!("{http}/d/{doc}"),
        "docId": doc.as_str(),
        "authorization": authorization,
    });
    if let Some(token) = token {
        answer["token"] = Value::String(token);
    }
    Ok(answer)
}

/// `GET …/as-update`: the document as one Yjs update (empty if never
/// written).
async fn as_update(
    State(app): State<Arc<AppState>>,
    DocPath(doc): DocPath,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    app.authorize(&credentials, &doc, Mode::Read)?;
    let update = match app.rooms.read(&doc, None).await {
        Ok(read) => read.update,
        Err(RoomError::NoSuchDocument(_)) => EMPTY_UPDATE.to_vec(),
        Err(e) => return Err(e.into()),
    };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], update).into_response())
}

/// `POST …/update`: a Yjs v1 update, applied as any other.
async fn update(
    State(app): State<Arc<AppState>>,
    DocPath(doc): DocPath,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    credentials: Credentials,
    request: Request,
) -> Result<Response, ApiError> {
    let grant = app.authorize(&credentials, &doc, Mode::Write)?;
    let declared = body::declared_length(&request);
    let update = body::read(request.into_body(), declared, BodyLimits::of(&app)).await?;
    let by = grant.provenance("y-sweet");
    app.rooms
        .apply_as(&doc, update, Some(client_addr(peer.0.ip())), by)
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /check_store`.
async fn check_store(
    State(app): State<Arc<AppState>>,
    key: Result<AdminKey, ApiError>,
) -> Result<Json<Value>, ApiError> {
    server_token(&app, key)?;
    Ok(Json(match app.store_probe.check_writable().await {
        Ok(()) => json!({ "ok": true }),
        Err(e) => json!({ "ok": false, "error": e.to_string() }),
    }))
}

fn doc_name(name: String) -> Result<DocName, ApiError> {
    DocName::new(name).map_err(|e| ApiError::bad_request("invalid_doc_name", e.to_string()))
}

/// A fresh document name, as y-sweet makes them: random, URL-safe.
fn random_name() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(hex::encode(bytes))
}
