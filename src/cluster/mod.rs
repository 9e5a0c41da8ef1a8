//! Replicas that share state through Redis (`cluster.redis`). One `Cluster` per config
//! (reused across reloads while its settings are the same) owns the one connection:
//! a multiplexed, auto-reconnecting `ConnectionManager` for one Redis, or a cluster
//! connection for a Redis Cluster. Concurrent commands from every request share it and
//! are pipelined on the wire by redis-rs, so a decision costs one round trip and no
//! connection of its own.
//!
//! Nothing here ever waits longer than `timeout`: a command that does not answer in time
//! is an error the caller decides without (`on_redis_error`). Health (up, the last error)
//! is kept from every command and from a PING each second, for `/readyz` and
//! `portico_cluster_redis_up`; a state change is logged once, not per request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus::{Histogram, IntCounter, IntGauge};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use crate::config::{ClusterConfig, OnRedisError};
use topology::Topology;

pub mod topology;
use crate::observe::ClusterMetrics;

/// How often the health task PINGs (and, for a Redis Cluster, retries connecting).
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// A Lua script Redis runs by its digest (`EVALSHA`): one command per call, and the
/// source sent only when Redis asks for it (`Cluster::eval`).
pub struct Script {
    source: &'static str,
    hash: String,
}

impl Script {
    pub fn new(source: &'static str) -> Script {
        Script {
            source,
            hash: redis::Script::new(source).get_hash().to_string(),
        }
    }

    /// `EVALSHA <digest> <keys>`; the caller adds the keys, then the arguments.
    pub fn call(&self, keys: usize) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.hash).arg(keys);
        cmd
    }
}

/// What a Redis command was for: the `op` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    RateLimit = 0,
    Ping = 1,
    Split = 2,
}

impl Op {
    const ALL: [Op; 3] = [Op::RateLimit, Op::Ping, Op::Split];

    fn label(self) -> &'static str {
        match self {
            Op::RateLimit => "ratelimit",
            Op::Ping => "ping",
            Op::Split => "split",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("not connected to redis yet")]
    NotConnected,
    #[error("redis: {0}")]
    Redis(String),
    /// The script is not loaded (Redis restarted or flushed it): `eval` loads it.
    #[error("redis: script not loaded")]
    NoScript,
}

/// The master a set of Sentinels names, found again after a failover.
struct SentinelMaster {
    /// The connection to the master last found; cleared when it fails.
    current: ArcSwapOption<ConnectionManager>,
    client: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    settings: redis::aio::ConnectionManagerConfig,
}

impl SentinelMaster {
    /// Asks the Sentinels for the master and connects to it.
    async fn resolve(&self) -> Result<(), String> {
        let client = {
            let mut sentinel = self.client.lock().await;
            tokio::time::timeout(Duration::from_secs(2), sentinel.async_get_client())
                .await
                .map_err(|_| "the sentinels did not answer".to_string())?
                .map_err(|e| describe(&e))?
        };
        let manager = ConnectionManager::new_lazy_with_config(client, self.settings.clone())
            .map_err(|e| describe(&e))?;
        self.current.store(Some(Arc::new(manager)));
        Ok(())
    }
}

enum Connection {
    Single(ConnectionManager),
    /// Set once the first connection to the Redis Cluster succeeded.
    Cluster(
        ArcSwapOption<ClusterConnection>,
        Box<redis::cluster::ClusterClient>,
    ),
    Sentinel(Box<SentinelMaster>),
}

struct Handles {
    errors: Vec<IntCounter>,
    duration: Vec<Histogram>,
    up: IntGauge,
}

pub struct Cluster {
    pub config: ClusterConfig,
    pub on_error: OnRedisError,
    pub key_prefix: String,
    /// This replica in shared records (`host:pid:random`).
    pub replica: Arc<str>,
    timeout: Duration,
    connection: Connection,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
    handles: Handles,
    health_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cluster(up: {})", self.is_up())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(task) = self.health_task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
}

/// Checks `cluster:`; a problem is (field, message). Credentials are never repeated.
pub fn check(config: &ClusterConfig) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    match topology::parse(&config.redis) {
        Err(e) => problems.push(("redis.url", e)),
        Ok(Topology::Cluster(nodes)) => {
            for node in nodes {
                if redis::Client::open(node.as_str()).is_err() {
                    problems.push((
                        "redis.nodes",
                        format!("invalid node {}", crate::config::redact_userinfo(&node)),
                    ));
                }
            }
        }
        Ok(Topology::Sentinel { sentinels, .. }) => {
            for node in sentinels {
                if redis::Client::open(node.as_str()).is_err() {
                    problems.push(("redis.url", format!("invalid sentinel {node}")));
                }
            }
        }
        Ok(Topology::Single(url)) => {
            if let Err(e) = redis::Client::open(url.as_str()) {
                problems.push((
                    "redis.url",
                    format!("invalid redis URL ({})", e.kind_label()),
                ));
            }
        }
    }
    if config.redis.timeout.0.is_zero() {
        problems.push(("redis.timeout", "must be above zero".into()));
    }
    if let Some(path) = &config.redis.ca_file {
        if let Err(e) = std::fs::read(path) {
            problems.push(("redis.ca_file", format!("cannot read {path}: {e}")));
        }
    }
    problems
}

