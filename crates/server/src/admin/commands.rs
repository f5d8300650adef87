//! The operator commands: `weft docs`, `weft snapshot`, `weft backup`,
//! `weft verify`. Each runs against a [`Backend`]: a running server
//! (`--server URL --admin-key KEY`) or a data directory (`--data-dir DIR`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Subcommand};
use comfy_table::presets::NOTHING;
use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use weft_storage::archive::ArchiveReader;
use weft_storage::{DocName, SledStore, StorageError};
use weft_sync::history::{HistoryEntry, HistoryQuery, MAX_PAGE};
use weft_sync::{EngineConfig, Rooms, SystemClock};

use super::client::RemoteAdmin;
use super::ops::LocalAdmin;
use super::{AdminError, Backend, DocSummary, Progress, QuarantineView, SnapshotView};
use crate::secret::Secret;

/// Where the operation happens.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Talk to a running server (its admin API), e.g. http://127.0.0.1:8080.
    #[arg(long, env = "WEFT_SERVER", global = true)]
    server: Option<String>,

    /// The server's admin key (with --server).
    #[arg(long, env = "WEFT_ADMIN_KEY", hide_env_values = true, global = true)]
    admin_key: Option<Secret>,

    /// Work on this data directory directly (no server may be running on it).
    #[arg(
        long,
        env = "WEFT_DATA_DIR",
        default_value = "./weft-data",
        global = true
    )]
    data_dir: PathBuf,

    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// List documents with their size, last change and live connections.
    #[command(
        after_help = "Examples:\n  weft docs list --data-dir ./weft-data\n  weft docs list --server http://127.0.0.1:8080 --admin-key $KEY --json"
    )]
    List,
    /// Show one document and its snapshot history.
    #[command(after_help = "Example:\n  weft docs show my-doc")]
    Show { doc: String },
    /// Delete a document and its history; connected clients are closed (4404).
    #[command(
        after_help = "Example:\n  weft docs delete my-doc --server http://127.0.0.1:8080 --admin-key $KEY"
    )]
    Delete { doc: String },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List a document's snapshots.
    #[command(after_help = "Example:\n  weft snapshot list my-doc")]
    List { doc: String },
    /// Take a snapshot now.
    #[command(after_help = "Example:\n  weft snapshot create my-doc")]
    Create { doc: String },
    /// Print a document's content (now, or as of a snapshot) as JSON.
    #[command(
        after_help = "Examples:\n  weft snapshot inspect my-doc\n  weft snapshot inspect my-doc --snapshot 3"
    )]
    Inspect {
        doc: String,
        #[arg(long)]
        snapshot: Option<u64>,
    },
    /// Write a document (now, or as of a snapshot) as a Yjs v1 update that
    /// `Y.applyUpdate` loads.
    #[command(after_help = "Example:\n  weft snapshot export my-doc --snapshot 3 -o my-doc.yjs")]
    Export {
        doc: String,
        #[arg(long, conflicts_with = "at")]
        snapshot: Option<u64>,
        /// As it was at this point: an event id or an RFC 3339 time.
        #[arg(long)]
        at: Option<String>,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Merge a Yjs v1 update from a file into a document, as a change.
    #[command(after_help = "Example:\n  weft snapshot import my-doc my-doc.yjs")]
    Import { doc: String, file: PathBuf },
    /// Bring a document back to a snapshot, live: connected editors converge
    /// to it without reloading. The result is snapshotted, so it can be undone.
    #[command(
        after_help = "Examples:\n  weft snapshot restore my-doc --snapshot 3\n  weft snapshot restore my-doc --at 2026-12-02T09:00:00Z"
    )]
    Restore {
        doc: String,
        #[arg(long, required_unless_present = "at", conflicts_with = "at")]
        snapshot: Option<u64>,
        /// Back to how it was at this point: an event id or an RFC 3339
        /// time (rebuilt from the snapshot before it and the changes after).
        #[arg(long)]
        at: Option<String>,
    },
    /// Show what changed in each root type between two snapshots.
    #[command(after_help = "Example:\n  weft snapshot diff my-doc 3 7")]
    Diff { doc: String, from: u64, to: u64 },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    restore: Option<BackupCommand>,
    /// Where to write the archive.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Load every document of an archive into the target (documents that
    /// already exist there are refused).
    #[command(after_help = "Example:\n  weft backup restore weft.backup --data-dir ./fresh-data")]
    Restore { file: PathBuf },
}

