//! The `weft` binary: parses the command line, sets up logging, runs.

use tracing_subscriber::EnvFilter;
use weft_server::{Cli, Command};

use std::process::ExitCode;

/// jemalloc, configured (`.cargo/config.toml`) to give memory back to the
/// system as soon as it is freed. With glibc's allocator, a large buffer
/// freed (a 4 MB message refused) raised its thresholds and stayed in the
/// arena of whichever thread freed it, and the runtime's threads are many
/// (CPU work hands workers on): ten refused presence floods left the server
/// 16–23 MiB larger, against 1–3 MiB with this.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let command = match Cli::parse_layered(std::env::args_os().collect()) {
        Ok(cli) => cli.command,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Command::Serve(config) = &command {
        if config.print_config {
            return match weft_server::print_config(config) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let code = runtime.block_on(run(command));
            // Threads stuck in a disk call must not hold the exit: a runtime
            // dropped normally waits for every blocking thread.
            runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            code
        }
        Err(e) => {
            eprintln!("error: could not start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> ExitCode {
    // yrs panics on some malformed input; those are caught and refused, not
    // printed as crashes.
    weft_sync::guard::install_panic_hook();
    // Operator commands print results; only warnings go to the log there.
    let default_level = if matches!(command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = matches!(&command, Command::Serve(c) if c.log_format == "json");
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        logs.init();
    }
    match command.into_admin() {
        Err(config) => match weft_server::serve(*config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Ok((admin, target)) => match weft_server::run_admin(admin, target).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
