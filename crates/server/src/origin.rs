//! Which browser origins may use weft: the `Origin` check that stops
//! cross-site WebSocket hijacking and cross-site request forgery, and the
//! CORS layer for the HTTP API.
//!
//! CORS only decides what a page may *read*; a cross-site form or `fetch`
//! with `Content-Type: text/plain` is sent without a preflight, cookies
//! included, and a WebSocket has no CORS at all. So every request that can
//! change something (any method but GET/HEAD/OPTIONS, and WebSocket
//! upgrades, which can write) passes [`refuse_cross_site`] first:
//! - with `--allowed-origins`, it must come from this server's own origin
//!   or a listed one: an `Origin` header naming another, or no `Origin`
//!   but `Sec-Fetch-Site: cross-site`, is refused with 403
//!   `origin_not_allowed`;
//! - with any origin allowed, a cross-site request may still not use the
//!   ambient `weft_token` cookie as its credential (403
//!   `cross_site_cookie`): a token in `Authorization` or `?token=` is one
//!   the calling page had to be given, a cookie is not.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::access::Credentials;
use crate::api_error::ApiError;
use crate::app::AppState;

/// Refuses a state-changing request from a site that may not make it
/// (see the module doc).
pub async fn refuse_cross_site(
    State(app): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if can_change_state(&request) {
        if let Err(e) = app.check_cross_site(&request) {
            return e.into_response();
        }
    }
    next.run(request).await
}

/// Any method but the safe ones, or a WebSocket upgrade.
fn can_change_state(request: &Request) -> bool {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    !safe || request.headers().contains_key(header::UPGRADE)
}

/// Whether the request comes from a page on another site than this
/// server's: its `Origin` names another host (or is not readable), or,
/// without one, the browser says so in `Sec-Fetch-Site`.
fn is_cross_site(request: &Request) -> bool {
    let headers = request.headers();
    let Some(origin) = headers.get(header::ORIGIN) else {
        return headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    };
    let Ok(origin) = origin.to_str() else {
        return true;
    };
    // HTTP/2 carries the host in the URI's authority, not in `Host`.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    match (origin.split_once("://"), host) {
        (Some((_, origin_host)), Some(host)) => !origin_host.eq_ignore_ascii_case(host),
        _ => true,
    }
}

impl AppState {
    fn check_cross_site(&self, request: &Request) -> Result<(), ApiError> {
        let headers = request.headers();
        let cross_site = is_cross_site(request);
        if !self.config.allowed_origins.is_empty() {
            return match headers.get(header::ORIGIN) {
                // This server's own pages may always write.
                _ if !cross_site => Ok(()),
                Some(_) => self.check_origin(headers),
                None => Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "origin_not_allowed",
                    "a cross-site request (Sec-Fetch-Site: cross-site) from an origin not in \
                     --allowed-origins",
                )),
            };
        }
        if cross_site && Credentials::from_cookie_only(request.uri(), headers) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_site_cookie",
                "a request from another site may not use the weft_token cookie; send the token \
                 as Authorization: Bearer or ?token=, or list the site in --allowed-origins",
            ));
        }
        Ok(())
    }

    /// Refuses a request from a browser page whose origin is not allowed.
    /// Requests with no `Origin` (not from a browser page) pass.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let allowed = &self.config.allowed_origins;
        if allowed.is_empty() {
            return Ok(());
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("");
        if allowed.iter().any(|a| a == origin) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("origin {origin:?} is not in --allowed-origins"),
            ))
        }
    }
}

/// CORS for the HTTP and SSE endpoints.
pub fn cors(allowed_origins: &[String]) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([HeaderName::from_static("weft-event-id")])
        .max_age(std::time::Duration::from_secs(3600));
    if allowed_origins.is_empty() {
        layer.allow_origin(AllowOrigin::any())
    } else {
        let list: Vec<HeaderValue> = allowed_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        // Named origins may send cookies (the weft_token cookie).
        layer.allow_origin(list).allow_credentials(true)
    }
}
