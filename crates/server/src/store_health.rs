//! Watching the embedded store after a disk failure.
//!
//! When a write fails or misses `--storage-timeout` (a full or stuck disk),
//! the store refuses writes at once and the affected documents' writers are
//! closed with 1011. This task asks the store every half second whether it
//! takes writes again, and logs when it does. If the disk has room again but
//! the store still fails, which is what sled 0.34 does after a write error
//! (it keeps the error until the database is reopened), it asks the server
//! to stop and exit non-zero, so that a supervisor restarts it: every
//! acknowledged change is on disk already.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use weft_storage::{Recovery, SledStore};

/// How often a failed store is checked.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Why the process must restart, once known.
pub type RestartReason = Arc<OnceLock<String>>;

/// Runs until shutdown, or until the store needs a restart: then records
/// why in `restart` and starts the shutdown.
pub async fn watch(store: SledStore, shutdown: CancellationToken, restart: RestartReason) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.recover().await {
            Recovery::Healthy | Recovery::Failed(_) => {}
            Recovery::Recovered => info!("writes resume: the store takes writes again"),
            Recovery::RestartNeeded(reason) => {
                error!(
                    %reason,
                    "the store failed and cannot recover in this process; exiting so that a \
                     supervisor restarts weft (every acknowledged change is on disk)"
                );
                let _ = restart.set(reason);
                shutdown.cancel();
                return;
            }
        }
    }
}
