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
//! into a throwaway copy, so at most [`AT_ONCE`] are made at a time, and a
//! document's edits one after another (two whole-text replacements sent
//! together must not both delete the old text and both insert theirs); a
//! request that cannot start within [`WAIT_FOR_TURN`] gets `503 busy`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use weft_storage::{DocName, Provenance};
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
    pub doc: DocName,
    pub root: String,
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
    let grant = app.authorize(&credentials, &doc, Mode::Write)?;
    let body = json_body(&app, request).await?;
    let edit = text_edit_of(body)?;
    let from = (peer, grant.provenance("http"));
    in_turn(&app, &doc, from, move |state| edit_text(state, &root, edit)).await
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
    let grant = app.authorize(&credentials, &doc, Mode::Write)?;
    let Value::Object(entries) = json_body(&app, request).await? else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body is a JSON object of the keys to set (null removes a key)",
        ));
    };
    let from = (peer, grant.provenance("http"));
    in_turn(&app, &doc, from, move |state| {
        edit_map(state, &root, entries)
    })
    .await
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

/// Makes and posts one edit: in its turn (one document's edits one after
/// another on this node, so that each is made against what the one before
/// left; at most [`AT_ONCE`] documents at once), reading the document,
/// making the update off the async threads (the turn goes with that work,
/// so a client that leaves does not free it early), then posting it.
async fn in_turn(
    app: &AppState,
    doc: &DocName,
    from: (PeerAddr, Provenance),
    make: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, EditError> + Send + 'static,
) -> Result<Response, ApiError> {
    let busy = || {
        ApiError::unavailable(
            "busy",
            "too many edits are being made right now; try again shortly",
        )
    };
    let turns = async {
        let this_doc = DocTurn::take(doc).await;
        let any = TURNS.acquire().await.ok()?;
        Some((this_doc, any))
    };
    let (this_doc, turn) = tokio::time::timeout(WAIT_FOR_TURN, turns)
        .await
        .ok()
        .flatten()
        .ok_or_else(busy)?;
    let state = current_state(app, doc).await?;
    let made = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        make(state.as_deref())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(refused)?;
    let posted = post(app, doc, made, from).await;
    drop(this_doc);
    posted
}

/// One document's turn to be edited over HTTP on this node.
struct DocTurn {
    doc: DocName,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

/// Each document being edited, and its turn.
static DOC_TURNS: LazyLock<Mutex<HashMap<DocName, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Mutex::default);

impl DocTurn {
    async fn take(doc: &DocName) -> DocTurn {
        let lock = {
            let mut turns = DOC_TURNS.lock().unwrap_or_else(|p| p.into_inner());
            turns.entry(doc.clone()).or_default().clone()
        };
        DocTurn {
            doc: doc.clone(),
            _held: lock.lock_owned().await,
        }
    }
}

impl Drop for DocTurn {
    fn drop(&mut self) {
        let mut turns = DOC_TURNS.lock().unwrap_or_else(|p| p.into_inner());
        // Ours (the guard) and the map's: nobody else waits for it.
        if turns
            .get(&self.doc)
            .is_some_and(|t| Arc::strong_count(t) <= 2)
        {
            turns.remove(&self.doc);
        }
    }
}

/// The document's whole state, or `None` if it was never written.
async fn current_state(app: &AppState, doc: &DocName) -> Result<Option<Vec<u8>>, ApiError> {
    match app.rooms.read(doc, None).await {
        Ok(read) => Ok(Some(read.update)),
        Err(RoomError::NoSuchDocument(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
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
    (peer, by): (PeerAddr, Provenance),
) -> Result<Response, ApiError> {
    let Some(update) = update else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    match app
        .rooms
        .apply_as(doc, update.into(), Some(client_addr(peer.0.ip())), by)
        .await?
    {
        Some(id) => Ok(Json(json!({ "id": id.to_string() })).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
