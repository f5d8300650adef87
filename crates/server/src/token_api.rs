//! `POST /auth/token`: an application backend, after its own login, asks
//! weft for a short-lived document token for the browser.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use weft_sync::{Clock, SystemClock};

use crate::admin_key::AdminKey;
use crate::api_error::ApiError;
use crate::app::AppState;
use crate::auth::{valid_pattern, Claims, Mode, Timestamp};
use crate::body::{JsonBodyError, LimitedJson};

/// Longest lifetime a minted token may have.
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    doc: String,
    mode: Mode,
    #[serde(default = "default_ttl")]
    ttl_secs: u64,
    #[serde(default)]
    sub: Option<String>,
}

fn default_ttl() -> u64 {
    600
}

pub async fn mint(
    State(app): State<Arc<AppState>>,
    _admin: AdminKey,
    headers: HeaderMap,
    body: Result<LimitedJson<TokenRequest>, JsonBodyError>,
) -> Result<Json<Value>, Response> {
    let LimitedJson(req) = body.map_err(IntoResponse::into_response)?;
    mint_for(&app, &headers, req).map_err(IntoResponse::into_response)
}

fn mint_for(
    app: &AppState,
    headers: &HeaderMap,
    req: TokenRequest,
) -> Result<Json<Value>, ApiError> {
    if app.auth.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "auth_disabled",
            "weft runs open (no --auth-secret): every request is allowed, so there is no token to mint",
        ));
    }
    if !valid_pattern(&req.doc) {
        return Err(ApiError::bad_request(
            "invalid_doc_name",
            "doc must be a document name, or a prefix ending in * (like team-a.*)",
        ));
    }
    if req.ttl_secs == 0 || req.ttl_secs > MAX_TTL_SECS {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttl_secs must be between 1 and {MAX_TTL_SECS}"),
        ));
    }
    let (token, exp) = sign(app, &req.doc, req.mode, req.ttl_secs, req.sub)?;
    let (ws, http) = public_bases(app, headers);
    let single = !req.doc.ends_with('*');
    Ok(Json(json!({
        "token": token,
        "expires_at": exp.secs(),
        "ws_url": single.then(|| format!("{ws}/ws/{}?token={token}", req.doc)),
        "sse_url": single.then(|| format!("{http}/sse/{}?token={token}", req.doc)),
    })))
}

/// Signs a document token for `doc` (a name, or a pattern ending in `*`)
/// in `mode`, valid for `ttl_secs` from now; with its expiry.
pub(crate) fn sign(
    app: &AppState,
    doc: &str,
    mode: Mode,
    ttl_secs: u64,
    sub: Option<String>,
) -> Result<(String, Timestamp), ApiError> {
    let Some(auth) = &app.auth else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "auth_disabled",
            "weft runs open (no --auth-secret): every request is allowed, so there is no token to mint",
        ));
    };
    let now = SystemClock.now_ms() / 1000;
    let (Some(exp), iat) = (
        Timestamp::from_secs(now.saturating_add(ttl_secs)),
        Timestamp::from_secs(now),
    ) else {
        return Err(ApiError::internal(
            "the server's clock is past the year 9999; no token can expire after it",
        ));
    };
    let claims = Claims {
        doc: doc.to_owned(),
        mode,
        exp,
        nbf: None,
        iat,
        sub,
    };
    match auth.mint(&claims) {
        Some(Ok(token)) => Ok((token, exp)),
        Some(Err(e)) => Err(ApiError::internal(format!("could not sign the token: {e}"))),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "cannot_mint",
            "weft verifies tokens with a public key only; mint them where the private key is, \
             or configure --auth-secret",
        )),
    }
}

/// Where clients reach this server, as the request names it, for
/// WebSockets and for HTTP: `ws://host` and `http://host` (`wss`, `https`
/// with TLS). Behind a proxy, its `X-Forwarded-Proto` and
/// `X-Forwarded-Host` say what the client used (these answers go only to
/// whoever asked, so trusting them gives nobody anything).
pub(crate) fn public_bases(app: &AppState, headers: &HeaderMap) -> (String, String) {
    let named = |name: &str| {
        headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or(v).trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let host = named("x-forwarded-host")
        .or_else(|| named(header::HOST.as_str()))
        .unwrap_or_else(|| app.config.listen.to_string());
    let tls = match named("x-forwarded-proto").as_deref() {
        Some("https") => true,
        Some("http") => false,
        _ => app.config.tls_cert.is_some(),
    };
    if tls {
        (format!("wss://{host}"), format!("https://{host}"))
    } else {
        (format!("ws://{host}"), format!("http://{host}"))
    }
}
