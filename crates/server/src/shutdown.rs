//! Waiting for SIGTERM or SIGINT (Ctrl-C), and the deadline that makes
//! shutdown end whatever is still running.

use std::time::Duration;

use tracing::{info, warn};

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("SIGINT received; shutting down"),
        _ = term => info!("SIGTERM received; shutting down"),
    }
}

/// The last resort: ends the process `deadline` from now with `code`, even
/// if something is still running then (a thread stuck in a disk call
/// cannot be cancelled, and would otherwise hold the exit forever).
pub fn exit_after(deadline: Duration, code: i32) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-deadline".into())
        .spawn(move || {
            std::thread::sleep(deadline);
            warn!(
                ?deadline,
                code,
                "shutdown deadline passed with work still running; exiting now \
                 (every acknowledged change is already on disk)"
            );
            std::process::exit(code);
        });
    if let Err(e) = spawned {
        warn!(error = %e, "could not start the shutdown deadline");
    }
}
