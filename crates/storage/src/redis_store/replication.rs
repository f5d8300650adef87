//! What the nodes sharing a Redis tell each other about a document (the
//! [`Replication`] role of [`RedisStore`]): the changes they append, read
//! by following the document's stream, and what they say on its events
//! channel and never store (presence, the presence handshake, deletion).
//! Every document's channel reaches this node over the one connection of
//! its [`Bus`](super::bus::Bus); a log is read on the node's shared
//! command connection when the bus says another node appended to it.
//!
//! A message on `weft:{doc}:events` is the sender's node id (8 bytes,
//! little-endian), a kind byte, then the payload: an awareness update
//! (`PRESENCE`), nothing (`DELETED`, `PRESENCE_WANTED`), the asker's node
//! id followed by an awareness update (`PRESENCE_ANSWER`), or the newest
//! sequence number appended, as decimal text (`APPENDED`, published by
//! `append.lua` in the same step as the append).

use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use tokio::sync::{mpsc, Notify};

use super::bus::{backoff, Listener};
use super::retrying::Retrying;
use super::{io, key, seq_of, stream_id, RedisStore};
use crate::{DocMeta, DocName, Followed, PeerEvent, Replication, StorageError};

/// The channel nodes tell each other things on, and its message kinds.
pub(super) const EVENTS: &str = "events";
const PRESENCE: u8 = 0;
pub(super) const DELETED: u8 = 1;
const PRESENCE_WANTED: u8 = 2;
const PRESENCE_ANSWER: u8 = 3;
pub(super) const APPENDED: u8 = 4;
const STATELESS: u8 = 5;

impl RedisStore {
    /// A message for the events channel: who sends it, what it is, payload.
    pub(super) fn event(&self, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut message = Vec::with_capacity(9 + payload.len());
        message.extend_from_slice(&self.node.to_le_bytes());
        message.push(kind);
        message.extend_from_slice(payload);
        message
    }
}

#[async_trait::async_trait]
impl Replication for RedisStore {
    async fn watch(
        &self,
        doc: &DocName,
        meta: &DocMeta,
        after: u64,
    ) -> Result<Option<mpsc::Receiver<Followed>>, StorageError> {
        // One read waits at a time: while the room is behind, what other
        // nodes append meanwhile is read together next, as one run that
        // the room applies and sends at once, rather than queued read by
        // read (one send per change per subscriber, falling further
        // behind with each).
        let (tx, rx) = mpsc::channel(1);
        let wake = Arc::new(Notify::new());
        let channel = key(doc, EVENTS);
        // Listening before the first read: whatever is appended after it
        // wakes the follower.
        self.bus.listen(&channel, Listener::Log(wake.clone())).await;
        let follower = Follower {
            conn: self.conn(),
            doc: doc.clone(),
            incarnation: meta.incarnation,
            last: after,
            tx,
            wake,
        };
        let bus = self.bus.clone();
        self.bus.spawn(async move {
            let wake = follower.wake.clone();
            follower.run().await;
            bus.forget_log(&channel, &wake);
        });
        Ok(Some(rx))
    }

    async fn publish_presence(&self, doc: &DocName, update: &[u8]) -> Result<(), StorageError> {
        let _: i64 = self
            .conn()
            .spublish(key(doc, EVENTS), self.event(PRESENCE, update))
            .await
            .map_err(io("publishing presence"))?;
        Ok(())
    }

    async fn publish_stateless(&self, doc: &DocName, frame: &[u8]) -> Result<(), StorageError> {
        let _: i64 = self
            .conn()
            .spublish(key(doc, EVENTS), self.event(STATELESS, frame))
            .await
            .map_err(io("publishing a stateless message"))?;
        Ok(())
    }

    async fn ask_presence(&self, doc: &DocName) -> Result<usize, StorageError> {
        let receivers: i64 = self
            .conn()
            .spublish(key(doc, EVENTS), self.event(PRESENCE_WANTED, &[]))
            .await
            .map_err(io("asking other nodes for presence"))?;
        // Every node subscribed to the channel got it, the asker included.
        Ok(usize::try_from(receivers.saturating_sub(1)).unwrap_or(0))
    }

    async fn answer_presence(
        &self,
        doc: &DocName,
        asker: u64,
        update: &[u8],
    ) -> Result<(), StorageError> {
        let mut payload = Vec::with_capacity(8 + update.len());
        payload.extend_from_slice(&asker.to_le_bytes());
        payload.extend_from_slice(update);
        let _: i64 = self
            .conn()
            .spublish(key(doc, EVENTS), self.event(PRESENCE_ANSWER, &payload))
            .await
            .map_err(io("answering another node's presence question"))?;
        Ok(())
    }

