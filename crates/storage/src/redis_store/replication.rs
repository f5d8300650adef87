//! What the nodes sharing a Redis tell each other about a document (the
//! [`Replication`] role of [`RedisStore`]): the changes they append, read
//! by following the document's stream, and what they say on its events
//! channel and never store (presence, the presence handshake, deletion).
//!
//! A message on `weft:{doc}:events` is the sender's node id (8 bytes,
//! little-endian), a kind byte, then the payload: an awareness update
//! (`PRESENCE`), nothing (`DELETED`, `PRESENCE_WANTED`), or the asker's
//! node id followed by an awareness update (`PRESENCE_ANSWER`).

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};
use tokio::sync::mpsc;

use super::{io, key, stream_id, RedisStore, RECONNECT};
use crate::{DocName, LogEntry, PeerEvent, Replication, StorageError};

/// The channel nodes tell each other things on, and its message kinds.
pub(super) const EVENTS: &str = "events";
const PRESENCE: u8 = 0;
pub(super) const DELETED: u8 = 1;
const PRESENCE_WANTED: u8 = 2;
const PRESENCE_ANSWER: u8 = 3;

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
        after: u64,
    ) -> Result<Option<mpsc::Receiver<Vec<LogEntry>>>, StorageError> {
        // Its own connection: a blocking read would hold up everything else
        // multiplexed on the shared one. Opened here, so a Redis that cannot
        // be reached fails the load; reopened in the task after a failure.
        let first = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(io("opening a connection to follow the log"))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(follow_log(
            self.client.clone(),
            first,
            doc.clone(),
            after,
            tx,
        ));
        Ok(Some(rx))
    }

    async fn publish_presence(&self, doc: &DocName, update: &[u8]) -> Result<(), StorageError> {
        let _: i64 = self
            .conn()
            .publish(key(doc, EVENTS), self.event(PRESENCE, update))
            .await
            .map_err(io("publishing presence"))?;
        Ok(())
    }

    async fn ask_presence(&self, doc: &DocName) -> Result<usize, StorageError> {
        let receivers: i64 = self
            .conn()
            .publish(key(doc, EVENTS), self.event(PRESENCE_WANTED, &[]))
            .await
            .map_err(io("asking other nodes for presence"))?;
        // Every subscriber of the channel got it, the asker's own included.
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
            .publish(key(doc, EVENTS), self.event(PRESENCE_ANSWER, &payload))
            .await
            .map_err(io("answering another node's presence question"))?;
        Ok(())
    }

    async fn watch_peers(
        &self,
        doc: &DocName,
    ) -> Result<Option<mpsc::Receiver<PeerEvent>>, StorageError> {
        let channel = key(doc, EVENTS);
        let first = subscribe(&self.client, &channel)
            .await
            .map_err(io("subscribing to other nodes' events"))?;
        let (tx, rx) = mpsc::channel(256);
        let node = self.node.to_le_bytes();
        tokio::spawn(relay_events(self.client.clone(), first, channel, node, tx));
        Ok(Some(rx))
    }
}

