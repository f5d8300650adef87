//! `Presence`: who is present in one live document. It keeps each client
//! id's awareness state, who that id belongs to, and enforces what one
//! connection and the whole document may hold. Sans-IO, like the
//! [`DocState`](crate::DocState) that owns it: inputs in, the awareness
//! update to deliver out; the time is passed in.
//!
//! The rules:
//! - A client id belongs to the connection that introduced it, while that
//!   connection lives. Entries for an id another live connection (or
//!   another node, in cluster mode) holds are dropped: not stored, not
//!   relayed, and the sender is not closed, because y-websocket clients
//!   re-send every state they are sent as a matter of course.
//! - One connection may introduce at most `max_clients_per_connection` ids
//!   (a browser tab has one); more is refused whole.
//! - The document's presence, counted as the bytes of its encoding, stays
//!   under `max_document_bytes`. When an update would pass it, the
//!   connection holding the most is the one refused: the sender if it
//!   would, else the largest holder is crowded out (its presence removed,
//!   the connection closed), so a flood hurts only the flooder.
//! - Presence from other nodes is kept apart, within the same budget, and
//!   forgotten after [`OUTDATED_MS`] without news, as clients do.
//! - A departed id's clock is kept for [`OUTDATED_MS`], so a client's
//!   late re-send of a state that is already gone cannot bring it back.
//!
//! Hand-written rather than yrs' `Awareness`: that is a client's view (one
//! local state, everyone else's remote) with no notion of ownership or
//! budgets, and it keeps a clock for every id it ever saw.

use std::collections::HashMap;
use std::sync::Arc;

use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::AwarenessUpdate;
use yrs::ClientID;

use crate::doc_state::ConnId;

/// The most an entry's encoding takes besides its JSON: the client id
/// (a varint of up to 10 bytes), the clock (5) and the JSON's length (5).
/// An entry counts as this plus its JSON against the document's budget,
/// so the budget bounds the whole presence frame a joiner is sent.
pub const ENTRY_OVERHEAD: usize = 20;

/// How long presence from another node, or a departed id's clock, is kept
/// without news. y-protocols clients drop states not renewed for 30 s (they
/// renew every 15 s).
pub const OUTDATED_MS: u64 = 30_000;

/// What presence clients may make a document hold (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceLimits {
    /// Largest JSON state of one client id.
    pub max_state_bytes: usize,
    /// Client ids one connection may introduce.
    pub max_clients_per_connection: usize,
    /// The document's presence in all (local; other nodes' apart).
    pub max_document_bytes: usize,
    /// Whether read-only connections may publish presence of their own.
    pub readers: bool,
}

impl PresenceLimits {
    /// The largest presence a connection has reason to send in one frame:
    /// back everything it could have been sent (this node's presence and,
    /// `with_peers`, other nodes', each within the document's budget;
    /// y-websocket clients re-send what they receive) and states of its
    /// own. `None`: no limit. Larger is refused before it is decoded, which
    /// is what decoding a flood of client ids would cost.
    pub fn largest_message(&self, with_peers: bool) -> Option<usize> {
        let budget = self.max_document_bytes;
        if budget == 0 {
            return None;
        }
        let per_client = self.max_state_bytes.saturating_add(ENTRY_OVERHEAD);
        let own = match (self.max_clients_per_connection, self.max_state_bytes) {
            (0, _) | (_, 0) => budget,
            (clients, _) => budget.min(clients.saturating_mul(per_client)),
        };
        let sent = budget.saturating_mul(if with_peers { 2 } else { 1 });
        // And the count in front of the states.
        Some(sent.saturating_add(own).saturating_add(10))
    }
}

impl Default for PresenceLimits {
    fn default() -> Self {
        PresenceLimits {
            max_state_bytes: 0,
            max_clients_per_connection: 0,
            max_document_bytes: 0,
            readers: true,
        }
    }
}

