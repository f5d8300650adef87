//! `RedisServer`: a throwaway `redis-server` for tests, listening only on a
//! Unix socket in its own directory (no TCP port, so no other process can
//! take its address between two tests), every write fsynced before it is
//! acknowledged, killed when dropped. The storage tests use it, and the
//! server's cluster tests include this file by path.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    dir: tempfile::TempDir,
    /// Extra arguments it was started with (a TCP port, `--replicaof`).
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(Vec::new())
    }

    fn start_with(extra: Vec<String>) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Self::spawn(&dir, &extra);
        RedisServer { child, dir, extra }
    }

    /// One that also listens on a TCP port of 127.0.0.1, which replicas
    /// need (they cannot follow a Unix socket). The port is one the system
    /// just handed out and let go.
    #[allow(dead_code)]
    pub fn start_on_tcp() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_with(vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
        ])
    }

    /// A replica of `primary` (started with [`RedisServer::start_on_tcp`]),
    /// once it has caught up.
    #[allow(dead_code)]
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let port = primary.tcp_port().expect("the primary listens on TCP");
        let replica = Self::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            port.to_string(),
        ]);
        let started = Instant::now();
        loop {
            let out = Command::new("redis-cli")
                .arg("-s")
                .arg(replica.socket())
                .args(["INFO", "replication"])
                .output()
                .expect("redis-cli");
            if String::from_utf8_lossy(&out.stdout).contains("master_link_status:up") {
                return replica;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the replica never caught up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn tcp_port(&self) -> Option<u16> {
        let at = self.extra.iter().position(|a| a == "--port")?;
        self.extra.get(at + 1)?.parse().ok()
    }

    /// kill -9 and start again on the same socket and files.
    #[allow(dead_code)] // not every including test file restarts Redis
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir, &self.extra);
    }

    /// kill -9, leaving it down until [`RedisServer::start_again`].
    #[allow(dead_code)] // not every including test file stops Redis
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a stopped server again on the same socket and files.
    #[allow(dead_code)]
    pub fn start_again(&mut self) {
        self.child = Self::spawn(&self.dir, &self.extra);
    }

    /// Its socket, for `redis-cli -s`.
    pub fn socket(&self) -> PathBuf {
        Self::socket_in(&self.dir)
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("redis.sock")
    }

    fn spawn(dir: &tempfile::TempDir, extra: &[String]) -> Child {
        let socket = Self::socket_in(dir);
        let _ = std::fs::remove_file(&socket); // left by a killed server
        let tcp = extra.iter().any(|a| a == "--port");
        let child = Command::new("redis-server")
            .args(if tcp { &[][..] } else { &["--port", "0"][..] })
            .arg("--unixsocket")
            .arg(&socket)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (tests/run installs it: apt-get install redis-server)");
        let started = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
