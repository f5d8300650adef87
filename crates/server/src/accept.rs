//! The accept loop: every TCP connection, from `accept` until it closes.
//!
//! hyper-util's connection builder speaks HTTP/1.1 and HTTP/2; this module
//! owns the policy around it, which `axum::serve` does not offer: a client
//! that connects and then sends nothing, or drips its headers a line at a
//! time, would otherwise hold a file descriptor for as long as it likes.
//!
//! - **Connections with nothing in flight**: from `accept` until its first
//!   request's headers are complete (TLS handshake and protocol detection
//!   included), and again whenever its last request has ended, a connection
//!   holds one of `--max-pending-connections` places. When they are all
//!   taken, the oldest such connection is closed at once to make room
//!   (closing it loses nothing: it has no request in flight). So
//!   connections that are not doing anything never hold more descriptors
//!   than that, whether they never sent a request or sent one and went
//!   quiet; they cannot use up those that WebSockets and event streams
//!   need, and a flood of them cannot keep a new client out either (it
//!   would have to open more than the cap in the time the client needs to
//!   send its headers). A place is taken in the accept loop itself, and
//!   the loop accepts no more while [`MAX_UNCLOSED`] evicted connections
//!   have yet to close their sockets (their tasks may not have run yet), so
//!   the bound holds however far a flood runs ahead of the scheduler.
//! - **Header deadline**: a pending connection that has not delivered its
//!   first request's headers within `--header-timeout` is closed. HTTP/1.1
//!   gives every later request on the connection the same deadline, counted
//!   from when it starts waiting for that request (hyper's header clock), so
//!   an idle keep-alive connection is closed after it too.
//! - **Idle deadline**: a connection with no request in flight (a request
//!   is in flight until its response body has ended: an event stream stays
//!   in flight) for `--idle-timeout` is shut down gracefully. This is what
//!   bounds an idle HTTP/2 connection, which has no header clock. A
//!   connection told to close (idle, or shutdown) that has not closed
//!   within two seconds, say a client that never acknowledges HTTP/2's
//!   GOAWAY, is dropped.
//! - **Out of descriptors**: when `accept` fails with EMFILE/ENFILE (or the
//!   kernel is out of buffers), the loop backs off, from 10 ms doubling to
//!   1 s, logs at most one line a second and counts each failure in
//!   `weft_accept_errors_total`, instead of spinning on the error.
//! - **Protocol**: on a plain connection the first bytes are peeked (not
//!   read) to tell HTTP/2's preface from an HTTP/1.1 request, and the
//!   connection is served by a builder for that one protocol. hyper-util's
//!   own detection reads those bytes and hands them back to hyper as a
//!   separate short read, which made hyper double its 8 KiB read buffer for
//!   every HTTP/1.1 connection (16 KiB held for an event stream's whole
//!   life). When the bytes seen so far could still be either, and over TLS,
//!   hyper-util detects as before.
//! - **Shutdown**: the loop stops accepting; connections with nothing in
//!   flight (half-sent headers included) close at once, the others are told
//!   to shut down gracefully and get two seconds (event streams and
//!   WebSockets end on the same signal in their own handlers). Connection
//!   tasks are tracked, so the caller can wait for them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, Version};
use axum::Router;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::{debug, warn};

use crate::direct_io::{DirectIo, Framing, TcpOutlet};
use crate::peer::PeerAddr;
use crate::stream_conn;

/// The deadlines and caps of the edge (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_pending: usize,
}

/// Everything the accept loop needs to serve connections.
pub struct Edge {
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
    pub router: Router,
    pub limits: EdgeLimits,
    pub shutdown: CancellationToken,
    /// Connection tasks are spawned here.
    pub tasks: TaskTracker,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What every connection task shares.
struct Shared {
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: EdgeLimits,
    shutdown: CancellationToken,
    /// Either protocol, by detection; HTTP/1.1 only; HTTP/2 only.
    http: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Shared {
    fn builder(&self, protocol: Option<Protocol>) -> &auto::Builder<TokioExecutor> {
        match protocol {
            Some(Protocol::Http1) => &self.http1,
            Some(Protocol::Http2) => &self.http2,
            None => &self.http,
        }
    }
}

/// Accepts connections until shutdown; each is served in a tracked task.
pub async fn run(edge: Edge) {
    let Edge {
        listener,
        tls,
        router,
        limits,
        shutdown,
        tasks,
    } = edge;
    let pending = Arc::new(Pending::new(limits.max_pending));
    let http = http_builder(limits);
    let shared = Arc::new(Shared {
        tls,
        router,
        limits,
        http1: http.clone().http1_only(),
        http2: http.clone().http2_only(),
        http,
        shutdown: shutdown.clone(),
    });
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = pending.room_to_accept() => {}
        }
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = backoff.after(&e) => {}
                    }
                    continue;
                }
            },
        };
        backoff.reset();
        let state = Arc::new(ConnState::new(pending.clone()));
        tasks.spawn(connection(tcp, peer, state, shared.clone()));
    }
}

