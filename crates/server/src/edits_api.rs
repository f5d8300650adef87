//! Edits over HTTP for backends without a Yjs library:
//! `POST /docs/{doc}/text/{name}` (a Quill Delta, or a whole new text) and
//! `POST /docs/{doc}/map/{name}` (keys to set; `null` removes one).
//!
//! Each handler reads the document as it stands, has `weft_sync::edit`
//! turn the edit into a Yjs update (off the async threads: it loads the
//! whole document), and posts that update through the room exactly as
//! `POST /docs/{doc}/updates` does: durable before it is broadcast,
//! answered with its event id. Access is decided from the headers before
//! any byte of the body is read. Making an edit loads the whole document
//! into a throwaway copy, so at most [`AT_ONCE`] are made at a time; a
//! request that cannot start one within [`WAIT_FOR_TURN`] gets `503 busy`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use weft_storage::DocName;
use weft_sync::edit::{edit_map, edit_text, parse_delta, EditError, TextEdit};
use weft_sync::RoomError;

use crate::access::Credentials;
use crate::api_error::ApiError;
use crate::app::AppState;
use crate::auth::Mode;
use crate::body::{self, BodyLimits};
use crate::creation_limit::client_addr;
use crate::peer::PeerAddr;

/// Longest root type name accepted, in bytes.
const MAX_ROOT_NAME: usize = 256;

/// Edits made at once, across the server.
const AT_ONCE: usize = 4;

/// How long a request waits for its turn to make an edit.
const WAIT_FOR_TURN: Duration = Duration::from_secs(5);

/// The turns to make an edit.
static TURNS: Semaphore = Semaphore::const_new(AT_ONCE);

/// `{doc}` and `{name}` of the URL, validated.
#[derive(Debug)]
pub struct DocRoot {
    doc: DocName,
    root: String,
}

impl<S: Send + Sync> FromRequestParts<S> for DocRoot {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((doc, root)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::bad_request("invalid_path", format!("the URL could not be read: {e}"))
            })?;
        let doc = DocName::new(doc)
            .map_err(|e| ApiError::bad_request("invalid_doc_name", e.to_string()))?;
        if root.is_empty() || root.len() > MAX_ROOT_NAME {
            return Err(ApiError::bad_request(
                "invalid_root_name",
                format!("the root type's name must be 1 to {MAX_ROOT_NAME} bytes"),
            ));
        }
        Ok(DocRoot { doc, root })
    }
}

/// `POST /docs/{doc}/text/{name}`: `{"delta": [...]}` applies a Quill
/// Delta to the text; `{"text": "..."}` makes it that text, by the
/// smallest change.
pub async fn edit_text_root(
    State(app): State<Arc<AppState>>,
    DocRoot { doc, root }: DocRoot,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    credentials: Credentials,
    request: Request,
) -> Result<Response, ApiError> {
    app.authorize(&credentials, &doc, Mode::Write)?;
    let body = json_body(&app, request).await?;
    let edit = text_edit_of(body)?;
    let state = current_state(&app, &doc).await?;
    let update = made_off_thread(move || edit_text(state.as_deref(), &root, edit)).await?;
    post(&app, &doc, update, peer).await
}

/// `POST /docs/{doc}/map/{name}`: a JSON object of keys to set on the map
/// (`null` removes a key).
pub async fn edit_map_root(
    State(app): State<Arc<AppState>>,
    DocRoot { doc, root }: DocRoot,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    credentials: Credentials,
    request: Request,
) -> Result<Response, ApiError> {
    app.authorize(&credentials, &doc, Mode::Write)?;
    let Value::Object(entries) = json_body(&app, request).await? else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body is a JSON object of the keys to set (null removes a key)",
        ));
    };
    let state = current_state(&app, &doc).await?;
    let update = made_off_thread(move || edit_map(state.as_deref(), &root, entries)).await?;
    post(&app, &doc, update, peer).await
}

/// The request's body as JSON, within the size limit.
async fn json_body(app: &AppState, request: Request) -> Result<Value, ApiError> {
    let declared = body::declared_length(&request);
    let bytes = body::read(request.into_body(), declared, BodyLimits::of(app)).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}")))
}

/// `{"delta": [...]}` or `{"text": "..."}`.
fn text_edit_of(body: Value) -> Result<TextEdit, ApiError> {
    let Value::Object(mut fields) = body else {
        return Err(text_body_refused());
    };
    match (
        fields.remove("delta"),
        fields.remove("text"),
        fields.is_empty(),
    ) {
        (Some(Value::Array(ops)), None, true) => {
            parse_delta(&ops).map(TextEdit::Delta).map_err(refused)
        }
        (None, Some(Value::String(text)), true) => Ok(TextEdit::Replace(text)),
        _ => Err(text_body_refused()),
    }
}

fn text_body_refused() -> ApiError {
    ApiError::bad_request(
        "invalid_body",
        "the body is {\"delta\": [Quill Delta ops]} or {\"text\": \"the whole new text\"}",
    )
}

/// The document's whole state, or `None` if it was never written.
async fn current_state(app: &AppState, doc: &DocName) -> Result<Option<Vec<u8>>, ApiError> {
    match app.rooms.read(doc, None).await {
        Ok(read) => Ok(Some(read.update)),
        Err(RoomError::NoSuchDocument(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Runs the edit on a blocking thread, in its turn: it loads the whole
/// document.
async fn made_off_thread(
    make: impl FnOnce() -> Result<Option<Vec<u8>>, EditError> + Send + 'static,
) -> Result<Option<Vec<u8>>, ApiError> {
    let turn = tokio::time::timeout(WAIT_FOR_TURN, TURNS.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::unavailable(
                "busy",
                "too many edits are being made right now; try again shortly",
            )
        })?;
    let made = tokio::task::spawn_blocking(make).await;
    drop(turn);
    made.map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(refused)
}

fn refused(e: EditError) -> ApiError {
    match e.code {
        "engine_failure" => ApiError::internal(e.message),
        code => ApiError::bad_request(code, e.message),
    }
}

/// Posts the update through the room; 204 when the edit changed nothing.
async fn post(
    app: &AppState,
    doc: &DocName,
    update: Option<Vec<u8>>,
    peer: PeerAddr,
) -> Result<Response, ApiError> {
    let Some(update) = update else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    match app
        .rooms
        .apply(doc, update.into(), Some(client_addr(peer.0.ip())))
        .await?
    {
        Some(id) => Ok(Json(json!({ "id": id.to_string() })).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
