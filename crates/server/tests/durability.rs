//! Durable before broadcast, seen at the system calls of the real binary
//! (under `strace`): a change's frame goes to a subscriber only after the
//! disk was told to keep it. An append is made durable by `fdatasync` of
//! the journal (`weft-journal` in the data directory); a change too large
//! for the journal by a checkpoint instead, which must `fdatasync` sled's
//! `db` file and the blob file sled keeps the large value in (sled's own
//! flush ends with `sync_file_range`, which leaves the drive's write cache
//! unflushed, and never syncs its blobs).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::*;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::Doc;

#[tokio::test]
async fn a_change_goes_out_only_after_fdatasync_of_what_holds_it() {
    let weft = Weft::start(&[]);
    let url = weft.url("durable");
    let mut subscriber = connect(&url).await;
    let mut writer = connect(&url).await;
    for ws in [&mut subscriber, &mut writer] {
        assert!(matches!(
            next_message(ws).await,
            YMessage::Sync(SyncMessage::SyncStep1(_))
        ));
    }
    let sub_port = local_port(&subscriber);
    let writer_port = local_port(&writer);
    let trace = tempfile::NamedTempFile::new().expect("trace file");
    let mut strace = Tracer::attach(weft.pid(), trace.path()).await;

    // A keystroke, a paste, and a paste larger than the journal (8 MiB).
    let doc = Doc::new();
    let changes = [
        ("the keystroke", "a keystroke".to_string()),
        ("the paste", "p".repeat(200_000)),
        ("the paste larger than the journal", "q".repeat(9_000_000)),
    ];
    for (_, text) in &changes {
        send(&mut writer, update_message(insert(&doc, text))).await;
        let got = next_change(&mut subscriber).await;
        assert!(got.len() >= text.len(), "the subscriber got the change");
    }
    let calls = strace.finish(trace.path());

    let sub = format!("->127.0.0.1:{sub_port}]");
    let from_writer = format!("->127.0.0.1:{writer_port}]");
    // Each change's send: the first to the subscriber after a read from
    // the writer.
    let sends = calls.starts_where(|c| c.is_send() && c.args.contains(&sub));
    let mut sent = 0;
    for (i, (change, _)) in changes.iter().enumerate() {
        sent = sends
            .iter()
            .copied()
            .find(|&s| s > sent && calls.read_between(&from_writer, sent, s))
            .unwrap_or_else(|| panic!("{change} was not written to the subscriber"));
        let read = calls
            .last_read_before(&from_writer, sent)
            .expect("the change was read from its writer");
        let synced = |what: &str, which: &dyn Fn(&str) -> bool| {
            assert!(
                calls.synced_between(read, sent, which),
                "{change} went out before fdatasync of {what}:\n{}",
                calls.window(read, sent)
            );
        };
        if i < 2 {
            synced("the journal", &|path| path.ends_with("/weft-journal"));
        } else {
            synced("sled's db file", &|path| path.ends_with("/db"));
            synced("its blob file", &|path| path.contains("/blobs/"));
        }
    }
}

/// The change in the next update frame (pings and presence skipped).
async fn next_change(ws: &mut Ws) -> Vec<u8> {
    loop {
        if let YMessage::Sync(SyncMessage::Update(update)) = next_message(ws).await {
            return update;
        }
    }
}

fn local_port(ws: &Ws) -> u16 {
    match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().expect("addr").port(),
        _ => panic!("plain TCP expected"),
    }
}

/// `strace` attached to every thread of a process.
struct Tracer(Child);

impl Tracer {
    /// Attaches and waits until every thread of `pid` is traced.
    async fn attach(pid: u32, out: &Path) -> Tracer {
        let mut child = Command::new("strace")
            .args(["-f", "-qq", "-yy", "-s", "0", "-o"])
            .arg(out)
            .args([
                "-e",
                "trace=fdatasync,fsync,write,writev,sendto,sendmsg,read,recvfrom,readv",
                "-p",
                &pid.to_string(),
            ])
            .stderr(Stdio::piped())
            .spawn()
            .expect("strace runs (tests/run installs it)");
        if !poll_until(|| async { all_traced(pid) }, |&traced| traced).await {
            let _ = child.kill();
            let out = child.wait_with_output().expect("strace ends");
            panic!(
                "strace did not attach to every thread of weft: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Tracer(child)
    }

    /// Detaches and parses what was traced.
    fn finish(&mut self, out: &Path) -> Calls {
        // SIGINT: strace detaches and writes out what it has.
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let status = self.0.wait().expect("strace ends");
        let text = std::fs::read_to_string(out).expect("trace");
        assert!(
            !text.is_empty(),
            "strace traced nothing ({status}); can this process ptrace?"
        );
        Calls::parse(&text)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether every thread of `pid` has a tracer.
fn all_traced(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("status")).is_ok_and(|status| {
            status
                .lines()
                .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
        })
    })
}

/// One system call: its name, its arguments as strace printed them, its
/// result, and where in the trace it started and ended.
struct Call {
    name: String,
    args: String,
    result: Option<i64>,
    started: usize,
    ended: usize,
}

impl Call {
    fn is_send(&self) -> bool {
        matches!(
            self.name.as_str(),
            "write" | "writev" | "sendto" | "sendmsg"
        )
    }

