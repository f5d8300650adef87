//! `GET /ws/{doc}`: the y-websocket endpoint.
//!
//! The handler validates the document name (HTTP 400 before any upgrade),
//! then each connection runs one `select!` loop: shutdown first, then frames
//! from the room to the socket, frames from the socket to the room, and the
//! keepalive ping. Every way out of the loop closes with a code from
//! [`close_code`] and leaves the room.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, info, warn, Instrument};

use weft_storage::DocName;
use weft_sync::protocol::decode_frame;
use weft_sync::{Access, Dialect, Joiner, Outbound, Session};

use crate::access::Credentials;
use crate::api_error::ApiError;
use crate::app::AppState;
use crate::auth::{Grant, Mode};
use crate::close_code;
use crate::creation_limit::client_addr;
use crate::direct_io::TcpOutlet;
use crate::doc_path::DocPath;
use crate::limits;
use crate::peer::PeerAddr;
use crate::refusal::Refusal;
use crate::slow_message::SlowMessage;
use crate::telemetry::{self, LiveConnection};
use crate::ws_upgrade::{NotAWebSocket, WebSocket, WsUpgrade};

pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    DocPath(doc): DocPath,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    outlet: Option<Extension<TcpOutlet>>,
    credentials: Credentials,
    ws: Result<WsUpgrade, NotAWebSocket>,
) -> Response {
    let outlet = outlet.map(|Extension(outlet)| outlet);
    // The cross-site guard (`origin.rs`) has already checked the `Origin`
    // of every upgrade.
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    // Browsers cannot see the status of a refused upgrade, so a refusal is
    // an accepted upgrade closed at once with a code and the reason.
    let admitted = match app.connection_limit.admit(peer.0.ip()) {
        Ok(slot) => app
            .authorize(&credentials, &doc, Mode::Read)
            .map(|grant| (grant, slot))
            .map_err(|e| (e.close_code(), e.to_string())),
        Err(refused) => Err((
            Refusal::of_connection(&refused).close_code,
            refused.to_string(),
        )),
    };
    // The connection task counts as tracked from here until it ends.
    let tracked = app.connections.token();
    ws.on_upgrade(socket_config(&app), None, move |socket| {
        // A span lives as long as its connection (a slab slot, a map and
        // the formatted fields, ~500 B each): kept only when debugging, so
        // the few events a connection logs at `info` carry its fields.
        let sub = admitted.as_ref().ok().and_then(|(g, _)| g.sub.clone());
        let span = tracing::debug_span!(
            "ws", doc = %doc, %peer, sub = sub.as_deref().unwrap_or("-"), conn = tracing::field::Empty
        );
        // No async block around the connection's future: one would keep
        // its own copy of everything it hands to `run` for the
        // connection's whole life.
        use futures_util::future::Either;
        match admitted {
            // Joining, then serving, chained with `then` (see
            // `WsUpgrade::on_upgrade`): what only joining needs (the grant,
            // the peer's address) is not kept for the connection's life.
            Ok((grant, slot)) => Either::Left(
                Box::pin(join(socket, doc, grant, (peer, outlet), app))
                    .then(move |joined| match joined {
                        Some(joined) => Either::Left(run(joined, (slot, tracked))),
                        None => Either::Right(std::future::ready(())),
                    })
                    .instrument(span),
            ),
            Err((code, reason)) => Either::Right(async move {
                let _guard = span.enter();
                info!(%doc, %peer, code, %reason, "refused");
                let mut socket = socket;
                Box::pin(close(&mut socket, code, &reason)).await;
                drop(tracked);
            }),
        }
    })
}

/// `/ws/` with nothing after it.
pub async fn empty_name() -> ApiError {
    ApiError::bad_request(
        "invalid_doc_name",
        weft_storage::InvalidDocName::Empty.to_string(),
    )
}

/// The socket's limits and buffers. Small buffers: tungstenite's defaults
/// (128 KiB to read, 128 KiB to gather writes) would cost every idle
/// connection hundreds of KiB.
pub(crate) fn socket_config(app: &AppState) -> WebSocketConfig {
    let max = app.config.max_message_bytes;
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
}