/// HTTP/1.1 and HTTP/2 (by preface or ALPN), with upgrades, with hyper's
/// header clock on every HTTP/1.1 request.
fn http_builder(limits: EdgeLimits) -> auto::Builder<TokioExecutor> {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    http.http2().timer(TokioTimer::new());
    http
}

/// One connection: TLS if configured, then HTTP until it closes.
///
/// Each way of serving is boxed: the task holds only the one its
/// connection takes, sized for it, rather than room for the largest (a TLS
/// handshake, or hyper serving a TLS stream) on every plain connection.
async fn connection(tcp: TcpStream, peer: SocketAddr, state: Arc<ConnState>, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    // Dropped last, once the socket (owned by `serve`) is closed.
    let _closed = SocketClosed(state.clone());
    let headers_due = after(shared.limits.header_timeout);
    let serve = async {
        match &shared.tls {
            None => match Box::pin(first_request(&tcp, headers_due, &shared)).await {
                Start::Closed(reason) => {
                    if let Some(reason) = reason {
                        closed_for(reason, peer);
                    }
                }
                Start::Stream(request, head_len) => {
                    Box::pin(serve_stream(tcp, request, head_len, peer, &state, &shared)).await;
                }
                Start::Http(protocol) => {
                    // Plain TCP: a WebSocket's room may write to it too.
                    let direct = DirectIo::new(tcp);
                    let outlet = Some(direct.outlet(Framing::WebSocket));
                    let io = TokioIo::new(direct);
                    let http =
                        serve_http(io, (peer, outlet), &state, headers_due, &shared, protocol);
                    Box::pin(http).await;
                }
            },
            Some(acceptor) => {
                Box::pin(serve_tls(tcp, acceptor, peer, &state, headers_due, &shared)).await;
            }
        }
    };
    tokio::select! {
        _ = serve => {}
        // Only ever cancelled while nothing is in flight.
        _ = state.evicted.cancelled() => closed_for("evicted", peer),
    }
}