    async fn watch_peers(
        &self,
        doc: &DocName,
    ) -> Result<Option<mpsc::Receiver<PeerEvent>>, StorageError> {
        let (tx, rx) = mpsc::channel(256);
        self.bus
            .listen(&key(doc, EVENTS), Listener::Peers(tx))
            .await;
        Ok(Some(rx))
    }
}

/// Most changes one read of a log takes.
const PAGE: usize = 1024;

/// Sends on what other nodes append to one document's log, until the
/// room stops listening: reads what is new each time the bus says another
/// node appended (or the subscription came back), on the node's shared
/// connection (a read that does not block). Each read also checks that
/// the stored history is still the one followed: the same incarnation,
/// and a newest change no older than the last one sent on. If not (Redis
/// came back empty or from an older state, or the document was deleted
/// and created anew), it says so ([`Followed::Lost`]) and stops.
struct Follower {
    conn: Retrying,
    doc: DocName,
    /// The incarnation whose history is followed.
    incarnation: u64,
    /// The newest change sent on.
    last: u64,
    tx: mpsc::Sender<Followed>,
    wake: Arc<Notify>,
}

impl Follower {
    async fn run(mut self) {
        let mut delays = backoff();
        loop {
            match self.read().await {
                Ok(Some(followed)) => {
                    delays = backoff();
                    // A full page: there may be more. A loss or deletion
                    // is the last word (the room logs and counts it).
                    let more = matches!(&followed, Followed::Changes(c) if c.len() >= PAGE);
                    let last = !matches!(followed, Followed::Changes(_));
                    if self.tx.send(followed).await.is_err() || last {
                        return;
                    }
                    if more {
                        continue;
                    }
                }
                Ok(None) => delays = backoff(),
                Err(e) => {
                    tracing_warn(&self.doc, &e);
                    let wait = delays.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        () = self.tx.closed() => return,
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            }
            tokio::select! {
                () = self.tx.closed() => return,
                () = self.wake.notified() => {}
            }
        }
    }

    /// What follows `last` in the log (up to [`PAGE`] changes), moving
    /// `last` past it, or that the history followed is gone; nothing if
    /// nothing follows, or if what does cannot be read here (left to a
    /// reload: the room sees the gap).
    async fn read(&mut self) -> Result<Option<Followed>, redis::RedisError> {
        let stream = key(&self.doc, "log");
        let options = StreamReadOptions::default().count(PAGE);
        type Reply = (
            Option<Vec<u8>>,
            Option<u64>,
            Option<Vec<u8>>,
            Option<StreamReadReply>,
        );
        let (meta, newest, deleted, reply): Reply = redis::pipe()
            .get(key(&self.doc, "meta"))
            .get(key(&self.doc, "seq"))
            .get(key(&self.doc, super::DELETED_MARK))
            .xread_options(&[stream.as_str()], &[stream_id(self.last)], &options)
            .query_async(&mut self.conn)
            .await?;
        // This incarnation was deleted (and the name maybe written anew
        // since) while this node did not hear it: let go of it as on
        // hearing it.
        let mark = deleted.and_then(|m| super::decode_meta(&self.doc, &m).ok());
        if mark.is_some_and(|m| m.incarnation == self.incarnation) {
            return Ok(Some(Followed::Deleted));
        }
        if let Some(lost) = self.lost(meta.as_deref(), newest.unwrap_or(0)) {
            return Ok(Some(Followed::Lost(lost)));
        }
        let Some(ids) = reply.and_then(|r| r.keys.into_iter().next()).map(|k| k.ids) else {
            return Ok(None);
        };
        let Some(newest) = ids.last().and_then(|e| seq_of(&e.id)) else {
            return Ok(None);
        };
        self.last = newest;
        match RedisStore::decode_entries(&self.doc, StreamRangeReply { ids }) {
            Ok(entries) => Ok(Some(Followed::Changes(entries))),
            Err(e) => {
                tracing_warn(&self.doc, &e);
                Ok(None)
            }
        }
    }

    /// Why the stored history is no longer the one followed, if it is not.
    fn lost(&self, meta: Option<&[u8]>, newest: u64) -> Option<String> {
        let Some(meta) = meta else {
            // Nothing stored yet, and the name's provisional metadata
            // expired: nothing to lose.
            return (self.last > 0).then(|| {
                format!(
                    "its metadata is gone from Redis, with the {} changes this node followed",
                    self.last
                )
            });
        };
        match super::decode_meta(&self.doc, meta) {
            Ok(meta) if meta.incarnation != self.incarnation => {
                Some("it was deleted and created anew (another incarnation)".into())
            }
            Ok(_) if newest < self.last => Some(format!(
                "its newest stored change is {newest}, but this node followed it to {}",
                self.last
            )),
            // Unreadable metadata is for loading to report.
            _ => None,
        }
    }
}

/// What a message on the events channel says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heard {
    /// Another node appended to the document's log.
    Appended,
    /// Something for the rooms serving the document.
    Peer(PeerEvent, Handoff),
}

