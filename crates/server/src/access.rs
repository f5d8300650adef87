//! Getting a request's token and checking it against the document it asks for.
//!
//! Browsers cannot put headers on `WebSocket` or `EventSource` requests, so a
//! token may come as `?token=`, as `Authorization: Bearer`, or as a
//! `weft_token` cookie, in that order of preference.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use weft_storage::DocName;

use crate::app::AppState;
use crate::auth::{AuthError, Grant, Mode};

/// The token a request carries, if any.
#[derive(Debug, Default)]
pub struct Credentials(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Credentials {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Credentials(
            query_token(parts.uri.query())
                .or_else(|| bearer(&parts.headers))
                .or_else(|| cookie(&parts.headers, "weft_token")),
        ))
    }
}

impl Credentials {
    /// Whether the request's only credential is the `weft_token` cookie,
    /// one a browser adds by itself to requests from any site.
    pub fn from_cookie_only(uri: &axum::http::Uri, headers: &HeaderMap) -> bool {
        let given = |t: &Option<String>| t.as_deref().is_some_and(|t| !t.trim().is_empty());
        !given(&query_token(uri.query()))
            && !given(&bearer(headers))
            && given(&cookie(headers, "weft_token"))
    }
}

fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
}

impl AppState {
    /// Checks `credentials` for `needed` access to `doc`. In open mode (no
    /// secret or key configured) everything is allowed.
    pub fn authorize(
        &self,
        credentials: &Credentials,
        doc: &DocName,
        needed: Mode,
    ) -> Result<Grant, AuthError> {
        match &self.auth {
            None => Ok(Grant {
                mode: Mode::Write,
                sub: None,
                expires_at: None,
            }),
            Some(auth) => auth
                .check(credentials.0.as_deref(), doc, needed)
                .inspect_err(|e| {
                    metrics::counter!("weft_auth_failures_total", "reason" => e.code())
                        .increment(1);
                }),
        }
    }

    /// When a connection admitted with `grant` must end, if ever.
    pub fn token_deadline(&self, grant: &Grant) -> Option<tokio::time::Instant> {
        if !self.config.auth_expiry_disconnects {
            return None;
        }
        let left = grant
            .expires_at?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        Some(tokio::time::Instant::now() + left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn finds_tokens_where_browsers_can_put_them() {
        assert_eq!(
            query_token(Some("a=1&token=abc%2Ed&b")),
            Some("abc.d".into())
        );
        assert_eq!(query_token(Some("tokens=x")), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  t1 "),
        );
        assert_eq!(bearer(&h), Some("t1".into()));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; weft_token=t2; c=d"),
        );
        assert_eq!(cookie(&h, "weft_token"), Some("t2".into()));
    }
}
