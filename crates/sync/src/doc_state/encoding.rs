//! The document as bytes: the whole state or what a state vector lacks,
//! the sync frames a joining editor gets (step 1, and the shared step 2
//! for an empty state vector, encoded once per document version), and the
//! shared `snapshot` event a joining viewer gets, likewise.

use bytes::Bytes;
use yrs::{ReadTxn, StateVector, Transact};

use super::{ConnId, Delivery, DocState, Effects};
use crate::guard::guarded;
use crate::{protocol, viewer, EventId};

impl DocState {
    /// The whole document as a Yjs v1 update.
    pub fn encode_state(&mut self) -> Result<Vec<u8>, String> {
        self.encode_diff(&StateVector::default())
    }

    /// What the document has that `since` lacks, as a Yjs v1 update. A
    /// failure inside yrs poisons the document (the room reloads it).
    pub fn encode_diff(&mut self, since: &StateVector) -> Result<Vec<u8>, String> {
        let doc = self.awareness.doc();
        let encoded = guarded(|| doc.transact().encode_state_as_update_v1(since));
        if encoded.is_err() {
            self.poisoned = true;
        }
        encoded.map_err(|panic| format!("the document engine failed internally: {panic}"))
    }

    /// A new connection: it gets sync step 1 (unless `opens_sync` is
    /// false: it asks for one) and everyone's presence. The caller has
    /// already subscribed it, so nothing can fall in between.
    pub fn join(&mut self, conn: ConnId, opens_sync: bool, fx: &mut Effects) {
        if opens_sync {
            fx.deliveries
                .push(Delivery::To(conn, protocol::sync_step1(&self.awareness)));
        }
        if let Some(update) = self.presence() {
            fx.deliveries
                .push(Delivery::Opening(conn, protocol::awareness(update)));
        }
    }

    /// The viewers' `snapshot` event of the whole document, from the cache
    /// when the document has not changed since it was encoded.
    pub fn snapshot_event(&mut self) -> Result<Bytes, String> {
        match &self.snapshot_event {
            Some((seq, event)) if *seq == self.last_seq => Ok(event.clone()),
            _ => {
                let id = EventId {
                    incarnation: self.incarnation(),
                    seq: self.last_seq,
                };
                let event = viewer::snapshot_event(id, &self.encode_state()?);
                self.snapshot_event = Some((self.last_seq, event.clone()));
                Ok(event)
            }
        }
    }

    /// Sync step 2 carrying the whole document, from the cache when the
    /// document has not changed since it was encoded.
    pub(super) fn full_step2(&mut self) -> Bytes {
        match &self.full_step2 {
            Some((seq, frame)) if *seq == self.last_seq => frame.clone(),
            _ => {
                let frame = protocol::sync_step2(&self.awareness, &StateVector::default());
                self.full_step2 = Some((self.last_seq, frame.clone()));
                frame
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{decode_one, edit, empty, incoming, state, text_of};
    use super::*;
    use crate::protocol::{ClientUpdate, Inbound};
    use crate::Access;
    use yrs::sync::{Message, SyncMessage};
    use yrs::updates::encoder::Encode;
    use yrs::Doc;

    #[test]
    fn join_sends_step1_then_step1_is_answered_with_step2() {
        let mut s = state(&empty());
        let client = Doc::new();
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Update(incoming(edit(&client, 0, "hello"))),
            &mut Effects::default(),
        )
        .expect("applies");

        let mut fx = Effects::default();
        s.join(2, true, &mut fx);
        let [Delivery::To(2, frame)] = fx.deliveries.as_slice() else {
            panic!("{:?}", fx.deliveries);
        };
        assert!(matches!(decode_one(frame), Inbound::SyncStep1(_)));

        let mut fx = Effects::default();
        s.receive(
            2,
            Access::ReadWrite,
            Inbound::SyncStep1(StateVector::default()),
            &mut fx,
        )
        .expect("ok");
        let [Delivery::To(2, frame)] = fx.deliveries.as_slice() else {
            panic!("{:?}", fx.deliveries);
        };
        let Inbound::Update(ClientUpdate { update, .. }) = decode_one(frame) else {
            panic!("expected step 2");
        };
        let fresh = Doc::new();
        fresh.transact_mut().apply_update(update).expect("applies");
        assert_eq!(text_of(&fresh), "hello");
        assert!(fx.changes.is_empty());
    }

    #[test]
    fn simultaneous_joiners_share_one_encoded_step2_until_the_next_change() {
        let mut s = state(&empty());
        let client = Doc::new();
        let step2_for = |s: &mut DocState, conn| {
            let mut fx = Effects::default();
            s.receive(
                conn,
                Access::ReadWrite,
                Inbound::SyncStep1(StateVector::default()),
                &mut fx,
            )
            .expect("ok");
            let [Delivery::To(_, frame)] = fx.deliveries.as_slice() else {
                panic!("{:?}", fx.deliveries);
            };
            frame.clone()
        };
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Update(incoming(edit(&client, 0, "one"))),
            &mut Effects::default(),
        )
        .expect("applies");
        let a = step2_for(&mut s, 2);
        let b = step2_for(&mut s, 3);
        // The very same buffer, not an equal copy.
        assert_eq!(a.as_ptr(), b.as_ptr());

        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Update(incoming(edit(&client, 3, " two"))),
            &mut Effects::default(),
        )
        .expect("applies");
        let c = step2_for(&mut s, 4);
        assert_ne!(a.as_ptr(), c.as_ptr());
        let Inbound::Update(ClientUpdate { update, .. }) = decode_one(&c) else {
            panic!("expected step 2");
        };
        let fresh = Doc::new();
        fresh.transact_mut().apply_update(update).expect("applies");
        assert_eq!(text_of(&fresh), "one two");
    }

    #[test]
    fn sync_messages_encode_as_y_protocols_expects() {
        let s = state(&empty());
        let frame = protocol::sync_step1(&s.awareness);
        let expected = Message::Sync(SyncMessage::SyncStep1(StateVector::default())).encode_v1();
        assert_eq!(frame.as_ref(), expected.as_slice());
    }
}