/// How an event reaches a room that is busy.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Handoff {
    /// Dropped: the next one replaces it.
    MayDrop,
    /// Waited for: it must not be lost.
    Wait,
}

/// What a message on the events channel says, if another node sent it and
/// this node knows its kind.
pub(super) fn decode_event(payload: &[u8], node: [u8; 8]) -> Option<Heard> {
    let Some((from, [kind, rest @ ..])) = payload.split_at_checked(8) else {
        return None;
    };
    if from == node {
        return None;
    }
    let event = match *kind {
        // Presence is ephemeral: when the room is busy, a dropped update
        // is replaced by the next one.
        PRESENCE => {
            return Some(Heard::Peer(
                PeerEvent::Presence(rest.to_vec()),
                Handoff::MayDrop,
            ))
        }
        APPENDED => return Some(Heard::Appended),
        // As ephemeral as presence, but each one is its own message.
        STATELESS => {
            return Some(Heard::Peer(
                PeerEvent::Stateless(rest.to_vec()),
                Handoff::MayDrop,
            ))
        }
        // A deletion must not be dropped.
        DELETED => PeerEvent::Deleted,
        // Nor the handshake: the asker waits for answers.
        PRESENCE_WANTED => PeerEvent::PresenceWanted {
            asker: u64::from_le_bytes(from.try_into().unwrap_or([0; 8])),
        },
        PRESENCE_ANSWER => {
            let (asker, update) = rest.split_at_checked(8)?;
            // Anyone else's answer is presence like any other, and as
            // droppable.
            if asker != node {
                return Some(Heard::Peer(
                    PeerEvent::Presence(update.to_vec()),
                    Handoff::MayDrop,
                ));
            }
            PeerEvent::PresenceAnswer(update.to_vec())
        }
        _ => return None, // from a newer node: not for us
    };
    Some(Heard::Peer(event, Handoff::Wait))
}

fn tracing_warn(doc: &DocName, e: &dyn std::fmt::Display) {
    tracing::warn!(%doc, error = %e, "following the document's log in Redis");
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: [u8; 8] = [1; 8];
    const OTHER: [u8; 8] = [2; 8];

    fn message(from: [u8; 8], kind: u8, payload: &[u8]) -> Vec<u8> {
        [&from[..], &[kind], payload].concat()
    }

    #[test]
    fn messages_decode_by_kind_and_only_ephemeral_ones_may_be_dropped() {
        assert_eq!(
            decode_event(&message(OTHER, PRESENCE, b"aw"), ME),
            Some(Heard::Peer(
                PeerEvent::Presence(b"aw".to_vec()),
                Handoff::MayDrop
            ))
        );
        assert_eq!(
            decode_event(&message(OTHER, STATELESS, b"\x05\x02hi"), ME),
            Some(Heard::Peer(
                PeerEvent::Stateless(b"\x05\x02hi".to_vec()),
                Handoff::MayDrop
            ))
        );
        assert_eq!(
            decode_event(&message(OTHER, DELETED, &[]), ME),
            Some(Heard::Peer(PeerEvent::Deleted, Handoff::Wait))
        );
        assert_eq!(
            decode_event(&message(OTHER, PRESENCE_WANTED, &[]), ME),
            Some(Heard::Peer(
                PeerEvent::PresenceWanted {
                    asker: u64::from_le_bytes(OTHER)
                },
                Handoff::Wait
            ))
        );
        let answer =
            |asker: [u8; 8]| message(OTHER, PRESENCE_ANSWER, &[&asker[..], b"aw"].concat());
        assert_eq!(
            decode_event(&answer(ME), ME),
            Some(Heard::Peer(
                PeerEvent::PresenceAnswer(b"aw".to_vec()),
                Handoff::Wait
            ))
        );
        assert_eq!(
            decode_event(&message(OTHER, APPENDED, b"12"), ME),
            Some(Heard::Appended)
        );
        // An answer to someone else is presence like any other.
        assert_eq!(
            decode_event(&answer([3; 8]), ME),
            Some(Heard::Peer(
                PeerEvent::Presence(b"aw".to_vec()),
                Handoff::MayDrop
            ))
        );
    }

    #[test]
    fn own_short_and_unknown_messages_are_skipped() {
        assert_eq!(decode_event(&message(ME, PRESENCE, b"aw"), ME), None);
        assert_eq!(decode_event(&message(ME, APPENDED, b"12"), ME), None);
        assert_eq!(decode_event(&OTHER, ME), None);
        assert_eq!(decode_event(&message(OTHER, 99, b"aw"), ME), None);
        assert_eq!(
            decode_event(&message(OTHER, PRESENCE_ANSWER, &[1]), ME),
            None
        );
    }
}
