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
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Self::spawn(&dir);
        RedisServer { child, dir }
    }

    /// kill -9 and start again on the same socket and files.
    #[allow(dead_code)] // not every including test file restarts Redis
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.dir);
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
        self.child = Self::spawn(&self.dir);
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

    fn spawn(dir: &tempfile::TempDir) -> Child {
        let socket = Self::socket_in(dir);
        let _ = std::fs::remove_file(&socket); // left by a killed server
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
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
