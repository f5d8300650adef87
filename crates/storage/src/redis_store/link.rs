//! Where the node's Redis is, and the connections it opens there: a single
//! server (`--redis`) or a Redis Cluster (`--redis-cluster`).
//!
//! [`Target`] opens the two kinds of connection the store needs: commands
//! (a connection manager on one server, redis-rs' cluster connection on a
//! cluster, which sends each command to its key's shard and follows
//! `MOVED`/`ASK` while slots move), and the bus's subscription (RESP3, so
//! that sharded pub/sub messages arrive as pushes; on a cluster one
//! connection per primary, subscribing each channel on its shard).
//! [`Link`] is either, as one `ConnectionLike`, with the two things weft asks
//! of every primary: a command run on each, and the keys matching a pattern.

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{
    Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisFuture,
    RedisResult, Value,
};
use tokio::sync::mpsc;

use super::asking::Asking;

/// How long opening a connection may take.
const CONNECT_WAIT: Duration = Duration::from_secs(3);

/// Keys asked of `SCAN` per call.
const SCAN_COUNT: usize = 1000;

/// Where Redis is.
#[derive(Clone)]
pub(super) enum Target {
    Single(redis::Client),
    /// Some of the cluster's nodes; the rest are found from them.
    Cluster(Vec<ConnectionInfo>),
}

impl Target {
    /// `url` for one server; `urls` (one or more nodes) for a cluster.
    pub(super) fn single(url: &str) -> RedisResult<Target> {
        redis::Client::open(url).map(Target::Single)
    }

    pub(super) fn cluster(urls: &[String]) -> RedisResult<Target> {
        let nodes = urls
            .iter()
            .map(|u| u.as_str().into_connection_info())
            .collect::<RedisResult<Vec<_>>>()?;
        // Checked here, so that a bad list fails at startup.
        ClusterClient::new(nodes.clone())?;
        Ok(Target::Cluster(nodes))
    }

    /// The server or nodes, for messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Target::Single(client) => client.get_connection_info().addr.to_string(),
            Target::Cluster(nodes) => {
                let all: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
                format!("the Redis Cluster of {}", all.join(", "))
            }
        }
    }

    /// A command connection: it reconnects by itself (twice, 1 s apart, on
    /// one server, so that a Redis that is down fails a request within
    /// about a second), and a reply may take `response_timeout`.
    pub(super) async fn commands(&self, response_timeout: Duration) -> RedisResult<Link> {
        match self {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_factor(2)
                    .set_max_delay(1000)
                    .set_number_of_retries(1)
                    .set_connection_timeout(CONNECT_WAIT)
                    .set_response_timeout(response_timeout);
                let manager = client.get_connection_manager_with_config(config).await?;
                Ok(Link::Managed(manager))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.clone())
                    .connection_timeout(CONNECT_WAIT)
                    .response_timeout(response_timeout)
                    .retries(4)
                    .build()?;
                let seed = nodes.first().cloned().ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "no Redis Cluster node was given",
                    ))
                })?;
                let asking = Asking::new(seed, CONNECT_WAIT, response_timeout);
                Ok(Link::Cluster(
                    client.get_async_connection().await?,
                    Some(asking),
                ))
            }
        }
    }

    /// A RESP3 connection for subscriptions, its pushes (messages,
    /// confirmations, and the library's word that a connection closed)
    /// sent to `pushes`. It does not reconnect: the bus does.
    pub(super) async fn subscriber(
        &self,
        pushes: mpsc::UnboundedSender<PushInfo>,
        response_timeout: Duration,
    ) -> RedisResult<Link> {
        match self {
            Target::Single(client) => {
                let mut info = client.get_connection_info().clone();
                info.redis.protocol = ProtocolVersion::RESP3;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(CONNECT_WAIT)
                    .set_response_timeout(response_timeout)
                    .set_push_sender(pushes);
                let conn = redis::Client::open(info)?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(Link::Plain(conn))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.clone())
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(CONNECT_WAIT)
                    .response_timeout(response_timeout)
                    .push_sender(pushes)
                    .build()?;
                Ok(Link::Cluster(client.get_async_connection().await?, None))
            }
        }
    }
}

/// A Lua script, sent by its hash (`EVALSHA`). When Redis lacks it (after
/// a restart), it is loaded onto the server that serves the key it runs
/// on: on a cluster, that shard's primary only, since redis-rs' own
/// loading asks every primary and fails while any one is down.
#[derive(Clone)]
pub(super) struct Lua {
    source: &'static str,
    hash: String,
}

impl Lua {
    pub(super) fn new(source: &'static str) -> Lua {
        let hash = redis::Script::new(source).get_hash().to_owned();
        Lua { source, hash }
    }

    /// `EVALSHA` of this script on `keys`; its arguments follow.
    pub(super) fn call(&self, keys: &[String]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.hash).arg(keys.len()).arg(keys);
        cmd
    }

    /// Sends `pipe`, whose commands run this script on `key` (and keys
    /// in its slot); loads the script there first if Redis lacks it.
    pub(super) async fn run<T, C>(&self, key: &str, pipe: &Pipeline, conn: &mut C) -> RedisResult<T>
    where
        T: redis::FromRedisValue,
        C: ConnectionLike + AsMut<Link>,
    {
        match pipe.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                conn.as_mut().load_script(key, self.source).await?;
                pipe.query_async(conn).await
            }
            sent => sent,
        }
    }
}

