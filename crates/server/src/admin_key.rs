//! `AdminKey`: the extractor that guards `/auth/token` and `/admin`.
//!
//! The key comes only as `Authorization: Bearer <admin key>` and is compared
//! in constant time. Document tokens never pass here. A configured key must
//! be at least [`MIN_BYTES`] long (`weft serve` refuses to start otherwise),
//! and wrong keys are counted (`weft_auth_failures_total{reason="admin_key"}`)
//! and throttled per client address (see `admin_throttle.rs`).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;
use subtle::ConstantTimeEq;

use crate::access::bearer;
use crate::admin_throttle::Attempt;
use crate::api_error::ApiError;
use crate::app::AppState;
use crate::peer::PeerAddr;

/// The shortest admin key `weft serve` accepts, in bytes.
pub const MIN_BYTES: usize = 32;

/// Proof that the request carried the admin key.
#[derive(Debug)]
pub struct AdminKey;

impl FromRequestParts<Arc<AppState>> for AdminKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<AppState>) -> Result<Self, ApiError> {
        check(parts, app)
    }
}

/// Refuses a configured admin key too short to resist guessing.
pub fn check_strength(key: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        key.len() >= MIN_BYTES,
        "the admin key (--admin-key / WEFT_ADMIN_KEY) is {} bytes; use at least {MIN_BYTES} bytes \
         of random, e.g. the output of `openssl rand -hex 32`",
        key.len()
    );
    Ok(())
}

/// Whether the request carries the admin key, unless its address is locked
/// out for guessing.
pub fn check(parts: &Parts, app: &AppState) -> Result<AdminKey, ApiError> {
    let Some(expected) = app.config.admin_key() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is off: start weft with --admin-key (or WEFT_ADMIN_KEY)",
        ));
    };
    // No key is no guess: it spends nothing.
    let given = bearer(&parts.headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin_key_missing",
            "send the admin key as Authorization: Bearer <key>",
        )
    })?;
    let attempt = app.admin_failures.attempt(client_address(parts), || {
        bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
    });
    match attempt {
        Attempt::Right => Ok(AdminKey),
        Attempt::Wrong => {
            count_failure("admin_key");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "admin_key_wrong",
                "the admin key is wrong",
            ))
        }
        Attempt::LockedOut(wait) => {
            count_failure("admin_key_throttled");
            let secs = u32::try_from(wait.as_secs()).unwrap_or(u32::MAX);
            // Whole seconds, rounded up: never sooner than the bucket allows.
            let secs = secs
                .saturating_add(u32::from(wait.subsec_nanos() > 0))
                .max(1);
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!("too many wrong admin keys from this address; try again in {secs} s"),
            )
            .retry_after(secs))
        }
    }
}

fn count_failure(reason: &'static str) {
    metrics::counter!("weft_auth_failures_total", "reason" => reason).increment(1);
}

/// The client's IP address, if the server recorded one for the connection.
fn client_address(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|ConnectInfo(peer)| peer.0.ip())
}
