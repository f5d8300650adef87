//! `GET /sse/{doc}`: the read-only viewer stream (Server-Sent Events).
//!
//! The stream opens with `retry:`, then the room's opening payload (a
//! snapshot, or exactly the changes after the viewer's `Last-Event-ID`, then
//! presence), then live `update` and `awareness` events, with a keepalive
//! comment whenever the stream has been quiet. It ends when the room drops
//! the viewer (too slow) or the server shuts down; the browser reconnects
//! with its last id and resumes without a gap.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::debug;

use weft_sync::{EventId, Follower};

use crate::access::Credentials;
use crate::api_error::ApiError;
use crate::app::AppState;
use crate::auth::Mode;
use crate::doc_path::DocPath;
use crate::event_gzip::{accepts_gzip, EventGzip};
use crate::limits::ConnectionSlot;
use crate::telemetry::{self, LiveConnection};

#[derive(Debug, Deserialize)]
pub struct SseParams {
    /// For clients that cannot set the `Last-Event-ID` header.
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

pub async fn follow(
    State(app): State<Arc<AppState>>,
    DocPath(doc): DocPath,
    Query(params): Query<SseParams>,
    headers: HeaderMap,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    app.check_origin(&headers)?;
    let grant = app.authorize(&credentials, &doc, Mode::Read)?;
    let slot = app.connection_limit.try_admit().ok_or_else(|| {
        ApiError::unavailable(
            "server_full",
            format!(
                "the server has its maximum of {} connections; try again later",
                app.connection_limit.max()
            ),
        )
    })?;
    let resume_text = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(params.last_event_id);
    // An id weft did not write is treated like none: the viewer gets a snapshot.
    let resume = resume_text
        .as_deref()
        .and_then(|s| s.parse::<EventId>().ok());
    let follower = app.rooms.follow(&doc, resume).await?;
    debug!(doc = %doc, resume = ?resume_text, "viewer connected");

    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(accepts_gzip);
    let every = app.config.sse_keepalive;
    let mut keepalive = interval_at(Instant::now() + every, every);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let opening = Bytes::from(format!("retry: {}\n\n", app.config.sse_retry_ms));
    let stream = EventStream {
        _live: LiveConnection::new("sse", grant.mode.as_str()),
        _slot: slot,
        expiry: app.token_deadline(&grant),
        _tracked: app.connections.token(),
        app,
        follower,
        keepalive,
        gzip: gzip.then(EventGzip::default),
        opening: Some(opening),
        ended: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, EventStream::next));

    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok(response)
}

struct EventStream {
    app: Arc<AppState>,
    follower: Follower,
    keepalive: Interval,
    gzip: Option<EventGzip>,
    /// Sent before anything else.
    opening: Option<Bytes>,
    /// The token's expiry, when it ends the stream.
    expiry: Option<Instant>,
    ended: bool,
    /// Its place under `--max-connections`, freed when the stream ends.
    _slot: ConnectionSlot,
    /// Its count in `weft_connections`.
    _live: LiveConnection,
    /// Keeps shutdown waiting until the stream has ended.
    _tracked: TaskTrackerToken,
}

impl EventStream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if self.ended {
            return None;
        }
        let chunk = match self.opening.take() {
            Some(opening) => Some(opening),
            None => tokio::select! {
                biased;
                _ = self.app.shutdown.cancelled() => None,
                next = self.follower.recv() => match next {
                    Ok(events) => {
                        self.keepalive.reset();
                        Some(events)
                    }
                    Err(reason) => {
                        debug!(%reason, "viewer stream ends");
                        None
                    }
                },
                _ = self.keepalive.tick() => Some(Bytes::from_static(b": keepalive\n\n")),
                // Off for a token without an expiry.
                _ = tokio::time::sleep_until(self.expiry.unwrap_or_else(Instant::now)),
                    if self.expiry.is_some() => {
                    debug!("token expired; viewer stream ends");
                    None
                }
            },
        };
        match (chunk, self.gzip.as_mut()) {
            (Some(chunk), Some(gz)) => {
                let wire = gz.compress(&chunk);
                telemetry::carried("sse", "out", wire.len());
                Some((Ok(wire), self))
            }
            (Some(chunk), None) => {
                telemetry::carried("sse", "out", chunk.len());
                Some((Ok(chunk), self))
            }
            (None, _) => {
                self.ended = true;
                let trailer = self.gzip.take()?.finish();
                Some((Ok(trailer), self))
            }
        }
    }
}
