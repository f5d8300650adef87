//! The operator commands (`weft docs`, `weft snapshot`, `weft backup`,
//! `weft verify`), run as a person would: against a running server, and
//! offline on its data directory.

mod support;

use std::path::Path;

use assert_cmd::Command;
use serde_json::{json, Value};
use support::*;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Transact, Update};

const ADMIN: &str = "cli-admin-key-0123456789abcdef0123";

fn weft() -> Command {
    let mut cmd = Command::cargo_bin("weft").expect("binary");
    cmd.env_remove("WEFT_DATA_DIR")
        .env_remove("WEFT_SERVER")
        .env_remove("WEFT_ADMIN_KEY")
        .env("RUST_LOG", "warn");
    cmd
}

/// How the commands reach the documents.
enum Mode<'a> {
    Online(&'a str),
    Offline(&'a Path),
}

impl Mode<'_> {
    fn args(&self) -> Vec<String> {
        match self {
            Mode::Online(addr) => vec![
                "--server".into(),
                format!("http://{addr}"),
                "--admin-key".into(),
                ADMIN.into(),
            ],
            Mode::Offline(dir) => vec!["--data-dir".into(), dir.display().to_string()],
        }
    }

    /// Runs `weft ARGS... MODE-ARGS`, expecting success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = weft().args(args).args(self.args()).output().expect("runs");
        assert!(
            out.status.success(),
            "weft {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).expect("json output")
    }

    /// Runs expecting failure; returns (exit code, stderr).
    fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = weft().args(args).args(self.args()).output().expect("runs");
        assert!(!out.status.success(), "weft {args:?} should fail");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

async fn post(addr: &str, doc: &str, update: Vec<u8>) {
    let (status, _) = request(addr, "POST", &format!("/docs/{doc}/updates"), &[], update).await;
    assert_eq!(status, 200);
}

fn text_of_update(bytes: &[u8]) -> String {
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(bytes).expect("a Yjs update"))
        .expect("applies");
    let text = doc.get_or_insert_text("t").get_string(&doc.transact());
    text
}

