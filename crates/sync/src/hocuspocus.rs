//! Hocuspocus' protocol, as `@hocuspocus/provider` 4.x speaks it, sans-IO:
//! a client frame in, the document it is for and what it says out; the
//! frames a server sends back out.
//!
//! One socket carries many documents, so every message starts with its
//! address, a lib0 `varString`: the document's name, or, for a provider
//! with session awareness, the name, a NUL and the provider's session id
//! (the *key*; replies carry it back). Then a message type and its
//! payload. Types 0 (sync), 1 (awareness) and 3 (awareness query) are
//! y-protocols' own, so what follows the address is a y-protocols frame
//! and decodes with [`decode_frame`] (a sync step 1 is followed by a
//! request for the document's own, which Hocuspocus' server sends after
//! its answer and its provider counts on); the others are Hocuspocus' own:
//! 2 auth (a token from the client; the server's answer: authenticated
//! with a scope, permission denied with a reason, or a request for a
//! fresh token), 5 stateless (an application's string), 7 close (from the
//! client: it detaches the document; from the server: the document ended,
//! with a reason), 8 sync status (the server's acknowledgement of each
//! change, true once stored, false if refused), and the bare one-byte
//! ping (9) and pong (10) that carry no address. What Hocuspocus' server
//! ignores (unknown types, an auth message that is not a token, a
//! stateless message over the size limit) is [`Message::Ignored`] here
//! too; what cannot be read at all is a [`ProtocolError`].
//!
//! The engine answers in y-protocols frames; [`Replies`] turns them into
//! Hocuspocus' for one document: it adds the address, and turns the
//! engine's answers to the acknowledgement request that [`decode`] adds
//! after each change (y-sweet's sync status, type 102, which the room
//! echoes once everything before it is stored) into Hocuspocus' sync
//! status, false when the room refused the change to a read-only client.
//!
//! Written here, not taken from a crate: no Rust crate speaks Hocuspocus'
//! protocol, and its envelope is a string and a few varints over the
//! y-protocols messages yrs already decodes.

use bytes::Bytes;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;

use crate::protocol::{decode_frame, Inbound, ProtocolError};

/// y-protocols' sync message (Hocuspocus' too).
const SYNC: u64 = 0;
/// y-protocols' awareness message.
const AWARENESS: u64 = 1;
/// Hocuspocus' auth message (y-protocols' auth type, with its own payload).
const AUTH: u64 = 2;
/// y-protocols' awareness query.
const QUERY_AWARENESS: u64 = 3;
/// An application's string, relayed to the document's other connections.
const STATELESS: u64 = crate::protocol::STATELESS as u64;
/// From a client: detach this document. From the server: it ended.
const CLOSE: u64 = 7;
/// The server's acknowledgement of a change.
const SYNC_STATUS: u64 = 8;
/// The server's liveness probe, a frame of this one byte.
const PING: u8 = 9;
/// The provider's answer to [`PING`], a frame of this one byte.
const PONG: u8 = 10;

/// Auth payloads: a token (from a client) or a request for one (from the
/// server); permission denied; authenticated.
const AUTH_TOKEN: u64 = 0;
const AUTH_PERMISSION_DENIED: u64 = 1;
const AUTH_AUTHENTICATED: u64 = 2;

/// y-sweet's sync status type, the engine's acknowledgement.
const ENGINE_SYNC_STATUS: u8 = 102;
/// What [`decode`] puts in the acknowledgement it asks the engine for.
const ACK_REQUEST: &[u8] = &[];

/// The longest stateless message relayed, in bytes: it goes to every
/// other Hocuspocus connection of the document, outside any document
/// limit, so it is held to the size of a small message.
pub const MAX_STATELESS_BYTES: usize = 64 * 1024;

/// The longest token taken, in bytes: a JWT with room to spare, as an
/// HTTP header would bound it.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The longest address taken: a document name (255 bytes at most), a NUL
/// and a session id (the provider's are about 11 characters).
const MAX_KEY_BYTES: usize = 512;

/// A client frame split at its address.
#[derive(Debug, PartialEq, Eq)]
pub struct Addressed<'a> {
    /// The address, exactly as sent: replies carry it back.
    pub key: &'a str,
    /// The document's name (the key up to a NUL).
    pub doc: &'a str,
    /// The message: its type and payload.
    pub body: &'a [u8],
}