/// A connection to the server or the cluster.
#[derive(Clone)]
pub(super) enum Link {
    Managed(ConnectionManager),
    Plain(MultiplexedConnection),
    /// With [`Asking`] for commands; none for subscriptions.
    Cluster(ClusterConnection, Option<Asking>),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Managed(c) => c.req_packed_command(cmd),
            Link::Plain(c) => c.req_packed_command(cmd),
            Link::Cluster(c, Some(asking)) => Box::pin(asking.command(c, cmd)),
            Link::Cluster(c, None) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Managed(c) => c.req_packed_commands(cmd, offset, count),
            Link::Plain(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c, Some(asking)) => Box::pin(asking.pipeline(c, cmd, offset, count)),
            Link::Cluster(c, None) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Managed(c) => c.get_db(),
            Link::Plain(c) => c.get_db(),
            Link::Cluster(c, _) => c.get_db(),
        }
    }
}

impl AsMut<Link> for Link {
    fn as_mut(&mut self) -> &mut Link {
        self
    }
}

impl Link {
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(..))
    }

    /// `SCRIPT LOAD` on the server; on a cluster, on the primary serving
    /// `key` as redis-rs knows it, and on every other primary that answers
    /// (a slot that moves takes its document's scripts calls to a primary
    /// redis-rs may not know serves it yet).
    async fn load_script(&mut self, key: &str, source: &str) -> RedisResult<()> {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(source);
        match self {
            Link::Cluster(c, _) => {
                let route = Route::new(slot_of(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let loaded = c.route_command(&load, routing).await.map(drop);
                let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
                for (host, port) in reachable_primaries(&nodes) {
                    let at =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    let _ = c.route_command(&load, at).await;
                }
                loaded
            }
            single => load.query_async::<Value>(single).await.map(drop),
        }
    }

    /// Runs `cmd` on the server, or on every primary of the cluster: each
    /// one's address (empty for a single server) and reply.
    pub(super) async fn on_every_primary(
        &mut self,
        cmd: &Cmd,
    ) -> RedisResult<Vec<(String, Value)>> {
        match self {
            Link::Cluster(c, _) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let Value::Map(replies) = c.route_command(cmd, routing).await? else {
                    return Err(unexpected("a reply from each primary"));
                };
                // redis-rs leaves out a primary it has no connection to: a
                // listing or a check must not pass for the whole cluster
                // with a shard missing.
                let primaries = primaries(c).await?;
                if replies.len() < primaries {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::ClusterDown,
                        "not every primary of the Redis Cluster answered",
                        format!("{} of {primaries}", replies.len()),
                    )));
                }
                replies
                    .into_iter()
                    .map(|(addr, reply)| Ok((redis::from_owned_redis_value(addr)?, reply)))
                    .collect()
            }
            single => Ok(vec![(String::new(), cmd.query_async(single).await?)]),
        }
    }

    /// Every key matching `pattern`, on the server or every primary.
    pub(super) async fn keys_matching(&mut self, pattern: &str) -> RedisResult<Vec<String>> {
        let mut keys = Vec::new();
        for (node, first) in self.on_every_primary(&scan(0, pattern)).await? {
            let (mut cursor, page): (u64, Vec<String>) = redis::from_owned_redis_value(first)?;
            keys.extend(page);
            while cursor != 0 {
                let (next, page): (u64, Vec<String>) =
                    self.on_node(&node, &scan(cursor, pattern)).await?;
                keys.extend(page);
                cursor = next;
            }
        }
        Ok(keys)
    }

    /// Runs `cmd` on the node at `addr` (as [`Link::on_every_primary`]
    /// names it), or on the single server.
    async fn on_node<T: redis::FromRedisValue>(&mut self, addr: &str, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Link::Cluster(c, _) => {
                let (host, port) =
                    host_port(addr).ok_or_else(|| unexpected("a node address host:port"))?;
                let routing =
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                redis::from_owned_redis_value(c.route_command(cmd, routing).await?)
            }
            single => cmd.query_async(single).await,
        }
    }
}

/// How many primaries serve slots, as the cluster itself says
/// (`CLUSTER INFO`'s `cluster_size`).
async fn primaries(c: &mut ClusterConnection) -> RedisResult<usize> {
    let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(c).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("cluster_size:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| unexpected("CLUSTER INFO with cluster_size"))
}

/// The primaries `CLUSTER NODES` lists as connected and not failing.
fn reachable_primaries(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let up =
                flags.contains("master") && !flags.contains("fail") && !flags.contains("noaddr");
            let connected = fields.get(7) == Some(&"connected");
            // ip:port@cport[,hostname]
            let addr = fields.get(1)?.split('@').next()?;
            let (host, port) = addr.rsplit_once(':')?;
            (up && connected).then(|| Some((host.to_owned(), port.parse().ok()?)))?
        })
        .collect()
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the
/// first `{…}` with something inside), or of the whole key, mod 16384.
/// redis-rs keeps its own to itself.
fn slot_of(key: &str) -> u16 {
    let key = key.as_bytes();
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(key)) % 16384
}

fn scan(cursor: u64, pattern: &str) -> Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_COUNT);
    cmd
}

/// `host` and `port` of a node address as Redis writes them (`host:port`,
/// an IPv6 host unbracketed).
pub(super) fn host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

pub(super) fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::TypeError,
        "Redis' reply was not",
        what.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::slot_of;

    #[test]
    fn slots_are_redis_cluster_slots() {
        // Values from Redis' own `CLUSTER KEYSLOT`.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("weft:{doc}:log"), slot_of("doc"));
        assert_eq!(slot_of("weft:{doc}:meta"), slot_of("weft:{doc}:seq"));
        assert_eq!(slot_of("{}foo"), slot_of("{}foo"));
        assert_ne!(
            slot_of("{}foo"),
            slot_of("foo"),
            "an empty tag hashes the whole key"
        );
    }
}
