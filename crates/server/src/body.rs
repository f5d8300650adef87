//! Reading request bodies: only after access is decided, within a size
//! limit enforced as bytes arrive, and within `--body-timeout`.
//!
//! axum's `Bytes` and `Json` extractors read the whole body before the
//! handler runs, with no deadline, so a handler that checks a token
//! afterwards has already buffered whatever an unauthenticated client sent,
//! and a client that stalls mid-body holds its buffer for as long as it
//! likes. Handlers that take a body therefore decide access from the
//! headers first (extractors such as `AdminKey`, or `authorize` before
//! calling [`read`]), and read it here. A refused request is answered
//! without reading its body; hyper then closes the connection rather than
//! drain it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use tokio::time::{timeout_at, Instant};

use crate::api_error::ApiError;
use crate::app::AppState;

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than the limit of {0} bytes; send smaller updates")]
    TooLarge(usize),
    #[error(
        "the request body did not arrive within {0:?}; send it in one go, or raise --body-timeout"
    )]
    TooSlow(Duration),
    #[error("the request body could not be read: {0}")]
    Unreadable(#[source] axum::Error),
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        let (status, code) = match &e {
            BodyError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            BodyError::TooSlow(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            BodyError::Unreadable(_) => (StatusCode::BAD_REQUEST, "unreadable_body"),
        };
        // What is left of the body is not read: the connection cannot carry
        // another request.
        ApiError::new(status, code, e.to_string()).closing_connection()
    }
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

/// How much of a body may be read, and by when.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `None`: no size limit (an archive an operator restores).
    pub max_bytes: Option<usize>,
    pub timeout: Duration,
    /// The timeout is for the whole body (`false`), or for each wait for
    /// more of it (`true`: an archive of any size, as long as it flows).
    pub per_wait: bool,
}

impl BodyLimits {
    /// The limits for one request under this server's configuration.
    pub fn of(app: &AppState) -> Self {
        BodyLimits {
            max_bytes: Some(app.config.max_message_bytes),
            timeout: app.config.body_timeout,
            per_wait: false,
        }
    }

    /// For a backup archive: any size, but it must keep flowing.
    pub fn archive(app: &AppState) -> Self {
        BodyLimits {
            max_bytes: None,
            timeout: app.config.body_timeout,
            per_wait: true,
        }
    }
}

/// Reads a whole body, refusing it once it passes `limits.max_bytes` (or
/// declares a larger `Content-Length`) or runs past `limits.timeout`.
pub async fn read(
    body: Body,
    declared: Option<u64>,
    limits: BodyLimits,
) -> Result<Bytes, BodyError> {
    if let (Some(max), Some(declared)) = (limits.max_bytes, declared) {
        if declared > max as u64 {
            return Err(BodyError::TooLarge(max));
        }
    }
    let mut due = Instant::now() + limits.timeout;
    let mut body = body;
    let mut buffer = Vec::new();
    loop {
        if limits.per_wait {
            due = Instant::now() + limits.timeout;
        }
        let frame = match timeout_at(due, body.frame()).await {
            Err(_) => return Err(BodyError::TooSlow(limits.timeout)),
            Ok(None) => return Ok(Bytes::from(buffer)),
            Ok(Some(Err(e))) => return Err(BodyError::Unreadable(e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if limits
            .max_bytes
            .is_some_and(|max| buffer.len() + data.len() > max)
        {
            return Err(BodyError::TooLarge(limits.max_bytes.unwrap_or_default()));
        }
        buffer.extend_from_slice(&data);
    }
}

/// The `Content-Length` a request declares, if any.
pub fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A body read under the server's limits, as the last extractor of a
/// handler whose earlier extractors decided access.
#[derive(Debug)]
pub struct LimitedBody(pub Bytes);

impl FromRequest<Arc<AppState>> for LimitedBody {
    type Rejection = BodyError;

    async fn from_request(request: Request, app: &Arc<AppState>) -> Result<Self, BodyError> {
        let declared = declared_length(&request);
        read(request.into_body(), declared, BodyLimits::of(app))
            .await
            .map(LimitedBody)
    }
}

/// A backup archive: no size limit, but it must keep flowing.
#[derive(Debug)]
pub struct ArchiveBody(pub Bytes);

impl FromRequest<Arc<AppState>> for ArchiveBody {
    type Rejection = BodyError;

    async fn from_request(request: Request, app: &Arc<AppState>) -> Result<Self, BodyError> {
        read(request.into_body(), None, BodyLimits::archive(app))
            .await
            .map(ArchiveBody)
    }
}

/// A JSON body read under the server's limits.
#[derive(Debug)]
pub struct LimitedJson<T>(pub T);

/// Why a JSON body was refused.
#[derive(Debug, thiserror::Error)]
pub enum JsonBodyError {
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("the body is not the JSON expected: {0}")]
    Json(#[source] serde_json::Error),
}

impl IntoResponse for JsonBodyError {
    fn into_response(self) -> Response {
        match self {
            JsonBodyError::Body(e) => e.into_response(),
            e @ JsonBodyError::Json(_) => {
                ApiError::bad_request("invalid_request", e.to_string()).into_response()
            }
        }
    }
}

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for LimitedJson<T> {
    type Rejection = JsonBodyError;

    async fn from_request(request: Request, app: &Arc<AppState>) -> Result<Self, JsonBodyError> {
        let LimitedBody(bytes) = LimitedBody::from_request(request, app).await?;
        serde_json::from_slice(&bytes)
            .map(LimitedJson)
            .map_err(JsonBodyError::Json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    fn limits(max: usize, secs: u64) -> BodyLimits {
        BodyLimits {
            max_bytes: Some(max),
            timeout: Duration::from_secs(secs),
            per_wait: false,
        }
    }

    fn chunks(parts: &'static [&'static [u8]]) -> Body {
        Body::from_stream(stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p))),
        ))
    }

    #[tokio::test]
    async fn reads_a_body_within_its_limits() {
        let got = read(chunks(&[b"ab", b"cd"]), None, limits(4, 1))
            .await
            .expect("reads");
        assert_eq!(&got[..], b"abcd");
    }

    #[tokio::test]
    async fn refuses_a_body_as_it_passes_the_limit() {
        let e = read(chunks(&[b"ab", b"cde"]), None, limits(4, 1)).await;
        assert!(matches!(e, Err(BodyError::TooLarge(4))), "{e:?}");
        let e = read(chunks(&[b"a"]), Some(5), limits(4, 1)).await;
        assert!(
            matches!(e, Err(BodyError::TooLarge(4))),
            "a declared length over the limit: {e:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_a_body_that_stalls() {
        let stalled = Body::from_stream(
            stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"ab"))])
                .chain(stream::pending()),
        );
        let e = read(stalled, None, limits(100, 30)).await;
        assert!(matches!(e, Err(BodyError::TooSlow(_))), "{e:?}");
    }

    use futures_util::StreamExt;
}
