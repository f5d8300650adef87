//! A real full disk: weft's data directory on a 20 MB tmpfs, filled by a
//! filler file, or by a writer once the filler has left it a little. Writes
//! are refused before the disk is full (HTTP 503, WebSocket 1011; weft
//! keeps a floor of free space so that sled's own writes do not meet a
//! full disk), readiness says so within 2 s, documents are still read, and
//! when space returns weft takes writes again by itself; nothing
//! acknowledged is lost, and SIGTERM exits within `--shutdown-timeout`
//! while the disk is full.
//!
//! And a real stuck disk: ext4 on a loop device, frozen with `fsfreeze`, so
//! that every write blocks in the kernel. Nothing waits on it past
//! `--storage-timeout`, and writes resume by themselves once it thaws.
//!
//! Mounting needs root (CI and the development machine run tests as root);
//! where mounting is not permitted the tests say so and skip.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact};

/// Every request must be answered within this while the disk is full.
const PROMPT: Duration = Duration::from_secs(2);

/// A tmpfs mounted on a temporary directory, unmounted when dropped (also
/// when a test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with a message saying why) where mounting is not permitted.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    fn available(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(self.path())
            .output()
            .expect("df runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free bytes")
    }

    /// Takes all but `keep` bytes of the free space with one file.
    fn fill(&self, keep: u64) {
        let size = self.available().saturating_sub(keep);
        let status = Command::new("fallocate")
            .args(["-l", &size.to_string()])
            .arg(self.filler())
            .status()
            .expect("fallocate runs");
        assert!(status.success(), "fallocate failed");
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a process that has not died yet): detach it.
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// An ext4 file system in a file, mounted through a loop device; unmounted
/// (and thawed first) when dropped.
struct Ext4 {
    _image: tempfile::TempDir,
    dir: tempfile::TempDir,
}

impl Ext4 {
    /// `None` (with a message saying why) where loop mounts are not permitted.
    fn mount(size: &str) -> Option<Ext4> {
        let image = tempfile::tempdir().expect("tempdir");
        let file = image.path().join("disk.img");
        let made = Command::new("truncate")
            .args(["-s", size])
            .arg(&file)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mkfs.ext4")
                .arg("-q")
                .arg(&file)
                .status()
                .is_ok_and(|s| s.success());
        if !made {
            eprintln!("SKIPPED: cannot make an ext4 image here (truncate, mkfs.ext4)");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&file)
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Ext4 { _image: image, dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot loop-mount an ext4 image here (needs root and loop devices): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Freezes the file system: every write to it blocks until the guard
    /// is dropped.
    fn freeze(&self) -> Frozen<'_> {
        let status = Command::new("fsfreeze")
            .arg("-f")
            .arg(self.path())
            .status()
            .expect("fsfreeze runs");
        assert!(status.success(), "fsfreeze -f failed");
        Frozen { disk: self }
    }

    fn thaw(&self) {
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(self.path())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        self.thaw();
        let unmounted = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// A frozen file system, thawed when dropped (before the server that uses
/// it is killed: a process cannot die while a thread is blocked on it).
struct Frozen<'a> {
    disk: &'a Ext4,
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.disk.thaw();
    }
}

/// One marked chunk of text; its marker shows whether it survived.
fn chunk(i: usize) -> (String, String) {
    let marker = format!("<chunk {i:05}>");
    let text = format!("{marker}{}", "x".repeat(4000));
    (marker, text)
}

async fn post(addr: &str, doc: &str, update: Vec<u8>) -> (u16, String) {
    let (status, body) = request(addr, "POST", &format!("/docs/{doc}/updates"), &[], update).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The text of a document as `GET /docs/{doc}` serves it, and how long that took.
async fn read_text(addr: &str, doc: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let (status, body) = request(addr, "GET", &format!("/docs/{doc}"), &[], vec![]).await;
    let took = started.elapsed();
    if status != 200 {
        return (status, String::from_utf8_lossy(&body).into_owned(), took);
    }
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(&body).expect("a Yjs update"))
        .expect("applies");
    (status, text(&doc), took)
}

/// Writes `count` acknowledged chunks; returns their markers.
async fn write_acknowledged(
    addr: &str,
    writer: &Doc,
    range: std::ops::Range<usize>,
) -> Vec<String> {
    let mut acked = Vec::new();
    for i in range {
        let (marker, text) = chunk(i);
        let (status, body) = post(addr, "busy", insert(writer, &text)).await;
        assert_eq!(status, 200, "{body}");
        acked.push(marker);
    }
    acked
}

/// Within 10 s of space returning, a write is taken, and weft never asked
/// to be restarted.
async fn writes_resume(addr: &str, log: &Path) {
    let freed = Instant::now();
    let mut last = (0, String::new());
    while freed.elapsed() < Duration::from_secs(10) && last.0 != 200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = post(addr, "busy", insert(&Doc::new(), "after")).await;
    }
    assert_eq!(
        last.0, 200,
        "writes must resume once space returns: {}",
        last.1
    );
    eprintln!("writes resumed {:?} after space returned", freed.elapsed());
    let logged = std::fs::read_to_string(log).expect("log");
    assert!(
        !logged.contains("exiting so that a supervisor restarts weft"),
        "weft asked for a restart"
    );
}

