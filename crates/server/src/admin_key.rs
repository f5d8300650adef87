//! `AdminKey`: the extractor that guards `/auth/token` and `/admin`.
//!
//! The key comes only as `Authorization: Bearer <admin key>` and is compared
//! in constant time. Document tokens never pass here.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq;

use crate::access::bearer;
use crate::api_error::ApiError;
use crate::app::AppState;

/// Proof that the request carried the admin key.
#[derive(Debug)]
pub struct AdminKey;

impl FromRequestParts<Arc<AppState>> for AdminKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<AppState>) -> Result<Self, ApiError> {
        check(&parts.headers, app)
    }
}

/// Whether `headers` carry the admin key.
pub fn check(headers: &HeaderMap, app: &AppState) -> Result<AdminKey, ApiError> {
    let Some(expected) = app.config.admin_key() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "the admin API is off: start weft with --admin-key (or WEFT_ADMIN_KEY)",
        ));
    };
    let given = bearer(headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin_key_missing",
            "send the admin key as Authorization: Bearer <key>",
        )
    })?;
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(AdminKey)
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin_key_wrong",
            "the admin key is wrong",
        ))
    }
}
