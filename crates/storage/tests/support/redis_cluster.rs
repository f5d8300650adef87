//! `RedisCluster`: a throwaway Redis Cluster of three primaries on
//! 127.0.0.1 for tests (`redis-server --cluster-enabled yes` × 3, joined by
//! `redis-cli --cluster create`; a fourth, serving no slot, can be added),
//! every write fsynced, killed when dropped.
//! A cluster needs TCP: each node takes a client port and a bus port the
//! system just handed out and let go (a node that finds one taken exits,
//! and is started again on others). [`RedisCluster::move_slot`] moves one
//! slot, keys and all, to another primary, step by step as
//! `redis-cli --cluster reshard` does, so a test can move the slot of the
//! very document it is editing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
}

struct ClusterNode {
    child: Child,
    port: u16,
    bus: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl RedisCluster {
    /// Three primaries, no replicas, every slot covered.
    pub fn start() -> RedisCluster {
        let nodes: Vec<ClusterNode> = (0..3).map(|_| ClusterNode::spawn()).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = vec!["create".to_owned()];
        create.extend(addrs);
        create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        cluster_cli(&create);
        let cluster = RedisCluster { nodes };
        cluster.until_every_node_agrees();
        cluster
    }

    /// `--redis-cluster`'s value: every node's URL.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// kill -9 of node `i`, leaving it down until [`RedisCluster::start_again`].
    /// The others take a minute to declare it failed (`cluster-node-timeout`),
    /// so a test sees the cluster as it is before a failover.
    #[allow(dead_code)]
    pub fn stop(&mut self, i: usize) {
        let _ = self.nodes[i].child.kill();
        let _ = self.nodes[i].child.wait();
    }

    /// Starts node `i` again on its ports and files; it rejoins the cluster
    /// with the slots it had.
    #[allow(dead_code)]
    pub fn start_again(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.child = ClusterNode::run(node.port, node.bus, &node.dir)
            .expect("redis-server starts again on its ports");
        self.until_every_node_agrees();
    }

    /// Adds a primary that serves no slot yet (`redis-cli --cluster
    /// add-node`), as a cluster about to grow has; returns its index.
    #[allow(dead_code)]
    pub fn add_empty_primary(&mut self) -> usize {
        let node = ClusterNode::spawn();
        cluster_cli(&[
            "add-node".to_owned(),
            format!("127.0.0.1:{}", node.port),
            format!("127.0.0.1:{}", self.nodes[0].port),
        ]);
        self.nodes.push(node);
        self.until_every_node_agrees();
        self.nodes.len() - 1
    }

    /// Runs a redis-cli command on node `i`, returning its output.
    pub fn cli_on(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.nodes[i].port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        self.cli_on(0, &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot")
    }

    /// Which node serves `slot` now.
    pub fn owner_of(&self, slot: u16) -> usize {
        (0..self.nodes.len())
            .find(|&i| self.owns(i, slot))
            .expect("some node owns every slot")
    }

    fn owns(&self, i: usize, slot: u16) -> bool {
        let myself = self.node_id(i);
        self.cli_on(i, &["CLUSTER", "NODES"]).lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.first() == Some(&myself.as_str())
                && fields.iter().skip(8).any(|range| covers(range, slot))
        })
    }

    fn node_id(&self, i: usize) -> String {
        self.cli_on(i, &["CLUSTER", "MYID"])
    }

    /// Moves `slot` and its keys from the node that has it to node `to`,
    /// the way `redis-cli --cluster reshard` moves each slot: `to` imports
    /// it, its owner migrates it, the keys go over in batches of 10 (its
    /// default; clients meanwhile get `ASK`, or `TRYAGAIN` for a command
    /// whose keys are split), then both are told the new owner. `between` runs after
    /// each step, so a test can go on editing throughout.
    pub fn move_slot(&self, slot: u16, to: usize, mut between: impl FnMut()) {
        let from = self.owner_of(slot);
        assert_ne!(from, to, "the slot is already there");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let slot_arg = slot.to_string();
        let ok = |out: String| assert_eq!(out, "OK", "moving slot {slot}");
        ok(self.cli_on(
            to,
            &["CLUSTER", "SETSLOT", &slot_arg, "IMPORTING", &from_id],
        ));
        between();
        ok(self.cli_on(
            from,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &to_id],
        ));
        between();
        let port = self.nodes[to].port.to_string();
        loop {
            let keys = self.cli_on(from, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, "10"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut migrate = vec![
                "MIGRATE",
                "127.0.0.1",
                &port,
                "",
                "0",
                "5000",
                "REPLACE",
                "KEYS",
            ];
            migrate.extend(&keys);
            assert_eq!(self.cli_on(from, &migrate), "OK", "migrating {keys:?}");
            between();
        }
        for i in [to, from] {
            ok(self.cli_on(i, &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &to_id]));
        }
        self.until_every_node_agrees();
        between();
    }

    /// Waits until every node says the cluster is ok and agrees on who
    /// owns each slot.
    fn until_every_node_agrees(&self) {
        let started = Instant::now();
        loop {
            let ok = (0..self.nodes.len()).all(|i| {
                self.cli_on(i, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            });
            let views: Vec<String> = (0..self.nodes.len())
                .map(|i| slot_map(&self.cli_on(i, &["CLUSTER", "NODES"])))
                .collect();
            if ok && views.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the cluster's nodes never agreed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `redis-cli --cluster` with `args`, which must succeed.
fn cluster_cli(args: &[String]) {
    let out = Command::new("redis-cli")
        .arg("--cluster")
        .args(args)
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "redis-cli --cluster {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Each node's id and slot ranges, sorted: what every node should agree on.
fn slot_map(nodes: &str) -> String {
    let mut lines: Vec<String> = nodes
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ranges: Vec<&str> = fields
                .iter()
                .skip(8)
                .filter(|r| !r.starts_with('['))
                .copied()
                .collect();
            format!("{} {}", fields.first().unwrap_or(&""), ranges.join(" "))
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// Whether a `CLUSTER NODES` slot field (`5`, `0-5460`) covers `slot`.
fn covers(range: &str, slot: u16) -> bool {
    match range.split_once('-') {
        Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
            (Ok(a), Ok(b)) => (a..=b).contains(&slot),
            _ => false,
        },
        None => range.parse::<u16>() == Ok(slot),
    }
}

impl ClusterNode {
    /// A node on ports just handed out; tried again on others if one was
    /// taken meanwhile (the server then exits at once).
    fn spawn() -> ClusterNode {
        for _ in 0..5 {
            if let Some(node) = Self::try_spawn() {
                return node;
            }
        }
        panic!("redis-server did not start on five pairs of free ports");
    }

    fn try_spawn() -> Option<ClusterNode> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, bus) = (free_port(), free_port());
        let child = Self::run(port, bus, &dir)?;
        Some(ClusterNode {
            child,
            port,
            bus,
            dir,
        })
    }

    /// redis-server on `port` and `bus`, once it answers as itself; `None`
    /// if it exited (a port was taken).
    fn run(port: u16, bus: u16, dir: &tempfile::TempDir) -> Option<Child> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
            ])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "60000"])
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
        let port_arg = port.to_string();
        while !Command::new("redis-cli")
            .args(["-p", &port_arg, "CONFIG", "GET", "cluster-port"])
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(&bus.to_string()))
        {
            if child.try_wait().ok().flatten().is_some() {
                return None;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(child)
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