/// What every admin command is given.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    #[command(subcommand)]
    Docs(DocsCommand),
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    Backup(BackupArgs),
    Verify,
    History(HistoryArgs),
    Revert(RevertArgs),
}

/// `weft revert`.
#[derive(Debug, Args)]
pub struct RevertArgs {
    /// The document's name.
    pub doc: String,
    /// Whose changes to undo, as `weft history` names them (a token's
    /// subject, `anonymous#N`).
    #[arg(long)]
    pub author: String,
    /// Undo their changes after this point: an event id, or an RFC 3339
    /// time.
    #[arg(long)]
    pub since: String,
}

/// `weft history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The document's name.
    pub doc: String,
    /// Only changes at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only changes before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Only this author's changes (a token's subject, `anonymous#N`,
    /// `admin`).
    #[arg(long)]
    pub author: Option<String>,
    /// At most this many changes, the oldest first.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl AdminCommand {
    /// `weft backup restore` may fill a data directory that does not exist
    /// yet (created, as `weft serve` does); every other command reads one.
    fn creates_data_dir(&self) -> bool {
        matches!(
            self,
            AdminCommand::Backup(BackupArgs {
                restore: Some(BackupCommand::Restore { .. }),
                ..
            })
        )
    }
}

/// Runs an admin command; the process exit code is 0 on success, 1 on failure.
pub async fn run(command: AdminCommand, target: Target) -> Result<(), AdminError> {
    let (backend, engine) = connect(&target, command.creates_data_dir())?;
    let result = execute(command, &target, backend.as_ref()).await;
    if let Some(rooms) = engine {
        // Offline changes were made through the engine: let it store them.
        rooms.shut_down().await;
    }
    result
}

fn connect(
    target: &Target,
    create_data_dir: bool,
) -> Result<(Box<dyn Backend>, Option<Rooms>), AdminError> {
    if let Some(server) = &target.server {
        let key = target.admin_key.as_ref().ok_or_else(|| {
            AdminError::BadRequest("--server needs --admin-key (or WEFT_ADMIN_KEY)".into())
        })?;
        return Ok((Box::new(RemoteAdmin::new(server, key.expose())?), None));
    }
    if create_data_dir {
        std::fs::create_dir_all(&target.data_dir).map_err(|e| {
            AdminError::Failed(format!(
                "could not create the data directory {}: {e}",
                target.data_dir.display()
            ))
        })?;
    } else if !target.data_dir.exists() {
        return Err(AdminError::NotFound(format!(
            "there is no data directory {}; give --data-dir, or --server for a running server",
            target.data_dir.display()
        )));
    }
    let store = SledStore::open(&target.data_dir).map_err(|e| match e {
        StorageError::Locked { path } => AdminError::Unavailable(format!(
            "the data directory {} is in use by a running server; use --server URL --admin-key KEY",
            path.display()
        )),
        other => AdminError::Storage(other),
    })?;
    let store = Arc::new(store);
    // Offline, the server's retention settings are unknown: compacting
    // here trims nothing, and the server trims as it is set up to.
    let config = EngineConfig {
        keep_log_tail: u64::MAX,
        ..EngineConfig::default()
    };
    let rooms = Rooms::new(store.clone(), config, Arc::new(SystemClock));
    let admin = LocalAdmin::new(store.clone(), rooms.clone()).with_restore(store);
    Ok((Box::new(admin), Some(rooms)))
}

fn doc_name(raw: &str) -> Result<DocName, AdminError> {
    DocName::new(raw).map_err(|e| AdminError::BadRequest(e.to_string()))
}