/// How a plain connection is to be served, from what it sent first.
enum Start {
    /// Not at all: shutdown, or (with why, for the log) the deadline.
    Closed(Option<&'static str>),
    /// Its request is an event stream, served without hyper (`stream_conn`).
    Stream(Box<Request<Body>>, usize),
    /// By hyper, in this protocol (`None`: hyper-util detects it).
    Http(Option<Protocol>),
}

/// Waits for a plain connection's first bytes and tells how to serve it.
/// Boxed by the caller: it is over once the connection is under way, and
/// its futures would otherwise size the task for the connection's life.
async fn first_request(tcp: &TcpStream, headers_due: Instant, shared: &Shared) -> Start {
    let protocol = tokio::select! {
        seen = timeout_at(headers_due, sniff(tcp)) => seen,
        _ = shared.shutdown.cancelled() => return Start::Closed(None),
    };
    let Ok(protocol) = protocol else {
        return Start::Closed(Some("header_timeout"));
    };
    if protocol == Some(Protocol::Http1) && stream_conn::may_be_stream(tcp).await {
        if let Some((request, head_len)) = stream_conn::waiting_request(tcp).await {
            return Start::Stream(Box::new(request), head_len);
        }
    }
    Start::Http(protocol)
}

/// A TLS handshake, then HTTP over it. Kept out of [`connection`]'s own
/// future (boxed by the caller): a TLS stream is large, and a plain
/// connection's task should not hold room for one.
async fn serve_tls(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    peer: SocketAddr,
    state: &Arc<ConnState>,
    headers_due: Instant,
    shared: &Shared,
) {
    let handshake = tokio::select! {
        done = timeout_at(headers_due, acceptor.accept(tcp)) => done,
        _ = shared.shutdown.cancelled() => return,
    };
    match handshake {
        Ok(Ok(tls)) => {
            let io = TokioIo::new(tls);
            Box::pin(serve_http(
                io,
                (peer, None),
                state,
                headers_due,
                shared,
                None,
            ))
            .await
        }
        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => closed_for("header_timeout", peer),
    }
}

/// The protocols a connection can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// What every HTTP/2 connection sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a plain connection speaks, from the bytes it has sent so
/// far (peeked, so hyper still reads them); `None` when they could still be
/// either (or the peer closed), for hyper-util to detect.
async fn sniff(tcp: &TcpStream) -> Option<Protocol> {
    let mut first = [0u8; H2_PREFACE.len()];
    let seen = tcp.peek(&mut first).await.ok()?;
    let seen = &first[..seen];
    if seen.len() == H2_PREFACE.len() {
        Some(if seen == H2_PREFACE {
            Protocol::Http2
        } else {
            Protocol::Http1
        })
    } else if H2_PREFACE.starts_with(seen) {
        None
    } else {
        Some(Protocol::Http1)
    }
}

/// How long a connection told to close may take to finish what it has in
/// flight, or a client to acknowledge an HTTP/2 GOAWAY, before it is
/// dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves HTTP on `io`, enforcing the header, idle and closing deadlines;
/// `peer` is the client's address, and for plain TCP the outlet its
/// WebSocket's room may write through.
async fn serve_http<I>(
    io: TokioIo<I>,
    peer: (SocketAddr, Option<TcpOutlet>),
    state: &Arc<ConnState>,
    headers_due: Instant,
    shared: &Shared,
    protocol: Option<Protocol>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (peer, outlet) = peer;
    // hyper keeps a place for the service's future for the connection's
    // whole life, sized to that future; boxed, the place is a pointer and
    // the routing state is freed once the response has begun (an event
    // stream would otherwise keep it for as long as it streams).
    let service = hyper::service::service_fn({
        let router = shared.router.clone();
        let state = state.clone();
        move |request| {
            let to = (peer, outlet.clone());
            Box::pin(handle(router.clone(), request, to, state.clone()))
        }
    });
    let conn = shared
        .builder(protocol)
        .serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut closing: Option<Instant> = None;
    loop {
        let changed = state.changed.notified();
        let activity = state.activity();
        let due = match closing {
            Some(deadline) => deadline,
            None if !activity.served => headers_due,
            None => activity.idle_since.map_or_else(
                || after(shared.limits.idle_timeout),
                |since| {
                    since
                        .checked_add(shared.limits.idle_timeout)
                        .unwrap_or_else(far_future)
                },
            ),
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shared.shutdown.cancelled(), if closing.is_none() => {
                if state.is_idle() {
                    return; // nothing in flight: close now
                }
                conn.as_mut().graceful_shutdown();
                closing = Some(after(CLOSE_GRACE));
            }
            _ = changed => {}
            _ = sleep_until(due) => {
                if closing.is_some() {
                    closed_for("close_timeout", peer);
                    return;
                }
                if !activity.served {
                    closed_for("header_timeout", peer);
                    return; // dropping the connection closes the socket
                }
                if state.is_idle_past(shared.limits.idle_timeout) {
                    closed_for("idle", peer);
                    conn.as_mut().graceful_shutdown();
                    closing = Some(after(CLOSE_GRACE));
                }
            }
        }
    }
}

/// Serves a plain HTTP/1.1 connection whose one request is an event
/// stream, without hyper (see `stream_conn`). Routing is boxed: only the
/// response's streaming stays for the connection's life.
async fn serve_stream(
    mut tcp: TcpStream,
    request: Box<Request<Body>>,
    head_len: usize,
    peer: SocketAddr,
    state: &Arc<ConnState>,
    shared: &Shared,
) {
    if stream_conn::consume_head(&mut tcp, head_len).await.is_err() {
        return;
    }
    // This connection closes when its one response ends: it must not take
    // a place among those waiting for a request then (and evict one).
    state.will_close();
    let io = DirectIo::new(tcp);
    let mut request = stream_conn::unbox(request);
    let outlet = stream_conn::StreamOutlet(io.outlet(Framing::Chunk));
    request.extensions_mut().insert(outlet);
    let routed = Box::pin(handle(
        shared.router.clone(),
        request,
        (peer, None),
        state.clone(),
    ));
    let Ok(response) = routed.await;
    let out = Box::new(stream_conn::Outgoing::new(response));
    stream_conn::respond(io, out, &shared.shutdown).await;
}

/// `now + d`, or a far future for durations past what a clock holds.
fn after(d: Duration) -> Instant {
    Instant::now().checked_add(d).unwrap_or_else(far_future)
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86_400)
}