/// What a client says about one document.
#[derive(Debug)]
pub enum Message {
    /// y-protocols messages for the document's session (sync, awareness,
    /// awareness query), with an acknowledgement request after a change.
    YSync(Vec<Inbound>),
    /// Its token for the document (empty when it has none), and the
    /// provider's version when it says.
    Auth {
        token: String,
        provider_version: Option<String>,
    },
    /// An application's string for the document's other connections.
    Stateless(String),
    /// The provider detached the document.
    Close,
    /// Something Hocuspocus' server ignores too (a message type it does
    /// not know, an auth message that is not a token, a stateless message
    /// over [`MAX_STATELESS_BYTES`]), and why: closing the socket for it
    /// would only make the provider reconnect and send it again.
    Ignored(String),
}

/// Whether `frame` is the provider's answer to a ping.
pub fn is_pong(frame: &[u8]) -> bool {
    frame == [PONG]
}

/// The ping frame (providers since 4.0 answer it).
pub fn ping() -> Bytes {
    Bytes::from_static(&[PING])
}

/// Splits `frame` at its address.
pub fn address(frame: &[u8]) -> Result<Addressed<'_>, ProtocolError> {
    let mut cursor = Cursor::new(frame);
    let len: usize = cursor
        .read_var()
        .map_err(|e| malformed(format!("no document name in front of the message ({e})")))?;
    if len > MAX_KEY_BYTES {
        return Err(malformed(format!(
            "an address of {len} bytes (at most {MAX_KEY_BYTES})"
        )));
    }
    let start = cursor.next;
    let Some(raw) = frame.get(start..start + len) else {
        return Err(malformed("the frame ends inside its document name".into()));
    };
    let key =
        std::str::from_utf8(raw).map_err(|_| malformed("the document name is not UTF-8".into()))?;
    let doc = key.split('\0').next().unwrap_or(key);
    let body = &frame[start + len..];
    if body.is_empty() {
        return Err(malformed("a document name and no message".into()));
    }
    Ok(Addressed { key, doc, body })
}

/// Decodes what follows an address.
pub fn decode(body: &[u8]) -> Result<Message, ProtocolError> {
    let mut cursor = Cursor::new(body);
    let kind: u64 = cursor
        .read_var()
        .map_err(|e| malformed(format!("no message type ({e})")))?;
    match kind {
        SYNC | AWARENESS | QUERY_AWARENESS => {
            let decoded = decode_frame(body)?;
            let mut messages = Vec::with_capacity(decoded.len() + 1);
            for message in decoded {
                let answer = match &message {
                    Inbound::SyncStep1(_) => Some(Inbound::SyncStep1Request),
                    _ => None,
                };
                messages.push(message);
                messages.extend(answer);
            }
            if messages.iter().any(Inbound::is_update) {
                messages.push(Inbound::SyncStatus(ACK_REQUEST.to_vec()));
            }
            Ok(Message::YSync(messages))
        }
        AUTH => decode_auth(&mut cursor),
        STATELESS => {
            let payload = cursor
                .read_string()
                .map_err(|e| malformed(format!("a stateless message without its string ({e})")))?;
            if payload.len() > MAX_STATELESS_BYTES {
                return Ok(Message::Ignored(format!(
                    "a stateless message of {} bytes (at most {MAX_STATELESS_BYTES})",
                    payload.len()
                )));
            }
            Ok(Message::Stateless(payload.to_owned()))
        }
        CLOSE => Ok(Message::Close),
        other => Ok(Message::Ignored(format!(
            "a message of unknown type {other}"
        ))),
    }
}

/// Whether `body` is an Auth message.
pub fn is_auth(body: &[u8]) -> bool {
    // A varint below 128 is its one byte.
    body.first() == Some(&(AUTH as u8))
}

/// For a document that is not open: its Auth or Close message, decoded;
/// `None` for anything else, which waits for the token undecoded.
pub fn decode_opening(body: &[u8]) -> Option<Result<Message, ProtocolError>> {
    match Cursor::new(body).read_var::<u64>() {
        Ok(AUTH | CLOSE) => Some(decode(body)),
        Ok(_) => None,
        Err(e) => Some(Err(malformed(format!("no message type ({e})")))),
    }
}