async fn execute(
    command: AdminCommand,
    target: &Target,
    backend: &dyn Backend,
) -> Result<(), AdminError> {
    let json = target.json;
    match command {
        AdminCommand::Docs(DocsCommand::List) => {
            let docs = backend.list_docs().await?;
            print(json, &docs, || docs_table(&docs))
        }
        AdminCommand::Docs(DocsCommand::Show { doc }) => {
            let detail = backend.show_doc(&doc_name(&doc)?).await?;
            print(json, &detail, || {
                let s = &detail.summary;
                format!(
                    "document     {}\nsize         {}\nlast seq     {}\nlast change  {}\ncreated      {}\nconnections  {} editors, {} viewers\n\nsnapshots\n{}",
                    s.name,
                    bytes(s.size_bytes),
                    s.last_seq,
                    s.last_change_ms.map_or("-".into(), when),
                    when(s.created_at_ms),
                    s.editors,
                    s.viewers,
                    snapshots_table(&detail.history)
                ) + &quarantine_lines(&detail.quarantined)
            })
        }
        AdminCommand::Docs(DocsCommand::Delete { doc }) => {
            let doc = doc_name(&doc)?;
            backend.delete_doc(&doc).await?;
            print(
                json,
                &serde_json::json!({ "deleted": doc.as_str() }),
                || format!("deleted {doc}"),
            )
        }
        AdminCommand::Snapshot(cmd) => snapshot(cmd, json, backend).await,
        AdminCommand::History(args) => history(args, json, backend).await,
        AdminCommand::Revert(args) => revert(args, json, backend).await,
        AdminCommand::Backup(args) => backup(args, json, backend).await,
        AdminCommand::Verify => {
            let report = backend.verify().await?;
            print(json, &report, || {
                let mut out = format!(
                    "checked {} documents, {} records: {} problems",
                    report.documents,
                    report.records,
                    report.problems.len()
                );
                for p in &report.problems {
                    out.push_str(&format!("\n  {}: {}", p.location, p.problem));
                }
                out + &quarantine_lines(&report.quarantined)
            })?;
            if report.problems.is_empty() {
                Ok(())
            } else {
                Err(AdminError::Failed(format!(
                    "{} problems: records that do not decode, are missing or do not replay; \
                     each line says what is affected and what to do",
                    report.problems.len()
                )))
            }
        }
    }
}

async fn snapshot(
    cmd: SnapshotCommand,
    json: bool,
    backend: &dyn Backend,
) -> Result<(), AdminError> {
    match cmd {
        SnapshotCommand::List { doc } => {
            let list = backend.list_snapshots(&doc_name(&doc)?).await?;
            print(json, &list, || snapshots_table(&list))
        }
        SnapshotCommand::Create { doc } => {
            let doc = doc_name(&doc)?;
            let s = backend.create_snapshot(&doc).await?;
            print(json, &s, || {
                format!(
                    "snapshot {} of {doc} at seq {} ({})",
                    s.id,
                    s.seq,
                    bytes(s.size_bytes)
                )
            })
        }
        SnapshotCommand::Inspect { doc, snapshot } => {
            let state = backend.state(&doc_name(&doc)?, snapshot).await?;
            let content = weft_sync::json::update_to_json(&state).map_err(AdminError::Failed)?;
            let pretty = serde_json::to_string_pretty(&content)
                .map_err(|e| AdminError::Failed(e.to_string()))?;
            println!("{pretty}");
            Ok(())
        }
        SnapshotCommand::Export {
            doc,
            snapshot,
            at,
            output,
        } => {
            let doc = doc_name(&doc)?;
            let state = match &at {
                Some(at) => backend.state_at(&doc, at).await?,
                None => backend.state(&doc, snapshot).await?,
            };
            write_file(&output, &state)?;
            let summary = serde_json::json!({ "file": output, "bytes": state.len() });
            print(json, &summary, || {
                format!(
                    "wrote {} to {}",
                    bytes(state.len() as u64),
                    output.display()
                )
            })
        }
        SnapshotCommand::Import { doc, file } => {
            let update = std::fs::read(&file).map_err(|e| {
                AdminError::BadRequest(format!("could not read {}: {e}", file.display()))
            })?;
            let view = backend.import(&doc_name(&doc)?, update).await?;
            print(json, &view, || match &view.change {
                Some(id) => format!("imported as change {id}; snapshot {}", view.snapshot),
                None => format!("nothing new to import; snapshot {}", view.snapshot),
            })
        }
        SnapshotCommand::Restore { doc, snapshot, at } => {
            let doc = doc_name(&doc)?;
            let (view, what) = match (snapshot, at) {
                (Some(snapshot), _) => (
                    backend.restore(&doc, snapshot).await?,
                    format!("snapshot {snapshot}"),
                ),
                (None, Some(at)) => (
                    backend.restore_at(&doc, &at).await?,
                    format!("its state at {at}"),
                ),
                (None, None) => {
                    return Err(AdminError::BadRequest("give --snapshot or --at".into()));
                }
            };
            print(json, &view, || {
                match &view.change {
                Some(id) => format!(
                    "restored {what} as change {id}; the result is snapshot {} (restore that to undo)",
                    view.snapshot
                ),
                None => format!("the document already matches {what}"),
            }
            })
        }
        SnapshotCommand::Diff { doc, from, to } => {
            let doc = doc_name(&doc)?;
            let old = backend.state(&doc, Some(from)).await?;
            let new = backend.state(&doc, Some(to)).await?;
            let old = weft_sync::json::update_to_json(&old).map_err(AdminError::Failed)?;
            let new = weft_sync::json::update_to_json(&new).map_err(AdminError::Failed)?;
            let diff = super::diff::roots(&old, &new);
            print(json, &diff, || super::diff::render(&diff, from, to))
        }
    }
}

