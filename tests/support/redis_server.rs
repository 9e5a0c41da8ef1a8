//! Real `redis-server` processes for tests, on free loopback ports, stopped on drop: one
//! server (optionally with a password), or a three-node Redis Cluster made with
//! `redis-cli --cluster create`. `available()` says why tests must skip when the Debian
//! package is not installed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tempfile_path::TempPath;

/// None when redis-server and redis-cli are installed, else the reason to skip.
pub fn missing() -> Option<String> {
    for tool in ["redis-server", "redis-cli"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (Debian package redis-server; .ci/run installs it)"
            ));
        }
    }
    None
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A TLS listener's files: the server's certificate and key, and the CA clients trust.
pub struct TlsFiles {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

pub struct Redis {
    pub port: u16,
    password: Option<String>,
    cluster_node: bool,
    tls: Option<TlsFiles>,
    dir: TempPath,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::launch(free_port(), None, false)
    }

    pub fn with_password(password: &str) -> Redis {
        Redis::launch(free_port(), Some(password.to_string()), false)
    }

    /// On a port chosen before (a gateway may be waiting for it already).
    pub fn on_port(port: u16) -> Redis {
        Redis::launch(port, None, false)
    }

    /// TLS only (`rediss://`), with the given certificate.
    pub fn with_tls(tls: TlsFiles) -> Redis {
        Redis::build(free_port(), None, false, Some(tls))
    }

    fn launch(port: u16, password: Option<String>, cluster_node: bool) -> Redis {
        Redis::build(port, password, cluster_node, None)
    }

    fn build(
        port: u16,
        password: Option<String>,
        cluster_node: bool,
        tls: Option<TlsFiles>,
    ) -> Redis {
        let dir = TempPath::new("portico-redis", "d");
        std::fs::create_dir_all(dir.path()).expect("redis dir");
        let mut redis = Redis {
            port,
            password,
            cluster_node,
            tls,
            dir,
            child: None,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--tls-cert-file", &tls.cert, "--tls-key-file", &tls.key])
                .args(["--tls-ca-cert-file", &tls.ca, "--tls-auth-clients", "no"]),
            None => cmd.args(["--port", &self.port.to_string()]),
        };
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        if self.cluster_node {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args([
                    "--cluster-config-file",
                    &format!("nodes-{}.conf", self.port),
                ]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        assert!(
            wait_for(Duration::from_secs(10), || self.ping()),
            "redis-server on port {} did not answer PING",
            self.port
        );
    }

    pub fn url(&self) -> String {
        if self.tls.is_some() {
            return format!("rediss://localhost:{}/0", self.port);
        }
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// Stops the server (SIGKILL: as abrupt as a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing was saved).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(tls) = &self.tls {
            cmd.args(["--tls", "--cacert", &tls.ca]);
        }
        if let Some(pw) = &self.password {
            cmd.args(["-a", pw, "--no-auth-warning"]);
        }
        if self.cluster_node {
            cmd.arg("-c");
        }
        let out = cmd.args(args).output().expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn ping(&self) -> bool {
        if self.tls.is_some() {
            return self.cli(&["ping"]).contains("PONG");
        }
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let command = match &self.password {
            Some(pw) => format!("AUTH {pw}\r\nPING\r\n"),
            None => "PING\r\n".to_string(),
        };
        if stream.write_all(command.as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        let mut seen = Vec::new();
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(5).any(|w| w == b"+PONG") {
                return true;
            }
            // LOADING and other errors: not ready yet.
            if seen.starts_with(b"-") {
                return false;
            }
        }
        false
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-node Redis Cluster (no replicas), every slot assigned.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| Redis::launch(free_port(), None, true))
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        assert!(
            wait_for(Duration::from_secs(20), || cluster.nodes.iter().all(|n| n
                .cli(&["cluster", "info"])
                .contains("cluster_state:ok"))),
            "the cluster did not reach cluster_state:ok"
        );
        cluster
    }

    /// `redis+cluster://host:port,host:port,host:port`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Keys each node holds (its own slots only).
    pub fn keys_per_node(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| {
                let out = Command::new("redis-cli")
                    .args(["-h", "127.0.0.1", "-p", &n.port.to_string(), "dbsize"])
                    .output()
                    .expect("redis-cli");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0)
            })
            .collect()
    }
}

fn wait_for(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A master, a replica of it and one Sentinel watching them (quorum 1, failover after a
/// second of silence): enough for a real failover.
pub struct RedisSentinel {
    pub master: Redis,
    pub replica: Redis,
    pub sentinel_port: u16,
    sentinel: Child,
    _dir: TempPath,
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        let master = Redis::start();
        let replica_port = free_port();
        let replica = Redis::replica_of(replica_port, master.port);
        let dir = TempPath::new("portico-sentinel", "d");
        std::fs::create_dir_all(dir.path()).expect("sentinel dir");
        let sentinel_port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n",
                dir.path().display(),
                master.port
            ),
        )
        .expect("sentinel.conf");
        let sentinel = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis sentinel");
        let ready = wait_for(Duration::from_secs(10), || {
            Command::new("redis-cli")
                .args([
                    "-p",
                    &sentinel_port.to_string(),
                    "sentinel",
                    "get-master-addr-by-name",
                    "mymaster",
                ])
                .output()
                .is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stdout).contains(&master.port.to_string())
                })
        });
        assert!(ready, "the sentinel does not know the master");
        RedisSentinel {
            master,
            replica,
            sentinel_port,
            sentinel,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/mymaster", self.sentinel_port)
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.sentinel.kill();
        let _ = self.sentinel.wait();
    }
}

impl Redis {
    fn replica_of(port: u16, master: u16) -> Redis {
        let redis = Redis::build(port, None, false, None);
        redis.cli(&["replicaof", "127.0.0.1", &master.to_string()]);
        let synced = wait_for(Duration::from_secs(10), || {
            redis
                .cli(&["info", "replication"])
                .contains("master_link_status:up")
        });
        assert!(synced, "the replica did not sync");
        redis
    }
}
