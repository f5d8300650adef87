//! `DocPath`: the `{doc}` part of a URL, validated before anything else runs.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use weft_storage::DocName;

use crate::api_error::ApiError;

/// A valid document name taken from the request path (percent-decoded).
#[derive(Debug)]
pub struct DocPath(pub DocName);

impl<S: Send + Sync> FromRequestParts<S> for DocPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_doc_name",
                    format!("the document name in the URL could not be read: {e}"),
                )
            })?;
        DocName::new(raw)
            .map(DocPath)
            .map_err(|e| ApiError::bad_request("invalid_doc_name", e.to_string()))
    }
}
