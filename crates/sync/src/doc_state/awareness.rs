//! The document's side of presence: what a connection publishes (by the
//! rules of [`Presence`](crate::presence::Presence)), what a leaving connection took with it, and
//! what other nodes publish (cluster mode).

use yrs::sync::AwarenessUpdate;
use yrs::updates::decoder::Decode;

use super::{Access, ConnId, Delivery, DocState, Effects, Rejection};
use crate::guard::guarded;
use crate::presence::{self, PresenceRefusal};
use crate::protocol;

impl DocState {
    /// Every current presence state (possibly none).
    pub fn presence_all(&self) -> AwarenessUpdate {
        self.presence.all(self.clock.now_ms())
    }

    /// Every current presence state, if there is any.
    pub fn presence(&self) -> Option<AwarenessUpdate> {
        Some(self.presence_all()).filter(|update| !update.clients.is_empty())
    }

    /// The presence this node's connections hold (cluster mode: what it
    /// tells a node that asks).
    pub fn local_presence(&self) -> AwarenessUpdate {
        self.presence.local()
    }

    /// Presence another node published (cluster mode): entries for ids no
    /// connection here holds are applied and passed on to this node's
    /// subscribers (never published again).
    pub fn apply_remote_presence(&mut self, update: &[u8], fx: &mut Effects) {
        let Ok(Ok(update)) = guarded(|| AwarenessUpdate::decode_v1(update)) else {
            return;
        };
        let changed = self.presence.apply_peer(update, self.clock.now_ms());
        if !changed.clients.is_empty() {
            fx.deliveries.push(Delivery::Presence(changed));
        }
    }

    /// `conn` is gone: its presence is removed and everyone is told at once.
    pub fn leave(&mut self, conn: ConnId, fx: &mut Effects) {
        let removed = self.presence.leave(conn, self.clock.now_ms());
        if !removed.clients.is_empty() {
            fx.deliveries.push(Delivery::Presence(removed));
        }
    }

