//! `RedisStore`: documents in Redis, shared by every weft node of a cluster.
//!
//! Keys (the `{…}` hash tag keeps one document's keys in one Redis Cluster
//! slot, so the append script can touch them together):
//! - `weft:{doc}:log`: a Redis Stream, one entry per change, with the
//!   explicit id `0-<seq>`: the stream position *is* the sequence number,
//!   so event ids built from it mean the same on every node.
//! - `weft:{doc}:seq`: the newest sequence number. The append script adds
//!   entries only if it still equals what the caller last saw, so two nodes
//!   never give one number to two changes (the loser catches up and retries).
//! - `weft:{doc}:meta` (incarnation, created), `weft:{doc}:snapshots` (id →
//!   record), `weft:{doc}:snapshot-index` (id → seq, time, reason, size:
//!   listing without reading states), `weft:{doc}:head` and `head-seq` (the
//!   snapshot loads start from), `weft:{doc}:lease`
//!   (which node may compact), `weft:{doc}:quarantine` (`c<seq>` for a
//!   change, `s<id>` for a snapshot → a stored part that no longer
//!   replays). Every key of a document is in its slot: weft runs on a
//!   Redis Cluster as on one server, each script on its document's shard.
//! - Channel `weft:{doc}:events`: what nodes tell each other and never
//!   store: awareness, that the document was deleted, and the presence
//!   handshake of a node that has just loaded it (a question, and each
//!   node's answer: the asker's id, then its awareness update), and that a
//!   node appended (published by the append script). Each message is the
//!   sender's node id (8 bytes), a kind byte, then the payload. The
//!   channel is sharded (`SPUBLISH`), so it too lives on the document's
//!   shard. A node hears every document's channel over one subscription
//!   (`redis_store/bus.rs`).
//!
//! Records are the same schema-versioned MessagePack as the sled store's.
//!
//! **When a document exists.** A document is stored once a change to it
//! is: its metadata is then permanent and its `seq` set, and listing finds
//! it by those keys (`SCAN` on every primary); until then nothing of it is
//! kept for good. Several
//! nodes may load a never-written name at once and must agree on its
//! incarnation (event ids carry it), so loading sets `meta` with `NX` and
//! an expiry of [`PROVISIONAL`] (a later load renews it): every node that
//! loads the name meanwhile gets the same metadata, and a name that is only
//! ever read disappears by itself. The append script makes it permanent:
//! it `PERSIST`s `meta` (or sets it from the metadata the node holds, if it
//! expired), atomically with the first changes. It refuses an append whose incarnation is not the stored one
//! (the name expired and another node created it anew, or it was deleted
//! and recreated): [`StorageError::Recreated`], and the room reloads.
//!
//! Each Lua script is a file of its own beside this one (`redis_store/`),
//! saying what it does and its KEYS and ARGV. What nodes tell each other
//! (the `Replication` role) is in `redis_store/replication.rs`. Redis takes
//! neither backup restores nor webhook deliveries: `RedisStore` does not
//! play those roles.

mod asking;
mod bus;
mod health;
mod link;
mod replication;
mod retrying;

use std::time::Duration;

use async_trait::async_trait;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, Cmd};

use crate::clock::now_ms;
use crate::completeness::{self, DocRecords};
use crate::record::{
    self, LogRecord, MetaRecord, QuarantineRecord, SnapshotIndexRecord, SnapshotRecord,
};
use bus::Bus;
use link::{Link, Lua, Target};
use replication::{APPENDED, DELETED, EVENTS};
use retrying::Retrying;

use crate::{
    Archive, Catalogue, Cause, Corruption, DocDump, DocHead, DocInfo, DocMeta, DocName,
    DocumentStore, LogEntry, LogRetention, NewSnapshot, Quarantined, RetentionPolicy, Snapshot,
    SnapshotInfo, StorageError, StoredDoc, SCHEMA_VERSION,
};

/// See `redis_store/load.lua`: a name's metadata, provisional until stored.
const LOAD: &str = include_str!("redis_store/load.lua");

/// See `redis_store/read_meta.lua`: what `load.lua` reads, writing nothing.
const READ_META: &str = include_str!("redis_store/read_meta.lua");

/// See `redis_store/append.lua`: changes, only if nobody appended first.
const APPEND: &str = include_str!("redis_store/append.lua");

/// See `redis_store/store_snapshot.lua`: a snapshot, the head, the trim.
const STORE_SNAPSHOT: &str = include_str!("redis_store/store_snapshot.lua");

/// See `redis_store/delete.lua`: a document, leaving its mark.
const DELETE: &str = include_str!("redis_store/delete.lua");

/// See `redis_store/release.lua`: the compaction lease, if still ours.
const RELEASE: &str = include_str!("redis_store/release.lua");

/// How long a compaction lease lasts if its holder dies mid-way.
const LEASE: Duration = Duration::from_secs(30);

