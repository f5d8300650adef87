//! `GET /docs/{doc}/history`: a document's changes as people read them,
//! who made each, when, through what and how much it did; a page at a
//! time, filtered by time and author; and `GET
//! /docs/{doc}/attribution/{text}`, who wrote each part of a text. A read
//! token for the document is enough. The work itself is
//! `weft_sync::history`'s.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use weft_sync::history::{HistoryPage, HistoryQuery, PointInTime};
use weft_sync::EventId;

use crate::access::Credentials;
use crate::api_error::ApiError;
use crate::app::AppState;
use crate::auth::Mode;
use crate::doc_path::DocPath;
use crate::edits_api::DocRoot;

/// Changes in a page unless `limit` says otherwise.
const DEFAULT_PAGE: usize = 100;

#[derive(Debug, Deserialize)]
pub struct HistoryParams {
    /// From the previous page's `next`.
    cursor: Option<u64>,
    /// RFC 3339 times (`2026-12-02T17:00:00Z`).
    since: Option<String>,
    until: Option<String>,
    author: Option<String>,
    limit: Option<usize>,
}

/// `GET /docs/{doc}/history?since=&until=&author=&limit=&cursor=`.
pub async fn history(
    State(app): State<Arc<AppState>>,
    DocPath(doc): DocPath,
    Query(params): Query<HistoryParams>,
    credentials: Credentials,
) -> Result<Json<HistoryPage>, ApiError> {
    app.authorize(&credentials, &doc, Mode::Read)?;
    let query = HistoryQuery {
        after: params.cursor,
        since_ms: params.since.as_deref().map(query_time).transpose()?,
        until_ms: params.until.as_deref().map(query_time).transpose()?,
        author: params.author,
        limit: params.limit.unwrap_or(DEFAULT_PAGE),
    };
    Ok(Json(app.rooms.history(&doc, &query).await?))
}

/// `GET /docs/{doc}/attribution/{text}`: who wrote each part of the text
/// `text` as it is now, as runs of `{text, id, seq, at_ms, author, via}`
/// (all but `text` null for text older than the log kept).
pub async fn attribution(
    State(app): State<Arc<AppState>>,
    DocRoot { doc, root }: DocRoot,
    credentials: Credentials,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&credentials, &doc, Mode::Read)?;
    let runs = app.rooms.attribution(&doc, &root).await?;
    Ok(Json(serde_json::json!({ "runs": runs })))
}

/// A point in a document's history as people write it: an event id (as
/// `weft-event-id` and SSE give them) or an RFC 3339 time.
pub(crate) fn point_in_time(at: &str) -> Result<PointInTime, String> {
    if let Ok(id) = at.parse::<EventId>() {
        return Ok(PointInTime::Change(id));
    }
    time_ms(at).map(PointInTime::Time).map_err(|_| {
        format!("{at:?} is neither an event id nor an RFC 3339 time (such as 2026-12-02T17:00:00Z)")
    })
}

/// An RFC 3339 UTC time as milliseconds since the epoch; the error says
/// what a time looks like. (The HTTP API and the CLI both read times here.)
pub(crate) fn time_ms(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("{text:?} is not a time; give an RFC 3339 UTC time such as 2026-12-02T17:00:00Z")
    };
    let at = humantime::parse_rfc3339_weak(text).map_err(|_| bad())?;
    let since_epoch = at.duration_since(UNIX_EPOCH).map_err(|_| bad())?;
    u64::try_from(since_epoch.as_millis()).map_err(|_| bad())
}

/// [`time_ms`] for a query parameter.
fn query_time(text: &str) -> Result<u64, ApiError> {
    time_ms(text).map_err(|why| ApiError::bad_request("invalid_time", why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339() {
        assert_eq!(time_ms("1970-01-01T00:00:01Z").ok(), Some(1000));
        assert_eq!(
            time_ms("2026-12-02T17:00:00.250Z").ok(),
            Some(1_796_230_800_250)
        );
        assert!(time_ms("yesterday").is_err());
    }
}
