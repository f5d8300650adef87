//! The y-protocols wire format, sans-IO: frame bytes in, [`Inbound`] messages
//! out, and the few outbound frames the engine builds.
//!
//! Encoding and decoding are yrs' own (`yrs::sync`); this module only adds
//! what a server needs on top: decoding the `Update` inside sync messages up
//! front, turning every failure into a [`ProtocolError`], and making sure a
//! panic inside yrs becomes an error instead of taking the server down.

use bytes::Bytes;

use crate::guard::guarded;
pub use crate::sections::Dependencies;
use crate::{plausible, sections};
use yrs::encoding::read::Cursor;
use yrs::sync::{Awareness, AwarenessUpdate, Message, MessageReader, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
pub use yrs::StateVector;
use yrs::{ReadTxn, Transact, Update};

/// y-sweet's sync status message type.
const SYNC_STATUS: u8 = 102;

/// The largest sync status payload taken: y-sweet's is one varint.
const MAX_SYNC_STATUS: usize = 16;

/// Hocuspocus' stateless message type, as relayed to its connections.
pub const STATELESS: u8 = 5;

/// A message from a client, fully decoded.
#[derive(Debug)]
pub enum Inbound {
    /// Sync step 1: the client's state vector; answered with step 2.
    SyncStep1(StateVector),
    /// Sync step 2 or a sync update: a document change to apply.
    Update(ClientUpdate),
    /// Presence: cursors, names, whatever the client publishes.
    Awareness(AwarenessUpdate),
    /// The client asks for every current awareness state.
    AwarenessQuery,
    /// An auth message. Clients have nothing to say to the server here;
    /// accepted and ignored for compatibility.
    Auth,
    /// y-sweet's sync status (message type 102): the client's opaque
    /// payload (a version number), answered with the same message once
    /// everything the connection sent before it is stored. The y-sweet
    /// client learns from it that its changes are safe, and uses it as a
    /// heartbeat.
    SyncStatus(Vec<u8>),
    /// Hocuspocus' stateless message: the application's own string,
    /// relayed to the document's other connections that speak Hocuspocus'
    /// protocol, never stored. Only the Hocuspocus transport makes these
    /// (a y-websocket frame of this type is refused as unknown).
    Stateless(String),
    /// The client asks for the document's sync step 1. Hocuspocus' server
    /// sends one after answering each sync step 1 of its client's, and
    /// only then; the Hocuspocus transport adds this after each.
    SyncStep1Request,
}

impl Inbound {
    /// Whether this message changes the document.
    pub fn is_update(&self) -> bool {
        matches!(self, Inbound::Update(_))
    }
}

/// Why an inbound frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty frame: every frame must hold at least one y-protocols message")]
    EmptyFrame,
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("unknown message type {0}: expected 0 (sync), 1 (awareness), 2 (auth), 3 (query awareness) or 102 (sync status)")]
    UnknownMessageType(u8),
    #[error("not a valid y-protocols message (the decoder failed internally: {0})")]
    DecoderPanicked(String),
}

/// A change from outside the server, decoded, with what it builds on.
#[derive(Debug)]
pub struct ClientUpdate {
    pub update: Update,
    /// What it refers to outside itself: the document must already have
    /// it, or (for other clients' items) the update itself bring it.
    pub needs: Dependencies,
}