/// How long a never-written name keeps the metadata nodes loaded it with
/// (each load renews it). Long enough that nodes loading a name around the
/// same time agree on its incarnation; short enough that a flood of reads
/// of made-up names leaves Redis only this long's worth of them.
pub const PROVISIONAL: Duration = Duration::from_secs(60 * 60);

/// `--redis-min-replicas`: how many replicas must confirm a change, how
/// long to wait for them, and the connection that waits.
#[derive(Clone)]
struct Replicas {
    min: u32,
    wait: Duration,
    conn: Link,
}

/// What `delete` leaves for a while, so that a node that missed the word
/// on the events channel (its subscription was down) still learns that the
/// document was deleted rather than lost; and for how long.
const DELETED_MARK: &str = "deleted";
const TOMBSTONE: Duration = Duration::from_secs(60 * 60);

/// Documents in Redis; see the module docs for the layout.
#[derive(Clone)]
pub struct RedisStore {
    /// Reconnects by itself after Redis restarts or the network blips, and
    /// sends again what a brief outage failed.
    conn: Retrying,
    /// Tells this node's messages on the events channel apart from others'.
    node: u64,
    /// The node's one subscription to what other nodes say.
    bus: Bus,
    /// Replicas that must have a change before it counts as stored, and
    /// how long to wait for them.
    replicas: Option<Replicas>,
    /// Where Redis is, for the connection replicated appends get to
    /// themselves.
    target: Target,
    load: Lua,
    read_meta_only: Lua,
    append: Lua,
    store_snapshot: Lua,
    release: Lua,
    delete: Lua,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("node", &format_args!("{:016x}", self.node))
            .finish_non_exhaustive()
    }
}

fn io(action: &'static str) -> impl Fn(redis::RedisError) -> StorageError {
    move |e| StorageError::Backend {
        action,
        reason: format!("Redis: {e}"),
        source: Box::new(e),
    }
}

fn key(doc: &DocName, what: &str) -> String {
    format!("weft:{{{doc}}}:{what}")
}

/// The `SCAN` pattern of every document's `what` key.
fn key_pattern(what: &str) -> String {
    format!("weft:{{*}}:{what}")
}

/// The document whose `what` key `key` is.
fn doc_of(key: &str, what: &str) -> Option<String> {
    let name = key
        .strip_prefix("weft:{")?
        .strip_suffix(what)?
        .strip_suffix("}:")?;
    Some(name.to_owned())
}

fn bad_url(e: redis::RedisError) -> StorageError {
    StorageError::Connect {
        target: String::new(),
        reason: format!("bad Redis URL ({e})"),
        source: Some(Box::new(e)),
    }
}

/// Every key one document may have.
fn doc_keys(doc: &DocName) -> Vec<String> {
    [
        "meta",
        "log",
        "seq",
        "snapshots",
        "snapshot-index",
        "snapshot-ids",
        "head",
        "head-seq",
        "lease",
        "quarantine",
    ]
    .iter()
    .map(|w| key(doc, w))
    .collect()
}

/// A stored document some of whose keys are gone (evicted, deleted by
/// hand, or Redis came back without them): refused, never served as if
/// it were empty or whole.
fn damaged(doc: &DocName, what: &str, problem: &str) -> StorageError {
    StorageError::Corrupt {
        kind: "document",
        key: key(doc, what),
        reason: format!(
            "{problem}: the document is stored but part of it is gone from Redis (evicted, \
             deleted by hand, or Redis came back without it); it is refused rather than served \
             incomplete"
        ),
        source: None,
    }
}

fn stream_id(seq: u64) -> String {
    format!("0-{seq}")
}

fn seq_of(id: &str) -> Option<u64> {
    id.strip_prefix("0-")?.parse().ok()
}