async fn backup(args: BackupArgs, json: bool, backend: &dyn Backend) -> Result<(), AdminError> {
    let progress = Bar::new();
    match (args.restore, args.output) {
        (Some(BackupCommand::Restore { file }), _) => {
            let mut input = std::fs::File::open(&file)
                .map(std::io::BufReader::new)
                .map_err(|e| {
                    AdminError::BadRequest(format!("could not open {}: {e}", file.display()))
                })?;
            let summary = backend.restore_backup(&mut input, &progress).await?;
            print(json, &summary, || {
                format!(
                    "restored {} documents from {}",
                    summary.documents,
                    file.display()
                )
            })
        }
        (None, Some(output)) => {
            let file = std::fs::File::create(&output).map_err(|e| {
                AdminError::BadRequest(format!("could not create {}: {e}", output.display()))
            })?;
            let mut out = std::io::BufWriter::new(file);
            let written = backend.backup(&mut out, &progress).await?;
            drop(out);
            // Read it back: a complete, readable archive or an error now.
            let documents = count_archive(&output)?;
            let summary = serde_json::json!({ "file": output, "documents": documents, "bytes": written.bytes });
            print(json, &summary, || {
                format!(
                    "wrote {documents} documents ({}) to {}",
                    bytes(written.bytes),
                    output.display()
                )
            })
        }
        (None, None) => Err(AdminError::BadRequest(
            "say where to write the backup: weft backup -o FILE (or: weft backup restore FILE)"
                .into(),
        )),
    }
}

fn count_archive(path: &Path) -> Result<u64, AdminError> {
    let file = std::fs::File::open(path)
        .map_err(|e| AdminError::Failed(format!("could not read back {}: {e}", path.display())))?;
    let mut reader = ArchiveReader::new(std::io::BufReader::new(file))?;
    let mut n = 0;
    while reader.next_document()?.is_some() {
        n += 1;
    }
    Ok(n)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), AdminError> {
    std::fs::write(path, bytes)
        .map_err(|e| AdminError::Failed(format!("could not write {}: {e}", path.display())))
}

fn print<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce() -> String,
) -> Result<(), AdminError> {
    if json {
        let text =
            serde_json::to_string_pretty(value).map_err(|e| AdminError::Failed(e.to_string()))?;
        println!("{text}");
    } else {
        println!("{}", human());
    }
    Ok(())
}

fn docs_table(docs: &[DocSummary]) -> String {
    if docs.is_empty() {
        return "no documents".into();
    }
    // Cluster mode: what Redis holds for each, snapshot history included.
    let in_redis = docs.iter().any(|d| d.redis_bytes.is_some());
    let mut t = Table::new();
    t.load_preset(NOTHING);
    let mut header = vec![
        "DOCUMENT",
        "SIZE",
        "LAST SEQ",
        "LAST CHANGE",
        "SNAPSHOTS",
        "EDITORS",
        "VIEWERS",
    ];
    if in_redis {
        header.push("IN REDIS");
    }
    t.set_header(header);
    for d in docs {
        let mut row = vec![
            d.name.clone(),
            bytes(d.size_bytes),
            d.last_seq.to_string(),
            d.last_change_ms.map_or("-".into(), when),
            d.snapshots.to_string(),
            d.editors.to_string(),
            d.viewers.to_string(),
        ];
        if in_redis {
            row.push(d.redis_bytes.map_or("-".into(), bytes));
        }
        t.add_row(row);
    }
    t.to_string()
}

fn snapshots_table(list: &[SnapshotView]) -> String {
    if list.is_empty() {
        return "no snapshots".into();
    }
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(["ID", "SEQ", "TAKEN", "REASON", "SIZE"]);
    for s in list {
        t.add_row([
            s.id.to_string(),
            s.seq.to_string(),
            when(s.taken_at_ms),
            s.reason.clone(),
            bytes(s.size_bytes),
        ]);
    }
    t.to_string()
}

