//! Private redis-server processes on free loopback ports.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU16, AtomicUsize, Ordering},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

use super::{PATIENCE, eventually};

/// A private redis-server on a free loopback port, without persistence; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// Arguments beyond the port and persistence (a cluster node's).
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with(Vec::new()).await
    }

    /// [`RedisServer::start`] with more arguments (kept across restarts).
    pub async fn start_with(extra: Vec<String>) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            extra,
        };
        server.restart().await;
        server
    }

    /// Starts (again) on the same port, empty, and waits until it answers.
    pub async fn restart(&mut self) {
        self.stop();
        // A master writes a snapshot to its directory to sync a replica, and would load
        // it when started again: each server has a directory of its own, emptied here.
        let dir = std::env::temp_dir().join(format!("events-test-redis-{}", self.port));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the server");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed: run `bash .ci/setup`");
        self.child = Some(child);
        eventually("redis-server answers PING", PATIENCE, || async {
            let reply = self.command(&["PING"]).await.ok()?;
            (reply == "+PONG").then_some(())
        })
        .await;
    }

    /// Kills the server (its data is gone: it has no persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server: a stopped Redis keeps its
    /// connections but answers nothing, as one stalled by a long script or a slow disk.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = std::process::Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status();
        }
    }

    /// Sends one command and returns the first line of the reply (enough for status,
    /// integer and error replies).
    pub async fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        Ok(line.trim_end().to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("events-test-redis-{}", self.port)),
        );
    }
}

/// A private Redis Cluster on free loopback ports: masters, each with its replicas,
/// slots spread evenly by `redis-cli --cluster create`; every node killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    dir: PathBuf,
}

impl RedisCluster {
    pub async fn start(masters: usize, replicas_per_master: usize) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "events-test-cluster-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster's node files");
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas_per_master) {
            let port = free_port();
            // The bus port would be port + 10000 (past 65535 for many free ports).
            let bus = free_port();
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                "2000",
                // A replica's first sync would otherwise wait 5 s for others to share it.
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                &dir.to_string_lossy(),
            ];
            let mut node = RedisServer {
                child: None,
                port,
                extra: extra.iter().map(|a| a.to_string()).collect(),
            };
            node.restart().await;
            nodes.push(node);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let created = create
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli must be installed: run `bash .ci/setup`");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = Self { nodes, dir };
        for node in &cluster.nodes {
            eventually("every node sees the cluster ok", PATIENCE, || async {
                let info = cli(node.port, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok").then_some(())
            })
            .await;
            eventually(
                "every replica in sync with its master",
                PATIENCE,
                || async {
                    let role = cli(node.port, &["ROLE"]);
                    (role.starts_with("master") || role.contains("\nconnected\n")).then_some(())
                },
            )
            .await;
        }
        cluster
    }

    /// fred's URL for the cluster, every node a seed.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", node.port));
        }
        url
    }

    /// The ports of the masters, as the cluster sees them now.
    pub fn master_ports(&self) -> Vec<u16> {
        cli(self.nodes[0].port, &["CLUSTER", "NODES"])
            .lines()
            .filter(|line| line.contains("master") && !line.contains("fail"))
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter_map(|address| address.split(['@', ':']).nth(1)?.parse().ok())
            .collect()
    }
}

impl RedisCluster {
    /// The port of the master holding `user`'s history (it must have one).
    pub fn master_of(&self, user: &str) -> u16 {
        let pattern = format!("ev:*:meta:{user}");
        self.master_ports()
            .into_iter()
            .find(|port| {
                !cli(*port, &["--scan", "--pattern", &pattern])
                    .trim()
                    .is_empty()
            })
            .expect("a master holds the user's history")
    }

    /// Moves hash slot `slot` from the master on `from` to the master on `to`, keys and
    /// all, the way `redis-cli --cluster reshard` moves each slot.
    pub fn move_slot(&self, slot: u16, from: u16, to: u16) {
        let id = |port: u16| cli(port, &["CLUSTER", "MYID"]).trim().to_string();
        let (from_id, to_id) = (id(from), id(to));
        let slot = slot.to_string();
        assert!(cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]).contains("OK"));
        assert!(cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]).contains("OK"));
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            let keys: Vec<&str> = keys.split_whitespace().collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            migrate.extend(keys);
            assert!(cli(from, &migrate).contains("OK"), "MIGRATE");
        }
        for node in &self.nodes {
            cli(node.port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p port args...`, its whole output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed: run `bash .ci/setup`");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A free port below the kernel's ephemeral range (from 32768 on Linux): a port the
/// kernel handed out (binding port 0) can be taken by any outgoing connection while a
/// test has killed the server that used it, and that server then cannot come back on it
/// (a cluster node restarted after `kill -9`, say).
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Test binaries running at once start at different places.
    let offset = (std::process::id() % u32::from(COUNT)) as u16;
    for _ in 0..COUNT {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (offset.wrapping_add(step)) % COUNT;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT)
}

/// A master, its replica and three Sentinels watching them (quorum 2), on free loopback
/// ports, without persistence; every process killed on drop.
pub struct RedisSentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<std::process::Child>,
    sentinel_ports: Vec<u16>,
    dir: PathBuf,
}

impl RedisSentinels {
    /// The name the Sentinels know the master by.
    pub const SERVICE: &'static str = "events";

    pub async fn start() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "events-test-sentinel-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the Sentinels' files");
        let master = RedisServer::start().await;
        let replica = RedisServer::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
            "--repl-diskless-sync-delay".into(),
            "0".into(),
        ])
        .await;
        eventually("the replica in sync", PATIENCE, || async {
            cli(replica.port, &["ROLE"])
                .contains("\nconnected\n")
                .then_some(())
        })
        .await;
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            // A Sentinel rewrites its file as it learns: one each.
            let file = dir.join(format!("sentinel-{port}.conf"));
            let conf = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {service} 127.0.0.1 {master} 2\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 4000\n",
                dir.display(),
                service = Self::SERVICE,
                master = master.port,
            );
            std::fs::write(&file, conf).expect("the Sentinel's file is written");
            let child = Command::new("redis-server")
                .arg(&file)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server must be installed: run `bash .ci/setup`");
            sentinels.push(child);
            sentinel_ports.push(port);
        }
        let watched = Self {
            master,
            replica,
            sentinels,
            sentinel_ports,
            dir,
        };
        for port in &watched.sentinel_ports {
            eventually(
                "every Sentinel knows the replica and the others",
                PATIENCE,
                || async {
                    let replicas = cli(*port, &["SENTINEL", "REPLICAS", Self::SERVICE]);
                    let others = cli(*port, &["SENTINEL", "SENTINELS", Self::SERVICE]);
                    let ports = |text: &str| text.lines().filter(|l| l.trim() == "port").count();
                    (ports(&replicas) == 1 && ports(&others) == 2).then_some(())
                },
            )
            .await;
        }
        watched
    }

    /// fred's URL: through the Sentinels, to whichever server is the master.
    pub fn url(&self) -> String {
        let mut url = format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={}",
            self.sentinel_ports[0],
            Self::SERVICE
        );
        for port in &self.sentinel_ports[1..] {
            url.push_str(&format!("&node=127.0.0.1:{port}"));
        }
        url
    }

    /// The master's port, as the Sentinels say now.
    pub fn master_port(&self) -> Option<u16> {
        let answer = cli(
            self.sentinel_ports[0],
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::SERVICE],
        );
        answer.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for sentinel in &mut self.sentinels {
            let _ = sentinel.kill();
            let _ = sentinel.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