impl RedisStore {
    /// Connects to Redis at `url` (`redis://[:password@]host:port/db`).
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        let target = Target::single(url).map_err(bad_url)?;
        Self::open(target).await
    }

    /// Connects to the Redis Cluster that has the nodes at `urls` (one is
    /// enough; the others are found from it).
    pub async fn connect_cluster(urls: &[String]) -> Result<Self, StorageError> {
        let target = Target::cluster(urls).map_err(bad_url)?;
        Self::open(target).await
    }

    async fn open(target: Target) -> Result<Self, StorageError> {
        let at = format!(" at {}", target.describe());
        let open = |reason: String, source: Option<Cause>| StorageError::Connect {
            target: at.clone(),
            reason,
            source,
        };
        let conn = target
            .commands(Duration::from_secs(10))
            .await
            .map_err(|e| open(format!("cannot reach Redis: {e}"), Some(Box::new(e))))?;
        let mut conn = Retrying(conn);
        health::check(&mut conn.0)
            .await
            .map_err(|reason| StorageError::UnsafeRedis {
                target: at.clone(),
                reason,
            })?;
        let mut node = [0u8; 8];
        getrandom::fill(&mut node).map_err(|e| open(e.to_string(), None))?;
        let node = u64::from_le_bytes(node);
        let bus = Bus::start(target.clone(), node);
        bus.spawn(health::keep_checking(conn.0.clone()));
        Ok(RedisStore {
            bus,
            replicas: None,
            target,
            conn,
            node,
            load: Lua::new(LOAD),
            read_meta_only: Lua::new(READ_META),
            append: Lua::new(APPEND),
            store_snapshot: Lua::new(STORE_SNAPSHOT),
            release: Lua::new(RELEASE),
            delete: Lua::new(DELETE),
        })
    }

    /// A change counts as stored only once `min` replicas have it too,
    /// confirmed by `WAIT` within `wait`; 0: once the primary has it.
    /// Replicated appends get a connection of their own: Redis holds up
    /// whatever a connection sends after a `WAIT` until it returns, and
    /// the node's loads, reads and presence must not wait for replicas.
    pub async fn with_min_replicas(
        mut self,
        min: u32,
        wait: Duration,
    ) -> Result<Self, StorageError> {
        if min == 0 {
            return Ok(self);
        }
        let conn = self
            .target
            .commands(wait + Duration::from_secs(5))
            .await
            .map_err(io("opening the connection for replicated appends"))?;
        self.replicas = Some(Replicas { min, wait, conn });
        Ok(self)
    }

    /// The newest change old enough for `keep`'s window to go, judged at
    /// the new snapshot's time from the snapshots stored (another node's
    /// newer head included) and the new one. The tail behind the head is
    /// the script's to apply: only it sees the head at the moment it trims.
    async fn aged_through(
        &self,
        doc: &DocName,
        snapshot: &Snapshot,
        keep: LogRetention,
    ) -> Result<u64, StorageError> {
        let mut snapshots = self.list_snapshots(doc).await?;
        snapshots.push(SnapshotIndexRecord::of(snapshot).into_info(snapshot.id));
        let newest = snapshots.iter().map(|s| s.seq).max().unwrap_or(0);
        let window = LogRetention {
            keep_tail: 0,
            ..keep
        };
        Ok(window.drop_through(newest, &snapshots, snapshot.taken_at_ms))
    }

    fn conn(&self) -> Retrying {
        self.conn.clone()
    }

    /// Stops following other nodes: ends the subscription and every task
    /// that reads a log or hands an event over, and waits for them.
    pub async fn shut_down(&self) {
        self.bus.shut_down().await;
    }

    /// How many documents' channels the node is subscribed to right now.
    pub fn subscribed_channels(&self) -> usize {
        self.bus.subscribed()
    }

    /// The metadata of a document that exists (`None`: it does not, even
    /// if a node holds provisional metadata for the name).
    async fn meta(&self, doc: &DocName) -> Result<Option<DocMeta>, StorageError> {
        let (bytes, exists, _) = self.read_without_writing(doc).await?;
        match bytes {
            Some(b) if exists => decode_meta(doc, &b).map(Some),
            _ => Ok(None),
        }
    }

    /// Sends `pipe`, whose commands run `script` on `doc`'s keys (see
    /// [`Lua::run`]), refused as `action`.
    async fn run_script<T, C>(
        &self,
        action: &'static str,
        script: &Lua,
        doc: &DocName,
        pipe: &redis::Pipeline,
        conn: &mut C,
    ) -> Result<T, StorageError>
    where
        T: redis::FromRedisValue,
        C: redis::aio::ConnectionLike + AsMut<Link>,
    {
        script
            .run(&key(doc, "meta"), pipe, conn)
            .await
            .map_err(io(action))
    }

    /// One call of `script` on `doc`'s keys, as a request of its own.
    async fn call<T: redis::FromRedisValue>(
        &self,
        script: &Lua,
        doc: &DocName,
        call: Cmd,
        conn: &mut (impl redis::aio::ConnectionLike + AsMut<Link>),
    ) -> redis::RedisResult<T> {
        let mut pipe = redis::pipe();
        pipe.add_command(call);
        let (reply,): (T,) = script.run(&key(doc, "meta"), &pipe, conn).await?;
        Ok(reply)
    }

    /// Runs the append script and then `WAIT min`, in one request on one
    /// connection (`WAIT` counts the replicas that have every write its
    /// connection made), and refuses the append unless `min` replicas
    /// confirmed it within `wait`. Not retried: after a dropped connection
    /// nothing proves the replicas have it, so it is refused and its
    /// writers resync.
    async fn append_replicated(
        &self,
        doc: &DocName,
        eval: Cmd,
        replicas: &Replicas,
    ) -> Result<(u8, u64), StorageError> {
        let Replicas { min, wait, .. } = *replicas;
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        pipe.add_command(eval).cmd("WAIT").arg(min).arg(wait_ms);
        let ((ok, last), replicas): ((u8, u64), u32) = self
            .run_script(
                "appending changes",
                &self.append,
                doc,
                &pipe,
                &mut replicas.conn.clone(),
            )
            .await?;
        if ok == 1 && replicas < min {
            return Err(StorageError::Io {
                action: "waiting for Redis replicas",
                reason: format!(
                    "only {replicas} of the {min} replicas required (--redis-min-replicas) had \
                     the change within {wait:?}, so it was not acknowledged; check the replicas"
                ),
            });
        }
        Ok((ok, last))
    }

    /// One attempt at [`DocumentStore::load`].
    async fn load_once(&self, doc: &DocName) -> Result<StoredDoc, StorageError> {
        let fresh = DocMeta {
            incarnation: {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).map_err(|e| StorageError::Io {
                    action: "drawing a document incarnation id",
                    reason: e.to_string(),
                })?;
                u64::from_le_bytes(b)
            },
            created_at_ms: now_ms(),
        };
        // The first node to load a name fixes its incarnation for all (for
        // a while, if nobody writes it: see the module docs).
        let mut load = self.load.call(&[key(doc, "meta"), key(doc, "seq")]);
        load.arg(encode_meta(&fresh)?)
            .arg(PROVISIONAL.as_millis() as u64);
        let loaded: redis::RedisResult<(Option<Vec<u8>>, bool, Option<u64>)> =
            self.call(&self.load, doc, load, &mut self.conn()).await;
        let (meta, exists, stored_seq) = match loaded {
            Ok(loaded) => loaded,
            // Redis is full and takes no writes: what is stored is read as
            // it is, and a name never written (or whose provisional
            // metadata expired) is served empty under this node's fresh
            // metadata, which the first append stores if it ever can.
            Err(e) if e.code() == Some("OOM") => {
                let (meta, exists, seq) = self.read_without_writing(doc).await?;
                match meta {
                    None if !exists => (Some(encode_meta(&fresh)?), false, seq),
                    meta => (meta, exists, seq),
                }
            }
            Err(e) => return Err(io("loading document metadata")(e)),
        };
        let meta = match meta {
            Some(meta) => decode_meta(doc, &meta)?,
            None if exists => return Err(damaged(doc, "meta", "missing")),
            None => {
                return Err(StorageError::Io {
                    action: "loading a document",
                    reason: "its metadata vanished while loading".into(),
                })
            }
        };
        // Read before the log: every change up to it is in the log or in
        // the snapshot, or it is lost.
        let newest = match (stored_seq, exists) {
            (Some(newest), true) => newest,
            (None, false) => 0,
            (None, true) => return Err(damaged(doc, "seq", "missing")),
            // Changes without the metadata that says they were stored.
            (Some(_), false) => return Err(damaged(doc, "meta", "missing")),
        };
        // Another node may store a newer snapshot and trim the log between
        // reading the head and reading the log: the log must then follow on
        // from the snapshot, or the load is tried again.
        let mut lost = false;
        for _ in 0..8 {
            let head = self.head_id(doc).await?;
            let snapshot = match head {
                Some(id) => match self.get_snapshot(doc, id).await? {
                    Some(snapshot) => Some(snapshot),
                    // A newer head replaced it and pruning took it
                    // meanwhile: look again. Gone from a head that
                    // stays: damaged.
                    None if self.head_id(doc).await? != head => continue,
                    None => return Err(damaged(doc, "snapshots", "missing the head snapshot")),
                },
                None => None,
            };
            let after = snapshot.as_ref().map_or(0, |s| s.seq);
            let log = self.read_log(doc, after, usize::MAX).await?;
            // Short of the newest: trimmed behind a newer snapshot
            // meanwhile (look again), or lost.
            lost = log.last().map_or(after, |e| e.seq) < newest;
            if !lost && log.first().is_none_or(|e| e.seq == after + 1) {
                return Ok(StoredDoc {
                    meta,
                    // Another node's first append since the metadata was read.
                    exists: exists || !log.is_empty(),
                    snapshot,
                    log,
                });
            }
        }
        if lost {
            return Err(damaged(doc, "log", "missing changes up to the newest"));
        }
        Err(StorageError::Busy(
            "the document's log kept being trimmed while it loaded",
        ))
    }

    /// Whether the log already holds exactly `entries` (`newest` being the
    /// newest number stored): an append retried after its connection
    /// dropped may have run the first time, and is then refused for
    /// numbers it took itself.
    async fn holds(
        &self,
        doc: &DocName,
        entries: &[LogEntry],
        newest: u64,
    ) -> Result<bool, StorageError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(false);
        };
        if newest < last.seq {
            return Ok(false);
        }
        let stored = self.read_log(doc, first.seq - 1, entries.len()).await?;
        Ok(stored == entries)
    }

    /// What Redis holds for `doc`: the `MEMORY USAGE` of each of its keys
    /// (values, their structure and the key itself), summed.
    async fn held_bytes(&self, doc: &DocName) -> Result<u64, StorageError> {
        let mut pipe = redis::pipe();
        for k in doc_keys(doc) {
            // Redis' default sampling: counting every element of a long log
            // would hold Redis up.
            pipe.cmd("MEMORY").arg("USAGE").arg(k);
        }
        let each: Vec<Option<u64>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(io("measuring a document's memory"))?;
        Ok(each.into_iter().flatten().sum())
    }

    /// What `load.lua` reads, read in one step without writing anything:
    /// the metadata record, whether the document is stored (its metadata
    /// permanent, or its newest sequence number set), and that number.
    async fn read_without_writing(
        &self,
        doc: &DocName,
    ) -> Result<(Option<Vec<u8>>, bool, Option<u64>), StorageError> {
        let read = self
            .read_meta_only
            .call(&[key(doc, "meta"), key(doc, "seq")]);
        self.call(&self.read_meta_only, doc, read, &mut self.conn())
            .await
            .map_err(io("reading document metadata"))
    }

    async fn last_seq(&self, doc: &DocName) -> Result<u64, StorageError> {
        let seq: Option<u64> = self
            .conn()
            .get(key(doc, "seq"))
            .await
            .map_err(io("reading the newest sequence number"))?;
        Ok(seq.unwrap_or(0))
    }

    /// The id of the snapshot loads start from, if any.
    async fn head_id(&self, doc: &DocName) -> Result<Option<u64>, StorageError> {
        self.conn()
            .get(key(doc, "head"))
            .await
            .map_err(io("reading the newest snapshot id"))
    }

    fn decode_entries(
        doc: &DocName,
        reply: StreamRangeReply,
    ) -> Result<Vec<LogEntry>, StorageError> {
        reply
            .ids
            .into_iter()
            .map(|entry| {
                let at = format!("{} {}", key(doc, "log"), entry.id);
                let seq = seq_of(&entry.id).ok_or_else(|| StorageError::Corrupt {
                    kind: "log record",
                    key: at.clone(),
                    reason: "stream id is not 0-<seq>".into(),
                    source: None,
                })?;
                let bytes: Vec<u8> = entry.get("r").ok_or_else(|| StorageError::Corrupt {
                    kind: "log record",
                    key: at.clone(),
                    reason: "no record field".into(),
                    source: None,
                })?;
                let r: LogRecord = record::decode(&at, &bytes)?;
                Ok(r.into_entry(seq))
            })
            .collect()
    }

    async fn snapshot_records(&self, doc: &DocName) -> Result<Vec<Snapshot>, StorageError> {
        let all: Vec<(u64, Vec<u8>)> = self
            .conn()
            .hgetall(key(doc, "snapshots"))
            .await
            .map_err(io("reading snapshots"))?;
        let mut snapshots = all
            .into_iter()
            .map(|(id, bytes)| decode_snapshot(doc, id, &bytes))
            .collect::<Result<Vec<_>, StorageError>>()?;
        snapshots.sort_by_key(|s| s.id);
        Ok(snapshots)
    }
}

