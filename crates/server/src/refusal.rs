//! `Refusal`: one classification of what the document engine refuses
//! ([`RoomError`]), of how the store fails ([`StorageError`]) and of a
//! connection the connection limits have no place for, for every
//! face of the server: the HTTP status and error code that `/docs` and
//! `/admin` answer, with `Retry-After` where waiting helps, and the close
//! code a WebSocket gets (and the admin API's own errors). One table, so
//! that the three never disagree (a storage failure is 503 everywhere, and
//! 1011 on a WebSocket).

use axum::http::StatusCode;
use weft_storage::StorageError;
use weft_sync::RoomError;

use crate::admin::AdminError;
use crate::close_code;
use crate::limits::Refused;

/// How a failure is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// The `error` of the JSON body.
    pub code: &'static str,
    /// Seconds the client should wait before trying again, where it helps.
    pub retry_after: Option<u64>,
    /// The close code of a WebSocket refused for this reason.
    pub close_code: u16,
}

impl Refusal {
    const fn new(status: StatusCode, code: &'static str, close_code: u16) -> Refusal {
        Refusal {
            status,
            code,
            retry_after: None,
            close_code,
        }
    }

    /// 503: the same request may work in a second.
    const fn unavailable(code: &'static str, close_code: u16) -> Refusal {
        Refusal {
            retry_after: Some(1),
            ..Refusal::new(StatusCode::SERVICE_UNAVAILABLE, code, close_code)
        }
    }

    /// A refusal of the document engine.
    pub fn of_room(e: &RoomError) -> Refusal {
        use close_code::*;
        match e {
            RoomError::Rejected(_) => {
                Refusal::new(StatusCode::BAD_REQUEST, "invalid_update", REJECTED)
            }
            RoomError::NotFound(_) => Refusal::new(StatusCode::NOT_FOUND, "not_found", REJECTED),
            RoomError::Conflict(_) => Refusal::new(StatusCode::CONFLICT, "conflict", REJECTED),
            RoomError::NoSuchDocument(_) => {
                Refusal::new(StatusCode::NOT_FOUND, "document_not_found", REJECTED)
            }
            RoomError::TooManyNewDocuments { retry_after_secs } => Refusal {
                retry_after: Some(*retry_after_secs),
                ..Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_new_documents",
                    RATE_LIMITED,
                )
            },
            RoomError::TooLarge(_) => Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "document_too_large",
                DOCUMENT_TOO_LARGE,
            ),
            RoomError::Full(_) => Refusal::unavailable("document_full", TRY_AGAIN_LATER),
            RoomError::StorageFailure(_) => Refusal::unavailable("storage_failure", INTERNAL_ERROR),
            RoomError::StoreUnavailable(_) => {
                Refusal::unavailable("storage_unavailable", TRY_AGAIN_LATER)
            }
            RoomError::LoadFailed(_) => Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "load_failed",
                INTERNAL_ERROR,
            ),
            RoomError::ShuttingDown => Refusal::unavailable("shutting_down", GOING_AWAY),
            RoomError::Busy | RoomError::Retry | RoomError::TryAgain(_) => {
                Refusal::unavailable("busy", TRY_AGAIN_LATER)
            }
        }
    }

    /// A connection the server or its client's address has no place for:
    /// the same request may work once places free up.
    pub fn of_connection(refused: &Refused) -> Refusal {
        match refused {
            Refused::ServerFull(_) => {
                Refusal::unavailable("server_full", close_code::TRY_AGAIN_LATER)
            }
            Refused::ClientFull(_) => Refusal {
                retry_after: Some(1),
                ..Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_connections",
                    close_code::TRY_AGAIN_LATER,
                )
            },
        }
    }

    /// A failure of the store, met outside the engine (admin reads, backup
    /// restores): what did not get stored is a storage failure, as above.
    pub fn of_storage(e: &StorageError) -> Refusal {
        match e {
            StorageError::BadArchive(_) | StorageError::AlreadyExists(_) => {
                Refusal::new(StatusCode::BAD_REQUEST, "bad_request", close_code::REJECTED)
            }
            StorageError::Io { .. }
            | StorageError::Backend { .. }
            | StorageError::Connect { .. }
            | StorageError::Timeout { .. }
            | StorageError::Unavailable { .. }
            | StorageError::Busy(_)
            | StorageError::DiskFull { .. }
            | StorageError::NoRoom { .. } => {
                Refusal::unavailable("storage_failure", close_code::INTERNAL_ERROR)
            }
            _ => Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed",
                close_code::INTERNAL_ERROR,
            ),
        }
    }

    /// A failed admin operation: the engine's and the store's failures as
    /// above, the admin API's own by their kind.
    pub fn of_admin(e: &AdminError) -> Refusal {
        use close_code::*;
        match e {
            AdminError::Room(e) => Refusal::of_room(e),
            AdminError::Storage(e) => Refusal::of_storage(e),
            AdminError::NotFound(_) => Refusal::new(StatusCode::NOT_FOUND, "not_found", REJECTED),
            AdminError::BadRequest(_) => {
                Refusal::new(StatusCode::BAD_REQUEST, "bad_request", REJECTED)
            }
            AdminError::Unauthorized(_) => {
                Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", UNAUTHORIZED)
            }
            AdminError::Unavailable(_) => Refusal::unavailable("unavailable", TRY_AGAIN_LATER),
            AdminError::Failed(_) => {
                Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "failed", INTERNAL_ERROR)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_are_503_with_retry_after_and_1011() {
        for refusal in [
            Refusal::of_room(&RoomError::StorageFailure("disk full".into())),
            Refusal::of_storage(&StorageError::Timeout {
                action: "appending",
                after: std::time::Duration::from_secs(10),
            }),
            // What sled and Redis errors arrive as, with their source kept.
            Refusal::of_storage(&StorageError::Backend {
                action: "restoring a document",
                reason: "No space left on device".into(),
                source: std::io::Error::other("No space left on device").into(),
            }),
            Refusal::of_storage(&StorageError::Connect {
                target: " at 127.0.0.1:6379".into(),
                reason: "connection refused".into(),
                source: None,
            }),
        ] {
            assert_eq!(refusal.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(refusal.code, "storage_failure");
            assert_eq!(refusal.retry_after, Some(1));
            assert_eq!(refusal.close_code, close_code::INTERNAL_ERROR);
        }
    }

    #[test]
    fn connections_without_a_place_wait_a_second_and_close_1013() {
        let server = Refusal::of_connection(&Refused::ServerFull(10));
        assert_eq!(server.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(server.code, "server_full");
        let client = Refusal::of_connection(&Refused::ClientFull(2));
        assert_eq!(client.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(client.code, "too_many_connections");
        for refusal in [server, client] {
            assert_eq!(refusal.retry_after, Some(1));
            assert_eq!(refusal.close_code, close_code::TRY_AGAIN_LATER);
        }
    }
}
