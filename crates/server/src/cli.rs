//! The `weft` command line: its subcommands, parsed with the `--config`
//! file's settings under the flags and environment variables (the settings
//! of `weft serve` are in `serve_config`).

use std::ffi::OsString;

use clap::{Parser, Subcommand};

use crate::admin::commands::{
    AdminCommand, BackupArgs, DocsCommand, HistoryArgs, RevertArgs, SnapshotCommand, Target,
};
use crate::config_file;
use crate::serve_config::ServeConfig;

#[derive(Debug, Parser)]
#[command(
    name = "weft",
    version,
    about = "A real-time collaboration server for Yjs documents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses `args` (the whole command line) by flag > environment >
    /// config file > default; clap answers `--help` and usage errors
    /// itself, and exits. An error is about the config file.
    pub fn parse_layered(args: Vec<OsString>) -> anyhow::Result<Cli> {
        let args = config_file::under_flags_and_env(args)?;
        Ok(Cli::parse_from(args))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    #[command(
        after_help = "Examples:\n  weft serve\n  weft serve --listen 0.0.0.0:8080 --data-dir /var/lib/weft"
    )]
    Serve(Box<ServeConfig>),
    /// List, show and delete documents.
    Docs {
        #[command(subcommand)]
        command: DocsCommand,
        #[command(flatten)]
        target: Target,
    },
    /// A document's snapshot history: list, take, inspect, export, import,
    /// restore, diff.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
        #[command(flatten)]
        target: Target,
    },
    /// Write every document with its history to one archive, or load one.
    #[command(
        after_help = "Examples:\n  weft backup -o weft.backup\n  weft backup -o weft.backup --server http://127.0.0.1:8080 --admin-key $KEY\n  weft backup restore weft.backup --data-dir ./fresh-data"
    )]
    Backup {
        #[command(flatten)]
        args: BackupArgs,
        #[command(flatten)]
        target: Target,
    },
    /// A document's changes: who made each, when, through what, and how
    /// much it inserted and deleted.
    #[command(
        after_help = "Examples:\n  weft history my-doc --data-dir ./weft-data\n  weft history my-doc --author ada --since 2026-12-01T00:00:00Z --server http://127.0.0.1:8080 --admin-key $KEY --json"
    )]
    History {
        #[command(flatten)]
        args: HistoryArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Undo one author's changes since a point (their insertions removed,
    /// what they deleted put back), as one live change that editors
    /// converge to; everyone else's work stays.
    #[command(
        after_help = "Examples:\n  weft revert my-doc --author mallory --since 2026-12-01T09:00:00Z --data-dir ./weft-data\n  weft revert my-doc --author mallory --since 00c0ffee00c0ffee-40 --server http://127.0.0.1:8080 --admin-key $KEY"
    )]
    Revert {
        #[command(flatten)]
        args: RevertArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Decode every stored record, replay every document and check that
    /// each document's records add up (snapshots against their index, no
    /// gaps in the log from the newest snapshot on); report every problem
    /// with what to do, and the changes loads have quarantined (exit 1).
    #[command(after_help = "Example:\n  weft verify --data-dir ./weft-data")]
    Verify {
        #[command(flatten)]
        target: Target,
    },
}

impl Command {
    /// The operator commands, apart from `serve`.
    pub fn into_admin(self) -> Result<(AdminCommand, Target), Box<ServeConfig>> {
        match self {
            Command::Serve(config) => Err(config),
            Command::Docs { command, target } => Ok((AdminCommand::Docs(command), target)),
            Command::Snapshot { command, target } => Ok((AdminCommand::Snapshot(command), target)),
            Command::Backup { args, target } => Ok((AdminCommand::Backup(args), target)),
            Command::Verify { target } => Ok((AdminCommand::Verify, target)),
            Command::History { args, target } => Ok((AdminCommand::History(args), target)),
            Command::Revert { args, target } => Ok((AdminCommand::Revert(args), target)),
        }
    }
}
