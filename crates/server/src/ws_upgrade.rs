//! `WsUpgrade`: the WebSocket handshake (RFC 6455) as an axum extractor,
//! handing the upgraded connection to tokio-tungstenite directly.
//!
//! axum's own `WebSocketUpgrade` hides tungstenite's frames, and weft needs
//! them: a large message (a big document's sync step 2) is sent as
//! fragments. Sent whole, tungstenite copies it into one output buffer and
//! shifts the unsent rest down after every partial socket write (quadratic
//! in the message size), then keeps that buffer's capacity for the rest of
//! the connection: a 20 MB document would pin 20 MB per editor.

use std::future::Future;

use futures_util::future::Either;
use futures_util::FutureExt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::api_error::ApiError;
use crate::read_budget::{Budgeted, ReadBudget};

/// The server side of an upgraded connection.
pub type WebSocket = WebSocketStream<Budgeted<TokioIo<hyper::upgrade::Upgraded>>>;

/// A valid WebSocket handshake request, ready to be accepted.
#[derive(Debug)]
pub struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket handshake.
#[derive(Debug)]
pub struct NotAWebSocket(&'static str, StatusCode);

impl std::fmt::Display for NotAWebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl IntoResponse for NotAWebSocket {
    fn into_response(self) -> Response {
        ApiError::new(
            self.1,
            "not_a_websocket",
            format!("{}; connect with a WebSocket client (y-websocket)", self.0),
        )
        .into_response()
    }
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotAWebSocket;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let refuse = |why| Err(NotAWebSocket(why, StatusCode::BAD_REQUEST));
        if parts.method != Method::GET {
            return Err(NotAWebSocket(
                "a WebSocket handshake is a GET request",
                StatusCode::METHOD_NOT_ALLOWED,
            ));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return refuse("the `Connection` header must include `upgrade`");
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return refuse("the `Upgrade` header must be `websocket`");
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v != "13")
        {
            return refuse("the `Sec-WebSocket-Version` header must be 13");
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return refuse("the `Sec-WebSocket-Key` header is missing");
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(NotAWebSocket(
                "this connection cannot be upgraded (WebSocket needs HTTP/1.1)",
                StatusCode::UPGRADE_REQUIRED,
            ));
        };
        Ok(WsUpgrade { key, on_upgrade })
    }
}

impl WsUpgrade {
    /// Answers 101 Switching Protocols and runs `callback` on the
    /// connection once it is upgraded, its reads held to `budget` if any.
    /// The task is spawned: the caller tracks it (see
    /// `AppState::connections`).
    pub fn on_upgrade<F, Fut>(
        self,
        config: WebSocketConfig,
        budget: Option<ReadBudget>,
        callback: F,
    ) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        // The connection's future is the task's own (one allocation, the
        // task). The upgrade before it is boxed and freed once the socket
        // is made, and chained with `then`, whose state is either the
        // upgrade and the callback or the connection's future, never both:
        // an async block would keep room for what it captured (the
        // callback) beside the connection's future for its whole life.
        let upgrading = Box::pin(async move {
            let upgraded = on_upgrade.await.ok()?;
            Some(
                WebSocketStream::from_raw_socket(
                    Budgeted::new(TokioIo::new(upgraded), budget),
                    Role::Server,
                    Some(config),
                )
                .await,
            )
        });
        tokio::spawn(upgrading.then(move |socket| match socket {
            Some(socket) => Either::Left(callback(socket)),
            None => Either::Right(std::future::ready(())), // the client went away mid-handshake
        }));
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}