fn decode_auth(cursor: &mut Cursor<'_>) -> Result<Message, ProtocolError> {
    let sub: u64 = cursor
        .read_var()
        .map_err(|e| malformed(format!("an auth message without its kind ({e})")))?;
    if sub != AUTH_TOKEN {
        return Ok(Message::Ignored(format!(
            "an auth message of kind {sub}: a client sends only tokens (kind {AUTH_TOKEN})"
        )));
    }
    let token = cursor
        .read_string()
        .map_err(|e| malformed(format!("an auth message without its token ({e})")))?;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed(format!(
            "a token of {} bytes (at most {MAX_TOKEN_BYTES})",
            token.len()
        )));
    }
    let token = token.to_owned();
    // Providers since 4.0 add their version; older ones do not.
    let provider_version = if cursor.has_content() {
        cursor.read_string().ok().map(str::to_owned)
    } else {
        None
    };
    Ok(Message::Auth {
        token,
        provider_version,
    })
}

/// The answer to a token that grants access: the scope the provider
/// records (`readonly` or `read-write`).
pub fn authenticated(key: &str, read_only: bool) -> Bytes {
    let scope = if read_only { "readonly" } else { "read-write" };
    let mut out = addressed(key, AUTH);
    out.write_var(AUTH_AUTHENTICATED);
    out.write_string(scope);
    out.into()
}

/// The answer to a token that does not grant access, with why.
pub fn permission_denied(key: &str, reason: &str) -> Bytes {
    let mut out = addressed(key, AUTH);
    out.write_var(AUTH_PERMISSION_DENIED);
    out.write_string(reason);
    out.into()
}

/// Asks the provider for its token again (it fetches a fresh one).
pub fn token_request(key: &str) -> Bytes {
    let mut out = addressed(key, AUTH);
    out.write_var(AUTH_TOKEN);
    out.into()
}

/// Tells the provider its document ended here, and why.
pub fn close(key: &str, reason: &str) -> Bytes {
    let mut out = addressed(key, CLOSE);
    out.write_string(reason);
    out.into()
}

/// `key` as an address, then a message type.
fn addressed(key: &str, kind: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 16);
    out.write_string(key);
    out.write_var(kind);
    out
}

/// Turns the engine's frames for one document into Hocuspocus' (see the
/// module doc).
#[derive(Debug, Default)]
pub struct Replies {
    /// The engine refused a change since the last acknowledgement.
    refused: bool,
}

impl Replies {
    /// What to send the client for `frame`, if anything.
    pub fn to_client(&mut self, key: &str, frame: &[u8]) -> Option<Bytes> {
        match frame.first() {
            Some(&ENGINE_SYNC_STATUS) => {
                let stored = !std::mem::take(&mut self.refused);
                let mut out = addressed(key, SYNC_STATUS);
                // A lib0 varInt: 1 and 0 are that byte.
                out.push(u8::from(stored));
                Some(out.into())
            }
            // The engine's "permission denied" for a read-only client's
            // change: Hocuspocus says it with the acknowledgement.
            Some(&b) if u64::from(b) == AUTH => {
                self.refused = true;
                None
            }
            _ => {
                let mut out = Vec::with_capacity(key.len() + 4 + frame.len());
                out.write_string(key);
                out.extend_from_slice(frame);
                Some(out.into())
            }
        }
    }
}

