//! How much a room takes in as one batch.
//!
//! A room handles every command waiting in its channel as one batch: one
//! append and one flush for all its changes (group commit), then all their
//! frames go onto every subscriber's queue in one pass, far faster than any
//! connection takes them off. So a whole batch must fit in the queue of a
//! reader that had nothing waiting when it began: otherwise that reader is
//! closed as too slow when it was the server that fell behind (a flush that
//! took long, a moment without CPU) while the writers went on sending.
//! A batch is kept to half of each of a connection's bounds, frames
//! (`outbound_queue`) and bytes (`outbound_queue_bytes`), so a reader still
//! taking the previous batch off its queue has room for this one too; and
//! the room yields after each batch, so the connections it woke (tokio
//! runs tasks already woken before one that yields) take their frames
//! before it takes the next, rather than only when the scheduler happens
//! to pick them first.
//!
//! What a batch may hold is counted in frames it can make each subscriber
//! receive: a command counts one, except a writer's updates that follow its
//! previous command's updates, which the room applies as one run and sends
//! as one change (`commands.rs`); however many there are, they count once.
//! So a writer's burst is stored with one append per batch however long it
//! is, within the bound on bytes.
//!
//! Bytes are counted as they arrive (the frames the changes came in), since
//! the frames a batch will send exist only once it has been handled. A
//! change sent to editors is about the size of the update that made it;
//! viewers get it in base64, 4/3 as large, so a batch fills at most about
//! two thirds of a viewer's queue.

use tokio::sync::mpsc;

use super::Command;
use crate::protocol::Inbound;
use crate::EngineConfig;

/// Most frames one batch may send a subscriber (see above).
const MAX_BATCH: usize = 256;

/// Most commands in one batch, however few frames they make.
const MAX_COMMANDS: usize = 4096;

/// Takes a room's commands off its channel a batch at a time.
pub(crate) struct Batcher {
    most_commands: usize,
    most_bytes: usize,
    /// A command taken off the channel that did not fit the last batch; it
    /// opens the next one.
    held: Option<Command>,
}

impl Batcher {
    pub fn new(config: &EngineConfig) -> Self {
        Batcher {
            most_commands: MAX_BATCH.min(config.outbound_queue / 2).max(1),
            most_bytes: config.outbound_queue_bytes / 2,
            held: None,
        }
    }

    /// The command left over from the last batch, if any.
    pub fn take_held(&mut self) -> Option<Command> {
        self.held.take()
    }

    /// `first` and the commands waiting behind it in `rx`, as many as fit.
    /// `first` always goes in, however large: one frame larger than a
    /// connection's byte bound still goes into its empty queue.
    pub fn fill(&mut self, first: Command, rx: &mut mpsc::Receiver<Command>) -> Vec<Command> {
        let mut bytes = weight(&first);
        let mut frames = 1;
        let mut batch = vec![first];
        while frames < self.most_commands && batch.len() < MAX_COMMANDS {
            let Ok(command) = rx.try_recv() else { break };
            bytes = bytes.saturating_add(weight(&command));
            if bytes > self.most_bytes {
                self.held = Some(command);
                break;
            }
            if !batch
                .last()
                .is_some_and(|last| continues_run(last, &command))
            {
                frames += 1;
            }
            batch.push(command);
        }
        batch
    }
}

/// Whether `next` only adds updates to the run of updates `prev` holds,
/// from the same connection: they become one change.
fn continues_run(prev: &Command, next: &Command) -> bool {
    let updates_of = |c: &Command| match c {
        Command::Receive { conn, messages, .. } if messages.iter().all(Inbound::is_update) => {
            Some(*conn)
        }
        _ => None,
    };
    matches!((updates_of(prev), updates_of(next)), (Some(a), Some(b)) if a == b)
}

