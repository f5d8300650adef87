//! What a node checks of the Redis it runs on.
//!
//! Redis must never evict weft's keys. Under any `maxmemory-policy` but
//! `noeviction`, a Redis short of memory deletes keys: a document's log,
//! its metadata or its sequence number, and with them acknowledged
//! changes. A node refuses to start on such a Redis, and a running node
//! checks again every 15 s and logs an error if the policy changed. On a
//! Redis Cluster every primary is checked.
//! A Redis that does not let weft read its configuration (a managed one
//! may rename `CONFIG`) gets a warning at startup instead.
//!
//! The same round reads how much memory Redis holds (`INFO memory`) into
//! the gauge `weft_redis_used_memory_bytes`: documents nobody has open
//! still cost Redis memory, and this is where an operator sees it grow.

use std::time::Duration;

use std::collections::HashMap;

use tracing::{error, warn};

use super::link::Link;

/// The only safe policy.
const SAFE: &str = "noeviction";

/// How often a running node checks again.
const EVERY: Duration = Duration::from_secs(15);

/// The `maxmemory-policy` of a primary that may evict, if it tells, or
/// "noeviction" when none may (one without `maxmemory` never evicts,
/// whatever its policy says). Both settings come from one reply per
/// primary, so each policy is judged with its own primary's limit.
async fn policy(conn: &mut Link) -> redis::RedisResult<String> {
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg("maxmemory-policy").arg("maxmemory");
    for (_, reply) in conn.on_every_primary(&get).await? {
        let settings: HashMap<String, String> = redis::from_owned_redis_value(reply)?;
        let policy = settings
            .get("maxmemory-policy")
            .map_or(SAFE, String::as_str);
        let limit = settings
            .get("maxmemory")
            .and_then(|m| m.parse::<u64>().ok());
        if policy != SAFE && limit != Some(0) {
            return Ok(policy.to_owned());
        }
    }
    Ok(SAFE.to_owned())
}

/// One field of one section of each primary's `INFO`.
async fn info_field(conn: &mut Link, section: &str, field: &str) -> Option<Vec<String>> {
    let mut info = redis::cmd("INFO");
    info.arg(section);
    let replies = conn.on_every_primary(&info).await.ok()?;
    let prefix = format!("{field}:");
    replies
        .into_iter()
        .map(|(_, reply)| {
            let text: String = redis::from_owned_redis_value(reply).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .map(|v| v.trim().to_owned())
        })
        .collect()
}

/// The oldest primary's major version, from `INFO server`.
async fn major_version(conn: &mut Link) -> Option<u32> {
    info_field(conn, "server", "redis_version")
        .await?
        .iter()
        .filter_map(|v| v.split('.').next()?.parse().ok())
        .min()
}

/// What is wrong with a Redis that evicts under `policy`, and what to do.
fn unsafe_policy(policy: &str) -> String {
    format!(
        "its maxmemory-policy is {policy}: when it runs short of memory it deletes keys, and \
         with them acknowledged changes and whole documents; set `maxmemory-policy noeviction` \
         (then a full Redis refuses changes with 503 and every document stays readable)"
    )
}

/// At startup: `Err` with the reason if Redis is too old for weft's
/// scripts (7 declares their flags) or may evict weft's keys.
pub(super) async fn check(conn: &mut Link) -> Result<(), String> {
    if let Some(major) = major_version(conn).await.filter(|&v| v < 7) {
        return Err(format!(
            "it is Redis {major}, and weft needs Redis 7 or later (its scripts declare that \
             they write, so that a full Redis refuses them); upgrade Redis"
        ));
    }
    match policy(conn).await {
        Ok(policy) if policy == SAFE => Ok(()),
        Ok(policy) => Err(unsafe_policy(&policy)),
        Err(e) => {
            warn!(
                error = %e,
                "cannot read Redis' maxmemory-policy; make sure it is noeviction, or Redis may \
                 delete documents when it runs short of memory"
            );
            Ok(())
        }
    }
}

/// Memory Redis holds (every primary's, summed), from `INFO memory`.
async fn used_memory(conn: &mut Link) -> Option<u64> {
    info_field(conn, "memory", "used_memory")
        .await?
        .iter()
        .map(|v| v.parse::<u64>().ok())
        .sum()
}

/// While the node runs: the memory gauge, and an error in the log
/// whenever the policy is found changed to one that evicts.
pub(super) async fn keep_checking(mut conn: Link) {
    loop {
        if let Some(bytes) = used_memory(&mut conn).await {
            metrics::gauge!("weft_redis_used_memory_bytes").set(bytes as f64);
        }
        if let Ok(policy) = policy(&mut conn).await {
            if policy != SAFE {
                error!(
                    reason = unsafe_policy(&policy),
                    "Redis may delete weft's documents"
                );
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}
