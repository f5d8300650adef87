//! Opening and ending a Hocuspocus socket's documents: an Auth message's
//! token checked for its document, the room joined (while the socket
//! goes on delivering its other documents' frames), what waited for the
//! token handed on, refusals said to that document alone, and the
//! deadlines: the socket's for authenticating anything, stale waiting
//! messages, and each token's refresh and end.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tracing::{debug, info, warn};

use weft_storage::DocName;
use weft_sync::hocuspocus as wire;
use weft_sync::{Access, Dialect, Joiner, RoomError, Session};

use super::documents::{Due, Open, MAX_DOCUMENTS, MAX_SESSIONS_PER_DOCUMENT};
use super::{protocol_error, Conn, PRE_AUTH_BYTES};
use crate::access::Credentials;
use crate::auth::Mode;
use crate::close_code;
use crate::creation_limit::client_addr;
use crate::limits::ConnectionSlot;
use crate::refusal::Refusal;
use crate::ws::End;
use crate::ws_upgrade::WebSocket;

/// A room being joined.
pub type JoinFuture = Pin<Box<dyn Future<Output = Result<Session, RoomError>> + Send>>;

/// A document whose room is being joined, and what it opens with.
pub struct Joining {
    key: String,
    doc: DocName,
    mode: Mode,
    author: Option<String>,
    expiry: Option<Instant>,
    slot: Option<ConnectionSlot>,
    future: JoinFuture,
}

/// The join in progress, once it is done.
pub fn poll_join(
    joining: &mut Option<Joining>,
    cx: &mut Context<'_>,
) -> Poll<(Joining, Result<Session, RoomError>)> {
    let Some(j) = joining else {
        return Poll::Pending;
    };
    match j.future.as_mut().poll(cx) {
        Poll::Ready(joined) => match joining.take() {
            Some(j) => Poll::Ready((j, joined)),
            None => Poll::Pending,
        },
        Poll::Pending => Poll::Pending,
    }
}

impl Conn {
    /// An Auth message: opens the document, or takes a fresh token for an
    /// open one.
    pub(super) async fn authenticate(
        &mut self,
        socket: &mut WebSocket,
        key: &str,
        name: &str,
        token: &str,
    ) -> Result<(), End> {
        let doc = match DocName::new(name) {
            Ok(doc) => doc,
            Err(e) => return self.deny(socket, key, &e.to_string()).await,
        };
        let credentials = match token.trim() {
            "" => Credentials(self.credentials.0.clone()),
            token => Credentials(Some(token.to_owned())),
        };
        let grant = match self.app.authorize(&credentials, &doc, Mode::Read) {
            Ok(grant) => grant,
            Err(e) => return self.deny(socket, key, &e.to_string()).await,
        };
        if let Err(why) = self.admit() {
            return self.deny(socket, key, &why).await;
        }
        let expiry = self.app.token_deadline(&grant);
        if let Some(index) = self.docs.find(key) {
            // A fresh token for an open document, answered (as Hocuspocus
            // does) with nothing. One that changes its access would need
            // the document joined again, and what the old session had
            // queued would be lost: the provider reconnects instead, and
            // resyncs.
            let open = &self.docs.open[index];
            if open.mode != grant.mode || open.author != grant.sub {
                return Err(End::Close(
                    close_code::TRY_AGAIN_LATER,
                    format!(
                        "the new token for {doc} grants other access or is another user's; \
                         reconnect to use it"
                    ),
                ));
            }
            self.docs.open[index].refresh(expiry);
            return Ok(());
        }
        self.start_join(socket, key, doc, (grant.mode, grant.sub), expiry)
            .await
    }

    /// A valid token: the socket is who it says. It may send freely, and
    /// takes its place among the server's connections (it held one among
    /// those waiting to authenticate until now).
    fn admit(&mut self) -> Result<(), String> {
        if !self.admitted {
            let place = self.app.connection_limit.admit(self.peer.0.ip());
            self.place = place.map_err(|refused| refused.to_string())?;
            self.admitted = true;
        }
        self.auth_due = None;
        self.budget.lift();
        Ok(())
    }

    /// Starts joining `doc` for `key`, unless a limit refuses it.
    async fn start_join(
        &mut self,
        socket: &mut WebSocket,
        key: &str,
        doc: DocName,
        (mode, author): (Mode, Option<String>),
        expiry: Option<Instant>,
    ) -> Result<(), End> {
        if let Some(why) = self.over_a_limit(&doc) {
            return self.deny(socket, key, &why).await;
        }
        // The socket's own place covers its first document.
        let slot = if self.docs.open.is_empty() {
            None
        } else {
            match self.app.connection_limit.admit(self.peer.0.ip()) {
                Ok(slot) => Some(slot),
                Err(refused) => return self.deny(socket, key, &refused.to_string()).await,
            }
        };
        let access = match mode {
            Mode::Write => Access::ReadWrite,
            Mode::Read => Access::ReadOnly,
        };
        let joiner = Joiner {
            access,
            client: Some(client_addr(self.peer.0.ip())),
            dialect: Dialect::Hocuspocus,
            author: author.clone(),
            via: "hocuspocus",
        };
        let future = super::join(&self.app, &doc, joiner);
        self.joining = Some(Joining {
            key: key.to_owned(),
            doc,
            mode,
            author,
            expiry,
            slot,
            future,
        });
        Ok(())
    }