/// Routes one request, marking it in flight until its response body ends.
async fn handle<B>(
    mut router: Router,
    request: Request<B>,
    (peer, outlet): (SocketAddr, Option<TcpOutlet>),
    state: Arc<ConnState>,
) -> Result<Response<Body>, Infallible>
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let in_flight = state.request_started();
    let mut request = request.map(Body::new);
    request.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
    // Only an HTTP/1.1 upgrade owns its connection's bytes (over HTTP/2 a
    // WebSocket would be one stream among others).
    if let Some(outlet) = outlet.filter(|_| request.version() == Version::HTTP_11) {
        request.extensions_mut().insert(outlet);
    }
    let response = router.call(request).await?;
    Ok(response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            let _ = &in_flight;
            frame
        }))
    }))
}

fn closed_for(reason: &'static str, peer: SocketAddr) {
    debug!(%peer, reason, "connection closed");
    metrics::counter!("weft_connections_closed_total", "reason" => reason).increment(1);
}

/// How many connections closed to make room may still hold their sockets
/// before the accept loop waits for them.
const MAX_UNCLOSED: usize = 64;

/// The longest the accept loop waits for evicted connections to close: a
/// starved runtime must slow accepting down, never stop it.
const UNCLOSED_WAIT: Duration = Duration::from_secs(1);

/// The connections with nothing in flight (those that have not yet
/// delivered a request's headers, and idle ones), oldest first, at most
/// `max` of them.
struct Pending {
    places: Mutex<BTreeMap<u64, CancellationToken>>,
    next: AtomicU64,
    max: usize,
    /// Connections evicted whose sockets are not closed yet.
    unclosed: AtomicUsize,
    /// Woken when an evicted connection's socket closes.
    one_closed: Notify,
}

impl Pending {
    fn new(max: usize) -> Self {
        Pending {
            places: Mutex::default(),
            next: AtomicU64::new(0),
            max: max.max(1),
            unclosed: AtomicUsize::new(0),
            one_closed: Notify::new(),
        }
    }

    /// A place for a connection that has nothing in flight, closing the
    /// oldest such connections (cancelling their `evicted`) if every place
    /// is taken.
    fn admit(self: &Arc<Self>, evicted: CancellationToken) -> PendingPlace {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut places) = self.places.lock() {
            while places.len() >= self.max {
                let Some((_, oldest)) = places.pop_first() else {
                    break;
                };
                // Under the lock, so a connection is counted once however
                // it races its own close (`ConnState::socket_closed`).
                if !oldest.is_cancelled() {
                    self.unclosed.fetch_add(1, Ordering::AcqRel);
                    oldest.cancel();
                }
            }
            places.insert(id, evicted);
        }
        PendingPlace {
            pending: self.clone(),
            id,
        }
    }
}

impl Pending {
    /// Returns once fewer than [`MAX_UNCLOSED`] evicted connections hold
    /// their sockets, or after [`UNCLOSED_WAIT`].
    async fn room_to_accept(&self) {
        let wait = async {
            loop {
                let closed = self.one_closed.notified();
                if self.unclosed.load(Ordering::Acquire) < MAX_UNCLOSED {
                    return;
                }
                closed.await;
            }
        };
        let _ = tokio::time::timeout(UNCLOSED_WAIT, wait).await;
    }

    fn evicted_socket_closed(&self) {
        let _ = self
            .unclosed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.one_closed.notify_one();
    }
}

/// One connection's place among those with nothing in flight; given up
/// when a request arrives or the connection closes.
struct PendingPlace {
    pending: Arc<Pending>,
    id: u64,
}

impl Drop for PendingPlace {
    fn drop(&mut self) {
        if let Ok(mut places) = self.pending.places.lock() {
            places.remove(&self.id);
        }
    }
}

/// What a connection is doing, as its deadlines need it.
#[derive(Debug, Clone, Copy)]
struct Activity {
    /// A request's headers have arrived at least once.
    served: bool,
    in_flight: usize,
    /// When the last request in flight ended (`None` while one is).
    idle_since: Option<Instant>,
}

/// One connection's request bookkeeping, shared with its service.
struct ConnState {
    pending: Arc<Pending>,
    /// The activity, and the connection's place among those with nothing
    /// in flight (held exactly while `in_flight` is 0), under one lock.
    inner: Mutex<(Activity, Option<PendingPlace>)>,
    /// Cancelled if the connection is closed to make room.
    evicted: CancellationToken,
    /// Woken whenever the activity changes.
    changed: Notify,
    /// The connection closes once nothing is in flight: it does not wait
    /// for another request, so it takes no place among those that do.
    closing: AtomicBool,
}

