//! Getting a request's token and checking it against the document it asks for.
//!
//! Browsers cannot put headers on `WebSocket` or `EventSource` requests, so a
//! token may come as `?token=`, as `Authorization: Bearer`, or as a
//! `weft_token` cookie, in that order of preference. An empty or blank value
//! counts as absent, so `?token=` cannot hide a valid header behind it.

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
        query_token(uri.query()).is_none()
            && bearer(headers).is_none()
            && cookie(headers, "weft_token").is_some()
    }
}

/// `value` trimmed, unless nothing is left.
fn non_blank(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

fn query_token(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .filter(|(k, _)| k == "token")
        .find_map(|(_, v)| non_blank(&v))
}

pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    non_blank(token)
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then(|| non_blank(v))?
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

    /// When a connection admitted with `grant` must end, if ever. An expiry
    /// further away than a century (tokens may name any time up to the year
    /// 9999) counts as never, rather than risk overflowing an `Instant`.
    pub fn token_deadline(&self, grant: &Grant) -> Option<tokio::time::Instant> {
        const CENTURY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);
        if !self.config.auth_expiry_disconnects {
            return None;
        }
        let left = grant
            .expires_at?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        if left > CENTURY {
            return None;
        }
        tokio::time::Instant::now().checked_add(left)
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

    #[test]
    fn blank_values_count_as_absent() {
        assert_eq!(query_token(Some("token=&token=%20")), None);
        assert_eq!(query_token(Some("token=&token=t")), Some("t".into()));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer   "));
        assert_eq!(bearer(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("weft_token=; weft_token=t3"),
        );
        assert_eq!(cookie(&h, "weft_token"), Some("t3".into()));
    }
}
