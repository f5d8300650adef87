//! `GET /sse/{doc}`: the read-only viewer stream (Server-Sent Events).
//!
//! The stream opens with `retry:`, then the room's opening payload (a
//! snapshot, or exactly the changes after the viewer's `Last-Event-ID`, then
//! presence), then live `update` and `awareness` events, with a keepalive
//! comment whenever the stream has been quiet. It ends when the room drops
//! the viewer (too slow) or the server shuts down; the browser reconnects
//! with its last id and resumes without a gap.
//!
//! A stream served by `stream_conn` (plain HTTP/1.1, not gzip) hands the
//! room its connection's outlet once the response's head and opening are
//! written: the room then writes each live event as a chunk straight to
//! the socket when nothing is waiting to go before it, as it does for
//! WebSocket editors, and the stream writes only what had to queue.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::debug;

use weft_sync::{EventId, Follower, Outbound};

use crate::access::Credentials;
use crate::api_error::ApiError;
use crate::app::AppState;
use crate::auth::Mode;
use crate::direct_io::TcpOutlet;
use crate::doc_path::DocPath;
use crate::event_gzip::{accepts_gzip, EventGzip};
use crate::limits::ConnectionSlot;
use crate::peer::PeerAddr;
use crate::refusal::Refusal;
use crate::stream_conn::StreamOutlet;
use crate::telemetry::{self, LiveConnection};

#[derive(Debug, Deserialize)]
pub struct SseParams {
    /// For clients that cannot set the `Last-Event-ID` header.
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

pub async fn follow(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    DocPath(doc): DocPath,
    Query(params): Query<SseParams>,
    headers: HeaderMap,
    outlet: Option<Extension<StreamOutlet>>,
    credentials: Credentials,
) -> Result<Response, ApiError> {
    app.check_origin(&headers)?;
    let grant = app.authorize(&credentials, &doc, Mode::Read)?;
    let slot = app.connection_limit.admit(peer.0.ip()).map_err(|refused| {
        ApiError::refused(Refusal::of_connection(&refused), refused.to_string())
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
        expiry: app
            .token_deadline(&grant)
            .map(|at| Box::pin(tokio::time::sleep_until(at))),
        _tracked: app.connections.token(),
        shutdown: Box::pin(app.shutdown.clone().cancelled_owned()),
        follower,
        keepalive,
        gzip: gzip.then(|| Box::new(EventGzip::default())),
        opening: Some(opening),
        direct: match outlet {
            Some(Extension(StreamOutlet(outlet))) if !gzip => Direct::Later(Arc::new(outlet)),
            _ => Direct::Never,
        },
        ended: false,
    };
    let body = Body::from_stream(stream);

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

/// A viewer's events as a response body. Written as a `Stream` by hand
/// rather than as an async loop: it is kept for as long as the viewer
/// watches, and this way it holds only its own fields, not the state of
/// every future it waits on (which, across thousands of idle viewers,
/// was a large part of each one's memory).
struct EventStream {
    follower: Follower,
    keepalive: Interval,
    /// Ends the stream when the server shuts down.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The token's expiry, when it ends the stream.
    expiry: Option<Pin<Box<Sleep>>>,
    gzip: Option<Box<EventGzip>>,
    /// Sent before anything else.
    opening: Option<Bytes>,
    /// Whether the room writes events to the socket itself.
    direct: Direct,
    ended: bool,
    /// Its place under `--max-connections`, freed when the stream ends.
    _slot: ConnectionSlot,
    /// Its count in `weft_connections`.
    _live: LiveConnection,
    /// Keeps shutdown waiting until the stream has ended.
    _tracked: TaskTrackerToken,
}

/// Whether the room writes a viewer's events to its socket itself.
enum Direct {
    /// It cannot (gzip, or a connection hyper serves).
    Never,
    /// It will, through this outlet, once the stream's opening is written.
    Later(Arc<TcpOutlet>),
    /// It does.
    Now(Arc<TcpOutlet>),
}

impl EventStream {
    /// The next chunk of events, or `None` when the stream ends: shutdown,
    /// the room dropped the viewer, or the token expired. An empty chunk
    /// asks the connection to flush what the room left unwritten.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(opening) = self.opening.take() {
            return Poll::Ready(Some(opening));
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(next) = self.poll_events(cx) {
            return Poll::Ready(match next {
                Ok(events) => {
                    self.keepalive.reset();
                    Some(events)
                }
                Err(reason) => {
                    debug!(%reason, "viewer stream ends");
                    None
                }
            });
        }
        while self.keepalive.poll_tick(cx).is_ready() {
            match self.quiet_until() {
                // The room wrote within the last period: look again a
                // period after its last write.
                Some(due) if due > Instant::now() => self.keepalive.reset_at(due),
                _ => return Poll::Ready(Some(Bytes::from_static(b": keepalive\n\n"))),
            }
        }
        if let Some(expiry) = &mut self.expiry {
            if expiry.as_mut().poll(cx).is_ready() {
                debug!("token expired; viewer stream ends");
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    }

    /// The viewer's next events from its queue. This is polled only once
    /// what it yielded before is written (the connection writes a chunk
    /// before it asks for the next), so the room may then write again, and
    /// the first time the stream's opening is written, so the room may
    /// begin to.
    fn poll_events(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, weft_sync::CloseReason>> {
        if let Direct::Later(outlet) = &self.direct {
            let outlet = outlet.clone();
            self.follower.set_outlet(outlet.clone());
            self.direct = Direct::Now(outlet);
        }
        if matches!(self.direct, Direct::Never) {
            return self.follower.poll_recv(cx);
        }
        self.follower.sent();
        self.follower.poll_outbound(cx).map_ok(|out| match out {
            Outbound::Frame(events) => events,
            Outbound::Flush => Bytes::new(),
        })
    }

    /// When the stream will have been quiet for a whole keepalive period
    /// since the room last wrote to its socket (which it does not see).
    fn quiet_until(&self) -> Option<Instant> {
        let Direct::Now(outlet) = &self.direct else {
            return None;
        };
        let wrote = Instant::from_std(outlet.room_wrote_at()?);
        Some(wrote + self.keepalive.period())
    }
}

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let chunk = ready!(this.poll_chunk(cx));
        let wire = match (chunk, this.gzip.as_mut()) {
            (Some(chunk), Some(gz)) => gz.compress(&chunk),
            (Some(chunk), None) => chunk,
            (None, _) => {
                this.ended = true;
                let Some(gz) = this.gzip.take() else {
                    return Poll::Ready(None);
                };
                (*gz).finish()
            }
        };
        // An empty chunk (a flush) carries nothing of its own.
        if !wire.is_empty() {
            telemetry::carried("sse", "out", wire.len());
        }
        Poll::Ready(Some(Ok(wire)))
    }
}