    fn is_read(&self) -> bool {
        matches!(self.name.as_str(), "read" | "readv" | "recvfrom") && self.result > Some(0)
    }

    /// A successful `fdatasync`: what makes a file's data durable. (sled's
    /// background thread `fsync`s its data file every half second; that
    /// must not count, or a change could pass by luck.)
    fn is_sync(&self) -> bool {
        self.name == "fdatasync" && self.result == Some(0)
    }
}

/// The calls of a trace, in the order they started.
struct Calls {
    calls: Vec<Call>,
    lines: Vec<String>,
}

impl Calls {
    /// Parses `strace -f` output, joining `<unfinished ...>` and
    /// `<... resumed>` halves by thread.
    fn parse(text: &str) -> Calls {
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let mut calls = Vec::new();
        let mut open = std::collections::HashMap::new();
        for (i, line) in lines.iter().enumerate() {
            let Some((tid, rest)) = line.split_once(' ') else {
                continue;
            };
            let rest = rest.trim_start();
            if rest.starts_with("<... ") {
                if let Some(index) = open.remove(tid) {
                    let call: &mut Call = &mut calls[index];
                    call.result = result_of(rest);
                    call.ended = i;
                }
                continue;
            }
            let Some((name, args)) = rest.split_once('(') else {
                continue;
            };
            let unfinished = rest.ends_with("<unfinished ...>");
            if unfinished {
                open.insert(tid.to_owned(), calls.len());
            }
            calls.push(Call {
                name: name.to_owned(),
                args: args.to_owned(),
                result: if unfinished { None } else { result_of(rest) },
                started: i,
                ended: i,
            });
        }
        Calls { calls, lines }
    }

    /// Where the calls that `pick` chooses started, in trace order.
    fn starts_where(&self, pick: impl Fn(&Call) -> bool) -> Vec<usize> {
        self.calls
            .iter()
            .filter(|c| pick(c))
            .map(|c| c.started)
            .collect()
    }

    /// Whether something was read from `socket` from line `from` on and
    /// before line `to`.
    fn read_between(&self, socket: &str, from: usize, to: usize) -> bool {
        self.calls
            .iter()
            .any(|c| c.is_read() && c.args.contains(socket) && c.started >= from && c.ended < to)
    }

    /// The line where the last read from `socket` ending before line `to`
    /// ended.
    fn last_read_before(&self, socket: &str, to: usize) -> Option<usize> {
        self.calls
            .iter()
            .filter(|c| c.is_read() && c.args.contains(socket) && c.ended < to)
            .map(|c| c.ended)
            .max()
    }

    /// Whether a sync of a file whose path `which` accepts started after
    /// line `from` and ended, successfully, before line `to`.
    fn synced_between(&self, from: usize, to: usize, which: impl Fn(&str) -> bool) -> bool {
        self.calls.iter().any(|c| {
            c.is_sync() && c.started > from && c.ended < to && path_of(&c.args).is_some_and(&which)
        })
    }

    /// The trace from line `from` to line `to`, for a failure's message.
    fn window(&self, from: usize, to: usize) -> String {
        self.lines[from..=to.min(self.lines.len() - 1)].join("\n")
    }
}

/// The result after ` = ` at the end of a finished call's line.
fn result_of(line: &str) -> Option<i64> {
    let (_, result) = line.rsplit_once(" = ")?;
    result.split_whitespace().next()?.parse().ok()
}

/// The path of a call's file descriptor, as `-yy` prints it: `12</path>`.
fn path_of(args: &str) -> Option<&str> {
    let (_, rest) = args.split_once('<')?;
    Some(&rest[..rest.find('>')?])
}
