//! The `weft` binary: parses the command line, sets up logging, runs.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use weft_server::cli::{Cli, Command};

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let command = Cli::parse().command;
    // yrs panics on some malformed input; those are caught and refused, not
    // printed as crashes.
    weft_sync::guard::install_panic_hook();
    // Operator commands print results; only warnings go to the log there.
    let default_level = if matches!(command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match command.into_admin() {
        Err(config) => match weft_server::serve(*config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Ok((admin, target)) => match weft_server::admin::commands::run(admin, target).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
