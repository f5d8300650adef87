//! `SlowMessage`: a WebSocket message that never finishes arriving.
//!
//! tungstenite assembles a message (fragments, or one large frame) of up
//! to `--max-message-bytes` before handing any of it over, and a client
//! that answers pings keeps its connection alive meanwhile: without a
//! deadline, each connection could hold a 16 MiB message that never ends.
//! The connection's loop looks at each ping tick at what its socket read
//! towards a message not yet whole ([`Budgeted::unfinished`]); once a
//! message has been arriving for longer than `--body-timeout` (the time an
//! HTTP body gets), the connection is closed with 1008. Counted in ticks,
//! so the deadline is met within one ping interval.

use std::time::Duration;

use crate::close_code;
use crate::ws::End;
use crate::ws_upgrade::WebSocket;

/// Less than this read towards a message is not a message arriving: a
/// read may run a little into the next message.
const SLACK: u64 = 1024;

/// Ticks for which a message has been arriving.
#[derive(Debug, Default)]
pub(crate) struct SlowMessage(u32);

impl SlowMessage {
    /// At a ping tick (every `every`): the end, if a message has now been
    /// arriving for longer than `deadline`.
    pub(crate) fn at_tick(
        &mut self,
        socket: &WebSocket,
        every: Duration,
        deadline: Duration,
    ) -> Result<(), End> {
        if socket.get_ref().unfinished() <= SLACK {
            self.0 = 0;
            return Ok(());
        }
        self.0 = self.0.saturating_add(1);
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