    /// Why the socket may not open `doc` now, if it may not.
    fn over_a_limit(&self, doc: &DocName) -> Option<String> {
        if self.docs.open.len() >= MAX_DOCUMENTS {
            return Some(format!(
                "this connection has its maximum of {MAX_DOCUMENTS} documents open; \
                 close one or open another connection"
            ));
        }
        if self.docs.sessions_of(doc) >= MAX_SESSIONS_PER_DOCUMENT {
            return Some(format!(
                "this connection has the document open {MAX_SESSIONS_PER_DOCUMENT} times \
                 already; close one of them"
            ));
        }
        None
    }

    /// A join finished: the document opens, and what waited for it is
    /// handed on; or it is refused (a fault a reconnect may cure closes
    /// the socket).
    pub(super) async fn joined(
        &mut self,
        socket: &mut WebSocket,
        joining: Joining,
        joined: Result<Session, RoomError>,
    ) -> Result<(), End> {
        let Joining {
            key,
            doc,
            mode,
            author,
            expiry,
            slot,
            ..
        } = joining;
        let session = match joined {
            Ok(session) => session,
            Err(e) => {
                warn!(%doc, error = %e, "could not open document");
                // What a reconnect cures (the store out of reach for now,
                // the server going) closes the socket; what concerns this
                // document (full, damaged, ...) refuses it alone.
                let transient = matches!(
                    e,
                    RoomError::ShuttingDown
                        | RoomError::StoreUnavailable(_)
                        | RoomError::StorageFailure(_)
                        | RoomError::Busy
                        | RoomError::TryAgain(_)
                );
                if transient {
                    return Err(End::Close(Refusal::of_room(&e).close_code, e.to_string()));
                }
                return self.deny(socket, &key, &e.to_string()).await;
            }
        };
        info!(%doc, mode = mode.as_str(), conn = session.id(), "document opened");
        let mut open = Open::new(&key, (doc, session), (mode, author), slot);
        open.set_expiry(expiry);
        self.docs.add(open);
        self.send(socket, wire::authenticated(&key, mode == Mode::Read))
            .await?;
        for frame in self.docs.take_waiting(&key) {
            let body = match wire::address(&frame) {
                Ok(addressed) => frame.slice_ref(addressed.body),
                Err(e) => return Err(protocol_error(e)),
            };
            let Some(index) = self.docs.find(&key) else {
                break; // the document ended meanwhile
            };
            self.on_message(socket, index, body).await?;
        }
        Ok(())
    }

    /// A socket left with no document open and none being joined is as
    /// one that never had any: it must authenticate one within the header
    /// deadline, under the pre-auth budget (else a socket could keep its
    /// freedom after its last token ended).
    pub(super) fn rearm_if_empty(&mut self) {
        if self.docs.open.is_empty() && self.joining.is_none() && self.auth_due.is_none() {
            self.auth_due = Some(Instant::now() + self.app.config.header_timeout);
            self.budget.limit(PRE_AUTH_BYTES);
        }
    }

    /// Refuses `key` access, saying why; its messages are dropped until
    /// it sends another token. A socket left with no document and none
    /// being joined must authenticate one again within the header
    /// deadline, under the pre-auth budget.
    pub(super) async fn deny(
        &mut self,
        socket: &mut WebSocket,
        key: &str,
        reason: &str,
    ) -> Result<(), End> {
        // Debug-formatted: the address is the client's, and may hold
        // anything (line breaks, escapes).
        debug!(key = ?key, %reason, "document refused");
        metrics::counter!("weft_hocuspocus_refusals_total").increment(1);
        let was_open = match self.docs.find(key) {
            Some(index) => {
                self.docs.end(index);
                true
            }
            None => {
                self.docs.forget(key);
                false
            }
        };
        self.rearm_if_empty();
        self.send(socket, wire::permission_denied(key, reason))
            .await?;
        if was_open {
            // As Hocuspocus ends a connection whose access went: the
            // provider stops counting itself in sync.
            self.send(socket, wire::close(key, reason)).await?;
        }
        Ok(())
    }

    pub(super) async fn on_deadline(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let now = Instant::now();
        if self.auth_due.is_some_and(|due| now >= due) {
            return Err(End::Close(
                close_code::UNAUTHORIZED,
                format!(
                    "no document authenticated within {} s; send an Auth message with a valid token",
                    self.app.config.header_timeout.as_secs_f32()
                ),
            ));
        }
        if let Some(stale) = now.checked_sub(self.app.config.header_timeout) {
            self.docs.drop_stale_waiting(stale);
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
                    self.send(socket, message).await?;
                }
                Due::Expired(index) => {
                    let key = self.docs.open[index].key.clone();
                    self.deny(socket, &key, "token expired; send a fresh one")
                        .await?;
                }
            }
        }
        Ok(())
    }
}
