//! Following a Redis Cluster's `ASK` so that no other request can come
//! between `ASKING` and the command it is for.
//!
//! While a slot moves, its old shard answers `ASK <slot> <new shard>` for a
//! key already gone, and the command must go to the new shard right after
//! `ASKING`, which that shard honours for the next command on the same
//! connection only. redis-rs' cluster connection sends `ASKING` as a
//! request of its own on the node's multiplexed connection, which every
//! document on that node shares: another document's command can run
//! between the two and take the flag, the redirected command then meets
//! `MOVED` back to the old shard, which answers `ASK` again, and a node
//! busy with many documents ran out of redirects within one slot move (an
//! append refused, the document's writers closed). So a command whose
//! redirects ran out on `ASK` is sent once more to the new shard as one
//! pipeline of `ASKING` and the command, written as one request: nothing
//! comes between. redis-rs offers no option for this, hence this module.
//!
//! That pipeline goes over a connection of [`Asking`]'s own to the shard
//! the `ASK` names, opened the first time one names it and kept (one per
//! shard, at most [`MAX_SHARDS`]; one that fails is dropped and opened
//! again when next needed). The cluster connection's own cannot be relied
//! on: it keeps connections only to the primaries that serve slots, so a
//! shard that is receiving its first slot is not among them.
//!
//! Only a command (weft sends none over keys of several slots), or a
//! pipeline whose first command alone names keys (a script, maybe followed by `WAIT`), is
//! followed so: the old shard answers `ASK` for a command whose keys are
//! all gone from it, so in a pipeline over several keys one command's
//! `ASK` says nothing of the others' (a key not yet moved reads as missing
//! on the new shard). Such a pipeline fails as redis-rs left it, and is
//! tried again after a pause (`Retrying`), as is a command whose new shard
//! could not be reached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{
    Arg, AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline,
    RedisError, RedisResult, Value,
};

use super::link::{host_port, unexpected};

/// Shards an [`Asking`] keeps a connection to; past that it forgets them
/// all and starts again (a cluster has that many primaries only while
/// growing past it).
const MAX_SHARDS: usize = 64;

/// Connections of its own to the shards `ASK`s name, shared by every clone.
#[derive(Clone)]
pub(super) struct Asking {
    /// A node given at startup: its login, database and TLS settings are
    /// every node's.
    seed: Arc<ConnectionInfo>,
    config: AsyncConnectionConfig,
    shards: Arc<Mutex<HashMap<String, MultiplexedConnection>>>,
}

impl Asking {
    pub(super) fn new(seed: ConnectionInfo, connect: Duration, response: Duration) -> Asking {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(connect)
            .set_response_timeout(response);
        Asking {
            seed: Arc::new(seed),
            config,
            shards: Arc::default(),
        }
    }

    /// Sends `cmd`; after an `ASK` that outlasted the connection's own
    /// redirects, asks the new shard as above.
    pub(super) async fn command(
        &self,
        conn: &mut ClusterConnection,
        cmd: &Cmd,
    ) -> RedisResult<Value> {
        let asked = match conn.req_packed_command(cmd).await {
            Err(e) => e,
            done => return done,
        };
        let Some(at) = new_shard(&asked) else {
            return Err(asked);
        };
        let mut replies = self.ask(at, std::iter::once(cmd), asked).await?;
        replies
            .pop()
            .ok_or_else(|| unexpected("a reply to the asked command"))
    }

    /// Sends `pipe`'s commands (replies `offset..offset + count`); after an
    /// `ASK` that outlasted the connection's own redirects, asks the new
    /// shard as above if only its first command names keys.
    pub(super) async fn pipeline(
        &self,
        conn: &mut ClusterConnection,
        pipe: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let asked = match conn.req_packed_commands(pipe, offset, count).await {
            Err(e) => e,
            done => return done,
        };
        let Some(at) = new_shard(&asked).filter(|_| first_alone_keyed(pipe)) else {
            return Err(asked);
        };
        let replies = self.ask(at, pipe.cmd_iter(), asked).await?;
        Ok(replies.into_iter().skip(offset).take(count).collect())
    }