fn decode_meta(doc: &DocName, bytes: &[u8]) -> Result<DocMeta, StorageError> {
    let r: MetaRecord = record::decode(&key(doc, "meta"), bytes)?;
    Ok(DocMeta {
        incarnation: r.incarnation,
        created_at_ms: r.created_at_ms,
    })
}

fn encode_meta(meta: &DocMeta) -> Result<Vec<u8>, StorageError> {
    record::encode(&MetaRecord {
        version: SCHEMA_VERSION,
        incarnation: meta.incarnation,
        created_at_ms: meta.created_at_ms,
    })
}

/// An incarnation as the metadata record holds it: a MessagePack integer.
fn encode_incarnation(incarnation: u64) -> Result<Vec<u8>, StorageError> {
    rmp_serde::to_vec(&incarnation).map_err(|e| StorageError::Encode {
        kind: "document metadata",
        reason: e.to_string(),
        source: Box::new(e),
    })
}

fn decode_snapshot(doc: &DocName, id: u64, bytes: &[u8]) -> Result<Snapshot, StorageError> {
    let r: SnapshotRecord = record::decode(&format!("{} {id}", key(doc, "snapshots")), bytes)?;
    Ok(r.into_snapshot(id))
}

#[async_trait]
impl DocumentStore for RedisStore {
    /// A script that declares it writes, on every primary: Redis refuses
    /// it when full (OOM) or read-only, as it would an append.
    async fn check_writable(&self) -> Result<(), StorageError> {
        let mut probe = redis::cmd("EVAL");
        probe.arg("#!lua\nreturn 1").arg(0);
        self.conn
            .0
            .clone()
            .on_every_primary(&probe)
            .await
            .map_err(io("checking Redis takes writes"))?;
        Ok(())
    }

