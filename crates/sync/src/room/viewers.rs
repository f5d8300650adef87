//! A viewer's opening: it joins at a known sequence number and is sent
//! the changes after the id it resumes from (from memory, else from at
//! most [`MAX_LOG_REPLAY`] of the stored log) or the snapshot every viewer
//! joining before the next change shares, then everyone's presence;
//! live events follow from that number on, so a resumed viewer gets every
//! change exactly once.

use bytes::{Bytes, BytesMut};
use tracing::warn;

use super::{Reply, Room};
use crate::doc_state::{Change, ConnId, Delivery, Effects};
use crate::session::{Kind, Subscriber};
use crate::{viewer, EventId};

/// The most changes a resuming viewer is replayed from the stored log;
/// one further behind gets the shared snapshot, which then costs less than
/// reading and encoding its changes for it alone.
const MAX_LOG_REPLAY: usize = 4096;

impl Room {
    /// A viewer joins, if the document has room for it.
    pub(super) async fn follow(
        &mut self,
        conn: ConnId,
        mut subscriber: Subscriber,
        resume: Option<EventId>,
        reply: Reply<()>,
        fx: &mut Effects,
    ) {
        if let Err(full) = self.has_room() {
            let _ = reply.send(Err(full));
        } else if reply.send(Ok(())).is_ok() {
            // Changes up to here are in the opening payload;
            // live events take over after them.
            subscriber.kind = Kind::Viewer {
                after: self.state.last_seq(),
            };
            let (content, presence) = self.opening_for_viewer(resume).await;
            self.subscribers.insert(conn, subscriber);
            if !content.is_empty() {
                fx.deliveries.push(Delivery::To(conn, content));
            }
            fx.deliveries.push(Delivery::Opening(conn, presence));
        }
    }

    /// What a new viewer is sent first: the changes after `resume` when they
    /// can all be had (from memory, else from the log), otherwise the shared
    /// snapshot; then, apart, everyone's presence (queued as an editor's
    /// opening presence is: whatever others published cannot get a joiner
    /// closed).
    async fn opening_for_viewer(&mut self, resume: Option<EventId>) -> (Bytes, Bytes) {
        let replay = self.replay(resume).await;
        let cpu = self.cx.cpu.clone();
        cpu.run(|| self.opening(replay)).await
    }

    /// The opening itself, from the changes to replay if there are any.
    fn opening(&mut self, replay: Option<Vec<Change>>) -> (Bytes, Bytes) {
        let incarnation = self.state.incarnation();
        let content = match replay {
            Some(changes) => {
                let mut out = BytesMut::new();
                for change in &changes {
                    out.extend_from_slice(&viewer::update_event(incarnation, change));
                }
                out.freeze()
            }
            // Nothing to send when it fails: the document is poisoned and
            // reloaded after this batch, and the viewer, still subscribed,
            // gets live changes without a base until it reconnects.
            None => self.state.snapshot_event().unwrap_or_else(|e| {
                warn!(doc = %self.name, error = %e, "could not encode a snapshot");
                Bytes::new()
            }),
        };
        // Always sent, even when empty: a viewer that resumed learns that
        // presence it still shows is gone.
        let presence = viewer::awareness_event(&self.state.presence_all());
        (content, presence)
    }

    /// Every change after `resume`, or `None` when that is not possible
    /// (an id from another incarnation, from the future, or older than
    /// what is retained).
    async fn replay(&self, resume: Option<EventId>) -> Option<Vec<Change>> {
        let id = resume?;
        let last = self.state.last_seq();
        if id.incarnation != self.state.incarnation() || id.seq > last {
            return None;
        }
        let recent = self.state.recent();
        let mut changes: Vec<Change> = if recent.front().is_some_and(|c| c.seq <= id.seq + 1)
            || id.seq == last
        {
            Vec::new()
        } else {
            let wanted = usize::try_from(last - id.seq)
                .ok()
                .filter(|&n| n <= MAX_LOG_REPLAY)?;
            let stored = self.cx.store.read_log(&self.name, id.seq, wanted).await;
            match stored {
                Ok(entries) => entries.into_iter().map(|e| Change::from(&e)).collect(),
                Err(e) => {
                    warn!(doc = %self.name, error = %e, "could not read the log for a replay; sending a snapshot");
                    return None;
                }
            }
        };
        let have = changes.last().map_or(id.seq, |c| c.seq);
        changes.extend(recent.iter().filter(|c| c.seq > have).cloned());
        let contiguous = changes
            .iter()
            .enumerate()
            .all(|(i, c)| c.seq == id.seq + 1 + i as u64);
        (contiguous && changes.len() as u64 == last - id.seq).then_some(changes)
    }
}