/// Bytes read from a socket at a time; frames larger than this are read in
/// several steps. A keystroke's update or a cursor move fits; every idle
/// connection keeps this much (4 KiB cost 3 KB more per connection in
/// `weft-bench idle`, with no gain in `ingest`).
const READ_BUFFER: usize = 512;

/// Messages larger than this go out as fragments of this size (see
/// `ws_upgrade` for why).
pub(crate) const FRAGMENT: usize = 64 * 1024;

/// Why a message was not sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unsent {
    /// The socket failed.
    Failed,
    /// The peer took nothing for the write deadline: it stopped reading.
    Stalled,
}

impl Unsent {
    pub(crate) fn why(&self) -> &'static str {
        match self {
            Unsent::Failed => "write failed",
            Unsent::Stalled => {
                "the peer stopped reading: nothing written within the write deadline"
            }
        }
    }
}

/// How long one write (a message, or a fragment of a large one) may wait
/// for the peer to take it: two ping intervals, at least 10 s. A peer
/// that stops reading would otherwise hold its connection, and whatever
/// its task holds, for ever.
pub(crate) fn write_deadline(app: &AppState) -> Duration {
    (app.config.ping_interval * 2).max(Duration::from_secs(10))
}

/// Sends `message`, waiting at most `deadline` for the peer to take it.
/// Most sends are done at once (the socket has room); only one that has
/// to wait is a future of its own, boxed, so that waiting (a timer and a
/// send future) is not what sizes every connection's future.
pub(crate) async fn send_within<S>(
    sink: &mut S,
    message: Message,
    deadline: Duration,
) -> Result<(), Unsent>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let mut message = Some(message);
    let done =
        std::future::poll_fn(|cx| std::task::Poll::Ready(try_send(sink, &mut message, cx))).await?;
    if done {
        return Ok(());
    }
    Box::pin(wait_to_send(sink, message, deadline)).await
}

/// The rest of [`send_within`] when the socket had no room: queue what is
/// left and flush, within `deadline`.
async fn wait_to_send<S>(
    sink: &mut S,
    message: Option<Message>,
    deadline: Duration,
) -> Result<(), Unsent>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let waiting = async move {
        if let Some(message) = message {
            sink.feed(message).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(deadline, waiting).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Unsent::Failed),
        Err(_) => Err(Unsent::Stalled),
    }
}

/// Queues `message` (if it is still there) and flushes, as far as can be
/// done now: `true` when all of it went out.
fn try_send<S>(
    sink: &mut S,
    message: &mut Option<Message>,
    cx: &mut std::task::Context<'_>,
) -> Result<bool, Unsent>
where
    S: futures_util::Sink<Message> + Unpin,
{
    use std::pin::Pin;
    use std::task::Poll;
    if message.is_some() {
        match Pin::new(&mut *sink).poll_ready(cx) {
            Poll::Pending => return Ok(false),
            Poll::Ready(Err(_)) => return Err(Unsent::Failed),
            Poll::Ready(Ok(())) => {}
        }
        if let Some(m) = message.take() {
            Pin::new(&mut *sink)
                .start_send(m)
                .map_err(|_| Unsent::Failed)?;
        }
    }
    match Pin::new(&mut *sink).poll_flush(cx) {
        Poll::Ready(Ok(())) => Ok(true),
        Poll::Ready(Err(_)) => Err(Unsent::Failed),
        Poll::Pending => Ok(false),
    }
}

/// Sends one binary message, in fragments if it is large, each within
/// `deadline`. Not an `async fn`: it hands back [`send_within`]'s future
/// itself rather than one wrapping it, so sending is no larger a part of
/// every connection's future than `send_within` is.
pub(crate) fn send_binary<'a, S>(
    sink: &'a mut S,
    frame: Bytes,
    deadline: Duration,
) -> impl Future<Output = Result<(), Unsent>> + 'a
where
    S: futures_util::Sink<Message> + Unpin,
{
    use futures_util::future::Either;
    if frame.len() <= FRAGMENT {
        Either::Left(send_within(sink, Message::Binary(frame), deadline))
    } else {
        Either::Right(Box::pin(send_fragments(sink, frame, deadline)))
    }
}

