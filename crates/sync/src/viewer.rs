//! The read-only viewer's wire format: Server-Sent Events, sans-IO.
//!
//! Every event a room sends a viewer is built here once and shared by all its
//! viewers: `snapshot` (the whole document), `update` (exactly one change),
//! and `awareness` (presence). Payloads are Yjs v1 updates and y-protocols
//! awareness updates in standard base64 on one `data:` line. Stream-level
//! lines (`retry:`, keepalive comments) belong to the transport.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use yrs::sync::AwarenessUpdate;
use yrs::updates::encoder::Encode;

use crate::{Change, EventId};

/// `event: snapshot` carrying the whole document, as of change `id`.
pub fn snapshot_event(id: EventId, state: &[u8]) -> Bytes {
    event("snapshot", Some(id), state)
}

/// `event: update` carrying one change.
pub fn update_event(incarnation: u64, change: &Change) -> Bytes {
    let id = EventId {
        incarnation,
        seq: change.seq,
    };
    event("update", Some(id), &change.update)
}

/// `event: awareness` carrying presence states (no id: presence is not
/// replayed).
pub fn awareness_event(update: &AwarenessUpdate) -> Bytes {
    event("awareness", None, &update.encode_v1())
}

fn event(name: &str, id: Option<EventId>, payload: &[u8]) -> Bytes {
    let data = STANDARD.encode(payload);
    let mut out = String::with_capacity(data.len() + 64);
    out.push_str("event: ");
    out.push_str(name);
    out.push('\n');
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(&id.to_string());
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&data);
    out.push_str("\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_as_sse() {
        let change = Change {
            seq: 7,
            at_ms: 0,
            update: Bytes::from_static(&[1, 2, 3]),
            by: Default::default(),
        };
        let ev = update_event(0xab, &change);
        assert_eq!(
            std::str::from_utf8(&ev).expect("utf8"),
            "event: update\nid: 00000000000000ab-7\ndata: AQID\n\n"
        );
        let empty = AwarenessUpdate {
            clients: Default::default(),
        };
        assert_eq!(
            awareness_event(&empty).as_ref(),
            b"event: awareness\ndata: AA==\n\n"
        );
    }
}