/// The trusted roots of `ca_file`, for a `rediss://` connection.
fn certificates(
    config: &crate::config::RedisConfig,
) -> Result<Option<redis::TlsCertificates>, String> {
    let Some(path) = &config.ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| format!("redis.ca_file: cannot read {path}: {e}"))?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A client for one URL, with `ca_file`'s roots when set.
fn client(url: &str, certs: Option<&redis::TlsCertificates>) -> Result<redis::Client, String> {
    let made = match certs {
        Some(certs) => redis::Client::build_with_tls(url, certs.clone()),
        None => redis::Client::open(url),
    };
    made.map_err(|e| format!("invalid redis URL ({})", e.kind_label()))
}

trait KindLabel {
    fn kind_label(&self) -> String;
}

impl KindLabel for redis::RedisError {
    fn kind_label(&self) -> String {
        format!("{:?}", self.kind())
    }
}

impl Cluster {
    /// Prepares the connection without connecting (the first command, or the health
    /// task, connects). Needs a Tokio runtime.
    pub fn build(config: &ClusterConfig, metrics: &ClusterMetrics) -> Result<Arc<Cluster>, String> {
        if let Some((field, e)) = check(config).into_iter().next() {
            return Err(format!("{field}: {e}"));
        }
        let timeout = config.redis.timeout.0;
        let certs = certificates(&config.redis)?;
        let settings = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = match topology::parse(&config.redis)? {
            Topology::Single(url) => {
                let client = client(url.as_str(), certs.as_ref())?;
                let manager = ConnectionManager::new_lazy_with_config(client, settings)
                    .map_err(|e| format!("redis connection ({})", e.kind_label()))?;
                Connection::Single(manager)
            }
            Topology::Cluster(nodes) => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(timeout.max(Duration::from_millis(200)))
                    .response_timeout(timeout);
                if let Some(certs) = certs {
                    builder = builder.certs(certs);
                }
                let client = builder
                    .build()
                    .map_err(|e| format!("redis cluster ({})", e.kind_label()))?;
                Connection::Cluster(ArcSwapOption::empty(), Box::new(client))
            }
            Topology::Sentinel {
                sentinels,
                master,
                master_url,
            } => {
                use redis::IntoConnectionInfo;
                let master_settings = master_url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| format!("redis sentinel ({})", e.kind_label()))?
                    .redis_settings()
                    .clone();
                let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(master_settings);
                let client = redis::sentinel::SentinelClient::build(
                    sentinels,
                    master,
                    Some(node),
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(|e| format!("redis sentinel ({})", e.kind_label()))?;
                Connection::Sentinel(Box::new(SentinelMaster {
                    current: ArcSwapOption::empty(),
                    client: tokio::sync::Mutex::new(client),
                    settings,
                }))
            }
        };
        let handles = Handles {
            errors: Op::ALL
                .iter()
                .map(|op| metrics.errors.with_label_values(&[op.label()]))
                .collect(),
            duration: Op::ALL
                .iter()
                .map(|op| metrics.duration.with_label_values(&[op.label()]))
                .collect(),
            up: metrics.up.clone(),
        };
        handles.up.set(0);
        Ok(Arc::new(Cluster {
            config: config.clone(),
            on_error: config.on_redis_error,
            key_prefix: config.redis.key_prefix.clone(),
            replica: replica_id(),
            timeout,
            connection,
            up: AtomicBool::new(false),
            last_error: Mutex::new(None),
            handles,
            health_task: Mutex::new(None),
        }))
    }

    /// Starts the health task (once): a PING every second, which also makes the first
    /// connection and notices when Redis comes back.
    pub fn start(self: &Arc<Self>) {
        let Ok(mut task) = self.health_task.lock() else {
            return;
        };
        if task.is_some() {
            return;
        }
        let weak = Arc::downgrade(self);
        *task = Some(tokio::spawn(health(weak)));
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Runs `call` (made by `script.call`), loading the script first when Redis does
    /// not know it (a restart, `SCRIPT FLUSH`) and running it again.
    pub async fn eval<T: redis::FromRedisValue>(
        &self,
        op: Op,
        script: &Script,
        call: &redis::Cmd,
    ) -> Result<T, ClusterError> {
        match self.query(op, call).await {
            Err(ClusterError::NoScript) => {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(script.source);
                self.query::<String>(op, &load).await?;
                self.query(op, call).await
            }
            other => other,
        }
    }

    /// Runs one command within the timeout.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        op: Op,
        cmd: &redis::Cmd,
    ) -> Result<T, ClusterError> {
        let started = Instant::now();
        let outcome = match &self.connection {
            Connection::Single(manager) => {
                let mut conn = manager.clone();
                tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await
            }
            Connection::Cluster(conn, _) => match conn.load_full() {
                Some(conn) => {
                    let mut conn = (*conn).clone();
                    tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await
                }
                None => return Err(self.failed(op, ClusterError::NotConnected)),
            },
            Connection::Sentinel(master) => match master.current.load_full() {
                Some(manager) => {
                    let mut conn = (*manager).clone();
                    tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await
                }
                None => return Err(self.failed(op, ClusterError::NotConnected)),
            },
        };
        self.finish(op, started, outcome)
    }

    async fn ping(&self) -> Result<(), ClusterError> {
        let started = Instant::now();
        let cmd = redis::cmd("PING");
        let outcome: Result<redis::RedisResult<String>, _> = match &self.connection {
            Connection::Single(manager) => {
                let mut conn = manager.clone();
                tokio::time::timeout(
                    self.timeout.max(Duration::from_millis(500)),
                    cmd.query_async(&mut conn),
                )
                .await
            }
            Connection::Cluster(slot, client) => {
                if slot.load().is_none() {
                    match tokio::time::timeout(
                        Duration::from_secs(2),
                        client.get_async_connection(),
                    )
                    .await
                    {
                        Ok(Ok(conn)) => slot.store(Some(Arc::new(conn))),
                        Ok(Err(e)) => {
                            return Err(self.failed(Op::Ping, ClusterError::Redis(describe(&e))))
                        }
                        Err(_) => {
                            return Err(self
                                .failed(Op::Ping, ClusterError::Timeout(Duration::from_secs(2))))
                        }
                    }
                }
                match slot.load_full() {
                    Some(conn) => {
                        let mut conn = (*conn).clone();
                        tokio::time::timeout(
                            self.timeout.max(Duration::from_millis(500)),
                            cmd.query_async(&mut conn),
                        )
                        .await
                    }
                    None => return Err(self.failed(Op::Ping, ClusterError::NotConnected)),
                }
            }
            Connection::Sentinel(master) => {
                if master.current.load().is_none() {
                    if let Err(e) = master.resolve().await {
                        return Err(self.failed(Op::Ping, ClusterError::Redis(e)));
                    }
                }
                match master.current.load_full() {
                    Some(manager) => {
                        let mut conn = (*manager).clone();
                        tokio::time::timeout(
                            self.timeout.max(Duration::from_millis(500)),
                            cmd.query_async(&mut conn),
                        )
                        .await
                    }
                    None => return Err(self.failed(Op::Ping, ClusterError::NotConnected)),
                }
            }
        };
        let answered = self.finish(Op::Ping, started, outcome).map(|_: String| ());
        // A master that stopped answering may have been replaced: ask the Sentinels
        // again at the next tick.
        if let (Err(_), Connection::Sentinel(master)) = (&answered, &self.connection) {
            master.current.store(None);
        }
        answered
    }

    fn finish<T>(
        &self,
        op: Op,
        started: Instant,
        outcome: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, ClusterError> {
        self.handles.duration[op as usize].observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(value)) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis is reachable: shared state in use");
                    self.handles.up.set(1);
                    if let Ok(mut e) = self.last_error.lock() {
                        *e = None;
                    }
                }
                Ok(value)
            }
            // Not a failure of Redis: the caller loads the script and runs it again.
            Ok(Err(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                Err(ClusterError::NoScript)
            }
            Ok(Err(e)) => Err(self.failed(op, ClusterError::Redis(describe(&e)))),
            Err(_) => Err(self.failed(op, ClusterError::Timeout(self.timeout))),
        }
    }

    fn failed(&self, op: Op, error: ClusterError) -> ClusterError {
        self.handles.errors[op as usize].inc();
        let message = error.to_string();
        let changed = self
            .last_error
            .lock()
            .map(|mut last| {
                let changed = last.as_deref() != Some(message.as_str());
                *last = Some(message.clone());
                changed
            })
            .unwrap_or(false);
        let was_up = self.up.swap(false, Ordering::Relaxed);
        self.handles.up.set(0);
        if was_up || changed {
            tracing::warn!(error = %message, "redis unavailable: shared decisions fall back (cluster.on_redis_error)");
        }
        error
    }
}

/// An error's text without anything that could carry a credential: the kind, and the
/// server's own message for server errors (WRONGPASS, NOAUTH, ...).
fn describe(e: &redis::RedisError) -> String {
    match e.code() {
        Some(code) => format!("{code}: {}", e.detail().unwrap_or("")),
        None => format!("{:?}", e.kind()),
    }
}

/// `host:pid:random`, unique per process and per `Cluster` (tests run several gateways
/// in one process).
fn replica_id() -> Arc<str> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "portico".into());
    let tag: u16 = rand::random();
    Arc::from(format!("{host}:{}:{tag:04x}", std::process::id()))
}

async fn health(cluster: Weak<Cluster>) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let _ = cluster.ping().await;
    }
}