impl ClientUpdate {
    /// Decodes a Yjs v1 update whose sections pass [`sections::check`].
    /// Not guarded, so not public: outside callers use [`decode_update`] or
    /// [`decode_frame`], which run it under `guarded`.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        let needs = sections::check(bytes).map_err(|e| e.to_string())?;
        let update = Update::decode_v1(bytes).map_err(|e| e.to_string())?;
        Ok(ClientUpdate { update, needs })
    }

    /// Why the document must not take it even though it is well formed:
    /// it holds content yrs would not store as it was sent (see
    /// [`sections`](crate::sections)).
    pub fn unstorable(&self) -> Option<String> {
        let at = self.needs.legacy_json?;
        Some(format!(
            "client {}'s item at clock {} holds legacy JSON content (Yjs' ContentJSON, which \
             current Yjs and yrs never create); the document engine cannot store it as it was sent",
            at.client, at.clock
        ))
    }

    /// Whether applying it to a document that has `known` would leave part
    /// of it waiting for changes it neither brings nor finds there: it
    /// starts past what the document has of a client, goes on after
    /// skipping a range the document lacks, or refers to items beyond
    /// both. yrs would keep that part in its pending store, where fuzzing
    /// found crafted input crashing it more than once.
    pub fn would_wait(&self, known: &StateVector) -> bool {
        let starts_past = self
            .update
            .state_vector_lower()
            .iter()
            .any(|(client, clock)| *clock > known.get(client));
        let brings = &self.needs.brings;
        starts_past
            || self
                .needs
                .skipped
                .iter()
                .any(|(client, end)| *end > known.get(client))
            || self
                .needs
                .other_clients
                .iter()
                .any(|(client, clock)| *clock > known.get(client).max(brings.get(client)))
    }
}

/// Decodes every message in one binary frame.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<Inbound>, ProtocolError> {
    if frame.is_empty() {
        return Err(ProtocolError::EmptyFrame);
    }
    plausible::frame(frame)?;
    guarded(|| decode_messages(frame))
        .unwrap_or_else(|panic| Err(ProtocolError::DecoderPanicked(panic)))
}

fn decode_messages(frame: &[u8]) -> Result<Vec<Inbound>, ProtocolError> {
    let mut decoder = DecoderV1::new(Cursor::new(frame));
    let mut out = Vec::with_capacity(1);
    for message in MessageReader::new(&mut decoder) {
        let message = message.map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        out.push(match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => Inbound::SyncStep1(sv),
            Message::Sync(SyncMessage::SyncStep2(bytes) | SyncMessage::Update(bytes)) => {
                Inbound::Update(
                    ClientUpdate::decode(&bytes)
                        .map_err(|e| ProtocolError::Malformed(format!("bad update: {e}")))?,
                )
            }
            Message::Awareness(update) => Inbound::Awareness(update),
            Message::AwarenessQuery => Inbound::AwarenessQuery,
            Message::Auth(_) => Inbound::Auth,
            Message::Custom(SYNC_STATUS, payload) if payload.len() <= MAX_SYNC_STATUS => {
                Inbound::SyncStatus(payload)
            }
            Message::Custom(SYNC_STATUS, payload) => {
                return Err(ProtocolError::Malformed(format!(
                    "a sync status of {} bytes (at most {MAX_SYNC_STATUS})",
                    payload.len()
                )))
            }
            Message::Custom(tag, _) => return Err(ProtocolError::UnknownMessageType(tag)),
        });
    }
    if out.is_empty() {
        // MessageReader stops quietly at a truncated first message.
        return Err(ProtocolError::Malformed(
            "truncated message: the frame ended inside its first message".into(),
        ));
    }
    Ok(out)
}

/// How many bytes of presence (awareness payloads) a frame carries, found
/// without decoding it.
pub fn presence_bytes(frame: &[u8]) -> usize {
    plausible::presence_bytes(frame)
}

/// Decodes a bare Yjs v1 update (not wrapped in a sync message).
pub fn decode_update(bytes: &[u8]) -> Result<ClientUpdate, ProtocolError> {
    if bytes.is_empty() {
        return Err(ProtocolError::Malformed("empty update".into()));
    }
    plausible::update(bytes)?;
    guarded(|| ClientUpdate::decode(bytes))
        .map_err(ProtocolError::DecoderPanicked)?
        .map_err(|e| ProtocolError::Malformed(format!("not a Yjs v1 update: {e}")))
}

