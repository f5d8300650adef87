//! What clients may make a document hold ([`DocLimits`]): its size, and
//! the presence of one client, one connection and the whole document.

use super::{DocState, Rejection};
use crate::presence::{PresenceLimits, PresenceRefusal};
use crate::protocol;

/// Limits on what clients may make a document hold (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocLimits {
    pub max_document_bytes: u64,
    /// Largest presence state of one client id.
    pub max_presence_bytes: usize,
    /// Client ids one connection may publish presence for.
    pub max_presence_clients_per_connection: usize,
    /// The document's presence in all, in bytes of its encoding.
    pub max_document_presence_bytes: usize,
    /// Whether read-only connections may publish presence of their own.
    pub readers_presence: bool,
}

impl Default for DocLimits {
    fn default() -> Self {
        DocLimits {
            max_document_bytes: 0,
            max_presence_bytes: 0,
            max_presence_clients_per_connection: 0,
            max_document_presence_bytes: 0,
            readers_presence: true,
        }
    }
}

impl DocLimits {
    /// Refuses, before it is decoded, a frame carrying more presence than
    /// any connection has reason to send (see
    /// [`PresenceLimits::largest_message`]); `cluster`: other nodes'
    /// presence is shown too.
    pub fn admits_presence_in(&self, frame: &[u8], cluster: bool) -> Result<(), Rejection> {
        let Some(max) = self.presence().largest_message(cluster) else {
            return Ok(());
        };
        let len = protocol::presence_bytes(frame);
        if len > max {
            return Err(Rejection::PresenceRefused(
                PresenceRefusal::MessageTooLarge { len, max },
            ));
        }
        Ok(())
    }

    fn presence(&self) -> PresenceLimits {
        PresenceLimits {
            max_state_bytes: self.max_presence_bytes,
            max_clients_per_connection: self.max_presence_clients_per_connection,
            max_document_bytes: self.max_document_presence_bytes,
            readers: self.readers_presence,
        }
    }
}

impl DocState {
    pub fn set_limits(&mut self, limits: DocLimits) {
        self.limits = limits;
        self.presence.set_limits(limits.presence());
    }

    /// Whether a message of `len` bytes carrying a change may be applied
    /// without the document passing its size limit. Checked before applying,
    /// so a refused change never alters the document.
    pub fn admits(&self, len: usize) -> Result<(), Rejection> {
        let limit = self.limits.max_document_bytes;
        if limit > 0 && self.size_estimate + len as u64 > limit {
            return Err(Rejection::DocumentTooLarge { limit });
        }
        Ok(())
    }

    /// The document's size is known exactly again (a snapshot was encoded).
    pub fn set_size(&mut self, bytes: u64) {
        self.size_estimate = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{empty, incoming, state};
    use super::*;
    use crate::protocol::Inbound;
    use crate::{Access, Effects};
    use yrs::sync::AwarenessUpdate;
    use yrs::updates::decoder::Decode;
    use yrs::{ClientID, Doc, GetString, Text, Transact, Update};

    #[test]
    fn size_and_presence_limits_refuse_without_changing_anything() {
        let mut s = state(&empty());
        s.set_limits(DocLimits {
            max_document_bytes: 200,
            max_presence_bytes: 16,
            ..DocLimits::default()
        });
        let client = Doc::new();
        let text = client.get_or_insert_text("t");
        let small = {
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 0, "hello");
            txn.encode_update_v1()
        };
        assert!(s.admits(small.len()).is_ok());
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Update(incoming(Update::decode_v1(&small).expect("valid"))),
            &mut Effects::default(),
        )
        .expect("applies");
        let big = {
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 5, &"x".repeat(300));
            txn.encode_update_v1()
        };
        assert_eq!(
            s.admits(big.len()),
            Err(Rejection::DocumentTooLarge { limit: 200 })
        );
        assert_eq!(
            s.doc()
                .get_or_insert_text("t")
                .get_string(&s.doc().transact()),
            "hello"
        );

        let mut clients = std::collections::HashMap::new();
        clients.insert(
            ClientID::new(9),
            yrs::sync::awareness::AwarenessUpdateEntry {
                clock: 1,
                json: r#"{"name":"far too long a name"}"#.into(),
            },
        );
        let err = s
            .receive(
                1,
                Access::ReadWrite,
                Inbound::Awareness(AwarenessUpdate { clients }),
                &mut Effects::default(),
            )
            .expect_err("too big");
        assert!(matches!(err, Rejection::InvalidAwareness(_)), "{err}");
        assert!(s.presence().is_none());
    }
}
