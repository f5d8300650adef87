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

/// One setting of each primary's (`CONFIG GET`).
async fn setting(conn: &mut Link, name: &str) -> redis::RedisResult<Vec<String>> {
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg(name);
    conn.on_every_primary(&get)
        .await?
        .into_iter()
        .map(|(_, reply)| {
            let mut values: HashMap<String, String> = redis::from_owned_redis_value(reply)?;
            Ok(values.remove(name).unwrap_or_default())
        })
        .collect()
}

/// The `maxmemory-policy` of a primary that may evict, if it tells, or
/// "noeviction" when none may (one without `maxmemory` never evicts,
/// whatever its policy says).
async fn policy(conn: &mut Link) -> redis::RedisResult<String> {
    let policies = setting(conn, "maxmemory-policy").await?;
    let limits = setting(conn, "maxmemory").await?;
    let evicting = policies
        .into_iter()
        .zip(limits)
        .find(|(policy, max)| policy != SAFE && max.parse::<u64>().map_or(true, |m| m > 0));
    Ok(evicting.map_or_else(|| SAFE.to_owned(), |(policy, _)| policy))
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