fn malformed(why: String) -> ProtocolError {
    ProtocolError::Malformed(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol;
    use yrs::{Doc, Text, Transact};

    fn frame(key: &str, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.write_string(key);
        out.extend_from_slice(body);
        out
    }

    fn an_update() -> Vec<u8> {
        let doc = Doc::with_client_id(1);
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hi");
        txn.encode_update_v1()
    }

    #[test]
    fn the_address_names_the_document_and_keeps_a_session_id() {
        let f = frame("notes\0abc123", &[0, 0, 0]);
        let a = address(&f).expect("splits");
        assert_eq!(
            (a.key, a.doc, a.body),
            ("notes\0abc123", "notes", &[0u8, 0, 0][..])
        );
        let f = frame("notes", &[1]);
        assert_eq!(address(&f).expect("splits").doc, "notes");
    }

    #[test]
    fn frames_without_an_address_or_a_message_are_refused() {
        assert!(address(&[]).is_err());
        // A length longer than the frame.
        assert!(address(&[9]).is_err());
        assert!(address(&frame("notes", &[])).is_err());
        assert!(address(&frame(&"x".repeat(600), &[0])).is_err());
        assert!(address(&[2, 0xff, 0xfe, 0]).is_err(), "not UTF-8");
    }

    #[test]
    fn a_change_asks_for_an_acknowledgement_and_a_state_vector_does_not() {
        let body = protocol::sync_update(&an_update());
        let Message::YSync(messages) = decode(&body).expect("decodes") else {
            panic!("not y-sync")
        };
        assert!(matches!(
            &messages[..],
            [Inbound::Update(_), Inbound::SyncStatus(p)] if p.is_empty()
        ));
        // A state vector is answered, then the server's own is asked for.
        let step1 = [0u8, 0, 1, 0];
        let Message::YSync(messages) = decode(&step1).expect("decodes") else {
            panic!("not y-sync")
        };
        assert!(matches!(
            &messages[..],
            [Inbound::SyncStep1(_), Inbound::SyncStep1Request]
        ));
    }

    #[test]
    fn auth_carries_the_token_and_the_provider_version() {
        let mut body = vec![2, 0];
        body.write_string("a.jwt.token");
        body.write_string("4.8.0");
        let Message::Auth {
            token,
            provider_version,
        } = decode(&body).expect("decodes")
        else {
            panic!("not auth")
        };
        assert_eq!(token, "a.jwt.token");
        assert_eq!(provider_version.as_deref(), Some("4.8.0"));
        let mut huge = vec![2, 0];
        huge.write_string(&"t".repeat(MAX_TOKEN_BYTES + 1));
        assert!(decode(&huge).is_err());
        // A client cannot claim to be authenticated.
        let mut forged = vec![2, 2];
        forged.write_string("read-write");
        assert!(matches!(decode(&forged), Ok(Message::Ignored(_))));
    }

    #[test]
    fn stateless_close_and_unknown_messages() {
        let mut body = vec![5];
        body.write_string("hello");
        assert!(matches!(decode(&body), Ok(Message::Stateless(s)) if s == "hello"));
        let mut big = vec![5];
        big.write_string(&"x".repeat(MAX_STATELESS_BYTES + 1));
        assert!(matches!(decode(&big), Ok(Message::Ignored(_))));
        assert!(matches!(decode(&[7]), Ok(Message::Close)));
        assert!(matches!(decode(&[42]), Ok(Message::Ignored(why)) if why.contains("42")));
        assert!(matches!(
            decode(&[0x80, 0x80, 0x80, 0x80, 0x10]),
            Ok(Message::Ignored(_))
        ));
        assert!(decode(&[0x80]).is_err(), "a type cut short");
    }

    #[test]
    fn the_engine_frames_become_addressed_hocuspocus_messages() {
        let mut replies = Replies::default();
        let update = protocol::sync_update(&an_update());
        assert_eq!(
            replies.to_client("doc", &update).expect("sent")[..],
            frame("doc", &update)[..]
        );
        // The acknowledgement of a stored change: sync status, true.
        let ack = protocol::sync_status(ACK_REQUEST);
        assert_eq!(
            replies.to_client("doc", &ack).expect("sent")[..],
            frame("doc", &[8, 1])[..]
        );
        // A refused change: nothing for the refusal, then false.
        assert!(replies
            .to_client("doc", &protocol::permission_denied("read-only"))
            .is_none());
        assert_eq!(
            replies.to_client("doc", &ack).expect("sent")[..],
            frame("doc", &[8, 0])[..]
        );
        assert_eq!(
            replies.to_client("doc", &ack).expect("sent")[..],
            frame("doc", &[8, 1])[..]
        );
    }

    #[test]
    fn server_messages_are_what_the_provider_reads() {
        let mut want = Vec::new();
        want.write_string("d");
        want.extend_from_slice(&[2, 2]);
        want.write_string("readonly");
        assert_eq!(authenticated("d", true)[..], want[..]);
        let mut want = Vec::new();
        want.write_string("d");
        want.extend_from_slice(&[2, 1]);
        want.write_string("no");
        assert_eq!(permission_denied("d", "no")[..], want[..]);
        assert_eq!(token_request("d")[..], frame("d", &[2, 0])[..]);
        let mut want = frame("d", &[7]);
        want.write_string("bye");
        assert_eq!(close("d", "bye")[..], want[..]);
        assert!(is_pong(&[10]) && !is_pong(&[10, 0]));
        assert_eq!(ping()[..], [9]);
    }
}
