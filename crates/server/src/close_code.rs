//! The WebSocket close codes weft sends, in one place (README lists them).

use weft_sync::CloseReason;

/// The server is shutting down; reconnect later (to another node).
pub const GOING_AWAY: u16 = 1001;
/// A binary frame that is not a valid y-protocols message.
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text frame: weft speaks binary y-protocols only.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// A message that was still arriving after `--body-timeout`.
pub const POLICY_VIOLATION: u16 = 1008;
/// A message larger than `--max-message-bytes`.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The server could not store or load the document; reconnecting resyncs.
pub const INTERNAL_ERROR: u16 = 1011;
/// The client stopped reading (its queue filled) or the server is busy.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// The document refused a well-formed message (an update yrs rejects,
/// presence that is not JSON).
pub const REJECTED: u16 = 4400;

/// No valid token: missing, malformed, expired (also when it expires during
/// the connection) or not signed for this server. Get a new token.
pub const UNAUTHORIZED: u16 = 4401;
/// A valid token that does not cover this document.
pub const FORBIDDEN: u16 = 4403;

/// An operator deleted the document. Reconnecting would start a new, empty
/// document (and sync the client's copy into it): stop instead.
pub const DOCUMENT_DELETED: u16 = 4404;

/// A change would have made the document larger than its limit
/// (`--max-document-bytes`); it was not applied.
pub const DOCUMENT_TOO_LARGE: u16 = 4413;
/// The connection sent messages faster than `--max-messages-per-sec`
/// (beyond the burst) for too long, a change that would have created a
/// document beyond its address's `--max-new-docs-per-minute` (not applied),
/// or its updates took more of the server's time than `--max-update-cpu`
/// allows (the reason says which). All are quotas on what one client may
/// make the server do, and a client does the same for each: slows down and
/// reconnects (a costly update that passed the budget was kept, so nothing
/// is lost).
pub const RATE_LIMITED: u16 = 4429;

/// The close code for a session the document engine ended.
pub fn for_reason(reason: &CloseReason) -> u16 {
    match reason {
        CloseReason::Rejected(_) => REJECTED,
        CloseReason::TooSlow => TRY_AGAIN_LATER,
        CloseReason::StorageFailure(_) => INTERNAL_ERROR,
        CloseReason::ShuttingDown => GOING_AWAY,
        CloseReason::Deleted => DOCUMENT_DELETED,
        CloseReason::TooLarge(_) => DOCUMENT_TOO_LARGE,
        CloseReason::TooManyNewDocuments { .. } => RATE_LIMITED,
        CloseReason::TooCostly(_) => RATE_LIMITED,
    }
}

/// Close reasons are limited to 123 bytes on the wire.
pub fn truncate_reason(reason: &str) -> String {
    if reason.len() <= 123 {
        return reason.to_owned();
    }
    let mut end = 120;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &reason[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= 123 && cut.ends_with("..."));
        assert_eq!(truncate_reason("short"), "short");
    }
}