/// Sends on what is appended to `doc`'s stream after `after`, until the
/// room stops listening; reconnects after Redis went away.
async fn follow_log(
    client: redis::Client,
    first: MultiplexedConnection,
    doc: DocName,
    after: u64,
    tx: mpsc::Sender<Vec<LogEntry>>,
) {
    let stream = key(&doc, "log");
    let mut conn = Some(first);
    let mut last = stream_id(after);
    let options = StreamReadOptions::default().block(1000).count(1024);
    loop {
        let Some(c) = conn.as_mut() else {
            if !pause_before_reconnecting(&tx).await {
                return;
            }
            conn = client.get_multiplexed_async_connection().await.ok();
            continue;
        };
        let keys = [stream.as_str()];
        let ids = [last.as_str()];
        let read: Result<Option<StreamReadReply>, _> = tokio::select! {
            _ = tx.closed() => return,
            read = c.xread_options(&keys, &ids, &options) => read,
        };
        match read {
            Ok(Some(reply)) => {
                if !forward(&doc, reply, &mut last, &tx).await {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing_warn(&doc, &e);
                conn = None;
            }
        }
    }
}

/// Sends the entries of `reply` on and moves `last` past them; false once
/// the room stopped listening.
async fn forward(
    doc: &DocName,
    reply: StreamReadReply,
    last: &mut String,
    tx: &mpsc::Sender<Vec<LogEntry>>,
) -> bool {
    for k in reply.keys {
        let Some(newest) = k.ids.last().map(|e| e.id.clone()) else {
            continue;
        };
        let entries = RedisStore::decode_entries(doc, StreamRangeReply { ids: k.ids });
        *last = newest;
        match entries {
            Ok(entries) => {
                if tx.send(entries).await.is_err() {
                    return false;
                }
            }
            // A record this node cannot read: leave it to a reload (the
            // room sees the gap).
            Err(e) => tracing_warn(doc, &e),
        }
    }
    true
}

/// Sends on what other nodes say on `channel`, until the room stops
/// listening; subscribes again after Redis went away.
async fn relay_events(
    client: redis::Client,
    first: PubSub,
    channel: String,
    node: [u8; 8],
    tx: mpsc::Sender<PeerEvent>,
) {
    let mut pubsub = Some(first);
    loop {
        let Some(subscribed) = pubsub.take() else {
            if !pause_before_reconnecting(&tx).await {
                return;
            }
            pubsub = subscribe(&client, &channel).await.ok();
            continue;
        };
        let mut messages = subscribed.into_on_message();
        loop {
            let message = tokio::select! {
                _ = tx.closed() => return,
                m = messages.next() => m,
            };
            // The connection dropped: subscribe again.
            let Some(message) = message else { break };
            let Ok(Value::BulkString(payload)) = message.get_payload::<Value>() else {
                continue;
            };
            match decode_event(&payload, node) {
                Some((event, Handoff::MayDrop)) => {
                    let _ = tx.try_send(event);
                }
                Some((event, Handoff::Wait)) => {
                    let _ = tx.send(event).await;
                }
                None => {}
            }
        }
    }
}

/// How an event reaches a room that is busy.
#[derive(Debug, PartialEq, Eq)]
enum Handoff {
    /// Dropped: the next one replaces it.
    MayDrop,
    /// Waited for: it must not be lost.
    Wait,
}

/// What a message on the events channel says, if another node sent it and
/// this node knows its kind.
fn decode_event(payload: &[u8], node: [u8; 8]) -> Option<(PeerEvent, Handoff)> {
    let Some((from, [kind, rest @ ..])) = payload.split_at_checked(8) else {
        return None;
    };
    if from == node {
        return None;
    }
    let event = match *kind {
        // Presence is ephemeral: when the room is busy, a dropped update
        // is replaced by the next one.
        PRESENCE => return Some((PeerEvent::Presence(rest.to_vec()), Handoff::MayDrop)),
        // A deletion must not be dropped.
        DELETED => PeerEvent::Deleted,
        // Nor the handshake: the asker waits for answers.
        PRESENCE_WANTED => PeerEvent::PresenceWanted {
            asker: u64::from_le_bytes(from.try_into().unwrap_or([0; 8])),
        },
        PRESENCE_ANSWER => {
            let (asker, update) = rest.split_at_checked(8)?;
            // Anyone else's answer is presence like any other.
            if asker == node {
                PeerEvent::PresenceAnswer(update.to_vec())
            } else {
                PeerEvent::Presence(update.to_vec())
            }
        }
        _ => return None, // from a newer node: not for us
    };
    Some((event, Handoff::Wait))
}

/// Waits a moment before reconnecting; false if the room stopped listening
/// meanwhile.
async fn pause_before_reconnecting<T>(tx: &mpsc::Sender<T>) -> bool {
    tokio::select! {
        _ = tx.closed() => false,
        _ = tokio::time::sleep(RECONNECT) => true,
    }
}

async fn subscribe(client: &redis::Client, channel: &str) -> redis::RedisResult<PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
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
    fn messages_decode_by_kind_and_only_presence_may_be_dropped() {
        assert_eq!(
            decode_event(&message(OTHER, PRESENCE, b"aw"), ME),
            Some((PeerEvent::Presence(b"aw".to_vec()), Handoff::MayDrop))
        );
        assert_eq!(
            decode_event(&message(OTHER, DELETED, &[]), ME),
            Some((PeerEvent::Deleted, Handoff::Wait))
        );
        assert_eq!(
            decode_event(&message(OTHER, PRESENCE_WANTED, &[]), ME),
            Some((
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
            Some((PeerEvent::PresenceAnswer(b"aw".to_vec()), Handoff::Wait))
        );
        // An answer to someone else is presence like any other.
        assert_eq!(
            decode_event(&answer([3; 8]), ME),
            Some((PeerEvent::Presence(b"aw".to_vec()), Handoff::Wait))
        );
    }

    #[test]
    fn own_short_and_unknown_messages_are_skipped() {
        assert_eq!(decode_event(&message(ME, PRESENCE, b"aw"), ME), None);
        assert_eq!(decode_event(&OTHER, ME), None);
        assert_eq!(decode_event(&message(OTHER, 99, b"aw"), ME), None);
        assert_eq!(
            decode_event(&message(OTHER, PRESENCE_ANSWER, &[1]), ME),
            None
        );
    }
}