/// Why presence from a connection was refused. Nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceRefusal {
    #[error(
        "state of client {client} has clock {}, which cannot advance",
        u32::MAX
    )]
    ClockAtLimit { client: ClientID },
    #[error("state of client {client} is {len} bytes; the limit is {max}")]
    StateTooLarge {
        client: ClientID,
        len: usize,
        max: usize,
    },
    #[error("state of client {client} is not JSON: {reason}")]
    NotJson { client: ClientID, reason: String },
    #[error("this connection may publish presence for at most {max} client ids")]
    TooManyClients { max: usize },
    #[error(
        "the document's presence is full ({limit} bytes): this connection would hold the most"
    )]
    DocumentFull { limit: usize },
    #[error("the document's presence is full ({limit} bytes): this connection held the most ({held} bytes)")]
    CrowdedOut { limit: usize, held: usize },
    #[error(
        "a frame with {len} bytes of presence: more than this document's presence allows ({max})"
    )]
    MessageTooLarge { len: usize, max: usize },
}

/// What a connection's awareness update did.
#[derive(Debug)]
pub struct Published {
    /// The entries that changed, to deliver to everyone (sender included).
    pub changed: AwarenessUpdate,
    /// Connections whose presence was removed to make room: close them.
    pub crowded_out: Vec<(ConnId, PresenceRefusal)>,
    /// The sender may not publish presence (a reader, with readers'
    /// presence off) and entries of its own were dropped.
    pub silenced: bool,
}

/// Who a stored entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// A connection of this node, while it lives.
    Conn(ConnId),
    /// Another node, which relayed it at `seen_ms`.
    Peer { seen_ms: u64 },
    /// Nobody: the id left at `since_ms`; only its clock is kept.
    Gone { since_ms: u64 },
}

#[derive(Debug, Clone)]
struct Entry {
    clock: u32,
    /// `None`: no state (its owner set it to `null`, or it left).
    state: Option<Arc<str>>,
    holder: Holder,
}

impl Entry {
    fn cost(&self) -> usize {
        cost(self.state.as_deref())
    }

    /// Whether `update` supersedes this entry (the y-protocols rule: a
    /// higher clock, or a `null` at the same clock removes).
    fn superseded_by(&self, update: &AwarenessUpdateEntry) -> bool {
        update.clock > self.clock
            || (update.clock == self.clock && is_null(update) && self.state.is_some())
    }
}

/// The ids one connection holds and what their entries cost.
#[derive(Debug, Default)]
struct Share {
    clients: Vec<ClientID>,
    bytes: usize,
}

/// What to do with one entry of a connection's update.
enum Verdict {
    /// Its own id: apply it.
    Update,
    /// An id nobody holds: it becomes the sender's.
    Claim,
    /// Someone else's, or stale: drop it.
    Drop,
}

/// Every presence state of one document and who holds it.
#[derive(Debug, Default)]
pub struct Presence {
    entries: HashMap<ClientID, Entry>,
    shares: HashMap<ConnId, Share>,
    /// What the entries of this node's connections cost, in all.
    local_bytes: usize,
    /// What other nodes' entries cost, in all.
    peer_bytes: usize,
    limits: PresenceLimits,
    next_prune_ms: u64,
}

impl Presence {
    pub fn set_limits(&mut self, limits: PresenceLimits) {
        self.limits = limits;
    }

    /// How many client ids are present.
    pub fn len(&self) -> usize {
        self.entries.values().filter(|e| e.state.is_some()).count()
    }

    /// Bytes the presence of this node's connections takes, as counted
    /// against the document's budget.
    #[cfg(test)]
    pub fn local_bytes(&self) -> usize {
        self.local_bytes
    }

    /// Every current state, this node's and other nodes'.
    pub fn all(&self, now_ms: u64) -> AwarenessUpdate {
        self.states(|holder| match holder {
            Holder::Conn(_) => true,
            Holder::Peer { seen_ms } => !outdated(seen_ms, now_ms),
            Holder::Gone { .. } => false,
        })
    }

    /// The states this node's connections hold (what it tells other nodes).
    pub fn local(&self) -> AwarenessUpdate {
        self.states(|holder| matches!(holder, Holder::Conn(_)))
    }

    fn states(&self, keep: impl Fn(Holder) -> bool) -> AwarenessUpdate {
        let clients = self
            .entries
            .iter()
            .filter(|(_, e)| keep(e.holder))
            .filter_map(|(&client, e)| Some((client, entry(e.clock, e.state.clone()?))))
            .collect();
        AwarenessUpdate { clients }
    }