    /// The replies to `commands`, sent to the shard at `at` in one pipeline
    /// with `ASKING` before each. When no connection to that shard can be
    /// opened, the error is `asked`, the `ASK` that sent them there (they
    /// did not run), so that they are tried again as any redirect is; a
    /// connection that fails is forgotten, its error the caller's.
    async fn ask<'a>(
        &self,
        at: String,
        commands: impl Iterator<Item = &'a Cmd>,
        asked: RedisError,
    ) -> RedisResult<Vec<Value>> {
        let mut pipe = redis::pipe();
        for cmd in commands {
            pipe.cmd("ASKING");
            pipe.add_command(cmd.clone());
        }
        let Ok(mut shard) = self.connection(&at).await else {
            return Err(asked);
        };
        let replies = shard.req_packed_commands(&pipe, 0, pipe.len()).await;
        if let Err(e) = &replies {
            if e.is_unrecoverable_error() || e.is_timeout() {
                self.shards().remove(&at);
            }
        }
        // Every second reply is a command's; the others are `ASKING`'s `OK`.
        Ok(replies?.into_iter().skip(1).step_by(2).collect())
    }

    /// This module's connection to the shard at `addr` (`host:port`).
    async fn connection(&self, addr: &str) -> RedisResult<MultiplexedConnection> {
        if let Some(open) = self.shards().get(addr) {
            return Ok(open.clone());
        }
        let info = self.shard_info(addr)?;
        let conn = redis::Client::open(info)?
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let mut shards = self.shards();
        if shards.len() >= MAX_SHARDS {
            shards.clear();
        }
        Ok(shards.entry(addr.to_owned()).or_insert(conn).clone())
    }

    /// The seed node's settings with the shard's address.
    fn shard_info(&self, addr: &str) -> RedisResult<ConnectionInfo> {
        let (host, port) = host_port(addr).ok_or_else(|| unexpected("an ASK naming host:port"))?;
        let addr = match &self.seed.addr {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        Ok(ConnectionInfo {
            addr,
            redis: self.seed.redis.clone(),
        })
    }

    fn shards(&self) -> std::sync::MutexGuard<'_, HashMap<String, MultiplexedConnection>> {
        // The map holds only connections; one left mid-change is still whole.
        self.shards.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether only `pipe`'s first command names keys: the others are
/// `WAIT`. Not a transaction: `ASKING` inside `MULTI` would be queued, not
/// honoured.
fn first_alone_keyed(pipe: &Pipeline) -> bool {
    let is_wait = |cmd: &Cmd| matches!(cmd.args_iter().next(), Some(Arg::Simple(name)) if name.eq_ignore_ascii_case(b"WAIT"));
    !pipe.is_transaction() && pipe.cmd_iter().skip(1).all(is_wait)
}

/// The shard an `ASK` names, as `host:port`.
fn new_shard(e: &RedisError) -> Option<String> {
    if e.kind() != ErrorKind::Ask {
        return None;
    }
    let (addr, _slot) = e.redirect_node()?;
    Some(addr.to_owned())
}

#[cfg(test)]
mod tests {
    use super::first_alone_keyed;

    fn script(key: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg("0123").arg(1).arg(key);
        cmd
    }

    #[test]
    fn only_a_pipeline_of_one_keyed_command_and_waits_is_asked() {
        let mut alone = redis::pipe();
        alone.add_command(script("weft:{a}:log"));
        alone.cmd("WAIT").arg(1).arg(100);
        assert!(first_alone_keyed(&alone));

        let mut two_keys = redis::pipe();
        two_keys.add_command(script("weft:{a}:log"));
        two_keys.cmd("HGET").arg("weft:{a}:meta").arg("x");
        assert!(!first_alone_keyed(&two_keys));

        let mut transaction = redis::pipe();
        transaction.atomic().add_command(script("weft:{a}:log"));
        assert!(!first_alone_keyed(&transaction));
    }
}