/// About how many bytes `command` makes the room send every subscriber.
fn weight(command: &Command) -> usize {
    match command {
        Command::Receive { bytes, .. } => *bytes,
        Command::Apply { update, .. } | Command::Import { update, .. } => update.len(),
        // A restore can change the whole document: it gets a batch to itself.
        Command::Restore { .. } => usize::MAX,
        // Joins and follows queue their opening only for the newcomer.
        Command::Join { .. }
        | Command::Follow { .. }
        | Command::Leave { .. }
        | Command::Read { .. }
        | Command::Snapshot { .. }
        | Command::Delete { .. }
        | Command::Reopen { .. }
        | Command::Stats { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use tokio_util::task::TaskTracker;
    use weft_storage::DocName;
    use yrs::{Doc, Text, Transact};

    use crate::doc_state::{Access, ConnId};
    use crate::session::{Session, Subscriber};
    use crate::{protocol, viewer, Change};

    /// A reader's two ends: the room's, and its connection's.
    fn reader(config: &EngineConfig, conn: u64) -> (Session, Subscriber) {
        let (room, _) = mpsc::channel(1);
        Session::pair(
            conn,
            DocName::new("burst").expect("valid"),
            room,
            (config.outbound_queue, config.outbound_queue_bytes),
            (Access::ReadOnly, None),
            TaskTracker::new(),
        )
    }

    /// Takes every frame waiting for `session`, as its connection does
    /// whenever it runs.
    async fn drain(session: &mut Session) {
        loop {
            tokio::select! {
                biased;
                Ok(_) = session.recv() => {}
                () = std::future::ready(()) => return,
            }
        }
    }

    fn changes_of(bytes: usize, count: usize) -> Vec<Bytes> {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let chunk = "abcdefgh".repeat(bytes / 8);
        (0..count)
            .map(|_| {
                let mut txn = doc.transact_mut();
                let len = text.len(&txn);
                text.insert(&mut txn, len, &chunk);
                Bytes::from(txn.encode_update_v1())
            })
            .collect()
    }

    /// The slow-clients test's load: 8 KiB changes, 1 MiB per connection,
    /// and the writer far ahead of the room (a flush took long), so 300
    /// changes wait in its channel at once.
    #[tokio::test]
    async fn a_burst_of_large_changes_fits_the_queue_of_a_reader_that_keeps_up() {
        let config = EngineConfig {
            outbound_queue_bytes: 1024 * 1024,
            ..EngineConfig::default()
        };
        let updates = changes_of(8 * 1024, 300);
        let (tx, mut rx) = mpsc::channel(config.command_queue);
        for update in &updates {
            let frame = protocol::sync_update(update);
            let receive = Command::Receive {
                conn: 1,
                messages: Vec::new(),
                bytes: frame.len(),
            };
            assert!(tx.try_send(receive).is_ok());
        }
        let (mut editor, editor_queue) = reader(&config, 2);
        let (mut viewer, viewer_queue) = reader(&config, 3);

        let mut delivered = 0;
        let mut batches = 0;
        let mut batcher = Batcher::new(&config);
        while let Some(first) = batcher.take_held().or_else(|| rx.try_recv().ok()) {
            let batch = batcher.fill(first, &mut rx);
            // As the room delivers: every frame of the batch, in one pass.
            for _ in &batch {
                let update = updates[delivered].clone();
                delivered += 1;
                let change = Change {
                    seq: delivered as u64,
                    at_ms: 0,
                    update,
                    by: Default::default(),
                };
                let frame = protocol::sync_update(&change.update);
                let event = viewer::update_event(1, &change);
                assert!(
                    editor_queue.offer(frame).is_ok(),
                    "an editor that kept up was found too slow at change {delivered} of a batch of {}",
                    batch.len()
                );
                assert!(
                    viewer_queue.offer(event).is_ok(),
                    "a viewer that kept up was found too slow at change {delivered} of a batch of {}",
                    batch.len()
                );
            }
            batches += 1;
            // Between batches, the readers' connections take what was queued.
            drain(&mut editor).await;
            drain(&mut viewer).await;
        }
        assert_eq!(delivered, updates.len());
        assert!(batches > 1, "the burst was handled in {batches} batch");
    }

    /// A writer's updates, one command each, queued for the room.
    fn queued_updates(conns: &[ConnId], count: usize) -> mpsc::Receiver<Command> {
        let (tx, rx) = mpsc::channel(count.max(1));
        for (i, update) in changes_of(8, count).into_iter().enumerate() {
            let message = protocol::decode_update(&update).expect("valid update");
            let receive = Command::Receive {
                conn: conns[i % conns.len()],
                messages: vec![Inbound::Update(message)],
                bytes: update.len(),
            };
            assert!(tx.try_send(receive).is_ok());
        }
        rx
    }

    #[test]
    fn one_writers_burst_counts_as_one_frame_and_interleaved_writers_do_not() {
        let config = EngineConfig {
            outbound_queue: 8,
            ..EngineConfig::default()
        };
        let mut batcher = Batcher::new(&config);
        let mut rx = queued_updates(&[1], 500);
        let first = rx.try_recv().expect("queued");
        assert_eq!(
            batcher.fill(first, &mut rx).len(),
            500,
            "one run: one frame"
        );

        let mut rx = queued_updates(&[1, 2], 500);
        let first = rx.try_recv().expect("queued");
        assert_eq!(
            batcher.fill(first, &mut rx).len(),
            config.outbound_queue / 2,
            "alternating writers: a frame each"
        );
    }
}