    /// An awareness update from connection `conn`. `may_publish` is false
    /// for a reader when readers' presence is off. Refused whole (nothing
    /// stored) or applied; see the module doc for the rules.
    pub fn publish(
        &mut self,
        conn: ConnId,
        may_publish: bool,
        update: AwarenessUpdate,
        now_ms: u64,
    ) -> Result<Published, PresenceRefusal> {
        self.prune(now_ms);
        let mut out = Published {
            changed: empty(),
            crowded_out: Vec::new(),
            silenced: false,
        };
        let mut mine = Vec::new();
        let mut claims = 0;
        for (client, entry) in update.clients {
            let verdict = self.verdict(conn, client, &entry);
            if matches!(verdict, Verdict::Drop) {
                continue;
            }
            if !may_publish {
                out.silenced = true;
                continue;
            }
            let claim = matches!(verdict, Verdict::Claim);
            claims += usize::from(claim);
            mine.push((client, entry, claim));
        }
        if mine.is_empty() {
            return Ok(out);
        }
        self.check_clients(conn, claims)?;
        for (client, entry, _) in &mine {
            self.check_state(*client, entry)?;
        }
        let held_after = self.held_after(conn, &mine);
        out.crowded_out = self.make_room(conn, held_after, now_ms, &mut out.changed)?;
        for (client, entry, claim) in mine {
            self.store(conn, client, &entry, claim);
            out.changed.clients.insert(client, entry);
        }
        Ok(out)
    }

    /// `conn` is gone: its ids are free again. Returns their removal
    /// (`null` one clock on) for everyone still there.
    pub fn leave(&mut self, conn: ConnId, now_ms: u64) -> AwarenessUpdate {
        let mut removed = empty();
        let Some(share) = self.shares.remove(&conn) else {
            return removed;
        };
        self.local_bytes = self.local_bytes.saturating_sub(share.bytes);
        for client in share.clients {
            let Some(e) = self.entries.get_mut(&client) else {
                continue;
            };
            if e.state.take().is_some() {
                e.clock = e.clock.saturating_add(1);
                removed
                    .clients
                    .insert(client, entry(e.clock, "null".into()));
            }
            e.holder = Holder::Gone { since_ms: now_ms };
        }
        removed
    }

    /// Presence another node relayed: accepted for ids no connection of
    /// this node holds, within the document's budget (other nodes' apart).
    /// Returns what changed.
    pub fn apply_peer(&mut self, update: AwarenessUpdate, now_ms: u64) -> AwarenessUpdate {
        self.prune(now_ms);
        let mut changed = empty();
        for (client, update) in update.clients {
            let current = self.entries.get(&client);
            let newer = match current {
                Some(e) if matches!(e.holder, Holder::Conn(_)) => false,
                Some(e) => e.superseded_by(&update),
                None => !is_null(&update),
            };
            // A clock at its limit could never be removed (see `leave`).
            if !newer || update.clock == u32::MAX {
                continue;
            }
            let old = current.map_or(0, |e| match e.holder {
                Holder::Peer { .. } => e.cost(),
                _ => 0,
            });
            let entry = if is_null(&update) {
                Entry {
                    clock: update.clock,
                    state: None,
                    holder: Holder::Gone { since_ms: now_ms },
                }
            } else {
                let new = cost(Some(&update.json));
                let max = self.limits.max_document_bytes;
                if max > 0 && self.peer_bytes - old + new > max {
                    continue;
                }
                Entry {
                    clock: update.clock,
                    state: Some(update.json.clone()),
                    holder: Holder::Peer { seen_ms: now_ms },
                }
            };
            self.peer_bytes = self.peer_bytes - old
                + match entry.holder {
                    Holder::Peer { .. } => entry.cost(),
                    _ => 0,
                };
            self.entries.insert(client, entry);
            changed.clients.insert(client, update);
        }
        changed
    }

