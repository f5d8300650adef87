//! `GET /hocuspocus` (and a WebSocket upgrade at `/`): Hocuspocus'
//! protocol, for `@hocuspocus/provider` 4.x and the editors built on it
//! (Tiptap's collaboration extensions).
//!
//! One socket carries many documents, each opened by an Auth message with
//! a token for it (a weft document token; any or none without
//! `--auth-secret`) and decided on its own (`opening.rs`): a document
//! refused access, or at a limit, is answered with permission denied and
//! the others go on. Each open document is an editor's [`Session`] in its
//! room, joined as [`Dialect::Hocuspocus`] so it also hears the
//! document's stateless messages; the wire format is
//! `weft_sync::hocuspocus`'s, the socket's documents `documents.rs`'s.
//!
//! The connection loop is `ws.rs`'s (every write within a deadline, pings,
//! shutdown), with more to do:
//! - the socket is accepted before anyone shows a token, so until one
//!   does it may send at most [`PRE_AUTH_BYTES`] in all (read through a
//!   `ReadBudget`, below the size of any message), and is closed (4401)
//!   if no document is authenticated within `--header-timeout` of
//!   opening, or of its last document ending (however it ended);
//! - a document is joined while the socket goes on delivering the others'
//!   frames (a slow load holds up only what the client sends, which waits
//!   in the socket until the join is done, so nothing overtakes it);
//! - a provider is asked for a fresh token before its token ends (and the
//!   document ends with it otherwise);
//! - stateless messages are held to [`STATELESS_BYTES_PER_SEC`] per socket;
//! - providers that answer them are sent Hocuspocus' own pings, so a quiet
//!   document does not look dead to them.
//!
//! How a document ends follows what would cure it: what a reconnect
//! cures (the server going away, a storage failure, a client too slow or
//! over its budget) closes the socket with the code `/ws` would use, and
//! the provider reconnects and resyncs every document; what it would not
//! (the document deleted, a change refused, the document at its size
//! limit) ends that document alone, with Hocuspocus' close message.

mod documents;
mod opening;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, Instrument};

use weft_sync::hocuspocus::{self as wire, Message as HpMessage};
use weft_sync::protocol::Inbound;
use weft_sync::{CloseReason, Joiner};

use crate::access::Credentials;
use crate::app::AppState;
use crate::close_code;
use crate::limits::{self, ConnectionSlot, Refused};
use crate::peer::PeerAddr;
use crate::read_budget::ReadBudget;
use crate::refusal::Refusal;
use crate::slow_message::SlowMessage;
use crate::telemetry;
use crate::ws::{self, End};
use crate::ws_upgrade::{NotAWebSocket, WebSocket, WsUpgrade};
use documents::Documents;
use opening::Joining;

/// What a socket may send, in bytes, before it has authenticated a
/// document: Auth messages and what a provider sends while it fetches its
/// token, with room to spare. A provider that sends more (a large paste
/// while its token is fetched) is closed, reconnects, and its sync
/// carries the paste: nothing is lost.
pub const PRE_AUTH_BYTES: usize = 128 * 1024;

/// Stateless messages one socket may send, in bytes per second (and a
/// burst of four seconds' worth); more closes it (4429). They go to every
/// other Hocuspocus connection of the document, so this is what one
/// socket can make each of them receive.
pub const STATELESS_BYTES_PER_SEC: u32 = 64 * 1024;

/// Pings go at least this often: a provider takes 30 s without a message
/// as a dead connection.
const MOST_BETWEEN_PINGS: Duration = Duration::from_secs(15);

/// `GET /hocuspocus`.
pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    credentials: Credentials,
    ws: Result<WsUpgrade, NotAWebSocket>,
) -> Response {
    match ws {
        Ok(ws) => accept(app, peer, credentials, ws),
        Err(e) => e.into_response(),
    }
}

/// `GET /`: a WebSocket is a Hocuspocus provider given the bare server
/// URL; anything else gets the index page.
pub async fn at_root(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    credentials: Credentials,
    ws: Result<WsUpgrade, NotAWebSocket>,
) -> Response {
    match ws {
        Ok(ws) => accept(app, peer, credentials, ws),
        Err(_) => crate::web::page("index.html"),
    }
}

