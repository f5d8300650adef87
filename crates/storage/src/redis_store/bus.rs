//! The node's one subscription to what other nodes say: a single Redis
//! pub/sub connection (on a cluster, one to each node) for every document
//! this node has open, whatever their number.
//!
//! The channels are sharded (`SSUBSCRIBE`, `SPUBLISH`; Redis 7): on a
//! cluster a document's messages stay on its shard, and on one server they
//! behave as plain channels do. The connection speaks RESP3, so messages
//! arrive as pushes beside the replies. When a slot moves to another shard
//! Redis drops its channels' subscriptions, and the bus then subscribes
//! everything again on a fresh connection, as after a reconnect.
//!
//! Each open document has a route: the rooms listening to its events
//! channel (presence, the presence handshake, deletion) and the followers
//! of its log, which the channel wakes when another node appended (the
//! append script publishes that, in the same step as the append). The
//! bus subscribes a channel when its first listener comes, unsubscribes
//! it when the last one goes, and routes each message to its document.
//! After the connection drops it reconnects with jittered exponential
//! backoff, subscribes every channel still wanted, and wakes every
//! follower, which then reads what was appended meanwhile: nothing stored
//! by another node is missed, however long Redis was away.
//!
//! Written here rather than taken from a crate: redis-rs gives a
//! subscription connection and its pushes, but neither routing to many
//! listeners nor making good what a reconnect or a moved slot missed. Every
//! task the bus starts is tracked and stops on [`Bus::shut_down`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use redis::{PushInfo, PushKind};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::link::{Link, Target};
use super::replication::{decode_event, Handoff, Heard};
use crate::PeerEvent;

/// How long a new listener waits for its channel to be subscribed before
/// it is handed its receiver anyway (the bus keeps trying until it holds).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(3);

/// Channels subscribed or unsubscribed in one round.
const SUBSCRIBE_CHUNK: usize = 512;

/// How often the bus pings Redis on its subscription connection: a
/// connection that died without a word (a host gone, a NAT that forgot
/// it) is found within this plus [`REPLY_WAIT`], and replaced.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// How long Redis has to answer a ping, a subscribe or an unsubscribe
/// before the connection is taken for dead.
const REPLY_WAIT: Duration = Duration::from_secs(5);

/// On a cluster, how often channels whose shard did not take them are
/// tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Waits between attempts to reach Redis: from 100 ms, doubling, up to 5 s,
/// each with random jitter so that nodes do not come back in step.
pub(super) fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Who listens to a document's channel.
pub(super) enum Listener {
    /// A room: presence, the presence handshake, deletion.
    Peers(mpsc::Sender<PeerEvent>),
    /// A follower of the document's log, woken when another node appended.
    Log(Arc<Notify>),
}

/// The node's subscription; cheap to clone.
#[derive(Clone)]
pub(super) struct Bus {
    shared: Arc<Shared>,
}

struct Shared {
    /// This node's id, so that its own messages are skipped.
    node: [u8; 8],
    routes: Mutex<HashMap<String, Route>>,
    /// Channels whose listeners changed, for the bus task to subscribe or
    /// unsubscribe.
    changed: mpsc::UnboundedSender<String>,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// Whether the bus's last attempt to reach Redis failed (it is waiting
    /// to try again): a new listener then does not wait for its channel.
    unreachable: AtomicBool,
}

#[derive(Default)]
struct Route {
    peers: Vec<mpsc::Sender<PeerEvent>>,
    logs: Vec<Arc<Notify>>,
    /// Whether the current connection is subscribed to the channel.
    subscribed: bool,
    /// Listeners waiting for the subscription to hold.
    waiting: Vec<oneshot::Sender<()>>,
}

impl Route {
    fn is_wanted(&self) -> bool {
        !self.logs.is_empty() || self.peers.iter().any(|p| !p.is_closed())
    }
}