    /// What to do with `update` for `client` from `conn`.
    fn verdict(&self, conn: ConnId, client: ClientID, update: &AwarenessUpdateEntry) -> Verdict {
        match self.entries.get(&client) {
            Some(e) if e.holder == Holder::Conn(conn) => {
                if e.superseded_by(update) {
                    Verdict::Update
                } else {
                    Verdict::Drop
                }
            }
            Some(Entry {
                holder: Holder::Conn(_) | Holder::Peer { .. },
                ..
            }) => Verdict::Drop,
            // A late re-send of a departed state carries its old clock.
            Some(e) if update.clock > e.clock && !is_null(update) => Verdict::Claim,
            Some(_) => Verdict::Drop,
            None if is_null(update) => Verdict::Drop,
            None => Verdict::Claim,
        }
    }

    fn check_clients(&self, conn: ConnId, claims: usize) -> Result<(), PresenceRefusal> {
        let max = self.limits.max_clients_per_connection;
        let held = self.shares.get(&conn).map_or(0, |s| s.clients.len());
        if claims > 0 && max > 0 && held + claims > max {
            return Err(PresenceRefusal::TooManyClients { max });
        }
        Ok(())
    }

    /// Other clients `JSON.parse` every state: refuse what they could not.
    fn check_state(
        &self,
        client: ClientID,
        update: &AwarenessUpdateEntry,
    ) -> Result<(), PresenceRefusal> {
        // Leaving bumps the clock; one at its limit could not go.
        if update.clock == u32::MAX {
            return Err(PresenceRefusal::ClockAtLimit { client });
        }
        let max = self.limits.max_state_bytes;
        if max > 0 && update.json.len() > max {
            return Err(PresenceRefusal::StateTooLarge {
                client,
                len: update.json.len(),
                max,
            });
        }
        // Parsed for real (not skimmed): serde_json's nesting limit refuses
        // states nested deeper than clients can parse.
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&update.json) {
            return Err(PresenceRefusal::NotJson {
                client,
                reason: e.to_string(),
            });
        }
        Ok(())
    }

    /// What `conn` would hold once `mine` is applied.
    fn held_after(&self, conn: ConnId, mine: &[(ClientID, AwarenessUpdateEntry, bool)]) -> usize {
        let held = self.shares.get(&conn).map_or(0, |s| s.bytes);
        mine.iter().fold(held, |held, (client, update, _)| {
            let old = self.entries.get(client).map_or(0, |e| match e.holder {
                Holder::Conn(_) => e.cost(),
                _ => 0,
            });
            held - old + cost((!is_null(update)).then_some(&*update.json))
        })
    }

    /// Keeps the document within its budget once `conn` holds `held_after`:
    /// while it would not be, the largest holder goes, unless that is
    /// `conn` itself (then its update is refused). Removals are added to
    /// `changed`; returns who was crowded out.
    fn make_room(
        &mut self,
        conn: ConnId,
        held_after: usize,
        now_ms: u64,
        changed: &mut AwarenessUpdate,
    ) -> Result<Vec<(ConnId, PresenceRefusal)>, PresenceRefusal> {
        let limit = self.limits.max_document_bytes;
        let held = self.shares.get(&conn).map_or(0, |s| s.bytes);
        let mut crowded_out = Vec::new();
        if limit == 0 {
            return Ok(crowded_out);
        }
        while self.local_bytes - held + held_after > limit {
            let largest = self
                .shares
                .iter()
                .filter(|(&other, _)| other != conn)
                .max_by_key(|(&other, share)| (share.bytes, std::cmp::Reverse(other)))
                .map(|(&other, share)| (other, share.bytes));
            let Some((other, bytes)) = largest.filter(|&(_, bytes)| bytes > held_after) else {
                return Err(PresenceRefusal::DocumentFull { limit });
            };
            changed.clients.extend(self.leave(other, now_ms).clients);
            crowded_out.push((other, PresenceRefusal::CrowdedOut { limit, held: bytes }));
        }
        Ok(crowded_out)
    }

    /// Applies one checked entry of `conn`'s.
    fn store(
        &mut self,
        conn: ConnId,
        client: ClientID,
        update: &AwarenessUpdateEntry,
        claim: bool,
    ) {
        let state = (!is_null(update)).then(|| update.json.clone());
        let new = cost(state.as_deref());
        let share = self.shares.entry(conn).or_default();
        let old = match self.entries.get(&client) {
            Some(e) if !claim => e.cost(),
            _ => 0,
        };
        if claim {
            share.clients.push(client);
        }
        share.bytes = share.bytes - old + new;
        self.local_bytes = self.local_bytes - old + new;
        self.entries.insert(
            client,
            Entry {
                clock: update.clock,
                state,
                holder: Holder::Conn(conn),
            },
        );
    }

    /// Forgets departed ids and other nodes' states that have had no news
    /// for [`OUTDATED_MS`]. At most once a second, so it costs little.
    fn prune(&mut self, now_ms: u64) {
        if now_ms < self.next_prune_ms {
            return;
        }
        self.next_prune_ms = now_ms + 1000;
        let mut peer_bytes = self.peer_bytes;
        self.entries.retain(|_, e| match e.holder {
            Holder::Conn(_) => true,
            Holder::Gone { since_ms } => !outdated(since_ms, now_ms),
            Holder::Peer { seen_ms } => {
                let keep = !outdated(seen_ms, now_ms);
                if !keep {
                    peer_bytes -= e.cost();
                }
                keep
            }
        });
        self.peer_bytes = peer_bytes;
    }
}

