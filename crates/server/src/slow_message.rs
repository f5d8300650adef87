//! `SlowMessage`: a WebSocket message that never finishes arriving.
//!
//! tungstenite assembles a message (fragments, or one large frame) of up
//! to `--max-message-bytes` before handing any of it over, and a client
//! that answers pings keeps its connection alive meanwhile: without a
//! deadline, each connection could hold a 16 MiB message that never ends.
//! The connection's loop looks at each ping tick at what its socket read
//! towards a message not yet whole ([`Budgeted::unfinished`]) and whether
//! one was finished since the last tick; once one message has been
//! arriving for longer than `--body-timeout` (the time an HTTP body gets),
//! the connection is closed with 1008. Counted in ticks, so the deadline
//! is met within one ping interval; a client sending message after message,
//! each caught arriving at some tick, is never taken for one that does not
//! end.

use std::time::Duration;

use crate::close_code;
use crate::read_budget::Budgeted;
use crate::ws::End;

/// Less than this read towards a message is not a message arriving: a
/// read may run a little into the next message.
const SLACK: u64 = 1024;

/// Ticks for which a message has been arriving.
#[derive(Debug, Default)]
pub(crate) struct SlowMessage(u32);

impl SlowMessage {
    /// At a ping tick (every `every`): the end, if a message has now been
    /// arriving for longer than `deadline`.
    pub(crate) fn at_tick<S>(
        &mut self,
        io: &mut Budgeted<S>,
        every: Duration,
        deadline: Duration,
    ) -> Result<(), End> {
        // A message that finished since the last tick: what arrives now
        // began after that tick.
        let finished = io.take_finished();
        if io.unfinished() <= SLACK {
            self.0 = 0;
            return Ok(());
        }
        self.0 = if finished {
            1
        } else {
            self.0.saturating_add(1)
        };
        // The first tick that sees it may come at once: it counts from there.
        if every.saturating_mul(self.0 - 1) < deadline {
            return Ok(());
        }
        Err(End::Close(
            close_code::POLICY_VIOLATION,
            format!(
                "a message was still arriving after {}; send each message whole",
                humantime::format_duration(deadline)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    const EVERY: Duration = Duration::from_secs(30);
    const DEADLINE: Duration = Duration::from_secs(30);

    /// A connection over `bytes`, of which `n` are read.
    async fn read(io: &mut Budgeted<&[u8]>, n: usize) {
        let mut buf = vec![0; n];
        io.read_exact(&mut buf).await.expect("read");
    }

    #[tokio::test]
    async fn a_message_that_never_ends_is_cut_off_after_the_deadline() {
        let data = vec![0u8; 100_000];
        let mut io = Budgeted::new(&data[..], None);
        let mut slow = SlowMessage::default();
        read(&mut io, 4096).await;
        assert!(slow.at_tick(&mut io, EVERY, DEADLINE).is_ok(), "just began");
        read(&mut io, 4096).await;
        let Err(End::Close(code, why)) = slow.at_tick(&mut io, EVERY, DEADLINE) else {
            panic!("still open a whole interval later");
        };
        assert_eq!(code, close_code::POLICY_VIOLATION);
        assert!(why.contains("still arriving after 30s"), "{why}");
    }

    #[tokio::test]
    async fn messages_that_each_end_are_never_taken_for_one_that_does_not() {
        let data = vec![0u8; 100_000];
        let mut io = Budgeted::new(&data[..], None);
        let mut slow = SlowMessage::default();
        for _ in 0..10 {
            // Each tick catches a message arriving, after one finished.
            read(&mut io, 2048).await;
            io.message_done();
            read(&mut io, 2048).await;
            assert!(slow.at_tick(&mut io, EVERY, DEADLINE).is_ok());
        }
        // Pings and pongs are not a message arriving.
        read(&mut io, 2048).await;
        io.message_done();
        assert!(slow.at_tick(&mut io, EVERY, DEADLINE).is_ok());
        for _ in 0..10 {
            read(&mut io, 131).await;
            io.control_done(131);
            assert!(slow.at_tick(&mut io, EVERY, DEADLINE).is_ok());
        }
    }
}
