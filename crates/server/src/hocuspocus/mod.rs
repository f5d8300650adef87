//! `GET /hocuspocus` (and a WebSocket upgrade at `/`): Hocuspocus'
//! protocol, for `@hocuspocus/provider` 4.x and the editors built on it
//! (Tiptap's collaboration extensions).
//!
//! One socket carries many documents, each opened by an Auth message with
//! a token for it (a weft document token; any or none without
//! `--auth-secret`) and decided on its own: a document refused access, or
//! at a limit, is answered with permission denied and the others go on.
//! Each open document is an editor's [`Session`] in its room, joined as
//! [`Dialect::Hocuspocus`] so it also hears the document's stateless
//! messages; the wire format is `weft_sync::hocuspocus`'s, the socket's
//! documents `documents.rs`'s. The connection loop is `ws.rs`'s, with
//! three more duties: a socket with no document authenticated within
//! `--header-timeout` of opening is closed (4401), a provider is asked for a fresh token
//! before its token ends (and the document ends with it otherwise), and
//! providers that answer them are sent Hocuspocus' own pings, so a quiet
//! document does not look dead to them.
//!
//! How a document ends follows what would cure it: what a reconnect
//! cures (the server going away, a storage failure, a client too slow or
//! over its budget) closes the socket with the code `/ws` would use, and
//! the provider reconnects and resyncs every document; what it would not
//! (the document deleted, a change refused, the document at its size
//! limit) ends that document alone, with Hocuspocus' close message.

mod documents;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use governor::DefaultDirectRateLimiter;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn, Instrument};

use weft_storage::DocName;
use weft_sync::hocuspocus::{self as wire, Message as HpMessage};
use weft_sync::protocol::Inbound;
use weft_sync::{Access, CloseReason, Dialect};

use crate::access::Credentials;
use crate::app::AppState;
use crate::auth::Mode;
use crate::close_code;
use crate::creation_limit::client_addr;
use crate::limits;
use crate::peer::PeerAddr;
use crate::refusal::Refusal;
use crate::telemetry;
use crate::ws::{self, End, Sink};
use crate::ws_upgrade::{NotAWebSocket, WebSocket, WsUpgrade};
use documents::{Documents, Due, Open, MAX_DOCUMENTS};

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
    let slot = app.connection_limit.try_admit();
    let tracked = app.connections.token();
    ws.on_upgrade(ws::socket_config(&app), move |socket| {
        let (mut sink, mut stream) = socket.split();
        async move {
            let span = tracing::info_span!("hocuspocus", %peer);
            if let Some(_slot) = slot {
                let conn = Conn::new(app, peer, credentials);
                conn.run(&mut sink, &mut stream).instrument(span).await;
            } else {
                let reason = format!(
                    "the server has its maximum of {} connections; try again later",
                    app.connection_limit.max()
                );
                info!(parent: &span, %reason, "refused");
                Box::pin(ws::close(
                    &mut sink,
                    &mut stream,
                    close_code::TRY_AGAIN_LATER,
                    &reason,
                ))
                .await;
            }
            drop(tracked);
        }
    })
}

/// One Hocuspocus socket.
struct Conn {
    app: Arc<AppState>,
    peer: PeerAddr,
    /// The upgrade request's token, for Auth messages without one.
    credentials: Credentials,
    docs: Documents,
    rate: Option<DefaultDirectRateLimiter>,
    opened: Instant,
    /// A document has been authenticated on this socket.
    authenticated: bool,
    /// A provider here answers Hocuspocus' pings.
    answers_ping: bool,
}

impl Conn {
    fn new(app: Arc<AppState>, peer: PeerAddr, credentials: Credentials) -> Conn {
        let rate = limits::message_rate(app.config.max_messages_per_sec, app.config.message_burst);
        Conn {
            app,
            peer,
            credentials,
            docs: Documents::default(),
            rate,
            opened: Instant::now(),
            authenticated: false,
            answers_ping: false,
        }
    }

