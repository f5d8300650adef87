//! Which browser origins may use weft: the `Origin` check that stops
//! cross-site WebSocket hijacking, and the CORS layer for the HTTP API.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api_error::ApiError;
use crate::app::AppState;

impl AppState {
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