impl ConnState {
    fn new(pending: Arc<Pending>) -> Self {
        let evicted = CancellationToken::new();
        let place = pending.admit(evicted.clone());
        let activity = Activity {
            served: false,
            in_flight: 0,
            idle_since: Some(Instant::now()),
        };
        ConnState {
            pending,
            inner: Mutex::new((activity, Some(place))),
            evicted,
            changed: Notify::new(),
            closing: AtomicBool::new(false),
        }
    }

    /// This connection will close when its requests in flight end.
    fn will_close(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    fn activity(&self) -> Activity {
        self.inner.lock().map_or(
            Activity {
                served: true,
                in_flight: 1,
                idle_since: None,
            },
            |inner| inner.0,
        )
    }

    /// Nothing in flight: closing the connection loses nothing.
    fn is_idle(&self) -> bool {
        self.activity().in_flight == 0
    }

    fn is_idle_past(&self, limit: Duration) -> bool {
        self.activity()
            .idle_since
            .is_some_and(|since| since.elapsed() >= limit)
    }

    /// A request's headers are in: the connection is busy (and cannot be
    /// evicted) until the returned guard drops.
    fn request_started(self: &Arc<Self>) -> InFlight {
        if let Ok(mut inner) = self.inner.lock() {
            let (activity, place) = &mut *inner;
            activity.served = true;
            activity.in_flight += 1;
            activity.idle_since = None;
            place.take();
        }
        self.changed.notify_one();
        InFlight(self.clone())
    }

    fn request_ended(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            let (activity, place) = &mut *inner;
            activity.in_flight = activity.in_flight.saturating_sub(1);
            if activity.in_flight == 0 {
                activity.idle_since = Some(Instant::now());
                if !self.closing.load(Ordering::Relaxed) && !self.evicted.is_cancelled() {
                    *place = Some(self.pending.admit(self.evicted.clone()));
                }
            }
        }
        self.changed.notify_one();
    }
}

impl ConnState {
    /// The connection's socket is closed: it gives up its place, takes no
    /// other, and if it was evicted, no longer counts as unclosed.
    fn socket_closed(&self) {
        self.closing.store(true, Ordering::Relaxed);
        let place = self.inner.lock().ok().and_then(|mut inner| inner.1.take());
        // Once its place is gone (it was in the set, or evicted from it,
        // or never there while busy), nothing can evict it any more.
        drop(place);
        if self.evicted.is_cancelled() {
            self.pending.evicted_socket_closed();
        }
    }
}

/// Marks the connection's socket closed when the connection task ends.
struct SocketClosed(Arc<ConnState>);

impl Drop for SocketClosed {
    fn drop(&mut self) {
        self.0.socket_closed();
    }
}

/// A request in flight; dropped when its response body has ended (or the
/// connection went away).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// The pause after a failed `accept`.
#[derive(Debug, Default)]
struct Backoff {
    delay: Option<Duration>,
    log: LogEvery,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    async fn after(&mut self, error: &io::Error) {
        let reason = if is_out_of_descriptors(error) {
            "fd_exhausted"
        } else {
            "other"
        };
        metrics::counter!("weft_accept_errors_total", "reason" => reason).increment(1);
        self.log.log(|n| {
            warn!(
                error = %error,
                failures = n,
                "accept failed; backing off (raise the open-files limit, or lower \
                 --max-connections / --max-pending-connections)"
            )
        });
        let delay = self.delay.map_or(Self::FIRST, |d| (d * 2).min(Self::MAX));
        self.delay = Some(delay);
        tokio::time::sleep(delay).await;
    }