/// Decodes a Yjs v1 state vector.
pub fn decode_state_vector(bytes: &[u8]) -> Result<StateVector, ProtocolError> {
    plausible::state_vector(bytes)?;
    guarded(|| StateVector::decode_v1(bytes))
        .map_err(ProtocolError::DecoderPanicked)?
        .map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Sync step 1 carrying the document's state vector.
pub fn sync_step1(awareness: &Awareness) -> Bytes {
    let sv = awareness.doc().transact().state_vector();
    Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1().into()
}

/// Sync step 2: everything the document has that `remote` lacks.
pub fn sync_step2(awareness: &Awareness, remote: &StateVector) -> Bytes {
    let update = awareness.doc().transact().encode_state_as_update_v1(remote);
    Message::Sync(SyncMessage::SyncStep2(update))
        .encode_v1()
        .into()
}

/// A sync update frame carrying one change.
pub fn sync_update(update: &[u8]) -> Bytes {
    Message::Sync(SyncMessage::Update(update.to_vec()))
        .encode_v1()
        .into()
}

/// An awareness frame.
pub fn awareness(update: AwarenessUpdate) -> Bytes {
    Message::Awareness(update).encode_v1().into()
}

/// The answer to a sync status: the same message back.
pub fn sync_status(payload: &[u8]) -> Bytes {
    Message::Custom(SYNC_STATUS, payload.to_vec())
        .encode_v1()
        .into()
}

/// A stateless message as relayed: its type, then the string (a lib0
/// `varString`, which is what a custom message's length-prefixed bytes
/// are).
pub fn stateless(payload: &str) -> Bytes {
    Message::Custom(STATELESS, payload.as_bytes().to_vec())
        .encode_v1()
        .into()
}

/// An auth "permission denied" frame with a reason.
pub fn permission_denied(reason: &str) -> Bytes {
    Message::Auth(Some(reason.to_owned())).encode_v1().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, Text};

    fn update_frame() -> Vec<u8> {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hi");
        sync_update(&txn.encode_update_v1()).to_vec()
    }

    #[test]
    fn decodes_every_message_kind() {
        let awareness = Awareness::new(Doc::new());
        let mut frame = sync_step1(&awareness).to_vec();
        frame.extend_from_slice(&update_frame());
        frame.extend_from_slice(&Message::AwarenessQuery.encode_v1());
        frame.extend_from_slice(&Message::Auth(None).encode_v1());
        let msgs = decode_frame(&frame).expect("decodes");
        assert!(matches!(
            msgs.as_slice(),
            [
                Inbound::SyncStep1(_),
                Inbound::Update(_),
                Inbound::AwarenessQuery,
                Inbound::Auth
            ]
        ));
    }

    #[test]
    fn update_frames_carry_the_update() {
        let mut msgs = decode_frame(&update_frame()).expect("decodes");
        assert_eq!(msgs.len(), 1);
        let Inbound::Update(ClientUpdate { update, .. }) = msgs.remove(0) else {
            panic!("expected an update");
        };
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        doc.transact_mut().apply_update(update).expect("applies");
        assert_eq!(text.get_string(&doc.transact()), "hi");
    }

    #[test]
    fn refuses_empty_truncated_unknown_and_garbage_frames() {
        assert_eq!(decode_frame(&[]).err(), Some(ProtocolError::EmptyFrame));
        let full = update_frame();
        for cut in 1..full.len() {
            assert!(decode_frame(&full[..cut]).is_err(), "prefix of {cut} bytes");
        }
        assert_eq!(
            decode_frame(&[9, 0]).err(),
            Some(ProtocolError::UnknownMessageType(9))
        );
        // Sync message with an unknown sub-type, and a length prefix far past the end.
        assert!(decode_frame(&[0, 7, 0]).is_err());
        assert!(decode_frame(&[0, 2, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        // Valid framing around an update body that is not an update.
        assert!(decode_frame(&[0, 2, 3, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn a_client_id_wider_than_53_bits_is_refused_not_a_crash() {
        // yrs only asserts on such ids in debug builds (a release build
        // keeps their low 53 bits): refused before yrs sees them, in both.
        crate::guard::install_panic_hook();
        let mut inner = vec![1];
        inner.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]); // 2^60
        inner.extend_from_slice(&[1, 2, b'{', b'}']);
        let mut frame = vec![1, inner.len() as u8];
        frame.extend_from_slice(&inner);
        let err = decode_frame(&frame).expect_err("refused");
        assert!(matches!(err, ProtocolError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("wider than 53 bits"), "{err}");
    }
}