/// [`send_binary`] for a message larger than [`FRAGMENT`] (rare: boxed).
async fn send_fragments<S>(sink: &mut S, frame: Bytes, deadline: Duration) -> Result<(), Unsent>
where
    S: futures_util::Sink<Message> + Unpin,
{
    let count = frame.len().div_ceil(FRAGMENT);
    for i in 0..count {
        let part = frame.slice(i * FRAGMENT..((i + 1) * FRAGMENT).min(frame.len()));
        let opcode = if i == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        let fragment = Message::Frame(Frame::message(part, opcode, i + 1 == count));
        send_within(sink, fragment, deadline).await?;
    }
    Ok(())
}

/// Serves a joined connection until it ends, then closes it.
///
/// Not an `async fn`: one moves its arguments into locals of its own, and
/// a future keeps both for its whole life; this block uses them in place.
#[allow(clippy::manual_async_fn)] // see above
fn run(
    mut joined: Joined,
    held: (
        limits::ConnectionSlot,
        tokio_util::task::task_tracker::TaskTrackerToken,
    ),
) -> impl Future<Output = ()> {
    async move {
        let Joined {
            socket,
            session,
            expiry,
            app,
            ..
        } = &mut joined;
        let end = connection_loop(socket, session, *expiry, app).await;
        // Nothing may follow the close frame.
        joined.session.close_outlet();
        let (doc, conn) = (&joined.doc, joined.session.id());
        match end {
            End::Close(code, reason) => {
                info!(%doc, conn, code, %reason, "closing connection");
                // Boxed: closing is done once, and inline it would size
                // the future every connection keeps for its whole life.
                Box::pin(close(&mut joined.socket, code, &reason)).await;
            }
            End::Gone(why) => info!(%doc, conn, why, "connection ended"),
        }
        drop(held);
    }
}

/// A connection in its document: what serving it needs.
struct Joined {
    socket: WebSocket,
    session: Session,
    doc: DocName,
    /// When the token ends the connection, if it does.
    expiry: Option<Instant>,
    app: Arc<AppState>,
    _live: LiveConnection,
}

/// Joins the document (which may load it) with what the grant allows, the
/// room writing through `outlet` if the connection has one; a refusal
/// closes the socket with its code.
async fn join(
    mut socket: WebSocket,
    doc: DocName,
    grant: Grant,
    (peer, outlet): (PeerAddr, Option<TcpOutlet>),
    app: Arc<AppState>,
) -> Option<Joined> {
    let access = match grant.mode {
        Mode::Write => Access::ReadWrite,
        Mode::Read => Access::ReadOnly,
    };
    let joiner = Joiner {
        access,
        client: Some(client_addr(peer.0.ip())),
        dialect: Dialect::YSync,
        author: grant.sub.clone(),
        via: "ws",
    };
    let session = match app.rooms.join_as(&doc, joiner).await {
        Ok(session) => session,
        Err(e) => {
            let code = Refusal::of_room(&e).close_code;
            warn!(%doc, %peer, error = %e, "could not join document");
            close(&mut socket, code, &e.to_string()).await;
            return None;
        }
    };
    tracing::Span::current().record("conn", session.id());
    if let Some(outlet) = outlet {
        session.set_outlet(Arc::new(outlet));
    }
    info!(
        %doc, %peer, sub = grant.sub.as_deref().unwrap_or("-"), conn = session.id(),
        mode = grant.mode.as_str(), "connected"
    );
    Some(Joined {
        socket,
        session,
        doc,
        expiry: app.token_deadline(&grant),
        _live: LiveConnection::new("ws", grant.mode.as_str()),
        app,
    })
}