/// The whole operator workflow on document `doc`.
fn workflow(mode: &Mode, doc: &str, copy: &str, dir: &Path) {
    let docs = mode.json(&["docs", "list"]);
    let listed = docs
        .as_array()
        .expect("array")
        .iter()
        .find(|d| d["name"] == doc)
        .expect("the document is listed")
        .clone();
    assert_eq!(listed["last_seq"], 2);
    assert!(
        mode.ok(&["docs", "list"]).contains(doc),
        "table output names it"
    );

    let first = mode.json(&["snapshot", "create", doc]);
    let first_id = first["id"].as_u64().expect("id").to_string();
    assert_eq!(first["reason"], "manual");
    assert_eq!(
        mode.json(&["snapshot", "inspect", doc]),
        serde_json::json!({ "t": "one two" })
    );

    let export = dir.join(format!("{doc}.yjs"));
    mode.ok(&[
        "snapshot",
        "export",
        doc,
        "--snapshot",
        &first_id,
        "-o",
        export.to_str().expect("utf8"),
    ]);
    assert_eq!(
        text_of_update(&std::fs::read(&export).expect("exported")),
        "one two"
    );

    // An import of new content, then a restore back to the first snapshot.
    let extra = dir.join(format!("{doc}-extra.yjs"));
    let later = Doc::new();
    later
        .transact_mut()
        .apply_update(Update::decode_v1(&std::fs::read(&export).expect("file")).expect("valid"))
        .expect("applies");
    std::fs::write(&extra, insert(&later, " three")).expect("write");
    let imported = mode.json(&["snapshot", "import", doc, extra.to_str().expect("utf8")]);
    assert!(imported["change"].is_string());
    assert_eq!(
        mode.json(&["snapshot", "inspect", doc]),
        serde_json::json!({ "t": "one two three" })
    );
    let import_id = imported["snapshot"].as_u64().expect("id").to_string();

    let diff = mode.ok(&["snapshot", "diff", doc, &first_id, &import_id]);
    assert!(
        diff.contains("t (changed)") && diff.contains("+one two three"),
        "{diff}"
    );

    let restored = mode.json(&["snapshot", "restore", doc, "--snapshot", &first_id]);
    assert!(restored["change"].is_string());
    assert_eq!(
        mode.json(&["snapshot", "inspect", doc]),
        serde_json::json!({ "t": "one two" })
    );
    let history = mode.json(&["snapshot", "list", doc]);
    let reasons: Vec<&str> = history
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["reason"].as_str().expect("reason"))
        .collect();
    assert!(
        reasons.ends_with(&["manual", "import", "restore"]),
        "{reasons:?}"
    );
    // The old snapshot is still there to inspect.
    assert_eq!(
        mode.json(&["snapshot", "inspect", doc, "--snapshot", &import_id]),
        serde_json::json!({ "t": "one two three" })
    );

    let shown = mode.json(&["docs", "show", doc]);
    assert_eq!(
        shown["history"].as_array().expect("history").len(),
        history.as_array().expect("array").len()
    );

    // A copy made by import alone, then deleted.
    mode.ok(&["snapshot", "import", copy, export.to_str().expect("utf8")]);
    assert_eq!(
        mode.json(&["snapshot", "inspect", copy]),
        serde_json::json!({ "t": "one two" })
    );
    mode.ok(&["docs", "delete", copy]);
    let (code, err) = mode.fails(&["docs", "show", copy]);
    assert_eq!(code, 1);
    assert!(err.contains("there is no document"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_works_against_a_server_and_offline() {
    let mut server = Weft::start(&["--admin-key", ADMIN]);
    for doc in ["online", "offline"] {
        let writer = Doc::new();
        post(&server.addr, doc, insert(&writer, "one")).await;
        post(&server.addr, doc, insert(&writer, " two")).await;
    }
    let work = tempfile::tempdir().expect("tmp");
    let addr = server.addr.clone();
    let online = Mode::Online(&addr);
    tokio::task::block_in_place(|| workflow(&online, "online", "online-copy", work.path()));

    assert!(server.terminate().success());
    let offline = Mode::Offline(server.data_dir.path());
    tokio::task::block_in_place(|| workflow(&offline, "offline", "offline-copy", work.path()));
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_say_what_went_wrong() {
    let mut server = Weft::start(&["--admin-key", ADMIN]);
    post(&server.addr, "there", insert(&Doc::new(), "x")).await;
    let addr = server.addr.clone();
    let dir = server.data_dir.path().to_path_buf();
    tokio::task::block_in_place(|| {
        let online = Mode::Online(&addr);
        let (code, err) = online.fails(&["docs", "show", "missing"]);
        assert_eq!(
            (code, err.contains("there is no document missing")),
            (1, true),
            "{err}"
        );
        let (code, err) = online.fails(&["snapshot", "inspect", "there", "--snapshot", "99"]);
        assert_eq!(
            (code, err.contains("has no snapshot 99")),
            (1, true),
            "{err}"
        );

        // The data directory is held by the running server.
        let (code, err) = Mode::Offline(&dir).fails(&["docs", "list"]);
        assert_eq!(code, 1);
        assert!(
            err.contains("in use by a running server; use --server"),
            "{err}"
        );

        let out = weft()
            .args([
                "docs",
                "list",
                "--server",
                &format!("http://{addr}"),
                "--admin-key",
                "wrong",
            ])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("admin key is wrong"));
        let out = weft()
            .args(["docs", "list", "--server", &format!("http://{addr}")])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--admin-key"));

        // Usage errors exit 2.
        let out = weft()
            .args(["snapshot", "restore", "there"])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2));
        let out = weft()
            .args(["docs", "show", "bad/name", "--data-dir", "/nonexistent"])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1));
    });
    assert!(server.terminate().success());
    let offline = Mode::Offline(server.data_dir.path());
    tokio::task::block_in_place(|| {
        let (code, err) = offline.fails(&["snapshot", "restore", "there", "--snapshot", "7"]);
        assert_eq!(
            (code, err.contains("has no snapshot 7")),
            (1, true),
            "{err}"
        );
        let (_, err) = offline.fails(&["docs", "show", "bad/name"]);
        assert!(err.contains("only letters, digits"), "{err}");
    });
}

