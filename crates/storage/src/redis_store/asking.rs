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
//! Only a pipeline whose first command alone names keys (a script, maybe
//! followed by `WAIT`) is followed so: the old shard answers `ASK` for a
//! command whose keys are all gone from it, so in a pipeline over several
//! keys one command's `ASK` says nothing of the others' (a key not yet
//! moved reads as missing on the new shard). Such a pipeline fails as
//! redis-rs left it, and is tried again after a pause (`Retrying`).

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{Arg, Cmd, ErrorKind, Pipeline, RedisError, RedisResult, Value};

/// Sends `cmd`; after an `ASK` that outlasted the connection's own
/// redirects, asks the new shard as above.
pub(super) async fn command(conn: &mut ClusterConnection, cmd: &Cmd) -> RedisResult<Value> {
    let asked = match conn.req_packed_command(cmd).await {
        Err(e) => e,
        done => return done,
    };
    let Some(at) = new_shard(&asked) else {
        return Err(asked);
    };
    let mut replies = ask(conn, at, std::iter::once(cmd)).await?;
    replies.pop().ok_or(asked)
}

/// Sends `pipe`'s commands (replies `offset..offset + count`); after an
/// `ASK` that outlasted the connection's own redirects, asks the new shard
/// as above if only its first command names keys.
pub(super) async fn pipeline(
    conn: &mut ClusterConnection,
    pipe: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let asked = match conn.req_packed_commands(pipe, offset, count).await {
        Err(e) => e,
        done => return done,
    };
    let at = match new_shard(&asked) {
        Some(at) if first_alone_keyed(pipe) => at,
        _ => return Err(asked),
    };
    let replies = ask(conn, at, pipe.cmd_iter()).await?;
    Ok(replies.into_iter().skip(offset).take(count).collect())
}

/// Whether only `pipe`'s first command names keys: the others are `WAIT`.
/// Not a transaction: `ASKING` inside `MULTI` would be queued, not honoured.
fn first_alone_keyed(pipe: &Pipeline) -> bool {
    let is_wait = |cmd: &Cmd| matches!(cmd.args_iter().next(), Some(Arg::Simple(name)) if name.eq_ignore_ascii_case(b"WAIT"));
    !pipe.is_transaction() && pipe.cmd_iter().skip(1).all(is_wait)
}

/// The shard an `ASK` names.
fn new_shard(e: &RedisError) -> Option<SingleNodeRoutingInfo> {
    if e.kind() != ErrorKind::Ask {
        return None;
    }
    let (addr, _slot) = e.redirect_node()?;
    let (host, port) = addr.rsplit_once(':')?;
    Some(SingleNodeRoutingInfo::ByAddress {
        host: host.to_owned(),
        port: port.parse().ok()?,
    })
}

/// The replies to `commands`, sent to `at` in one pipeline with `ASKING`
/// before each.
async fn ask<'a>(
    conn: &mut ClusterConnection,
    at: SingleNodeRoutingInfo,
    commands: impl Iterator<Item = &'a Cmd>,
) -> RedisResult<Vec<Value>> {
    let mut pipe = redis::pipe();
    for cmd in commands {
        pipe.cmd("ASKING");
        pipe.add_command(cmd.clone());
    }
    let replies = conn.route_pipeline(&pipe, 0, pipe.len(), at).await?;
    // Every second reply is a command's; the others are `ASKING`'s `OK`.
    Ok(replies.into_iter().skip(1).step_by(2).collect())
}