    async fn load(&self, doc: &DocName) -> Result<StoredDoc, StorageError> {
        // What looks damaged may have been a delete or a first write by
        // another node between the reads: damaged only if it looks so twice.
        match self.load_once(doc).await {
            Err(StorageError::Corrupt { .. }) => self.load_once(doc).await,
            loaded => loaded,
        }
    }

    async fn append(
        &self,
        doc: &DocName,
        meta: &DocMeta,
        entries: &[LogEntry],
    ) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        // The script's hash, its 3 keys, then its arguments (see append.lua).
        let mut eval = self
            .append
            .call(&[key(doc, "log"), key(doc, "seq"), key(doc, "meta")]);
        eval.arg(first.seq.saturating_sub(1))
            .arg(encode_meta(meta)?)
            .arg(encode_incarnation(meta.incarnation)?)
            // Replicated: published below, once the replicas have it.
            .arg(if self.replicas.is_some() {
                String::new()
            } else {
                key(doc, EVENTS)
            })
            .arg(self.event(APPENDED, &[]));
        for e in entries {
            eval.arg(e.seq).arg(record::encode(&LogRecord::of(e))?);
        }
        let (ok, last): (u8, u64) = match self.replicas {
            None => {
                let mut pipe = redis::pipe();
                pipe.add_command(eval);
                let ((ok, last),): ((u8, u64),) = self
                    .run_script(
                        "appending changes",
                        &self.append,
                        doc,
                        &pipe,
                        &mut self.conn(),
                    )
                    .await?;
                (ok, last)
            }
            Some(ref replicas) => {
                let (ok, last) = self.append_replicated(doc, eval, replicas).await?;
                if ok == 1 {
                    // Other nodes hear of it only now (a lost message is
                    // made up for by the next append's, or a reconnect).
                    let announced: redis::RedisResult<i64> = self
                        .conn()
                        .spublish(
                            key(doc, EVENTS),
                            self.event(APPENDED, last.to_string().as_bytes()),
                        )
                        .await;
                    if let Err(e) = announced {
                        tracing::warn!(%doc, error = %e, "could not tell other nodes of a replicated append");
                    }
                }
                (ok, last)
            }
        };
        match ok {
            1 => Ok(()),
            2 => Err(StorageError::Recreated(doc.to_string())),
            // Sent twice (a cluster connection resends after a dropped
            // connection) and stored by the first: with replicas required,
            // the second `WAIT` proves nothing about them.
            _ if self.holds(doc, entries, last).await? => match self.replicas {
                None => Ok(()),
                Some(Replicas { min, .. }) => Err(StorageError::Io {
                    action: "waiting for Redis replicas",
                    reason: format!(
                        "the change was stored, but the connection dropped before {min} \
                         replicas (--redis-min-replicas) could confirm it, so it was not \
                         acknowledged; its writers resync"
                    ),
                }),
            },
            // Behind what this node has seen stored: history went back.
            _ if last + 1 < first.seq => Err(damaged(
                doc,
                "seq",
                &format!(
                    "the newest change stored is {last}, but this node has seen {} stored",
                    first.seq - 1
                ),
            )),
            _ => Err(StorageError::Conflict { last_seq: last }),
        }
    }

    async fn compact(
        &self,
        doc: &DocName,
        snapshot: NewSnapshot,
        keep: LogRetention,
    ) -> Result<u64, StorageError> {
        let mut conn = self.conn();
        let lease = key(doc, "lease");
        let holder = format!("{:016x}", self.node);
        let got: Option<String> = redis::cmd("SET")
            .arg(&lease)
            .arg(&holder)
            .arg("NX")
            .arg("PX")
            .arg(LEASE.as_millis() as u64)
            // Not sent again after a dropped connection: a lease taken by
            // the first try would refuse the second.
            .query_async(&mut self.conn.0.clone())
            .await
            .map_err(io("taking the compaction lease"))?;
        // A cluster connection resends a command after a dropped
        // connection: a lease its first try took is this node's.
        let ours = || async {
            let holds: Option<String> = conn.clone().get(&lease).await.ok().flatten();
            holds.as_deref() == Some(holder.as_str())
        };
        if got.is_none() && !ours().await {
            // Another node is compacting this document right now; its
            // snapshot serves everyone.
            return Err(StorageError::Busy(
                "another node is compacting this document",
            ));
        }
        let result = async {
            let id: u64 = conn
                .incr(key(doc, "snapshot-ids"), 1)
                .await
                .map_err(io("numbering a snapshot"))?;
            let snapshot = Snapshot {
                id,
                seq: snapshot.seq,
                taken_at_ms: snapshot.taken_at_ms,
                reason: snapshot.reason,
                state: snapshot.state,
            };
            let aged = self.aged_through(doc, &snapshot, keep).await?;
            let mut store = self.store_snapshot.call(&[
                key(doc, "snapshots"),
                key(doc, "head"),
                key(doc, "head-seq"),
                key(doc, "log"),
                key(doc, "snapshot-index"),
            ]);
            store
                .arg(id)
                .arg(record::encode(&SnapshotRecord::of(&snapshot))?)
                .arg(snapshot.seq)
                .arg(keep.keep_tail)
                .arg(record::encode(&SnapshotIndexRecord::of(&snapshot))?)
                .arg(aged);
            let _: i64 = self
                .call(&self.store_snapshot, doc, store, &mut conn)
                .await
                .map_err(io("storing a snapshot"))?;
            Ok(id)
        }
        .await;
        let mut release = self.release.call(std::slice::from_ref(&lease));
        release.arg(&holder);
        let _: i64 = self
            .call(&self.release, doc, release, &mut conn)
            .await
            .map_err(io("releasing the compaction lease"))?;
        result
    }

    async fn read_log(
        &self,
        doc: &DocName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let mut conn = self.conn();
        let start = format!("({}", stream_id(after));
        let reply: StreamRangeReply = if limit == usize::MAX {
            conn.xrange(key(doc, "log"), start, "+").await
        } else {
            conn.xrange_count(key(doc, "log"), start, "+", limit).await
        }
        .map_err(io("reading the log"))?;
        Self::decode_entries(doc, reply)
    }

    async fn list_snapshots(&self, doc: &DocName) -> Result<Vec<SnapshotInfo>, StorageError> {
        // The index, not the snapshots: listing must not read every state.
        let all: Vec<(u64, Vec<u8>)> = self
            .conn()
            .hgetall(key(doc, "snapshot-index"))
            .await
            .map_err(io("listing snapshots"))?;
        let mut infos = all
            .into_iter()
            .map(|(id, bytes)| {
                let at = format!("{} {id}", key(doc, "snapshot-index"));
                let r: SnapshotIndexRecord = record::decode(&at, &bytes)?;
                Ok(r.into_info(id))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        infos.sort_by_key(|s| s.id);
        Ok(infos)
    }

    async fn get_snapshot(&self, doc: &DocName, id: u64) -> Result<Option<Snapshot>, StorageError> {
        let bytes: Option<Vec<u8>> = self
            .conn()
            .hget(key(doc, "snapshots"), id)
            .await
            .map_err(io("reading a snapshot"))?;
        bytes.map(|b| decode_snapshot(doc, id, &b)).transpose()
    }

    async fn prune_snapshots(
        &self,
        doc: &DocName,
        policy: RetentionPolicy,
        now_ms: u64,
    ) -> Result<usize, StorageError> {
        let infos = self.list_snapshots(doc).await?;
        let keep = policy.keep(&infos, now_ms);
        // The head is what loads read, whatever the policy says (a lagging
        // node's later snapshot can have a higher id than the head).
        let head = self.head_id(doc).await?;
        let drop: Vec<u64> = infos
            .iter()
            .map(|s| s.id)
            .filter(|id| !keep.contains(id) && Some(*id) != head)
            .collect();
        if !drop.is_empty() {
            let _: () = redis::pipe()
                .hdel(key(doc, "snapshots"), &drop)
                .ignore()
                .hdel(key(doc, "snapshot-index"), &drop)
                .ignore()
                .query_async(&mut self.conn())
                .await
                .map_err(io("pruning snapshots"))?;
        }
        Ok(drop.len())
    }

    async fn delete(&self, doc: &DocName) -> Result<bool, StorageError> {
        // See delete.lua; the keys are gone before the word goes out, so a
        // node that lets go of the document on hearing it and loads it
        // again finds it empty.
        let mut keys = doc_keys(doc);
        keys.push(key(doc, DELETED_MARK));
        let mut eval = self.delete.call(&keys);
        eval.arg(TOMBSTONE.as_millis() as u64)
            .arg(key(doc, EVENTS))
            .arg(self.event(DELETED, &[]));
        let mut pipe = redis::pipe();
        pipe.add_command(eval);
        // Not sent again after a dropped connection: it may have run, and
        // the name may be written anew meanwhile.
        let (removed,): (i64,) = self
            .run_script(
                "deleting a document",
                &self.delete,
                doc,
                &pipe,
                &mut self.conn.0.clone(),
            )
            .await?;
        Ok(removed > 0)
    }

    async fn quarantine(&self, doc: &DocName, parts: &[Quarantined]) -> Result<(), StorageError> {
        if parts.is_empty() {
            return Ok(());
        }
        let mut fields = Vec::with_capacity(parts.len());
        for part in parts {
            let field = match part.snapshot {
                None => format!("c{}", part.seq),
                Some(id) => format!("s{id}"),
            };
            fields.push((field, record::encode(&QuarantineRecord::of(part))?));
        }
        let _: () = self
            .conn()
            .hset_multiple(key(doc, "quarantine"), &fields)
            .await
            .map_err(io("setting changes aside"))?;
        Ok(())
    }

    async fn quarantined(&self, doc: &DocName) -> Result<Vec<Quarantined>, StorageError> {
        let all: Vec<(String, Vec<u8>)> = self
            .conn()
            .hgetall(key(doc, "quarantine"))
            .await
            .map_err(io("reading changes set aside"))?;
        let mut parts = all
            .into_iter()
            .map(|(field, bytes)| {
                let at = format!("{} {field}", key(doc, "quarantine"));
                let r: QuarantineRecord = record::decode(&at, &bytes)?;
                Ok(r.into_part())
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        parts.sort_by_key(|p| (p.snapshot.is_some(), p.snapshot.unwrap_or(p.seq)));
        Ok(parts)
    }
}

#[async_trait]
impl Catalogue for RedisStore {
    /// Every stored document: those with a newest sequence number, and
    /// those whose metadata is permanent (a document damaged by losing its
    /// `seq` is listed, and `verify` reports it), found with `SCAN` on
    /// every primary.
    async fn list(&self) -> Result<Vec<DocName>, StorageError> {
        let mut conn = self.conn.0.clone();
        let with_seq = conn
            .keys_matching(&key_pattern("seq"))
            .await
            .map_err(io("listing documents"))?;
        let with_meta = conn
            .keys_matching(&key_pattern("meta"))
            .await
            .map_err(io("listing documents"))?;
        let mut docs: std::collections::BTreeSet<String> =
            with_seq.iter().filter_map(|k| doc_of(k, "seq")).collect();
        for name in with_meta.iter().filter_map(|k| doc_of(k, "meta")) {
            if docs.contains(&name) {
                continue;
            }
            let Ok(doc) = DocName::new(name.clone()) else {
                continue;
            };
            // Provisional metadata (a name only ever read) is not a document.
            if self.read_without_writing(&doc).await?.1 {
                docs.insert(name);
            }
        }
        Ok(docs
            .into_iter()
            .filter_map(|n| DocName::new(n).ok())
            .collect())
    }

    /// The metadata and the newest sequence number, in one read.
    async fn head(&self, doc: &DocName) -> Result<Option<DocHead>, StorageError> {
        match self.read_without_writing(doc).await? {
            (Some(bytes), true, seq) => Ok(Some(DocHead {
                meta: decode_meta(doc, &bytes)?,
                last_seq: seq.unwrap_or(0),
            })),
            _ => Ok(None),
        }
    }

    async fn info(&self, doc: &DocName) -> Result<Option<DocInfo>, StorageError> {
        let Some(meta) = self.meta(doc).await? else {
            return Ok(None);
        };
        let snapshots = self.list_snapshots(doc).await?;
        let head_id = self.head_id(doc).await?;
        let head = snapshots.iter().find(|s| Some(s.id) == head_id);
        let log = self
            .read_log(doc, head.map_or(0, |s| s.seq), usize::MAX)
            .await?;
        Ok(Some(DocInfo {
            name: doc.clone(),
            meta,
            last_seq: self.last_seq(doc).await?,
            last_change_ms: log.last().map(|e| e.at_ms),
            size_bytes: head.map_or(0, |s| s.size)
                + log.iter().map(|e| e.update.len() as u64).sum::<u64>(),
            snapshots: snapshots.len(),
            held_bytes: Some(self.held_bytes(doc).await?),
        }))
    }
}

#[async_trait]
impl Archive for RedisStore {
    async fn dump(&self, doc: &DocName) -> Result<Option<DocDump>, StorageError> {
        let Some(meta) = self.meta(doc).await? else {
            return Ok(None);
        };
        Ok(Some(DocDump {
            name: doc.clone(),
            meta,
            snapshots: self.snapshot_records(doc).await?,
            log: self.read_log(doc, 0, usize::MAX).await?,
        }))
    }

    /// Decodes every document's records, then checks they add up (see
    /// `completeness`): snapshots against the index, the head, and the
    /// log from the head up to the newest sequence number kept in `seq`.
    async fn verify(&self) -> Result<Vec<Corruption>, StorageError> {
        let mut corrupt = Vec::new();
        for doc in self.list().await? {
            let snapshots = self.snapshot_records(&doc).await;
            let index = self.list_snapshots(&doc).await;
            let log = self.read_log(&doc, 0, usize::MAX).await;
            let meta = self.meta(&doc).await;
            let quarantined = self.quarantined(&doc).await;
            let problems = [
                snapshots.as_ref().err(),
                index.as_ref().err(),
                log.as_ref().err(),
                meta.as_ref().err(),
                quarantined.as_ref().err(),
            ];
            for e in problems.into_iter().flatten() {
                corrupt.push(Corruption {
                    location: doc.to_string(),
                    problem: e.to_string(),
                });
            }
            let snapshots: Option<Vec<SnapshotInfo>> = snapshots.ok().map(|all| {
                all.iter()
                    .map(|s| SnapshotInfo {
                        id: s.id,
                        seq: s.seq,
                        taken_at_ms: s.taken_at_ms,
                        reason: s.reason,
                        size: s.state.len() as u64,
                    })
                    .collect()
            });
            let head = self.head_id(&doc).await?;
            if head.is_none() && snapshots.as_ref().is_some_and(|s| !s.is_empty()) {
                corrupt.push(Corruption {
                    location: key(&doc, "head"),
                    problem: "missing: the document has snapshots but none is marked as the \
                              one loads start from, so loads replay the trimmed log alone and \
                              fail; restore the document from a backup"
                        .into(),
                });
            }
            let records = DocRecords {
                doc: doc.to_string(),
                // Unreadable metadata is reported above.
                has_meta: !matches!(meta, Ok(None)),
                snapshots,
                index: index.ok(),
                head,
                log: log.ok().map(|all| all.iter().map(|e| e.seq).collect()),
                last_seq: Some(self.last_seq(&doc).await?),
            };
            corrupt.extend(completeness::check(&records));
        }
        Ok(corrupt)
    }
}