/// Small writes until the store refuses every write: a write refused for
/// its size near the floor leaves smaller ones going, up to the floor.
async fn fill_to_floor(addr: &str) {
    for small in 0..4000 {
        let (status, body) = post(addr, "busy", insert(&Doc::new(), "s")).await;
        if status == 503 && body.contains("nearly full") {
            eprintln!("{small} small writes taken before the floor");
            return;
        }
        assert_eq!(status, 200, "{body}");
    }
    panic!("4000 small writes were all taken on a full 20 MB disk");
}

/// Keeps writing until weft refuses. Returns the refusal and the refused
/// chunk's marker; `acked` gets the markers acknowledged.
async fn write_until_refused(
    addr: &str,
    writer: &Doc,
    from: usize,
    acked: &mut Vec<String>,
) -> (u16, String, String) {
    for i in from..from + 4000 {
        let (marker, text) = chunk(i);
        let (status, body) = post(addr, "busy", insert(writer, &text)).await;
        if status != 200 {
            return (status, body, marker);
        }
        acked.push(marker);
    }
    panic!("4000 writes of 4 KB were all accepted on a full 20 MB disk");
}

fn missing<'a>(acked: &'a [String], text: &str) -> Vec<&'a String> {
    acked
        .iter()
        .filter(|m| !text.contains(m.as_str()))
        .collect()
}

fn fresh_log() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("weft.log");
    (dir, path)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_writes_promptly_keeps_reads_and_recovers() {
    full_disk_scenario(256 * 1024).await;
}

/// The filler leaves 2 MiB: the writer's own changes reach weft's floor of
/// free space (1 MiB on this disk), a 4 KB change is refused for its size
/// first and small ones up to the floor, sled having had room for
/// everything it was given.
#[tokio::test(flavor = "multi_thread")]
async fn writes_that_fill_the_disk_are_refused_at_the_floor_and_resume() {
    full_disk_scenario(2 * 1024 * 1024).await;
}

