//! The node's command connection, tried again when Redis was only briefly
//! away.
//!
//! redis-rs' connection manager reconnects by itself after Redis restarts
//! or the network blips, but the command that finds the old connection
//! dead fails (a broken pipe), and so would the first load or append on
//! every node after any Redis restart. [`Retrying`] sends such a command
//! again, a few times within about a second: after a dropped connection,
//! while Redis is still loading its data, and while a cluster slot is
//! still moving. Any other error (a Redis
//! that cannot be reached at all fails the manager's own reconnection,
//! which is not tried again here), and one that outlasts the retries, is
//! the caller's.
//!
//! A command whose connection dropped after it was sent may have run, and
//! so may the commands of a pipeline before one that was redirected. Every
//! command weft sends is either idempotent or checked: the append script
//! refuses numbers already taken, and `RedisStore::append` recognises its
//! own changes in the log when a retried append is refused for that.

use std::time::Duration;

use super::link::Link;
use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

/// Pauses before each retry.
const PAUSES: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(750),
];

/// The command connection, retrying what a brief outage failed.
#[derive(Clone)]
pub(super) struct Retrying(pub(super) Link);

impl AsMut<Link> for Retrying {
    fn as_mut(&mut self) -> &mut Link {
        &mut self.0
    }
}

/// Whether `e` says Redis was away for a moment, or that the key's slot
/// is still moving between shards (redirects that outlasted the cluster
/// connection's own), rather than that the command is wrong. Either may
/// come after part of the work ran (an earlier attempt whose connection
/// dropped, another command of the same pipeline), which the rule above
/// makes safe to send again.
fn is_brief_outage(e: &RedisError) -> bool {
    e.is_connection_dropped()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError | ErrorKind::TryAgain | ErrorKind::Ask | ErrorKind::Moved
        )
}

impl ConnectionLike for Retrying {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut pauses = PAUSES.iter();
            loop {
                match self.0.req_packed_command(cmd).await {
                    Err(e) if is_brief_outage(&e) => match pauses.next() {
                        Some(pause) => tokio::time::sleep(*pause).await,
                        None => return Err(e),
                    },
                    done => return done,
                }
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut pauses = PAUSES.iter();
            loop {
                match self.0.req_packed_commands(cmd, offset, count).await {
                    Err(e) if is_brief_outage(&e) => match pauses.next() {
                        Some(pause) => tokio::time::sleep(*pause).await,
                        None => return Err(e),
                    },
                    done => return done,
                }
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}