/// Takes the socket (refusing it, as `/ws` does, when the server has its
/// maximum of connections) and runs it. `credentials`, from the upgrade
/// request, stand in for an Auth message's empty token.
fn accept(app: Arc<AppState>, peer: PeerAddr, credentials: Credentials, ws: WsUpgrade) -> Response {
    let slot = app.unauthenticated_limit.admit(peer.0.ip());
    let tracked = app.connections.token();
    let budget = ReadBudget::new(PRE_AUTH_BYTES);
    let config = ws::socket_config(&app);
    ws.on_upgrade(
        config,
        Some(budget.clone()),
        move |mut socket: WebSocket| async move {
            let span = tracing::info_span!("hocuspocus", %peer);
            match slot {
                Ok(slot) => {
                    let conn = Conn::new(app, peer, credentials, (budget, slot));
                    conn.run(&mut socket).instrument(span).await;
                }
                Err(refused) => {
                    let reason = match refused {
                        Refused::ServerFull(max) => format!(
                            "the server has its maximum of {max} connections waiting to \
                             authenticate; try again later"
                        ),
                        Refused::ClientFull(_) => refused.to_string(),
                    };
                    info!(parent: &span, %reason, "refused");
                    let code = Refusal::of_connection(&refused).close_code;
                    Box::pin(ws::close(&mut socket, code, &reason)).await;
                }
            }
            drop(tracked);
        },
    )
}

/// One Hocuspocus socket.
struct Conn {
    app: Arc<AppState>,
    peer: PeerAddr,
    /// The upgrade request's token, for Auth messages without one.
    credentials: Credentials,
    docs: Documents,
    /// The document being joined; the socket reads nothing meanwhile.
    joining: Option<Joining>,
    rate: Option<DefaultDirectRateLimiter>,
    stateless: DefaultDirectRateLimiter,
    /// What the socket may still read before it authenticates.
    budget: ReadBudget,
    /// Its place: among those waiting to authenticate, then among the
    /// server's connections (which also covers its first document).
    place: ConnectionSlot,
    /// Whether `place` is among the server's connections yet.
    admitted: bool,
    /// When the socket must have authenticated a document by, while it
    /// has none.
    auth_due: Option<Instant>,
    /// A provider here answers Hocuspocus' pings.
    answers_ping: bool,
    write_deadline: Duration,
}