    /// Presence from `conn`, by the rules of [`Presence`]: what it may
    /// publish is applied and delivered to everyone, the sender too (y-websocket
    /// clients treat 30 s without any message as a dead connection, and
    /// their own 15 s renewal coming back is what keeps a lone editor
    /// connected); what belongs to others is dropped.
    pub(super) fn apply_awareness(
        &mut self,
        conn: ConnId,
        access: Access,
        update: AwarenessUpdate,
        fx: &mut Effects,
    ) -> Result<(), Rejection> {
        let may_publish = access == Access::ReadWrite || self.limits.readers_presence;
        let published =
            self.presence
                .publish(conn, may_publish, update, self.clock.now_ms())
                .map_err(|refusal| match refusal {
                    PresenceRefusal::TooManyClients { .. }
                    | PresenceRefusal::DocumentFull { .. } => Rejection::PresenceRefused(refusal),
                    invalid => Rejection::InvalidAwareness(invalid.to_string()),
                })?;
        for (crowded, why) in published.crowded_out {
            fx.closes.push((crowded, Rejection::PresenceRefused(why)));
        }
        if !published.changed.clients.is_empty() {
            fx.deliveries.push(Delivery::Presence(published.changed));
        } else if published.silenced {
            // Not shown to anyone, but answered: the same keepalive.
            fx.deliveries
                .push(Delivery::To(conn, protocol::awareness(presence::empty())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{awareness_clients, empty, presence, presence_clients, state};
    use super::*;
    use crate::protocol::Inbound;
    use crate::DocLimits;
    use yrs::ClientID;

    #[test]
    fn presence_is_echoed_to_everyone_and_removed_when_its_connection_leaves() {
        let mut s = state(&empty());
        let mut fx = Effects::default();
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Awareness(presence(100, 1, r#"{"user":"ann"}"#)),
            &mut fx,
        )
        .expect("ok");
        let [Delivery::Presence(update)] = fx.deliveries.as_slice() else {
            panic!("{:?}", fx.deliveries);
        };
        assert_eq!(
            presence_clients(update),
            vec![(100, r#"{"user":"ann"}"#.into())]
        );

        // A newcomer sees it on join.
        let mut fx = Effects::default();
        s.join(2, true, &mut fx);
        assert_eq!(fx.deliveries.len(), 2);
        let Delivery::Opening(2, frame) = &fx.deliveries[1] else {
            panic!("{:?}", fx.deliveries)
        };
        assert_eq!(
            awareness_clients(frame),
            vec![(100, r#"{"user":"ann"}"#.into())]
        );

        // Leaving removes it at once.
        let mut fx = Effects::default();
        s.leave(1, &mut fx);
        let [Delivery::Presence(update)] = fx.deliveries.as_slice() else {
            panic!("{:?}", fx.deliveries);
        };
        assert_eq!(presence_clients(update), vec![(100, "null".into())]);
        let mut fx = Effects::default();
        s.receive(2, Access::ReadWrite, Inbound::AwarenessQuery, &mut fx)
            .expect("ok");
        let [Delivery::To(2, frame)] = fx.deliveries.as_slice() else {
            panic!()
        };
        assert!(awareness_clients(frame).is_empty());
    }

    #[test]
    fn a_client_id_is_its_connections_until_that_connection_goes() {
        let mut s = state(&empty());
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Awareness(presence(100, 1, r#"{"user":"ann"}"#)),
            &mut Effects::default(),
        )
        .expect("ok");
        // Another connection (a forger, or the same tab reconnected while
        // its old socket lingers) publishes for it: dropped, not refused.
        for json in [r#"{"user":"mallory"}"#, "null"] {
            let mut fx = Effects::default();
            s.receive(
                2,
                Access::ReadOnly,
                Inbound::Awareness(presence(100, 9, json)),
                &mut fx,
            )
            .expect("not refused");
            assert!(fx.deliveries.is_empty(), "{:?}", fx.deliveries);
        }
        assert_eq!(
            presence_clients(&s.presence_all()),
            vec![(100, r#"{"user":"ann"}"#.into())]
        );
        // Once its connection goes, the id is free: the next state newer
        // than its removal takes it.
        let mut fx = Effects::default();
        s.leave(1, &mut fx);
        let [Delivery::Presence(removed)] = fx.deliveries.as_slice() else {
            panic!("{:?}", fx.deliveries);
        };
        assert_eq!(removed.clients[&ClientID::new(100)].clock, 2);
        let mut fx = Effects::default();
        s.receive(
            2,
            Access::ReadWrite,
            Inbound::Awareness(presence(100, 3, "{}")),
            &mut fx,
        )
        .expect("ok");
        assert_eq!(fx.deliveries.len(), 1);
        let mut fx = Effects::default();
        s.leave(2, &mut fx);
        assert_eq!(fx.deliveries.len(), 1);
    }

    #[test]
    fn a_joiners_opening_presence_is_exempt_and_crowding_out_closes_the_largest() {
        let mut s = state(&empty());
        s.set_limits(DocLimits {
            max_document_presence_bytes: 300,
            max_presence_clients_per_connection: 4,
            ..DocLimits::default()
        });
        let hog = format!(r#""{}""#, "h".repeat(200));
        s.receive(
            1,
            Access::ReadOnly,
            Inbound::Awareness(presence(1, 1, &hog)),
            &mut Effects::default(),
        )
        .expect("fits");
        let mut fx = Effects::default();
        s.receive(
            2,
            Access::ReadWrite,
            Inbound::Awareness(presence(2, 1, &"1".repeat(80))),
            &mut fx,
        )
        .expect("the newcomer stays");
        assert!(
            matches!(
                fx.closes.as_slice(),
                [(
                    1,
                    Rejection::PresenceRefused(PresenceRefusal::CrowdedOut { .. })
                )]
            ),
            "{:?}",
            fx.closes
        );
        let [Delivery::Presence(update)] = fx.deliveries.as_slice() else {
            panic!("{:?}", fx.deliveries);
        };
        assert_eq!(update.clients[&ClientID::new(1)].json.as_ref(), "null");
        assert_eq!(
            presence_clients(&s.presence_all()),
            vec![(2, "1".repeat(80))]
        );
        let mut fx = Effects::default();
        s.join(3, true, &mut fx);
        assert!(matches!(
            fx.deliveries.as_slice(),
            [Delivery::To(3, _), Delivery::Opening(3, _)]
        ));
    }

    #[test]
    fn readers_presence_off_drops_a_readers_state_and_answers_it() {
        let mut s = state(&empty());
        s.set_limits(DocLimits {
            readers_presence: false,
            ..DocLimits::default()
        });
        let mut fx = Effects::default();
        s.receive(
            5,
            Access::ReadOnly,
            Inbound::Awareness(presence(50, 1, "{}")),
            &mut fx,
        )
        .expect("not refused");
        let [Delivery::To(5, frame)] = fx.deliveries.as_slice() else {
            panic!("{:?}", fx.deliveries);
        };
        assert!(
            awareness_clients(frame).is_empty(),
            "an empty answer, nothing stored"
        );
        assert!(s.presence().is_none());
        s.receive(
            6,
            Access::ReadWrite,
            Inbound::Awareness(presence(60, 1, "{}")),
            &mut Effects::default(),
        )
        .expect("writers publish");
        assert_eq!(presence_clients(&s.presence_all()).len(), 1);
    }

    #[test]
    fn another_nodes_presence_never_overrides_a_local_connections() {
        use yrs::updates::encoder::Encode;
        let mut s = state(&empty());
        s.receive(
            1,
            Access::ReadWrite,
            Inbound::Awareness(presence(7, 1, r#""mine""#)),
            &mut Effects::default(),
        )
        .expect("ok");
        let mut fx = Effects::default();
        let forged = presence(7, 50, r#""forged""#);
        s.apply_remote_presence(&forged.encode_v1(), &mut fx);
        s.apply_remote_presence(&presence(8, 1, r#""theirs""#).encode_v1(), &mut fx);
        let [Delivery::Presence(update)] = fx.deliveries.as_slice() else {
            panic!("{:?}", fx.deliveries);
        };
        assert_eq!(presence_clients(update), vec![(8, r#""theirs""#.into())]);
        // Only its own connections' presence is what this node tells others.
        assert_eq!(
            presence_clients(&s.local_presence()),
            vec![(7, r#""mine""#.into())]
        );
        // And a local connection cannot take the other node's id.
        let mut fx = Effects::default();
        s.receive(
            2,
            Access::ReadWrite,
            Inbound::Awareness(presence(8, 9, r#""stolen""#)),
            &mut fx,
        )
        .expect("dropped, not refused");
        assert!(fx.deliveries.is_empty());
    }

    #[test]
    fn presence_whose_clock_cannot_advance_is_refused() {
        let mut s = state(&empty());
        let err = s
            .receive(
                1,
                Access::ReadWrite,
                Inbound::Awareness(presence(5, u32::MAX, "{}")),
                &mut Effects::default(),
            )
            .err();
        assert!(
            matches!(err, Some(Rejection::InvalidAwareness(_))),
            "{err:?}"
        );
        // Leaving afterwards is fine (it used to overflow the clock).
        s.leave(1, &mut Effects::default());
    }

    #[test]
    fn presence_that_is_not_json_is_refused() {
        let mut s = state(&empty());
        let err = s
            .receive(
                1,
                Access::ReadWrite,
                Inbound::Awareness(presence(5, 1, "{oops")),
                &mut Effects::default(),
            )
            .err();
        assert!(
            matches!(err, Some(Rejection::InvalidAwareness(_))),
            "{err:?}"
        );
        // Nesting deep enough to overflow a client's parser is refused too.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = s
            .receive(
                1,
                Access::ReadWrite,
                Inbound::Awareness(presence(5, 1, &deep)),
                &mut Effects::default(),
            )
            .err();
        assert!(
            matches!(err, Some(Rejection::InvalidAwareness(_))),
            "{err:?}"
        );
    }
}