pub(crate) enum End {
    /// Send a close frame with this code and reason.
    Close(u16, String),
    /// The peer is gone or unreachable; nothing more to send.
    Gone(&'static str),
}

async fn connection_loop(
    socket: &mut WebSocket,
    session: &mut Session,
    expiry: Option<Instant>,
    app: &AppState,
) -> End {
    let every = app.config.ping_interval.max(Duration::from_millis(10));
    let mut ping = interval_at(Instant::now() + every, every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut slow = SlowMessage::default();
    // Boxed: a limiter is 72 bytes, the connection keeps it for its life.
    let rate = limits::message_rate(app.config.max_messages_per_sec, app.config.message_burst)
        .map(Box::new);
    let doc_limits = &app.rooms.config().limits;
    let cluster = app.config.is_cluster();
    let deadline = write_deadline(app);
    // Made once, not on every turn of the loop: each turn is one frame in
    // or out, and a fresh future would register its waker all over again.
    let shutdown = app.shutdown.cancelled();
    tokio::pin!(shutdown);
    // Boxed, and only for a token that expires.
    let mut expired = expiry.map(|at| Box::pin(tokio::time::sleep_until(at)));

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => {
                return End::Close(close_code::GOING_AWAY, "server shutting down".into());
            }
            outbound = session.recv_outbound() => match outbound {
                Ok(Outbound::Frame(frame)) => {
                    telemetry::carried("ws", "out", frame.len());
                    if let Err(unsent) = send_binary(socket, frame, deadline).await {
                        return End::Gone(unsent.why());
                    }
                    session.sent();
                }
                Ok(Outbound::Flush) => {
                    if let Err(unsent) = Box::pin(wait_to_send(socket, None, deadline)).await {
                        return End::Gone(unsent.why());
                    }
                    session.sent();
                }
                Err(reason) => {
                    return End::Close(close_code::for_reason(&reason), reason.to_string());
                }
            },
            inbound = socket.next().map(Inbound::of) => {
                last_heard = Instant::now();
                match inbound {
                    Inbound::End(end) => return end,
                    Inbound::Control(wire) => socket.get_mut().control_done(wire),
                    Inbound::Binary(frame) => {
                        socket.get_mut().message_done();
                        telemetry::carried("ws", "in", frame.len());
                        if rate.as_ref().is_some_and(|r| r.check().is_err()) {
                            return End::Close(
                                close_code::RATE_LIMITED,
                                format!(
                                    "more than {} messages per second; slow down",
                                    app.config.max_messages_per_sec
                                ),
                            );
                        }
                        if let Err(refused) = doc_limits.admits_presence_in(&frame, cluster) {
                            return End::Close(close_code::REJECTED, refused.to_string());
                        }
                        let messages = match decode_frame(&frame) {
                            Ok(messages) => messages,
                            Err(e) => return End::Close(close_code::PROTOCOL_ERROR, e.to_string()),
                        };
                        if let Err(reason) = session.send(messages, frame.len()).await {
                            return End::Close(close_code::for_reason(&reason), reason.to_string());
                        }
                    }
                }
            }
            // Off for a token without an expiry.
            () = async { if let Some(e) = &mut expired { e.as_mut().await } }, if expired.is_some() => {
                return End::Close(close_code::UNAUTHORIZED, "token expired".into());
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > every * 2 {
                    debug!("no answer to pings");
                    return End::Gone("no answer to two pings");
                }
                if let Err(end) = slow.at_tick(socket.get_mut(), every, app.config.body_timeout) {
                    return end;
                }
                if let Err(unsent) = send_within(socket, Message::Ping(Default::default()), deadline).await {
                    return End::Gone(unsent.why());
                }
            }
        }
    }
}

/// What the socket gave, reduced at once to what the loop needs (a
/// tungstenite `Result<Message, Error>` is large, and the loop would keep
/// room for it while it waits on the room).
enum Inbound {
    Binary(Bytes),
    /// A ping or pong, of this many bytes on the wire.
    Control(usize),
    End(End),
}