impl Bus {
    /// Starts the bus task; it connects in the background.
    pub(super) fn start(target: Target, node: u64) -> Bus {
        let (changed, changes) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            node: node.to_le_bytes(),
            routes: Mutex::new(HashMap::new()),
            changed,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            unreachable: AtomicBool::new(false),
        });
        shared.tasks.spawn(run(shared.clone(), target, changes));
        Bus { shared }
    }

    /// Routes `channel`'s messages to `listener` from now on, and waits (a
    /// bounded time) until the channel is subscribed, unless Redis cannot
    /// be reached right now (the channel is subscribed when it can, and
    /// every follower reads what it missed then). A listener that goes
    /// (its receiver dropped, or [`Bus::forget_log`]) is let go.
    pub(super) async fn listen(&self, channel: &str, listener: Listener) {
        let (tx, subscribed) = oneshot::channel();
        {
            let mut routes = self.shared.routes();
            let route = routes.entry(channel.to_owned()).or_default();
            match listener {
                Listener::Peers(peers) => {
                    self.watch_closing(channel, peers.clone());
                    route.peers.push(peers);
                }
                Listener::Log(wake) => route.logs.push(wake),
            }
            if route.subscribed {
                return;
            }
            route.waiting.push(tx);
        }
        let _ = self.shared.changed.send(channel.to_owned());
        if self.shared.unreachable.load(Ordering::Relaxed) {
            return;
        }
        if tokio::time::timeout(SUBSCRIBE_WAIT, subscribed)
            .await
            .is_err()
        {
            warn!(
                channel,
                "not yet subscribed to other nodes' messages; still trying"
            );
        }
    }

    /// Lets a log follower go.
    pub(super) fn forget_log(&self, channel: &str, wake: &Arc<Notify>) {
        if let Some(route) = self.shared.routes().get_mut(channel) {
            route.logs.retain(|w| !Arc::ptr_eq(w, wake));
        }
        let _ = self.shared.changed.send(channel.to_owned());
    }

    /// Runs `task` until it ends or the bus shuts down, tracked.
    pub(super) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = self.shared.stop.clone();
        self.shared.tasks.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Stops the bus and every task it started, and waits for them.
    pub(super) async fn shut_down(&self) {
        self.shared.stop.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// How many channels the bus is subscribed to right now.
    pub(super) fn subscribed(&self) -> usize {
        self.shared
            .routes()
            .values()
            .filter(|r| r.subscribed)
            .count()
    }

    /// Tells the bus task when a room stops listening, so that the last
    /// listener's going unsubscribes the channel.
    fn watch_closing(&self, channel: &str, peers: mpsc::Sender<PeerEvent>) {
        let changed = self.shared.changed.clone();
        let channel = channel.to_owned();
        self.spawn(async move {
            peers.closed().await;
            let _ = changed.send(channel);
        });
    }
}

impl Shared {
    fn routes(&self) -> MutexGuard<'_, HashMap<String, Route>> {
        // A panic while holding the lock leaves the map whole (every change
        // to it is a single call), so a poisoned lock is still usable.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a message to whoever listens to its channel.
    fn route(&self, channel: &str, payload: &[u8]) {
        let Some(heard) = decode_event(payload, self.node) else {
            return;
        };
        let routes = self.routes();
        let Some(route) = routes.get(channel) else {
            return;
        };
        match heard {
            Heard::Appended => route.logs.iter().for_each(|w| w.notify_one()),
            Heard::Peer(event, handoff) => {
                for peers in &route.peers {
                    self.hand_over(peers, event.clone(), &handoff);
                }
            }
        }
    }