/// Ten acknowledged writes, then a filler leaving `leave` bytes free and
/// writes until one is refused; reads and refusals while full; writes again
/// once the filler is gone; nothing acknowledged lost across a restart.
async fn full_disk_scenario(leave: u64) {
    let Some(disk) = Tmpfs::mount("20m") else {
        return;
    };
    let (_logs, log) = fresh_log();
    let data = tempfile::tempdir_in(disk.path()).expect("data dir");
    let server = Weft::start_in_logging_to(
        data,
        &log,
        &["--unload-grace", "10m", "--shutdown-timeout", "3s"],
    );
    let addr = server.addr.clone();

    // A document that stays loaded, and an editor on the one being written.
    let calm = Doc::new();
    let (status, body) = post(&addr, "calm", insert(&calm, "calm content")).await;
    assert_eq!(status, 200, "{body}");
    let mut editor = connect(&server.url("busy")).await;
    next_message(&mut editor).await;

    let writer = Doc::new();
    let mut acked = write_acknowledged(&addr, &writer, 0..10).await;
    disk.fill(leave);
    let (status, body, refused) = write_until_refused(&addr, &writer, 10, &mut acked).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage_failure"), "{body}");
    eprintln!(
        "{} writes acknowledged before the disk was full, {} bytes left; refused: {body}",
        acked.len(),
        disk.available()
    );
    fill_to_floor(&addr).await;

    // The document's writers are closed: they resync when they reconnect.
    let (code, reason) = close_of(&mut editor).await;
    assert_eq!(code, CloseCode::Error, "1011 expected: {reason}");

    // Readiness, reads and refusals all answer promptly, again and again.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body) = request(&addr, "GET", "/readyz", &[], vec![]).await;
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        slowest = slowest.max(started.elapsed());
        let (status, text, took) = read_text(&addr, "calm").await;
        assert_eq!((status, text.as_str()), (200, "calm content"));
        slowest = slowest.max(took);
        let (status, text, took) = read_text(&addr, "busy").await;
        assert_eq!(status, 200, "{text}");
        slowest = slowest.max(took);
        assert!(
            missing(&acked, &text).is_empty(),
            "acknowledged changes missing from memory"
        );
        assert!(
            !text.contains(&refused),
            "a refused change is served as if stored"
        );
        let started = Instant::now();
        let (status, body) = post(&addr, "busy", insert(&Doc::new(), "while full")).await;
        assert_eq!(status, 503, "{body}");
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < PROMPT,
        "slowest answer while the disk was full: {slowest:?}"
    );
    eprintln!("full disk: every answer within {slowest:?}");
    let (status, _) = request(&addr, "GET", "/healthz", &[], vec![]).await;
    assert_eq!(status, 200);

    // Space returns: weft takes writes again by itself (sled never met the
    // full disk, so no restart is needed).
    disk.free();
    writes_resume(&addr, &log).await;

    // Nothing acknowledged is lost across the restart.
    let server = server.restart(&[]);
    let (status, text, _) = read_text(&server.addr, "busy").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(missing(&acked, &text), Vec::<&String>::new());
    let (_, text, _) = read_text(&server.addr, "calm").await;
    assert_eq!(text, "calm content");
    let (status, body) = post(&server.addr, "busy", insert(&Doc::new(), "later")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_within_the_deadline_while_the_disk_is_full() {
    let Some(disk) = Tmpfs::mount("20m") else {
        return;
    };
    let (_logs, log) = fresh_log();
    let data = tempfile::tempdir_in(disk.path()).expect("data dir");
    let mut server = Weft::start_in_logging_to(data, &log, &["--shutdown-timeout", "2s"]);
    let addr = server.addr.clone();
    let mut editor = connect(&server.url("busy")).await;
    next_message(&mut editor).await;

    let writer = Doc::new();
    let mut acked = write_acknowledged(&addr, &writer, 0..10).await;
    disk.fill(256 * 1024);
    let (status, body, _) = write_until_refused(&addr, &writer, 10, &mut acked).await;
    assert_eq!(status, 503, "{body}");

    let exited = tokio::task::block_in_place(|| server.terminate_within(Duration::from_secs(5)));
    let (status, took) = exited.expect("weft must exit on SIGTERM while the disk is full");
    eprintln!("SIGTERM with the disk full: exited with {status} after {took:?}");
    assert!(
        took < Duration::from_millis(2500),
        "--shutdown-timeout is 2s, exit took {took:?}"
    );

    disk.free();
    let server = server.restart(&[]);
    let (status, text, _) = read_text(&server.addr, "busy").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(missing(&acked, &text), Vec::<&String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_disk_holds_nobody_past_the_storage_timeout_and_writes_resume_after() {
    let Some(disk) = Ext4::mount("64M") else {
        return;
    };
    let (_logs, log) = fresh_log();
    let data = tempfile::tempdir_in(disk.path()).expect("data dir");
    let mut server = Weft::start_in_logging_to(
        data,
        &log,
        &["--unload-grace", "10m", "--storage-timeout", "1s"],
    );
    let addr = server.addr.clone();
    let calm = Doc::new();
    let (status, body) = post(&addr, "calm", insert(&calm, "calm content")).await;
    assert_eq!(status, 200, "{body}");
    let mut editor = connect(&server.url("busy")).await;
    next_message(&mut editor).await;
    let writer = Doc::new();
    let mut acked = write_acknowledged(&addr, &writer, 0..10).await;

    let frozen = disk.freeze();
    // The first write waits for the disk up to --storage-timeout, then fails.
    let (marker, text) = chunk(10);
    let started = Instant::now();
    let (status, body) = post(&addr, "busy", insert(&writer, &text)).await;
    let first = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(
        first < Duration::from_secs(3),
        "the stuck write took {first:?}"
    );
    let (code, reason) = close_of(&mut editor).await;
    assert_eq!(code, CloseCode::Error, "1011 expected: {reason}");

    // From then on nothing waits on the disk.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let (status, _) = request(&addr, "GET", "/readyz", &[], vec![]).await;
        assert_eq!(status, 503);
        slowest = slowest.max(started.elapsed());
        let (status, text, took) = read_text(&addr, "calm").await;
        assert_eq!((status, text.as_str()), (200, "calm content"));
        slowest = slowest.max(took);
        let (status, text, took) = read_text(&addr, "busy").await;
        assert_eq!(status, 200, "{text}");
        assert!(missing(&acked, &text).is_empty());
        assert!(
            !text.contains(&marker),
            "a refused change is served as if stored"
        );
        slowest = slowest.max(took);
        let started = Instant::now();
        let (status, body) = post(&addr, "busy", insert(&Doc::new(), "frozen")).await;
        assert_eq!(status, 503, "{body}");
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < PROMPT,
        "slowest answer while the disk was stuck: {slowest:?}"
    );
    eprintln!(
        "stuck disk: first write refused after {first:?}, then every answer within {slowest:?}"
    );

    // Thawed, the disk takes the stuck writes, and weft takes new ones.
    drop(frozen);
    let thawed = Instant::now();
    let resumed = loop {
        let (status, body) = post(&addr, "busy", insert(&Doc::new(), "thawed")).await;
        if status == 200 {
            break thawed.elapsed();
        }
        assert!(
            thawed.elapsed() < Duration::from_secs(15),
            "writes never resumed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("stuck disk: writes resumed {resumed:?} after it thawed");
    let (status, _) = request(&addr, "GET", "/readyz", &[], vec![]).await;
    assert_eq!(status, 200);
    // A fresh writer: the old one's state holds the refused chunk.
    acked.extend(write_acknowledged(&addr, &Doc::new(), 11..15).await);

    let exited = tokio::task::block_in_place(|| server.terminate_within(Duration::from_secs(15)));
    assert!(exited.expect("exits").0.success());
    let server = server.restart(&[]);
    let (status, text, _) = read_text(&server.addr, "busy").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(missing(&acked, &text), Vec::<&String>::new());
}

/// The status, `error` code and `Retry-After` of a request.
async fn refusal(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String, Option<String>) {
    let mut http = http1(addr).await;
    let resp = http.request(method, path, headers, body).await;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: serde_json::Value =
        serde_json::from_slice(&body_bytes(resp).await).unwrap_or_default();
    let code = body["error"].as_str().unwrap_or_default().to_owned();
    (status, code, retry_after)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_api_and_the_admin_api_refuse_a_full_disk_alike() {
    const ADMIN: &str = "full-disk-admin-key-0123456789abcdef";
    let Some(disk) = Tmpfs::mount("20m") else {
        return;
    };
    let (_logs, log) = fresh_log();
    let data = tempfile::tempdir_in(disk.path()).expect("data dir");
    let server =
        Weft::start_in_logging_to(data, &log, &["--admin-key", ADMIN, "--unload-grace", "10m"]);
    let addr = server.addr.clone();
    let writer = Doc::new();
    let mut acked = write_acknowledged(&addr, &writer, 0..3).await;
    disk.fill(256 * 1024);
    let (status, body, _) = write_until_refused(&addr, &writer, 3, &mut acked).await;
    assert_eq!(status, 503, "{body}");

    let update = insert(&Doc::new(), "one more");
    let docs = refusal(&addr, "POST", "/docs/busy/updates", &[], update.clone()).await;
    assert_eq!(
        docs,
        (503, "storage_failure".to_owned(), Some("1".to_owned()))
    );
    let auth = format!("Bearer {ADMIN}");
    let headers = [("authorization", auth.as_str())];
    let admin = refusal(&addr, "POST", "/admin/docs/busy/import", &headers, update).await;
    assert_eq!(
        admin, docs,
        "/admin answers a storage failure as /docs does"
    );
}