impl Inbound {
    fn of(next: Option<Result<Message, WsError>>) -> Inbound {
        match next {
            None => Inbound::End(End::Gone("peer closed the socket")),
            Some(Err(e)) => Inbound::End(read_error(e)),
            Some(Ok(Message::Binary(frame))) => Inbound::Binary(frame),
            Some(Ok(Message::Text(_))) => Inbound::End(End::Close(
                close_code::UNSUPPORTED_DATA,
                "text frames are not supported; send binary y-protocols messages".into(),
            )),
            Some(Ok(Message::Close(_))) => Inbound::End(End::Gone("peer sent close")),
            // Pongs only prove liveness; pings are answered by
            // tungstenite; raw frames are never yielded when reading.
            Some(Ok(Message::Ping(p) | Message::Pong(p))) => Inbound::Control(control_wire(&p)),
            Some(Ok(Message::Frame(_))) => Inbound::Control(0),
        }
    }
}

/// The bytes a client's control frame with `payload` took on the wire: a
/// two-byte header, the four-byte mask, the payload (at most 125 bytes).
pub(crate) fn control_wire(payload: &[u8]) -> usize {
    6 + payload.len()
}

pub(crate) fn read_error(e: WsError) -> End {
    match e {
        WsError::Capacity(c) => {
            End::Close(close_code::MESSAGE_TOO_BIG, format!("message too big: {c}"))
        }
        WsError::Protocol(p) => End::Close(
            close_code::PROTOCOL_ERROR,
            format!("WebSocket protocol error: {p}"),
        ),
        WsError::Utf8(_) => End::Close(
            close_code::PROTOCOL_ERROR,
            "text frame with invalid UTF-8".into(),
        ),
        other => {
            debug!(error = %other, "read failed");
            End::Gone("read failed")
        }
    }
}

/// The closing handshake: send our close frame, then read until the peer's
/// answers (briefly). Dropping a socket with unread data makes the kernel
/// reset the connection, and a reset can destroy the close frame before the
/// client reads it: it would see 1006 instead of our code.
pub(crate) async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    metrics::counter!("weft_ws_closes_total", "code" => code.to_string()).increment(1);
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: close_code::truncate_reason(reason).into(),
    };
    // Bounded as a whole: a peer that stopped reading (the usual reason for
    // closing it) would otherwise hold this task forever on a full socket.
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
        // The peer may already be gone; there is nothing else to tell it.
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
        let _ = SinkExt::close(socket).await;
    })
    .await;
}

/// How long to wait for the peer's answer to our close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_messages_go_out_as_fragments_and_small_ones_whole() {
        let mut sent: Vec<Message> = Vec::new();
        send_binary(
            &mut sent,
            Bytes::from(vec![7u8; 100]),
            Duration::from_secs(1),
        )
        .await
        .expect("sends");
        assert!(matches!(&sent[..], [Message::Binary(b)] if b.len() == 100));

        let big: Vec<u8> = (0..(3 * FRAGMENT + 10)).map(|i| i as u8).collect();
        let mut sent: Vec<Message> = Vec::new();
        send_binary(&mut sent, Bytes::from(big.clone()), Duration::from_secs(1))
            .await
            .expect("sends");
        let frames: Vec<&Frame> = sent
            .iter()
            .map(|m| match m {
                Message::Frame(f) => f,
                other => panic!("expected raw frames, got {other:?}"),
            })
            .collect();
        assert_eq!(frames.len(), 4);
        for (i, f) in frames.iter().enumerate() {
            let want = if i == 0 { Data::Binary } else { Data::Continue };
            assert_eq!(f.header().opcode, OpCode::Data(want), "frame {i}");
            assert_eq!(f.header().is_final, i == 3, "frame {i}");
            assert!(f.payload().len() <= FRAGMENT);
        }
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload().to_vec()).collect();
        assert_eq!(joined, big);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_takes_nothing_is_given_up_at_the_deadline() {
        // A sink that never has room, as a socket whose peer stopped reading.
        let stuck = futures_util::sink::unfold((), |(), _: Message| async {
            std::future::pending::<Result<(), std::convert::Infallible>>().await
        });
        let mut stuck = std::pin::pin!(stuck);
        let started = tokio::time::Instant::now();
        let sent = send_binary(
            &mut stuck,
            Bytes::from_static(b"hi"),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(sent, Err(Unsent::Stalled));
        assert_eq!(started.elapsed(), Duration::from_secs(20));
    }
}