    /// Handles one push from the subscription connection.
    fn heard(&self, push: PushInfo, cluster: bool) -> Result<(), Trouble> {
        let mut data = push.data.into_iter();
        let channel: Option<String> = data
            .next()
            .and_then(|c| redis::from_owned_redis_value(c).ok());
        match (push.kind, channel) {
            (PushKind::SMessage | PushKind::Message, Some(channel)) => {
                if let Some(Ok(payload)) = data.next().map(redis::from_owned_redis_value::<Vec<u8>>)
                {
                    self.route(&channel, &payload);
                }
                Ok(())
            }
            // On a cluster, one node's connection: redis-rs connects it
            // again, and the channels it carried are subscribed again.
            (PushKind::Disconnection, _) if cluster => Err(Trouble::Resubscribe(
                "a connection to a cluster node closed",
            )),
            (PushKind::Disconnection, _) => Err(Trouble::Replace("the connection closed")),
            // Redis let go of a channel still wanted: its slot moved to
            // another shard. redis-rs may take this for the reply to
            // whatever command is in flight, so the connection is
            // replaced.
            (PushKind::SUnsubscribe, Some(channel))
                if self.routes().get(&channel).is_some_and(|r| r.subscribed) =>
            {
                Err(Trouble::Replace(
                    "Redis dropped a subscription (its slot moved to another shard)",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Gives `event` to one room without waiting for it: presence a busy
    /// room has no room for is dropped (the next replaces it); what must
    /// not be lost waits in a task of its own.
    fn hand_over(&self, peers: &mpsc::Sender<PeerEvent>, event: PeerEvent, handoff: &Handoff) {
        let Err(mpsc::error::TrySendError::Full(event)) = peers.try_send(event) else {
            return;
        };
        if *handoff == Handoff::Wait {
            let peers = peers.clone();
            let stop = self.stop.clone();
            self.tasks.spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = peers.send(event) => {}
                }
            });
        }
    }

    /// Channels wanted but not subscribed (on a cluster, those whose
    /// shard could not be reached).
    fn unsubscribed(&self) -> Vec<String> {
        self.routes()
            .iter()
            .filter(|(_, r)| !r.subscribed && r.is_wanted())
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Every channel still wanted, as of now; forgets the others.
    fn wanted(&self) -> Vec<String> {
        let mut routes = self.routes();
        routes.retain(|_, r| r.is_wanted());
        routes.values_mut().for_each(|r| r.subscribed = false);
        routes.keys().cloned().collect()
    }

    /// Marks `channels` subscribed, lets their waiting listeners go, and
    /// has their log followers read again: an append announced before the
    /// subscription held (or while the bus was reconnecting) reached nobody
    /// here.
    fn mark_subscribed(&self, channels: &[String]) {
        let mut routes = self.routes();
        for channel in channels {
            if let Some(route) = routes.get_mut(channel) {
                route.subscribed = true;
                route.waiting.drain(..).for_each(|w| {
                    let _ = w.send(());
                });
                route.logs.iter().for_each(|w| w.notify_one());
            }
        }
    }
}

/// What the bus does about a problem with its connection.
enum Trouble {
    /// The connection cannot be trusted any more: replace it.
    Replace(&'static str),
    /// Some subscriptions may be gone (a cluster node's connection
    /// dropped, or a node did not answer): make them all again on this
    /// connection.
    Resubscribe(&'static str),
}

/// The bus task: connect, subscribe everything wanted, then route messages
/// and follow changes of what is wanted until the connection must be
/// replaced; again.
async fn run(shared: Arc<Shared>, target: Target, mut changes: mpsc::UnboundedReceiver<String>) {
    let mut delays = backoff();
    loop {
        let (to_bus, mut pushes) = mpsc::unbounded_channel();
        let connected = tokio::select! {
            () = shared.stop.cancelled() => return,
            connected = connect(&shared, &target, to_bus) => connected,
        };
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "cannot subscribe to other nodes' messages in Redis; retrying");
                shared.unreachable.store(true, Ordering::Relaxed);
                let wait = delays.next().unwrap_or(Duration::from_secs(5));
                tokio::select! {
                    () = shared.stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        delays = backoff();
        shared.unreachable.store(false, Ordering::Relaxed);
        let why = serve(&shared, &mut changes, &mut conn, &mut pushes).await;
        match why {
            Some(why) => warn!(
                why,
                "lost the subscription to other nodes' messages; reconnecting"
            ),
            None => return,
        }
    }
}

/// Routes messages and follows changes of what is wanted, and pings, until
/// the connection must be replaced (why) or the bus stops (`None`).
async fn serve(
    shared: &Shared,
    changes: &mut mpsc::UnboundedReceiver<String>,
    conn: &mut Link,
    pushes: &mut mpsc::UnboundedReceiver<PushInfo>,
) -> Option<&'static str> {
    let cluster = conn.is_cluster();
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let mut retry = tokio::time::interval_at(tokio::time::Instant::now() + RETRY, RETRY);
    loop {
        let outcome = tokio::select! {
            // Pushes first: the confirmation of an unsubscribe this task
            // sent is then taken for what it is before the channel can be
            // wanted again (see `Shared::heard`).
            biased;
            () = shared.stop.cancelled() => return None,
            push = pushes.recv() => match push {
                Some(push) => shared.heard(push, cluster),
                None => Err(Trouble::Replace("the connection closed")),
            },
            Some(first) = changes.recv() => {
                // Every change waiting, in one round.
                let mut channels = vec![first];
                while channels.len() < SUBSCRIBE_CHUNK {
                    let Ok(next) = changes.try_recv() else { break };
                    channels.push(next);
                }
                follow_changes(shared, conn, channels).await
            }
            // On a cluster: channels whose shard could not be reached.
            _ = retry.tick(), if cluster => subscribe(shared, conn, shared.unsubscribed()).await,
            _ = heartbeat.tick() => ping(conn).await,
        };
        match outcome {
            Ok(()) => {}
            Err(Trouble::Resubscribe(why)) if cluster => {
                warn!(why, "subscribing to other nodes' messages again");
                if let Err(Trouble::Replace(why)) = subscribe(shared, conn, shared.wanted()).await {
                    return Some(why);
                }
            }
            Err(Trouble::Resubscribe(why) | Trouble::Replace(why)) => return Some(why),
        }
    }
}

/// A fresh connection subscribed to every channel wanted (on a cluster,
/// every one whose shard answers; the others are tried again each
/// [`RETRY`]).
async fn connect(
    shared: &Shared,
    target: &Target,
    pushes: mpsc::UnboundedSender<PushInfo>,
) -> Result<Link, redis::RedisError> {
    let mut conn = target.subscriber(pushes, REPLY_WAIT).await?;
    let wanted = shared.wanted();
    let count = wanted.len();
    if let Err(Trouble::Replace(why) | Trouble::Resubscribe(why)) =
        subscribe(shared, &mut conn, wanted).await
    {
        return Err(redis::RedisError::from((redis::ErrorKind::IoError, why)));
    }
    if count > 0 {
        info!(
            channels = count,
            "subscribed to other nodes' messages again"
        );
    }
    Ok(conn)
}

/// Subscribes each of `channels` that gained its first listener, and
/// unsubscribes each that lost its last.
async fn follow_changes(
    shared: &Shared,
    conn: &mut Link,
    channels: Vec<String>,
) -> Result<(), Trouble> {
    let (mut subscribe, mut unsubscribe) = (Vec::new(), Vec::new());
    {
        let mut routes = shared.routes();
        for channel in channels {
            let Some(route) = routes.get_mut(&channel) else {
                continue;
            };
            route.peers.retain(|p| !p.is_closed());
            match (route.is_wanted(), route.subscribed) {
                (true, false) => subscribe.push(channel),
                (false, subscribed) => {
                    routes.remove(&channel);
                    if subscribed {
                        unsubscribe.push(channel);
                    }
                }
                (true, true) => {}
            }
        }
    }
    subscribe.sort_unstable();
    subscribe.dedup();
    self::subscribe(shared, conn, subscribe).await?;
    let cluster = conn.is_cluster();
    let replies = unsubscribe.iter().map(|channel| {
        confirmed(
            conn.clone(),
            "SUNSUBSCRIBE",
            PushKind::SUnsubscribe,
            channel,
        )
    });
    for done in futures_util::future::join_all(replies).await {
        // Not subscribed any more either way, unless the reply was not
        // the one asked for.
        if let Err(why) = done {
            if !cluster {
                return Err(Trouble::Replace(why));
            }
        }
    }
    Ok(())
}

/// Subscribes `channels` (sharded pub/sub: on a cluster, each on its
/// document's shard), one command each (a command naming several would
/// span shards), all at once, and marks each that Redis confirmed. On one
/// server any failure means the connection is gone; on a cluster the
/// channels of a shard that did not answer stay unsubscribed, and are
/// tried again.
async fn subscribe(shared: &Shared, conn: &mut Link, channels: Vec<String>) -> Result<(), Trouble> {
    if channels.is_empty() {
        return Ok(());
    }
    let cluster = conn.is_cluster();
    let replies = channels
        .iter()
        .map(|channel| confirmed(conn.clone(), "SSUBSCRIBE", PushKind::SSubscribe, channel));
    let replies = futures_util::future::join_all(replies).await;
    let mut held = Vec::with_capacity(channels.len());
    let mut failed = 0;
    for (channel, reply) in channels.into_iter().zip(replies) {
        match reply {
            Ok(()) => held.push(channel),
            Err(why) if !cluster => return Err(Trouble::Replace(why)),
            Err(_) => failed += 1,
        }
    }
    shared.mark_subscribed(&held);
    if failed > 0 {
        warn!(
            channels = failed,
            "some shards of the Redis Cluster did not take subscriptions; trying again"
        );
    }
    Ok(())
}

/// Sends `command channel` and checks that Redis' reply confirms exactly
/// that (a reply out of step means the connection can no longer be
/// trusted), within [`REPLY_WAIT`].
async fn confirmed(
    mut conn: Link,
    command: &'static str,
    kind: PushKind,
    channel: &str,
) -> Result<(), &'static str> {
    let mut cmd = redis::cmd(command);
    cmd.arg(channel);
    let reply = tokio::time::timeout(REPLY_WAIT, cmd.query_async::<redis::Value>(&mut conn))
        .await
        .map_err(|_| "Redis did not answer in time")?
        .map_err(|_| "Redis refused a command")?;
    let redis::Value::Push { kind: got, data } = reply else {
        return Err("Redis' reply was not a confirmation");
    };
    let about: Option<String> = data
        .into_iter()
        .next()
        .and_then(|c| redis::from_owned_redis_value(c).ok());
    if got == kind && about.as_deref() == Some(channel) {
        Ok(())
    } else {
        Err("Redis confirmed another command than the one sent")
    }
}

/// Asks Redis (every primary, on a cluster) for a sign of life.
async fn ping(conn: &mut Link) -> Result<(), Trouble> {
    let cluster = conn.is_cluster();
    let pong = tokio::time::timeout(
        REPLY_WAIT,
        redis::cmd("PING").query_async::<redis::Value>(conn),
    )
    .await;
    match pong {
        Ok(Ok(_)) => Ok(()),
        _ if cluster => Err(Trouble::Resubscribe("a cluster node did not answer a ping")),
        Ok(Err(_)) => Err(Trouble::Replace("Redis refused a command")),
        Err(_) => Err(Trouble::Replace("Redis did not answer in time")),
    }
}