#[test]
fn every_subcommand_explains_itself_with_examples() {
    for sub in [
        vec!["docs", "list"],
        vec!["docs", "show"],
        vec!["docs", "delete"],
        vec!["snapshot", "list"],
        vec!["snapshot", "create"],
        vec!["snapshot", "inspect"],
        vec!["snapshot", "export"],
        vec!["snapshot", "import"],
        vec!["snapshot", "restore"],
        vec!["snapshot", "diff"],
        vec!["backup"],
        vec!["backup", "restore"],
        vec!["verify"],
        vec!["serve"],
    ] {
        let out = weft().args(&sub).arg("--help").output().expect("runs");
        assert!(out.status.success(), "{sub:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Example"),
            "{sub:?} --help has no example:\n{help}"
        );
    }
}

/// Everything an operator can see of every document, for comparing stores.
fn everything(mode: &Mode) -> Vec<(Value, Value)> {
    let mut docs: Vec<Value> = mode
        .json(&["docs", "list"])
        .as_array()
        .expect("array")
        .clone();
    docs.sort_by_key(|d| d["name"].as_str().map(str::to_owned));
    docs.iter()
        .map(|d| {
            let name = d["name"].as_str().expect("name");
            let mut shown = mode.json(&["docs", "show", name]);
            // Live connection counts are not history.
            shown.as_object_mut().map(|o| {
                o.remove("editors");
                o.remove("viewers")
            });
            (shown, mode.json(&["snapshot", "inspect", name]))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_restores_every_document_with_its_history() {
    let mut server = Weft::start(&["--admin-key", ADMIN]);
    for (doc, words) in [("alpha", 3), ("beta", 5), ("gamma", 1)] {
        let writer = Doc::new();
        for i in 0..words {
            post(&server.addr, doc, insert(&writer, &format!("{doc}{i} "))).await;
            let (status, _) = request(
                &server.addr,
                "POST",
                &format!("/admin/docs/{doc}/snapshots"),
                &[("authorization", &format!("Bearer {ADMIN}"))],
                vec![],
            )
            .await;
            assert_eq!(status, 201);
        }
    }
    let work = tempfile::tempdir().expect("tmp");
    let online_file = work.path().join("online.backup");
    let offline_file = work.path().join("offline.backup");
    let addr = server.addr.clone();
    let before = tokio::task::block_in_place(|| {
        let online = Mode::Online(&addr);
        let out = online.ok(&["backup", "-o", online_file.to_str().expect("utf8")]);
        assert!(out.contains("wrote 3 documents"), "{out}");
        everything(&online)
    });
    assert!(server.terminate().success());
    let source = Mode::Offline(server.data_dir.path());
    tokio::task::block_in_place(|| {
        source.ok(&["backup", "-o", offline_file.to_str().expect("utf8")]);
        assert_eq!(everything(&source), before);
        for file in [&online_file, &offline_file] {
            let fresh = tempfile::tempdir().expect("tmp");
            std::fs::create_dir_all(fresh.path()).expect("dir");
            let target = Mode::Offline(fresh.path());
            let out = target.ok(&["backup", "restore", file.to_str().expect("utf8")]);
            assert!(out.contains("restored 3 documents"), "{out}");
            assert_eq!(
                everything(&target),
                before,
                "restored from {}",
                file.display()
            );
            // Restoring twice would overwrite: refused.
            let (code, err) = target.fails(&["backup", "restore", file.to_str().expect("utf8")]);
            assert_eq!(code, 1);
            assert!(err.contains("already exists"), "{err}");
        }
        // A truncated archive is refused.
        let bytes = std::fs::read(&offline_file).expect("read");
        let cut = work.path().join("cut.backup");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
        let fresh = tempfile::tempdir().expect("tmp");
        let (code, err) =
            Mode::Offline(fresh.path()).fails(&["backup", "restore", cut.to_str().expect("utf8")]);
        assert_eq!(code, 1);
        assert!(err.contains("backup"), "{err}");
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_also_restore_into_a_running_server() {
    let mut source = Weft::start(&["--admin-key", ADMIN]);
    post(&source.addr, "moved", insert(&Doc::new(), "moved content")).await;
    assert!(source.terminate().success());
    let work = tempfile::tempdir().expect("tmp");
    let file = work.path().join("b.backup");
    tokio::task::block_in_place(|| {
        Mode::Offline(source.data_dir.path()).ok(&["backup", "-o", file.to_str().expect("utf8")]);
    });
    let target = Weft::start(&["--admin-key", ADMIN]);
    let addr = target.addr.clone();
    tokio::task::block_in_place(|| {
        let online = Mode::Online(&addr);
        online.ok(&["backup", "restore", file.to_str().expect("utf8")]);
        assert_eq!(
            online.json(&["snapshot", "inspect", "moved"]),
            serde_json::json!({ "t": "moved content" })
        );
    });
    let (status, body) = request(&target.addr, "GET", "/docs/moved/json", &[], vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("json")["t"],
        "moved content"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_a_corrupted_record() {
    let mut server = Weft::start(&[]);
    let writer = Doc::new();
    for w in ["a", "b", "c"] {
        post(&server.addr, "fragile", insert(&writer, w)).await;
    }
    assert!(server.terminate().success());
    let dir = server.data_dir.path().to_path_buf();
    tokio::task::block_in_place(|| {
        let mode = Mode::Offline(&dir);
        let out = mode.ok(&["verify"]);
        assert!(out.contains("0 problems"), "{out}");

        // Damage the second logged change on disk, as a bad sector would.
        {
            let db = sled::open(&dir).expect("open the store directly");
            let log = db.open_tree("log").expect("log tree");
            let mut key = b"fragile\0".to_vec();
            key.extend_from_slice(&2u64.to_be_bytes());
            assert!(log.get(&key).expect("read").is_some(), "the record exists");
            log.insert(key, &[0x93, 0x01, 0x02][..])
                .expect("corrupt it");
            db.flush().expect("flush");
        }
        let out = weft()
            .args(["verify", "--data-dir", dir.to_str().expect("utf8")])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("fragile#2"), "{stdout}");
        assert!(stdout.contains("1 problems"), "{stdout}");
    });
}

/// A `name 0x00 n` key of the store's trees.
fn store_key(doc: &str, n: u64) -> Vec<u8> {
    let mut key = doc.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_records_that_vanished() {
    // Periodic snapshots every 4 changes, a manual one, and the log behind them.
    let mut server = Weft::start(&["--snapshot-every", "4", "--admin-key", ADMIN]);
    let writer = Doc::new();
    for i in 1..=10 {
        post(&server.addr, "ledger", insert(&writer, &format!("{i} "))).await;
    }
    let addr = server.addr.clone();
    let manual =
        tokio::task::block_in_place(|| Mode::Online(&addr).json(&["snapshot", "create", "ledger"]));
    assert_eq!(
        (manual["id"].as_u64(), manual["seq"].as_u64()),
        (Some(3), Some(10))
    );
    for i in 11..=12 {
        post(&server.addr, "ledger", insert(&writer, &format!("{i} "))).await;
    }
    server.kill9(); // no shutdown snapshot: the manual one stays the newest
    let dir = server.data_dir.path().to_path_buf();
    tokio::task::block_in_place(|| {
        let out = Mode::Offline(&dir).ok(&["verify"]);
        assert!(out.contains("0 problems"), "{out}");

        // Records vanish, as with a damaged page: the manual snapshot's
        // state, and a logged change after the newest snapshot left.
        {
            let db = sled::open(&dir).expect("open the store directly");
            let snapshots = db.open_tree("snapshots").expect("snapshots tree");
            let log = db.open_tree("log").expect("log tree");
            assert!(snapshots
                .remove(store_key("ledger", 3))
                .expect("remove")
                .is_some());
            assert!(log
                .remove(store_key("ledger", 11))
                .expect("remove")
                .is_some());
            db.flush().expect("flush");
        }
        let out = weft()
            .args(["verify", "--data-dir", dir.to_str().expect("utf8")])
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8_lossy(&out.stdout);
        // The change after the gap builds on the one lost, so replaying
        // the document (as a load would) finds it too.
        assert!(stdout.contains("3 problems"), "{stdout}");
        assert!(stdout.contains("ledger snapshot 3: missing"), "{stdout}");
        assert!(
            stdout.contains("ledger#11: missing from the log after snapshot 2 (change 8)"),
            "{stdout}"
        );
        assert!(
            stdout.contains("ledger#12: does not replay, and will be quarantined"),
            "{stdout}"
        );
        assert!(
            stdout.contains("restore the document from a backup"),
            "{stdout}"
        );
    });

    // The admin API reports the same.
    let server = server.restart(&["--admin-key", ADMIN]);
    let auth = format!("Bearer {ADMIN}");
    let (status, body) = request(
        &server.addr,
        "GET",
        "/admin/verify",
        &[("authorization", &auth)],
        vec![],
    )
    .await;
    assert_eq!(status, 200);
    let report: Value = serde_json::from_slice(&body).expect("json");
    let locations: Vec<&str> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|p| p["location"].as_str())
        .collect();
    assert_eq!(
        locations,
        vec!["ledger snapshot 3", "ledger#11", "ledger#12"],
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_live_document_closes_its_connections_with_4404() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let server = Weft::start(&["--admin-key", ADMIN]);
    post(&server.addr, "doomed", insert(&Doc::new(), "bye")).await;
    let mut ws = connect(&server.url("doomed")).await;
    next_message(&mut ws).await;
    let addr = server.addr.clone();
    tokio::task::block_in_place(|| {
        Mode::Online(&addr).ok(&["docs", "delete", "doomed"]);
    });
    let (code, reason) = close_of(&mut ws).await;
    assert_eq!(code, CloseCode::Library(4404), "{reason}");
    let auth = format!("Bearer {ADMIN}");
    let (status, _) = request(
        &server.addr,
        "GET",
        "/admin/docs/doomed",
        &[("authorization", &auth)],
        vec![],
    )
    .await;
    assert_eq!(status, 404);
    // Gone: reading the name does not bring it back; writing would start a
    // new document.
    let (status, body) = request(&server.addr, "GET", "/docs/doomed/json", &[], vec![]).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread")]
async fn old_snapshots_are_pruned_in_the_background() {
    let server = Weft::start(&[
        "--admin-key",
        ADMIN,
        "--snapshot-keep-last",
        "2",
        "--snapshot-keep-hourly",
        "0s",
        "--snapshot-keep-daily",
        "0s",
        "--prune-interval",
        "1s",
    ]);
    post(&server.addr, "pruned", insert(&Doc::new(), "x")).await;
    let auth = format!("Bearer {ADMIN}");
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (status, body) = request(
            &server.addr,
            "POST",
            "/admin/docs/pruned/snapshots",
            &[("authorization", &auth)],
            vec![],
        )
        .await;
        assert_eq!(status, 201);
        ids.push(
            serde_json::from_slice::<Value>(&body).expect("json")["id"]
                .as_u64()
                .expect("id"),
        );
    }
    let (addr, auth) = (server.addr.as_str(), auth.as_str());
    let snapshots = move || async move {
        let (_, body) = request(
            addr,
            "GET",
            "/admin/docs/pruned/snapshots",
            &[("authorization", auth)],
            vec![],
        )
        .await;
        serde_json::from_slice::<Vec<Value>>(&body)
            .expect("json")
            .iter()
            .map(|s| s["id"].as_u64().expect("id"))
            .collect::<Vec<u64>>()
    };
    let kept = poll_until(snapshots, |kept| kept.len() == 2).await;
    assert_eq!(
        kept,
        ids[3..].to_vec(),
        "the two newest are kept, the rest pruned"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_restores_into_a_data_directory_that_does_not_exist_yet() {
    let mut source = Weft::start(&["--admin-key", ADMIN]);
    post(&source.addr, "moved", insert(&Doc::new(), "moved content")).await;
    assert!(source.terminate().success());
    let work = tempfile::tempdir().expect("tmp");
    let file = work.path().join("b.backup");
    let fresh = work.path().join("fresh");
    tokio::task::block_in_place(|| {
        Mode::Offline(source.data_dir.path()).ok(&["backup", "-o", file.to_str().expect("utf8")]);
        let target = Mode::Offline(&fresh);
        let out = target.ok(&["backup", "restore", file.to_str().expect("utf8")]);
        assert!(out.contains("restored 1 documents"), "{out}");
        assert_eq!(
            target.json(&["snapshot", "inspect", "moved"]),
            serde_json::json!({ "t": "moved content" })
        );
        // Reading a directory that is not there still says so.
        let (code, err) = Mode::Offline(&work.path().join("absent")).fails(&["docs", "list"]);
        assert_eq!(code, 1);
        assert!(err.contains("there is no data directory"), "{err}");
    });
}

#[test]
fn operator_commands_take_the_data_directory_from_the_config_file() {
    let work = tempfile::tempdir().expect("tmp");
    let file = work.path().join("weft.toml");
    let from_file = work.path().join("from-file");
    std::fs::write(
        &file,
        format!(
            "data-dir = {:?}\nlisten = \"127.0.0.1:1\"\n",
            from_file.to_str().expect("utf8")
        ),
    )
    .expect("write");
    let out = weft()
        .env("WEFT_CONFIG", &file)
        .args(["docs", "list"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&from_file.display().to_string()), "{err}");
    let flag = work.path().join("from-flag");
    let out = weft()
        .env("WEFT_CONFIG", &file)
        .args(["docs", "list", "--data-dir"])
        .arg(&flag)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&flag.display().to_string()),
        "the flag wins: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn history_lists_who_changed_a_document_online_and_offline() {
    let mut server = Weft::start(&["--admin-key", ADMIN]);
    let work = tempfile::tempdir().expect("tmp");
    for doc in ["online", "offline"] {
        let writer = Doc::new();
        post(&server.addr, doc, insert(&writer, "one")).await;
        post(&server.addr, doc, insert(&writer, " two")).await;
        post(&server.addr, doc, insert(&writer, " three")).await;
    }
    let addr = server.addr.clone();
    let check = |mode: &Mode, doc: &str| {
        let all = mode.json(&["history", doc]);
        let all = all.as_array().expect("a list");
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(
            (&all[0]["author"], &all[0]["via"]),
            (&json!("anonymous"), &json!("http"))
        );
        assert_eq!(all[2]["inserted"], 6);
        // Two at most, then by time: none before the first.
        let two = mode.json(&["history", doc, "--limit", "2"]);
        assert_eq!(two.as_array().map(Vec::len), Some(2));
        let first = all[0]["at_ms"].as_u64().expect("time");
        let before = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(first - 1),
        )
        .to_string();
        let none = mode.json(&["history", doc, "--until", &before]);
        assert_eq!(none.as_array().map(Vec::len), Some(0));
        let table = mode.ok(&["history", doc]);
        assert!(
            table.contains("AUTHOR") && table.contains("http"),
            "{table}"
        );
        let (code, err) = mode.fails(&["history", doc, "--since", "last week"]);
        assert_eq!(code, 1);
        assert!(err.contains("RFC 3339"), "{err}");

        // One author's changes since the first undone, live.
        let first_id = all[0]["id"].as_str().expect("id");
        let reverted = mode.json(&["revert", doc, "--author", "anonymous", "--since", first_id]);
        assert_eq!(reverted["changes"], 2, "{reverted}");
        assert!(reverted["change"].is_string(), "{reverted}");
        let now = mode.json(&["snapshot", "inspect", doc]);
        assert_eq!(now["t"], "one", "{now}");
        let again = mode.ok(&["revert", doc, "--author", "nobody", "--since", first_id]);
        assert!(again.contains("made no changes"), "{again}");

        // Any point in time: exported, then restored (live) as a change
        // of the operator's.
        let second = all[1]["id"].as_str().expect("id");
        let file = work.path().join(format!("{doc}-at.yjs"));
        let path = file.to_str().expect("utf8");
        mode.ok(&["snapshot", "export", doc, "--at", second, "-o", path]);
        let exported = std::fs::read(&file).expect("exported");
        assert_eq!(text_of_update(&exported), "one two");
        mode.ok(&["snapshot", "restore", doc, "--at", second]);
        let now = mode.json(&["snapshot", "inspect", doc]);
        assert_eq!(now["t"], "one two", "{now}");
        let all = mode.json(&["history", doc]);
        let last = all.as_array().and_then(|a| a.last()).expect("a change");
        assert_eq!(
            (&last["author"], &last["via"]),
            (&json!("admin"), &json!("admin"))
        );
        let (code, err) = mode.fails(&["snapshot", "restore", doc, "--at", "never"]);
        assert_eq!(code, 1);
        assert!(err.contains("event id"), "{err}");
    };
    tokio::task::block_in_place(|| check(&Mode::Online(&addr), "online"));
    assert!(server.terminate().success());
    let dir = server.data_dir.path().to_path_buf();
    tokio::task::block_in_place(|| check(&Mode::Offline(&dir), "offline"));
}
