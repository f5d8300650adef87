//! `ApiError`: every HTTP error weft answers, as JSON that says what went
//! wrong and what to do: `{"error": "<code>", "message": "..."}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use weft_sync::RoomError;

use crate::auth::AuthError;
use crate::refusal::Refusal;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds, for 503s and 429s that will pass.
    retry_after: Option<u64>,
    /// Ask the client to close the connection (HTTP/1.1 `Connection: close`),
    /// when the request's body was left unread.
    close: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            close: false,
        }
    }

    /// The answer to a classified failure.
    pub fn refused(refusal: Refusal, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: refusal.retry_after,
            ..Self::new(refusal.status, refusal.code, message)
        }
    }

    /// The same error, answered with `Connection: close`.
    pub fn closing_connection(self) -> Self {
        ApiError {
            close: true,
            ..self
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// The same error, telling the client to wait `secs` before retrying.
    pub fn retry_after(self, secs: u32) -> Self {
        ApiError {
            retry_after: Some(u64::from(secs)),
            ..self
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: self.code,
            message: &self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if self.close {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        Self::new(e.status(), e.code(), e.to_string())
    }
}

impl From<RoomError> for ApiError {
    fn from(e: RoomError) -> Self {
        let message = match e {
            RoomError::LoadFailed(_) => {
                format!("{e}; run `weft verify` and restore from a backup")
            }
            _ => e.to_string(),
        };
        Self::refused(Refusal::of_room(&e), message)
    }
}