impl Conn {
    fn new(
        app: Arc<AppState>,
        peer: PeerAddr,
        credentials: Credentials,
        (budget, place): (ReadBudget, ConnectionSlot),
    ) -> Conn {
        let rate = limits::message_rate(app.config.max_messages_per_sec, app.config.message_burst);
        let per_sec = NonZeroU32::new(STATELESS_BYTES_PER_SEC).unwrap_or(NonZeroU32::MIN);
        let burst = per_sec.saturating_mul(NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN));
        Conn {
            auth_due: Some(Instant::now() + app.config.header_timeout),
            write_deadline: ws::write_deadline(&app),
            stateless: RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst)),
            app,
            peer,
            credentials,
            docs: Documents::default(),
            joining: None,
            rate,
            budget,
            place,
            admitted: false,
            answers_ping: false,
        }
    }

    async fn run(mut self, socket: &mut WebSocket) {
        info!("connected");
        match self.connection_loop(socket).await {
            End::Close(code, reason) => {
                info!(code, %reason, "closing connection");
                Box::pin(ws::close(socket, code, &reason)).await;
            }
            End::Gone(why) => info!(why, "connection ended"),
        }
    }

    async fn connection_loop(&mut self, socket: &mut WebSocket) -> End {
        let every =
            (self.app.config.ping_interval).clamp(Duration::from_millis(10), MOST_BETWEEN_PINGS);
        let mut ping = interval_at(Instant::now() + every, every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let app = self.app.clone();
        let shutdown = app.shutdown.cancelled();
        tokio::pin!(shutdown);
        let deadline = tokio::time::sleep_until(self.next_deadline());
        tokio::pin!(deadline);
        let mut slow = SlowMessage::default();

        loop {
            let step = tokio::select! {
                biased;
                () = &mut shutdown => {
                    Err(End::Close(close_code::GOING_AWAY, "server shutting down".into()))
                }
                (index, outbound) = std::future::poll_fn(|cx| self.docs.poll_recv(cx)) => {
                    self.on_room_frame(socket, index, outbound).await
                }
                (joining, joined) = std::future::poll_fn(|cx| opening::poll_join(&mut self.joining, cx)) => {
                    // Nothing was read while it lasted: that was not silence.
                    last_heard = Instant::now();
                    self.joined(socket, joining, joined).await
                }
                inbound = socket.next(), if self.joining.is_none() => {
                    last_heard = Instant::now();
                    self.on_inbound(socket, inbound).await
                }
                // What it still sends is thrown away (by the budget)
                // while it is told why.
                () = self.budget.spent() => Err(End::Close(
                    close_code::REJECTED,
                    format!(
                        "more than {PRE_AUTH_BYTES} bytes sent before a document was \
                         authenticated; send each document's Auth message first"
                    ),
                )),
                () = &mut deadline => self.on_deadline(socket).await,
                _ = ping.tick() => {
                    if self.joining.is_none() && last_heard.elapsed() > every * 2 {
                        Err(End::Gone("no answer to two pings"))
                    } else if let Err(end) = slow.at_tick(socket.get_mut(), every, app.config.body_timeout) {
                        Err(end)
                    } else {
                        self.ping(socket).await
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
            deadline.as_mut().reset(self.next_deadline());
        }
    }

    /// When the socket must next act on its own: the auth deadline while
    /// no document is authenticated, waiting messages growing stale, and
    /// tokens to refresh or end.
    fn next_deadline(&self) -> Instant {
        let stale = self
            .docs
            .oldest_waiting()
            .map(|since| since + self.app.config.header_timeout);
        [self.auth_due, stale, self.docs.next_deadline()]
            .into_iter()
            .flatten()
            .min()
            // Far enough never to fire, near enough not to overflow.
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
    }

    async fn send(&mut self, socket: &mut WebSocket, frame: Bytes) -> Result<(), End> {
        telemetry::carried("hocuspocus", "out", frame.len());
        ws::send_binary(socket, frame, self.write_deadline)
            .await
            .map_err(|unsent| End::Gone(unsent.why()))
    }

    async fn ping(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let ping = Message::Ping(Default::default());
        ws::send_within(socket, ping, self.write_deadline)
            .await
            .map_err(|unsent| End::Gone(unsent.why()))?;
        if self.answers_ping {
            self.send(socket, wire::ping()).await?;
        }
        Ok(())
    }

    /// A frame (or the end) from the room of the document at `index`.
    async fn on_room_frame(
        &mut self,
        socket: &mut WebSocket,
        index: usize,
        outbound: Result<Bytes, CloseReason>,
    ) -> Result<(), End> {
        match outbound {
            Ok(frame) => {
                let open = &mut self.docs.open[index];
                match open.replies.to_client(&open.key, &frame) {
                    Some(message) => self.send(socket, message).await,
                    None => Ok(()),
                }
            }
            Err(reason) => self.ended(socket, index, reason).await,
        }
    }

    /// The room ended the document at `index` (see the module doc).
    async fn ended(
        &mut self,
        socket: &mut WebSocket,
        index: usize,
        reason: CloseReason,
    ) -> Result<(), End> {
        let whole_socket = matches!(
            reason,
            CloseReason::TooSlow | CloseReason::StorageFailure(_) | CloseReason::ShuttingDown
        );
        if whole_socket {
            return Err(End::Close(
                close_code::for_reason(&reason),
                reason.to_string(),
            ));
        }
        self.end_document(socket, index, &reason.to_string()).await
    }

    /// Ends the document at `index` alone, telling the provider why.
    async fn end_document(
        &mut self,
        socket: &mut WebSocket,
        index: usize,
        reason: &str,
    ) -> Result<(), End> {
        info!(doc = %self.docs.open[index].doc, %reason, "document closed");
        let key = self.docs.end(index);
        self.rearm_if_empty();
        self.send(socket, wire::close(&key, reason)).await
    }

    /// What the socket read.
    async fn on_inbound(
        &mut self,
        socket: &mut WebSocket,
        inbound: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), End> {
        match inbound {
            None => Err(End::Gone("peer closed the socket")),
            Some(Err(e)) => Err(ws::read_error(e)),
            Some(Ok(Message::Binary(frame))) => {
                socket.get_mut().message_done();
                self.on_client_frame(socket, frame).await
            }
            Some(Ok(Message::Text(_))) => Err(End::Close(
                close_code::UNSUPPORTED_DATA,
                "text frames are not supported; send binary Hocuspocus messages".into(),
            )),
            Some(Ok(Message::Close(_))) => Err(End::Gone("peer sent close")),
            Some(Ok(Message::Ping(p) | Message::Pong(p))) => {
                socket.get_mut().control_done(ws::control_wire(&p));
                Ok(())
            }
            Some(Ok(Message::Frame(_))) => Ok(()),
        }
    }

    /// A frame from the provider.
    async fn on_client_frame(&mut self, socket: &mut WebSocket, frame: Bytes) -> Result<(), End> {
        telemetry::carried("hocuspocus", "in", frame.len());
        if self.rate.as_ref().is_some_and(|r| r.check().is_err()) {
            return Err(End::Close(
                close_code::RATE_LIMITED,
                format!(
                    "more than {} messages per second; slow down",
                    self.app.config.max_messages_per_sec
                ),
            ));
        }
        if wire::is_pong(&frame) {
            return Ok(());
        }
        let addressed = wire::address(&frame).map_err(protocol_error)?;
        let (key, doc) = (addressed.key.to_owned(), addressed.doc.to_owned());
        let body = frame.slice_ref(addressed.body);
        if let Some(index) = self.docs.find(&key) {
            // An open document's token comes again when it is refreshed.
            if !wire::is_auth(&body) {
                return self.on_message(socket, index, body).await;
            }
        }
        match wire::decode_opening(&body) {
            Some(Ok(HpMessage::Auth {
                token,
                provider_version,
            })) => {
                // Only providers since 4.0 say their version, and they
                // answer pings.
                self.answers_ping |= provider_version.is_some();
                self.authenticate(socket, &key, &doc, &token).await
            }
            Some(Ok(HpMessage::Ignored(why))) => {
                ignored(&why);
                Ok(())
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(protocol_error(e)),
            None if self.docs.is_muted(&key) => Ok(()),
            None => {
                // Dropped past the bound: the sync that follows the token
                // carries whatever changes they held.
                if let Err(too_much) = self.docs.wait(&key, frame) {
                    metrics::counter!("weft_hocuspocus_dropped_total", "reason" => "waiting")
                        .increment(1);
                    debug!(key = ?key, why = %too_much.0, "message dropped");
                }
                Ok(())
            }
        }
    }

    /// A message for the open document at `index`.
    async fn on_message(
        &mut self,
        socket: &mut WebSocket,
        index: usize,
        body: Bytes,
    ) -> Result<(), End> {
        let message = wire::decode(&body).map_err(protocol_error)?;
        let inbound = match message {
            HpMessage::YSync(messages) => {
                let limits = self.app.config.engine().limits;
                let cluster = self.app.config.is_cluster();
                if let Err(refused) = limits.admits_presence_in(&body, cluster) {
                    return self.end_document(socket, index, &refused.to_string()).await;
                }
                messages
            }
            HpMessage::Stateless(payload) => {
                self.charge_stateless(payload.len())?;
                vec![Inbound::Stateless(payload)]
            }
            HpMessage::Close => {
                debug!(doc = %self.docs.open[index].doc, "provider detached the document");
                self.docs.end(index);
                self.rearm_if_empty();
                return Ok(());
            }
            HpMessage::Ignored(why) => {
                ignored(&why);
                return Ok(());
            }
            // Never here: a token opens or refreshes a document before.
            HpMessage::Auth { .. } => return Ok(()),
        };
        let sent = self.docs.open[index]
            .session
            .send(inbound, body.len())
            .await;
        match sent {
            Ok(()) => Ok(()),
            Err(reason) => self.ended(socket, index, reason).await,
        }
    }

    /// Charges a stateless message of `len` bytes to the socket's allowance.
    fn charge_stateless(&self, len: usize) -> Result<(), End> {
        let cells = u32::try_from(len)
            .ok()
            .and_then(NonZeroU32::new)
            .unwrap_or(NonZeroU32::MIN);
        match self.stateless.check_n(cells) {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Close(
                close_code::RATE_LIMITED,
                format!(
                    "stateless messages over {} KiB per second; slow down",
                    STATELESS_BYTES_PER_SEC / 1024
                ),
            )),
        }
    }
}

/// Counts (and logs, quietly) a message Hocuspocus' server would ignore.
fn ignored(why: &str) {
    metrics::counter!("weft_hocuspocus_dropped_total", "reason" => "ignored").increment(1);
    debug!(%why, "message ignored");
}

fn protocol_error(e: weft_sync::protocol::ProtocolError) -> End {
    End::Close(close_code::PROTOCOL_ERROR, e.to_string())
}

/// Joins `doc`'s room as `joiner`.
fn join(app: &Arc<AppState>, doc: &weft_storage::DocName, joiner: Joiner) -> opening::JoinFuture {
    let (app, doc) = (app.clone(), doc.clone());
    Box::pin(async move { app.rooms.join_as(&doc, joiner).await })
}