/// What loads set aside, under a heading; nothing when there is none.
fn quarantine_lines(list: &[QuarantineView]) -> String {
    if list.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n\nquarantined: {} stored parts do not replay; their documents load without them\n\
         (their bytes are kept in the store)",
        list.len()
    );
    for q in list {
        out.push_str(&format!(
            "\n  {} ({}, set aside {}): {}",
            q.location(),
            bytes(q.size_bytes),
            when(q.quarantined_at_ms),
            q.reason
        ));
    }
    out
}

/// Undoes one author's changes since a point, as one live change.
async fn revert(args: RevertArgs, json: bool, backend: &dyn Backend) -> Result<(), AdminError> {
    let doc = doc_name(&args.doc)?;
    let view = backend.revert(&doc, &args.author, &args.since).await?;
    print(json, &view, || match &view.change {
        Some(id) => format!(
            "undid {} changes by {} after {} as change {id}{}",
            view.changes,
            args.author,
            view.since,
            take_back(&doc, id)
        ),
        None if view.changes == 0 => {
            format!(
                "{} made no changes to {doc} after {}",
                args.author, view.since
            )
        }
        None => format!(
            "nothing left to undo: the {} changes by {} after {} are already undone",
            view.changes, args.author, view.since
        ),
    })
}

/// How to take a revert (change `id`) back: restore the change before it,
/// which undoes whatever anyone changed after it too.
fn take_back(doc: &DocName, id: &str) -> String {
    match id.parse::<weft_sync::EventId>() {
        Ok(id) if id.seq > 1 => {
            let before = weft_sync::EventId {
                seq: id.seq - 1,
                ..id
            };
            format!(
                "\nto take it back: weft snapshot restore {doc} --at {before} (this also undoes \
                 anything changed after the revert)"
            )
        }
        _ => String::new(),
    }
}

/// Lists a document's changes, a page after another.
async fn history(args: HistoryArgs, json: bool, backend: &dyn Backend) -> Result<(), AdminError> {
    let doc = doc_name(&args.doc)?;
    let mut query = HistoryQuery {
        since_ms: args.since.as_deref().map(rfc3339_ms).transpose()?,
        until_ms: args.until.as_deref().map(rfc3339_ms).transpose()?,
        author: args.author,
        limit: MAX_PAGE,
        ..HistoryQuery::default()
    };
    let wanted = args.limit.unwrap_or(usize::MAX);
    let mut changes = Vec::new();
    while changes.len() < wanted {
        query.limit = (wanted - changes.len()).min(MAX_PAGE);
        let page = backend.history(&doc, &query).await?;
        changes.extend(page.changes);
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    print(json, &changes, || history_table(&changes))
}

fn history_table(changes: &[HistoryEntry]) -> String {
    if changes.is_empty() {
        return "no changes".into();
    }
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header([
        "SEQ", "TIME", "AUTHOR", "VIA", "INSERTED", "DELETED", "SIZE",
    ]);
    for c in changes {
        t.add_row([
            c.seq.to_string(),
            when(c.at_ms),
            c.author.clone().unwrap_or_else(|| "(unknown)".into()),
            c.via.clone().unwrap_or_else(|| "-".into()),
            c.inserted.to_string(),
            c.deleted.to_string(),
            bytes(c.bytes as u64),
        ]);
    }
    t.to_string()
}

/// An RFC 3339 time as milliseconds since the epoch.
fn rfc3339_ms(text: &str) -> Result<u64, AdminError> {
    crate::history_api::time_ms(text).map_err(AdminError::BadRequest)
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn bytes(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0)),
    }
}

/// A progress bar on a terminal; nothing when stderr is piped.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        if std::io::stderr().is_terminal() {
            Bar(ProgressBar::new(0))
        } else {
            Bar(ProgressBar::hidden())
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: Option<u64>, what: &str) {
        let template = match total {
            Some(total) => {
                self.0.set_length(total);
                format!("{{bar:40}} {{pos}}/{{len}} {what}")
            }
            None => format!("{{spinner}} {{bytes}} {what}"),
        };
        if let Ok(style) = ProgressStyle::with_template(&template) {
            self.0.set_style(style);
        }
    }
    fn advance(&self, by: u64) {
        self.0.inc(by);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