    fn reset(&mut self) {
        self.delay = None;
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: the process or the system is out of
/// something a connection needs; waiting is the only remedy.
fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// Logs a recurring event at most once a second, with how many happened.
#[derive(Debug, Default)]
struct LogEvery {
    last: Option<Instant>,
    unlogged: u64,
}

impl LogEvery {
    fn log(&mut self, emit: impl FnOnce(u64)) {
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1))
        {
            emit(self.unlogged);
            self.unlogged = 0;
            self.last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_exhaustion_is_recognised() {
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(24)));
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(23)));
        assert!(!is_out_of_descriptors(&io::Error::from_raw_os_error(104)));
    }

    #[test]
    fn a_full_pending_set_makes_room_by_closing_the_oldest() {
        let pending = Arc::new(Pending::new(2));
        let tokens: Vec<_> = (0..4).map(|_| CancellationToken::new()).collect();
        let _first = pending.admit(tokens[0].clone());
        let second = pending.admit(tokens[1].clone());
        let _third = pending.admit(tokens[2].clone());
        assert!(tokens[0].is_cancelled(), "the oldest goes");
        assert!(!tokens[1].is_cancelled() && !tokens[2].is_cancelled());
        drop(second); // its request arrived: no longer in the set
        let _fourth = pending.admit(tokens[3].clone());
        assert!(!tokens[2].is_cancelled() && !tokens[3].is_cancelled());
        assert_eq!(pending.places.lock().map(|p| p.len()).unwrap_or(0), 2);
    }

    #[tokio::test]
    async fn a_connection_is_evictable_exactly_while_nothing_is_in_flight() {
        let pending = Arc::new(Pending::new(1));
        let conn = Arc::new(ConnState::new(pending.clone()));
        let busy = conn.request_started();
        // A newcomer takes the only place; the busy connection is not in
        // the set, so nothing is evicted.
        let newcomer = CancellationToken::new();
        let _place = pending.admit(newcomer.clone());
        assert!(!conn.evicted.is_cancelled());
        // Its request ends: it is idle, takes a place, and the newcomer
        // (now the oldest) makes room.
        drop(busy);
        assert!(newcomer.is_cancelled() && !conn.evicted.is_cancelled());
        assert!(conn.is_idle() && conn.activity().served);
        // The next arrival evicts the idle connection.
        let _later = pending.admit(CancellationToken::new());
        assert!(conn.evicted.is_cancelled());
    }

    #[tokio::test]
    async fn an_evicted_connection_counts_as_unclosed_until_its_socket_closes() {
        let pending = Arc::new(Pending::new(1));
        let first = Arc::new(ConnState::new(pending.clone()));
        let second = ConnState::new(pending.clone());
        assert!(first.evicted.is_cancelled());
        assert_eq!(pending.unclosed.load(Ordering::Acquire), 1);
        // A busy connection ending its request does not come back into the
        // set once evicted, so it cannot be counted twice.
        drop(first.request_started());
        assert_eq!(pending.unclosed.load(Ordering::Acquire), 1);
        first.socket_closed();
        assert_eq!(pending.unclosed.load(Ordering::Acquire), 0);
        // Closing one that was never evicted frees its place and counts
        // nothing; the next arrival evicts no one.
        second.socket_closed();
        assert_eq!(pending.unclosed.load(Ordering::Acquire), 0);
        let third = ConnState::new(pending.clone());
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
    }

    #[tokio::test]
    async fn accepting_waits_while_too_many_evicted_sockets_are_open() {
        use futures_util::FutureExt;
        let pending = Arc::new(Pending::new(1));
        let conns: Vec<_> = (0..=MAX_UNCLOSED)
            .map(|_| ConnState::new(pending.clone()))
            .collect();
        assert_eq!(pending.unclosed.load(Ordering::Acquire), MAX_UNCLOSED);
        let mut room = Box::pin(pending.room_to_accept());
        assert!((&mut room).now_or_never().is_none(), "the loop waits");
        conns[0].socket_closed();
        assert!(
            room.now_or_never().is_some(),
            "one closed: it accepts again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_starved_runtime_slows_accepting_but_never_stops_it() {
        let pending = Arc::new(Pending::new(1));
        let _conns: Vec<_> = (0..=MAX_UNCLOSED)
            .map(|_| ConnState::new(pending.clone()))
            .collect();
        let start = Instant::now();
        pending.room_to_accept().await;
        assert_eq!(start.elapsed(), UNCLOSED_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_to_a_second_and_resets() {
        let mut backoff = Backoff::default();
        let e = io::Error::from_raw_os_error(24);
        let mut waits = Vec::new();
        for _ in 0..9 {
            let start = Instant::now();
            backoff.after(&e).await;
            waits.push(start.elapsed().as_millis());
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.reset();
        let start = Instant::now();
        backoff.after(&e).await;
        assert_eq!(start.elapsed().as_millis(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn recurring_logs_are_one_a_second() {
        let mut log = LogEvery::default();
        let mut lines = Vec::new();
        for _ in 0..50 {
            log.log(|n| lines.push(n));
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        // 5 s of events every 100 ms: the first, then one a second with
        // the count since the last line.
        assert_eq!(lines, [1, 10, 10, 10, 10]);
    }
}
