//! Redis must never evict weft's keys. Under any `maxmemory-policy` but
//! `noeviction`, a Redis short of memory deletes keys: a document's log,
//! its metadata or its sequence number, and with them acknowledged
//! changes. A node refuses to start on such a Redis, and a running node
//! checks again every minute and logs an error if the policy changed.
//! A Redis that does not let weft read its configuration (a managed one
//! may rename `CONFIG`) gets a warning at startup instead.

use std::time::Duration;

use redis::aio::ConnectionLike;
use tracing::{error, warn};

/// The only safe policy.
const SAFE: &str = "noeviction";

/// How often a running node checks the policy again.
const EVERY: Duration = Duration::from_secs(60);

/// Redis' `maxmemory-policy`, if it tells.
async fn policy(conn: &mut impl ConnectionLike) -> redis::RedisResult<String> {
    let (_, policy): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await?;
    Ok(policy)
}

/// What is wrong with a Redis that evicts under `policy`, and what to do.
fn unsafe_policy(policy: &str) -> String {
    format!(
        "its maxmemory-policy is {policy}: when it runs short of memory it deletes keys, and \
         with them acknowledged changes and whole documents; set `maxmemory-policy noeviction` \
         (then a full Redis refuses changes with 503 and every document stays readable)"
    )
}

/// At startup: `Err` with the reason if Redis may evict weft's keys.
pub(super) async fn check(conn: &mut impl ConnectionLike) -> Result<(), String> {
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

/// While the node runs: an error in the log whenever the policy is found
/// changed to one that evicts.
pub(super) async fn keep_checking(mut conn: impl ConnectionLike) {
    loop {
        tokio::time::sleep(EVERY).await;
        if let Ok(policy) = policy(&mut conn).await {
            if policy != SAFE {
                error!(
                    reason = unsafe_policy(&policy),
                    "Redis may delete weft's documents"
                );
            }
        }
    }
}
