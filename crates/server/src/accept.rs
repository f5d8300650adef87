//! The accept loop: every TCP connection, from `accept` until it closes.
//!
//! hyper-util's connection builder speaks HTTP/1.1 and HTTP/2; this module
//! owns the policy around it, which `axum::serve` does not offer: a client
//! that connects and then sends nothing, or drips its headers a line at a
//! time, would otherwise hold a file descriptor for as long as it likes.
//!
//! - **Pending connections**: from `accept` until its first request's
//!   headers are complete (TLS handshake and protocol detection included), a
//!   connection holds one of `--max-pending-connections` places. When they
//!   are all taken, the oldest pending connection is closed at once to make
//!   room: pending connections never hold more descriptors than that, so
//!   they cannot use up those that WebSockets and event streams need, and
//!   a flood of idle connections cannot keep a new client out either (it
//!   would have to open more than the cap in the time the client needs to
//!   send its headers).
//! - **Header deadline**: a pending connection that has not delivered its
//!   first request's headers within `--header-timeout` is closed. HTTP/1.1
//!   gives every later request on the connection the same deadline, counted
//!   from when it starts waiting for that request (hyper's header clock), so
//!   an idle keep-alive connection is closed after it too.
//! - **Idle deadline**: a connection with no request in flight (a request
//!   is in flight until its response body has ended: an event stream stays
//!   in flight) for `--idle-timeout` is shut down gracefully. This is what
//!   bounds an idle HTTP/2 connection, which has no header clock.
//! - **Out of descriptors**: when `accept` fails with EMFILE/ENFILE (or the
//!   kernel is out of buffers), the loop backs off, from 10 ms doubling to
//!   1 s, logs at most one line a second and counts each failure in
//!   `weft_accept_errors_total`, instead of spinning on the error.
//! - **Shutdown**: the loop stops accepting; every connection is told to
//!   shut down gracefully (requests in flight finish, event streams and
//!   WebSockets end on the same signal in their own handlers). Connection
//!   tasks are tracked, so the caller can wait for them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
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

use crate::peer::PeerAddr;

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
    http: auto::Builder<TokioExecutor>,
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
    let shared = Arc::new(Shared {
        tls,
        router,
        limits,
        http: http_builder(limits),
        shutdown: shutdown.clone(),
    });
    let mut backoff = Backoff::default();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    backoff.after(&e).await;
                    continue;
                }
            },
        };
        backoff.reset();
        let place = pending.admit();
        tasks.spawn(connection(tcp, peer, place, shared.clone()));
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
async fn connection(tcp: TcpStream, peer: SocketAddr, place: PendingPlace, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let evicted = place.evicted.clone();
    let state = Arc::new(ConnState::new(place));
    let headers_due = Instant::now() + shared.limits.header_timeout;
    let serve = async {
        match &shared.tls {
            None => serve_http(TokioIo::new(tcp), peer, state, headers_due, &shared).await,
            Some(acceptor) => match timeout_at(headers_due, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    serve_http(TokioIo::new(tls), peer, state, headers_due, &shared).await
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => closed_for("header_timeout", peer),
            },
        }
    };
    tokio::select! {
        _ = serve => {}
        // Only ever cancelled while the connection is still pending.
        _ = evicted.cancelled() => closed_for("evicted", peer),
    }
}

/// Serves HTTP on `io`, enforcing the pending and idle deadlines.
async fn serve_http<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    state: Arc<ConnState>,
    headers_due: Instant,
    shared: &Shared,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn({
        let router = shared.router.clone();
        let state = state.clone();
        move |request| handle(router.clone(), request, peer, state.clone())
    });
    let conn = shared.http.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let changed = state.changed.notified();
        let (due, pending) = match state.idle_since() {
            _ if state.is_pending() => (headers_due, true),
            Some(since) => (since + shared.limits.idle_timeout, false),
            None => (Instant::now() + shared.limits.idle_timeout, false),
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shared.shutdown.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = changed => {}
            _ = sleep_until(due), if !closing || pending => {
                if pending {
                    closed_for("header_timeout", peer);
                    return; // dropping the connection closes the socket
                }
                if state.idle_since().is_some_and(|s| s + shared.limits.idle_timeout <= Instant::now()) {
                    closed_for("idle", peer);
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Routes one request, marking it in flight until its response body ends.
async fn handle(
    mut router: Router,
    request: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<ConnState>,
) -> Result<Response<Body>, Infallible> {
    let in_flight = state.request_started();
    let mut request = request.map(Body::new);
    request.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
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

/// The connections that have not yet delivered a request's headers, oldest
/// first, at most `max` of them.
struct Pending {
    places: Mutex<BTreeMap<u64, CancellationToken>>,
    next: AtomicU64,
    max: usize,
}

impl Pending {
    fn new(max: usize) -> Self {
        Pending {
            places: Mutex::default(),
            next: AtomicU64::new(0),
            max: max.max(1),
        }
    }

    /// A place for a new connection, closing the oldest pending ones if
    /// every place is taken.
    fn admit(self: &Arc<Self>) -> PendingPlace {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        if let Ok(mut places) = self.places.lock() {
            while places.len() >= self.max {
                let Some((_, oldest)) = places.pop_first() else {
                    break;
                };
                oldest.cancel();
            }
            places.insert(id, evicted.clone());
        }
        PendingPlace {
            pending: self.clone(),
            id,
            evicted,
        }
    }
}

/// One connection's place among the pending; given up when its first
/// request arrives or it closes.
struct PendingPlace {
    pending: Arc<Pending>,
    id: u64,
    /// Cancelled if the connection is closed to make room.
    evicted: CancellationToken,
}

impl Drop for PendingPlace {
    fn drop(&mut self) {
        if let Ok(mut places) = self.pending.places.lock() {
            places.remove(&self.id);
        }
    }
}

/// One connection's request bookkeeping, shared with its service.
struct ConnState {
    /// Its place among pending connections, until its first request.
    place: Mutex<Option<PendingPlace>>,
    in_flight: AtomicUsize,
    /// When the last request in flight ended (`None` while one is).
    idle_since: Mutex<Option<Instant>>,
    /// Woken whenever any of the above changes.
    changed: Notify,
}

impl ConnState {
    fn new(place: PendingPlace) -> Self {
        ConnState {
            place: Mutex::new(Some(place)),
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Some(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn is_pending(&self) -> bool {
        self.place.lock().is_ok_and(|p| p.is_some())
    }

    fn idle_since(&self) -> Option<Instant> {
        self.idle_since.lock().ok().and_then(|s| *s)
    }

    /// A request's headers are in: the connection is no longer pending,
    /// and busy until the returned guard drops.
    fn request_started(self: &Arc<Self>) -> InFlight {
        if let Ok(mut place) = self.place.lock() {
            place.take();
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut since) = self.idle_since.lock() {
            *since = None;
        }
        self.changed.notify_one();
        InFlight(self.clone())
    }
}

/// A request in flight; dropped when its response body has ended (or the
/// connection went away).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Ok(mut since) = self.0.idle_since.lock() {
                *since = Some(Instant::now());
            }
        }
        self.0.changed.notify_one();
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
        let first = pending.admit();
        let second = pending.admit();
        let third = pending.admit();
        assert!(first.evicted.is_cancelled(), "the oldest goes");
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        drop(second); // its request arrived: no longer pending
        let fourth = pending.admit();
        assert!(!third.evicted.is_cancelled() && !fourth.evicted.is_cancelled());
        assert_eq!(pending.places.lock().map(|p| p.len()).unwrap_or(0), 2);
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