fn outdated(since_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(since_ms) >= OUTDATED_MS
}

fn is_null(update: &AwarenessUpdateEntry) -> bool {
    &*update.json == "null"
}

/// What an entry with `state` counts against the budget.
fn cost(state: Option<&str>) -> usize {
    ENTRY_OVERHEAD + state.map_or(0, str::len)
}

/// An awareness update with no entries.
pub fn empty() -> AwarenessUpdate {
    AwarenessUpdate {
        clients: HashMap::new(),
    }
}

fn entry(clock: u32, json: Arc<str>) -> AwarenessUpdateEntry {
    AwarenessUpdateEntry { clock, json }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PresenceLimits = PresenceLimits {
        max_state_bytes: 1000,
        max_clients_per_connection: 4,
        max_document_bytes: 1000,
        readers: true,
    };

    fn limited(limits: PresenceLimits) -> Presence {
        let mut p = Presence::default();
        p.set_limits(limits);
        p
    }

    fn update(entries: &[(u64, u32, &str)]) -> AwarenessUpdate {
        AwarenessUpdate {
            clients: entries
                .iter()
                .map(|&(client, clock, json)| (ClientID::new(client), entry(clock, json.into())))
                .collect(),
        }
    }

    /// (client, clock, state) of an update, sorted.
    fn listed(update: &AwarenessUpdate) -> Vec<(u64, u32, String)> {
        let mut out: Vec<_> = update
            .clients
            .iter()
            .map(|(c, e)| (c.get(), e.clock, e.json.to_string()))
            .collect();
        out.sort();
        out
    }

    fn publish(
        p: &mut Presence,
        conn: ConnId,
        entries: &[(u64, u32, &str)],
    ) -> Result<Published, PresenceRefusal> {
        p.publish(conn, true, update(entries), 0)
    }

    #[test]
    fn an_id_is_its_introducers_and_others_entries_for_it_are_dropped() {
        let mut p = limited(LIMITS);
        publish(&mut p, 1, &[(10, 1, r#""ann""#)]).expect("claims");
        // A forgery and a forged null, with higher clocks; and a client's
        // ordinary re-send of every state it was sent, its own among them.
        let forged = publish(&mut p, 2, &[(10, 9, r#""mallory""#)]).expect("not refused");
        assert!(forged.changed.clients.is_empty());
        publish(&mut p, 2, &[(10, 10, "null")]).expect("not refused");
        let echo = publish(&mut p, 2, &[(10, 1, r#""ann""#), (20, 1, r#""bob""#)]).expect("ok");
        assert_eq!(listed(&echo.changed), vec![(20, 1, r#""bob""#.into())]);
        assert_eq!(
            listed(&p.all(0)),
            vec![(10, 1, r#""ann""#.into()), (20, 1, r#""bob""#.into())]
        );
        // The owner's own updates and null apply by the y-protocols rule.
        assert!(publish(&mut p, 1, &[(10, 1, r#""stale""#)])
            .expect("ok")
            .changed
            .clients
            .is_empty());
        let gone = publish(&mut p, 1, &[(10, 2, "null")]).expect("ok");
        assert_eq!(listed(&gone.changed), vec![(10, 2, "null".into())]);
        // Still its owner's while the owner lives, even with no state.
        assert!(publish(&mut p, 2, &[(10, 3, r#""mallory""#)])
            .expect("ok")
            .changed
            .clients
            .is_empty());
        publish(&mut p, 1, &[(10, 3, r#""back""#)]).expect("ok");
        assert_eq!(listed(&p.all(0))[0], (10, 3, r#""back""#.into()));
    }

    #[test]
    fn a_departed_id_is_removed_and_a_late_re_send_cannot_revive_it() {
        let mut p = limited(LIMITS);
        publish(&mut p, 1, &[(10, 4, r#""ann""#)]).expect("claims");
        let removed = p.leave(1, 100);
        assert_eq!(listed(&removed), vec![(10, 5, "null".into())]);
        assert!(p.all(100).clients.is_empty());
        assert_eq!(p.local_bytes(), 0);
        // Another client re-sends the state it had (old clock), or one at
        // the removal's clock: dropped.
        for clock in [4, 5] {
            let late = p.publish(2, true, update(&[(10, clock, r#""ann""#)]), 200);
            assert!(late.expect("ok").changed.clients.is_empty());
        }
        // A newer one claims the free id.
        let claimed = p
            .publish(2, true, update(&[(10, 6, r#""ann again""#)]), 300)
            .expect("ok");
        assert_eq!(claimed.changed.clients.len(), 1);
        // A departed id's clock is forgotten after OUTDATED_MS.
        p.leave(2, 400);
        assert_eq!(p.entries.len(), 1);
        p.publish(3, true, update(&[]), 400 + OUTDATED_MS)
            .expect("ok");
        assert!(p.entries.is_empty(), "nothing of the departed is kept");
    }

    #[test]
    fn one_connection_may_introduce_only_so_many_ids() {
        let mut p = limited(LIMITS);
        let five: Vec<(u64, u32, &str)> = (1..=5).map(|c| (c, 1, "{}")).collect();
        assert_eq!(
            publish(&mut p, 1, &five).map(|_| ()),
            Err(PresenceRefusal::TooManyClients { max: 4 })
        );
        assert!(p.all(0).clients.is_empty(), "refused whole: nothing stored");
        publish(&mut p, 1, &five[..3]).expect("three");
        publish(&mut p, 1, &five[3..4]).expect("four");
        assert!(publish(&mut p, 1, &five[4..]).is_err());
        // Updating its own ids is not introducing new ones.
        publish(&mut p, 1, &[(1, 2, "[]"), (4, 2, "[]")]).expect("updates");
        assert_eq!(p.all(0).clients.len(), 4);
    }

    #[test]
    fn a_full_document_refuses_its_largest_holder_and_never_a_smaller_newcomer() {
        let mut p = limited(LIMITS);
        let state = |n: usize| format!(r#""{}""#, "x".repeat(n - 2 - ENTRY_OVERHEAD));
        let (s300, s400, s100) = (state(300), state(400), state(100));
        publish(&mut p, 1, &[(1, 1, &s300)]).expect("fits");
        publish(&mut p, 2, &[(2, 1, &s400)]).expect("fits");
        publish(&mut p, 3, &[(3, 1, &s300)]).expect("exactly full");
        assert_eq!(p.local_bytes(), 1000);
        // As large as the largest: the sender is the one refused.
        let refused = publish(&mut p, 4, &[(4, 1, &s400)]).map(|_| ());
        assert_eq!(refused, Err(PresenceRefusal::DocumentFull { limit: 1000 }));
        // Smaller: the largest holder is crowded out to make room.
        let published = publish(&mut p, 5, &[(5, 1, &s100)]).expect("fits");
        assert_eq!(
            published.crowded_out,
            vec![(
                2,
                PresenceRefusal::CrowdedOut {
                    limit: 1000,
                    held: 400
                }
            )]
        );
        assert!(published.changed.clients[&ClientID::new(2)].json.as_ref() == "null");
        assert_eq!(p.local_bytes(), 700);
        assert_eq!(p.all(0).clients.len(), 3);
        // Growing one's own state counts only the difference.
        publish(&mut p, 5, &[(5, 2, &state(400))]).expect("fits exactly");
        assert_eq!(p.local_bytes(), 1000);
    }

    #[test]
    fn readers_publish_only_when_allowed() {
        let mut p = limited(PresenceLimits {
            readers: false,
            ..LIMITS
        });
        let silenced = p
            .publish(1, false, update(&[(1, 1, "{}")]), 0)
            .expect("not refused");
        assert!(silenced.silenced && silenced.changed.clients.is_empty());
        assert!(p.all(0).clients.is_empty());
    }

    #[test]
    fn what_is_stored_is_checked_first() {
        let mut p = limited(PresenceLimits {
            max_state_bytes: 10,
            ..LIMITS
        });
        assert!(matches!(
            publish(&mut p, 1, &[(1, u32::MAX, "{}")]),
            Err(PresenceRefusal::ClockAtLimit { .. })
        ));
        assert!(matches!(
            publish(&mut p, 1, &[(1, 1, "{not json")]),
            Err(PresenceRefusal::NotJson { .. })
        ));
        assert!(matches!(
            publish(&mut p, 1, &[(1, 1, r#""far too long""#)]),
            Err(PresenceRefusal::StateTooLarge {
                len: 14,
                max: 10,
                ..
            })
        ));
        assert!(p.all(0).clients.is_empty());
    }

    #[test]
    fn other_nodes_presence_keeps_to_free_ids_its_budget_and_its_time() {
        let mut p = limited(PresenceLimits {
            max_document_bytes: 100,
            ..LIMITS
        });
        publish(&mut p, 1, &[(1, 1, r#""local""#)]).expect("claims");
        let changed = p.apply_peer(update(&[(1, 9, r#""forged""#), (2, 1, r#""remote""#)]), 0);
        assert_eq!(listed(&changed), vec![(2, 1, r#""remote""#.into())]);
        // Beyond the budget for other nodes' presence: dropped.
        let big = format!(r#""{}""#, "b".repeat(80));
        assert!(p.apply_peer(update(&[(3, 1, &big)]), 0).clients.is_empty());
        // A local connection cannot take an id another node holds.
        assert!(publish(&mut p, 2, &[(2, 5, r#""mine""#)])
            .expect("ok")
            .changed
            .clients
            .is_empty());
        assert_eq!(listed(&p.local()), vec![(1, 1, r#""local""#.into())]);
        // Not renewed for OUTDATED_MS: no longer shown, then forgotten.
        assert_eq!(p.all(OUTDATED_MS - 1).clients.len(), 2);
        assert_eq!(p.all(OUTDATED_MS).clients.len(), 1);
        p.apply_peer(update(&[]), OUTDATED_MS);
        assert_eq!(p.peer_bytes, 0);
        // The other node's null removes its state.
        p.apply_peer(update(&[(4, 1, r#""r""#)]), OUTDATED_MS);
        let removed = p.apply_peer(update(&[(4, 2, "null")]), OUTDATED_MS);
        assert_eq!(listed(&removed), vec![(4, 2, "null".into())]);
        assert_eq!(p.all(OUTDATED_MS).clients.len(), 1);
    }

    #[test]
    fn the_largest_message_is_what_a_client_could_have_been_sent_plus_its_own() {
        let limits = PresenceLimits {
            max_state_bytes: 64 * 1024,
            max_clients_per_connection: 4,
            max_document_bytes: 1 << 20,
            readers: true,
        };
        let own = 4 * (64 * 1024 + ENTRY_OVERHEAD);
        assert_eq!(limits.largest_message(false), Some((1 << 20) + own + 10));
        assert_eq!(limits.largest_message(true), Some(2 * (1 << 20) + own + 10));
        assert_eq!(PresenceLimits::default().largest_message(true), None);
    }
}