    async fn run(mut self, sink: &mut Sink, stream: &mut SplitStream<WebSocket>) {
        info!("connected");
        match self.connection_loop(sink, stream).await {
            End::Close(code, reason) => {
                info!(code, %reason, "closing connection");
                Box::pin(ws::close(sink, stream, code, &reason)).await;
            }
            End::Gone(why) => info!(why, "connection ended"),
        }
    }

    async fn connection_loop(
        &mut self,
        sink: &mut Sink,
        stream: &mut SplitStream<WebSocket>,
    ) -> End {
        let every = self
            .app
            .config
            .ping_interval
            .clamp(Duration::from_millis(10), MOST_BETWEEN_PINGS);
        let mut ping = interval_at(Instant::now() + every, every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let app = self.app.clone();
        let shutdown = app.shutdown.cancelled();
        tokio::pin!(shutdown);
        let deadline = tokio::time::sleep_until(self.next_deadline());
        tokio::pin!(deadline);

        loop {
            let step = tokio::select! {
                biased;
                () = &mut shutdown => {
                    Err(End::Close(close_code::GOING_AWAY, "server shutting down".into()))
                }
                (index, outbound) = std::future::poll_fn(|cx| self.docs.poll_recv(cx)) => {
                    self.on_room_frame(sink, index, outbound).await
                }
                inbound = stream.next() => {
                    last_heard = Instant::now();
                    match inbound {
                        None => Err(End::Gone("peer closed the socket")),
                        Some(Err(e)) => Err(ws::read_error(e)),
                        Some(Ok(Message::Binary(frame))) => self.on_client_frame(sink, frame).await,
                        Some(Ok(Message::Text(_))) => Err(End::Close(
                            close_code::UNSUPPORTED_DATA,
                            "text frames are not supported; send binary Hocuspocus messages".into(),
                        )),
                        Some(Ok(Message::Close(_))) => Err(End::Gone("peer sent close")),
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                    }
                }
                () = &mut deadline => self.on_deadline(sink).await,
                _ = ping.tick() => {
                    if last_heard.elapsed() > every * 2 {
                        Err(End::Gone("no answer to two pings"))
                    } else {
                        self.ping(sink).await
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
            deadline.as_mut().reset(self.next_deadline());
        }
    }

    /// When the socket must next act on its own: the auth deadline until
    /// a document is authenticated, then its tokens' refreshes and ends.
    fn next_deadline(&self) -> Instant {
        let auth = (!self.authenticated).then_some(self.opened + self.app.config.header_timeout);
        [auth, self.docs.next_deadline()]
            .into_iter()
            .flatten()
            .min()
            // Far enough never to fire, near enough not to overflow.
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
    }

    async fn send(&mut self, sink: &mut Sink, frame: Bytes) -> Result<(), End> {
        telemetry::carried("hocuspocus", "out", frame.len());
        ws::send_binary(sink, frame)
            .await
            .map_err(|_| End::Gone("write failed"))
    }

    async fn ping(&mut self, sink: &mut Sink) -> Result<(), End> {
        if sink.send(Message::Ping(Default::default())).await.is_err() {
            return Err(End::Gone("write failed"));
        }
        if self.answers_ping {
            self.send(sink, wire::ping()).await?;
        }
        Ok(())
    }

    /// A frame (or the end) from the room of the document at `index`.
    async fn on_room_frame(
        &mut self,
        sink: &mut Sink,
        index: usize,
        outbound: Result<Bytes, CloseReason>,
    ) -> Result<(), End> {
        match outbound {
            Ok(frame) => {
                let open = &mut self.docs.open[index];
                match open.replies.to_client(&open.key, &frame) {
                    Some(message) => self.send(sink, message).await,
                    None => Ok(()),
                }
            }
            Err(reason) => self.ended(sink, index, reason).await,
        }
    }

    /// The room ended the document at `index` (see the module doc).
    async fn ended(
        &mut self,
        sink: &mut Sink,
        index: usize,
        reason: CloseReason,
    ) -> Result<(), End> {
        let doc_only = matches!(
            reason,
            CloseReason::Deleted | CloseReason::Rejected(_) | CloseReason::TooLarge(_)
        );
        if !doc_only {
            return Err(End::Close(
                close_code::for_reason(&reason),
                reason.to_string(),
            ));
        }
        info!(doc = %self.docs.open[index].doc, %reason, "document closed");
        let key = self.docs.end(index);
        self.send(sink, wire::close(&key, &reason.to_string()))
            .await
    }

    /// A frame from the provider.
    async fn on_client_frame(&mut self, sink: &mut Sink, frame: Bytes) -> Result<(), End> {
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
                return self.on_message(sink, index, body).await;
            }
        }
        match wire::decode_opening(&body) {
            Some(Ok(HpMessage::Auth {
                token,
                provider_version,
            })) => {
                self.answers_ping |= provider_version.as_deref().is_some_and(wire::answers_ping);
                self.authenticate(sink, &key, &doc, &token).await
            }
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(protocol_error(e)),
            None if self.docs.is_ended(&key) => Ok(()),
            None => self
                .docs
                .wait(&key, frame)
                .map_err(|too_much| End::Close(close_code::REJECTED, too_much.0)),
        }
    }

    /// A message for the open document at `index`.
    async fn on_message(&mut self, sink: &mut Sink, index: usize, body: Bytes) -> Result<(), End> {
        let message = wire::decode(&body).map_err(protocol_error)?;
        let inbound = match message {
            HpMessage::YSync(messages) => {
                let limits = self.app.config.engine().limits;
                limits
                    .admits_presence_in(&body, self.app.config.is_cluster())
                    .map_err(|refused| End::Close(close_code::REJECTED, refused.to_string()))?;
                messages
            }
            HpMessage::Stateless(payload) => vec![Inbound::Stateless(payload)],
            HpMessage::Close => {
                debug!(doc = %self.docs.open[index].doc, "provider detached the document");
                self.docs.end(index);
                return Ok(());
            }
            // Handled before: a token opens or refreshes a document.
            HpMessage::Auth { .. } => return Ok(()),
        };
        let sent = self.docs.open[index]
            .session
            .send(inbound, body.len())
            .await;
        match sent {
            Ok(()) => Ok(()),
            Err(reason) => self.ended(sink, index, reason).await,
        }
    }

    /// An Auth message: opens the document, or takes a fresh token for an
    /// open one.
    async fn authenticate(
        &mut self,
        sink: &mut Sink,
        key: &str,
        name: &str,
        token: &str,
    ) -> Result<(), End> {
        let doc = match DocName::new(name) {
            Ok(doc) => doc,
            Err(e) => return self.deny(sink, key, &e.to_string()).await,
        };
        let credentials = match token.trim() {
            "" => Credentials(self.credentials.0.clone()),
            token => Credentials(Some(token.to_owned())),
        };
        let grant = match self.app.authorize(&credentials, &doc, Mode::Read) {
            Ok(grant) => grant,
            Err(e) => return self.deny(sink, key, &e.to_string()).await,
        };
        let expiry = self.app.token_deadline(&grant);
        if let Some(index) = self.docs.find(key) {
            if self.docs.open[index].mode == grant.mode {
                self.docs.open[index].set_expiry(expiry);
                return self
                    .send(sink, wire::authenticated(key, grant.mode == Mode::Read))
                    .await;
            }
            // Other access: the document is joined again with it.
            self.docs.end(index);
        }
        let Some(index) = self.open(sink, key, doc, grant.mode).await? else {
            return Ok(());
        };
        self.docs.open[index].set_expiry(expiry);
        self.authenticated = true;
        self.send(sink, wire::authenticated(key, grant.mode == Mode::Read))
            .await?;
        for frame in self.docs.take_waiting(key) {
            let body = match wire::address(&frame) {
                Ok(addressed) => frame.slice_ref(addressed.body),
                Err(e) => return Err(protocol_error(e)),
            };
            let Some(index) = self.docs.find(key) else {
                break; // the document ended meanwhile
            };
            self.on_message(sink, index, body).await?;
        }
        Ok(())
    }

    /// Joins `doc`'s room for `key`; `None` if refused (and said so).
    async fn open(
        &mut self,
        sink: &mut Sink,
        key: &str,
        doc: DocName,
        mode: Mode,
    ) -> Result<Option<usize>, End> {
        if self.docs.open.len() >= MAX_DOCUMENTS {
            let reason = format!(
                "this connection has its maximum of {MAX_DOCUMENTS} documents open; \
                 close one or open another connection"
            );
            self.deny(sink, key, &reason).await?;
            return Ok(None);
        }
        // The socket's own place covers its first document.
        let slot = if self.docs.open.is_empty() {
            None
        } else {
            match self.app.connection_limit.try_admit() {
                Some(slot) => Some(slot),
                None => {
                    let reason = format!(
                        "the server has its maximum of {} connections; try again later",
                        self.app.connection_limit.max()
                    );
                    self.deny(sink, key, &reason).await?;
                    return Ok(None);
                }
            }
        };
        let access = match mode {
            Mode::Write => Access::ReadWrite,
            Mode::Read => Access::ReadOnly,
        };
        let client = Some(client_addr(self.peer.0.ip()));
        let joined = Box::pin(
            self.app
                .rooms
                .join_as(&doc, (access, client), Dialect::Hocuspocus),
        )
        .await;
        match joined {
            Ok(session) => {
                info!(%doc, mode = mode.as_str(), conn = session.id(), "document opened");
                Ok(Some(
                    self.docs.add(Open::new(key, doc, session, mode, slot)),
                ))
            }
            Err(e) => {
                let refusal = Refusal::of_room(&e);
                warn!(%doc, error = %e, "could not open document");
                if refusal.status.is_server_error() {
                    return Err(End::Close(refusal.close_code, e.to_string()));
                }
                self.deny(sink, key, &e.to_string()).await?;
                Ok(None)
            }
        }
    }

    /// Refuses `key` access, saying why; its messages are dropped until
    /// it sends another token.
    async fn deny(&mut self, sink: &mut Sink, key: &str, reason: &str) -> Result<(), End> {
        info!(key = %key.split('\0').next().unwrap_or(key), %reason, "document refused");
        if let Some(index) = self.docs.find(key) {
            self.docs.end(index);
        } else {
            self.docs.forget(key);
        }
        self.send(sink, wire::permission_denied(key, reason)).await
    }

    async fn on_deadline(&mut self, sink: &mut Sink) -> Result<(), End> {
        let now = Instant::now();
        if !self.authenticated && now >= self.opened + self.app.config.header_timeout {
            return Err(End::Close(
                close_code::UNAUTHORIZED,
                format!(
                    "no document authenticated within {} s of connecting; \
                     send an Auth message first",
                    self.app.config.header_timeout.as_secs_f32()
                ),
            ));
        }
        // Expired documents are ended from the highest index down, so the
        // indices of the others stay valid.
        let mut due = self.docs.due(now);
        due.sort_by_key(|d| {
            std::cmp::Reverse(match d {
                Due::Refresh(i) | Due::Expired(i) => *i,
            })
        });
        for d in due {
            match d {
                Due::Refresh(index) => {
                    let message = wire::token_request(&self.docs.open[index].key);
                    self.send(sink, message).await?;
                }
                Due::Expired(index) => {
                    let key = self.docs.open[index].key.clone();
                    self.deny(sink, &key, "token expired; send a fresh one")
                        .await?;
                }
            }
        }
        Ok(())
    }
}

fn protocol_error(e: weft_sync::protocol::ProtocolError) -> End {
    End::Close(close_code::PROTOCOL_ERROR, e.to_string())
}
