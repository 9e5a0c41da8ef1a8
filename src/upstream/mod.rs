//! Upstreams: a named set of endpoints, a balancer over them and a pooled client.
//!
//! Lifecycle. An upstream has *members* (its static targets, or what discovery lists) and a
//! *serving set*: the members whose health checks pass and that are not ejected. Both live
//! behind `ArcSwap`; requests pick from the serving set without locks, while discovery,
//! health checks and outlier detection replace it whole through `refresh`, the one place
//! where "who serves" is decided. Background tasks (the Consul watch, the health checker,
//! ejection timers) hold only a `Weak` reference and are aborted when the upstream drops,
//! so a reload that rebuilds an upstream stops its old tasks, and a reload that keeps it
//! (same definition) keeps its tasks and state.

mod balancer;
pub mod breaker;
pub mod call;
pub mod discovery;
pub mod health;
pub mod limit;
pub mod outlier;
pub mod proxy;
pub mod replay;
pub mod retry;
pub mod tls;
pub mod validate;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::uri::Authority;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

pub use balancer::Balancer;

use crate::wire::h1::pool::Pool;
use crate::wire::tls::ClientTls;

const SWEEP_EVERY: Duration = Duration::from_secs(5);

use crate::config::{ConsulConfig, UpstreamConfig};
use crate::observe::{AttemptOutcome, EndpointMetrics, Metrics, ResilienceMetrics};
use crate::upstream::discovery::DiscoveryStatus;

/// Why a call to an upstream failed. The top layer (`error::GatewayError`) gives each its
/// status; the retry policy (`retries.on`) decides which are worth another try.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("no endpoint available for upstream {0}")]
    NoEndpoint(String),
    #[error("upstream connection failed")]
    ConnectFailed,
    /// The connection opened; the TLS handshake failed (details are logged, not sent).
    #[error("TLS handshake with upstream {0} failed")]
    TlsHandshake(String),
    #[error("upstream timed out")]
    Timeout,
    /// Not valid HTTP, or the connection broke before the response head ended.
    #[error("invalid response from upstream")]
    InvalidResponse,
    #[error("upstream {0} is failing; its circuit breaker is open")]
    CircuitOpen(String),
    #[error("upstream {0} is at its connection limit")]
    Overloaded(String),
    /// The client's body failed on the way, not the upstream.
    #[error("request body is too large")]
    RequestBodyTooLarge,
    #[error("could not read the request body")]
    RequestBodyUnreadable,
    /// The client's body, kept in memory for a replay, did not arrive within the
    /// request's deadline.
    #[error("request body not received in time")]
    RequestBodyTimeout,
}

/// Checks a target address (`host:port`) and returns it as a URI authority.
pub fn parse_target(address: &str) -> Result<Authority, String> {
    let bad = || format!("invalid target {address:?} (expected host:port such as 127.0.0.1:3001)");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) || address.contains('/') {
        return Err(bad());
    }
    address.parse::<Authority>().map_err(|_| bad())
}

/// Where an endpoint came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Static,
    Consul,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Consul => "consul",
        }
    }
}

#[derive(Debug)]
pub struct Endpoint {
    pub address: String,
    pub authority: Authority,
    pub weight: u32,
    pub source: Source,
    /// Requests sent to this endpoint whose response head has not arrived yet: what
    /// `least_request` balances on and `/upstreams` shows as `in_flight`. A response whose
    /// body is still streaming no longer counts.
    awaiting_head: AtomicUsize,
    pub metrics: EndpointMetrics,
    pub health: health::HealthState,
    pub outlier: outlier::EndpointOutlier,
    /// `max_connections`: one permit per request in flight to this endpoint.
    pub permits: Option<Arc<Semaphore>>,
    /// Idle keep-alive connections to this endpoint.
    pub pool: Arc<Pool>,
    /// Its multiplexed connections, for `protocol: h2` and `h2c`.
    pub h2: crate::wire::h2::H2Pool,
}

impl Endpoint {
    pub fn build(
        upstream: &str,
        address: &str,
        weight: u32,
        source: Source,
        max_connections: Option<usize>,
        keepalive: &crate::config::KeepaliveConfig,
        metrics: &ResilienceMetrics,
    ) -> Result<Endpoint, String> {
        Ok(Endpoint {
            address: address.to_string(),
            authority: parse_target(address)?,
            weight,
            source,
            awaiting_head: AtomicUsize::new(0),
            metrics: metrics.endpoint(upstream, address),
            health: health::HealthState::default(),
            outlier: outlier::EndpointOutlier::default(),
            permits: max_connections.map(|n| Arc::new(Semaphore::new(n))),
            pool: Arc::new(Pool::new(keepalive.idle_timeout.0, keepalive.max_idle)),
            h2: crate::wire::h2::H2Pool::default(),
        })
    }

    pub fn awaiting_head(&self) -> usize {
        self.awaiting_head.load(Ordering::Relaxed)
    }

    /// Counts a request as awaiting its response head until the guard is dropped.
    pub fn await_head(self: &Arc<Self>) -> AwaitingHead {
        self.awaiting_head.fetch_add(1, Ordering::Relaxed);
        AwaitingHead(self.clone())
    }

    /// Listed, passing its checks and not ejected: the one rule for "serves traffic".
    fn serves(&self) -> bool {
        self.health.is_healthy() && !self.outlier.is_ejected()
    }

    fn state(&self) -> &'static str {
        if !self.health.is_healthy() {
            "unhealthy"
        } else if self.outlier.is_ejected() {
            "ejected"
        } else {
            "healthy"
        }
    }
}

pub struct AwaitingHead(Arc<Endpoint>);

impl Drop for AwaitingHead {
    fn drop(&mut self) {
        self.0.awaiting_head.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Balancer,
}

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub config: UpstreamConfig,
    /// The `consul:` section this upstream was built with (only when it uses discovery).
    pub consul: Option<ConsulConfig>,
    members: ArcSwap<Vec<Arc<Endpoint>>>,
    endpoints: ArcSwap<EndpointSet>,
    refreshing: Mutex<()>,
    /// TLS to the endpoints (`tls:`), swapped in place when a reload re-reads its files.
    pub tls: ArcSwapOption<ClientTls>,
    /// `portico_upstream_tls_handshakes_total` for `ok` and `failed`.
    tls_handshakes: [prometheus::IntCounter; 2],
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub outlier: Option<outlier::OutlierPolicy>,
    pub breaker: Option<breaker::Breaker>,
    pub retry: Option<retry::RetryPolicy>,
    pub limits: limit::Limits,
    pub discovery: Option<DiscoveryStatus>,
    pub metrics: ResilienceMetrics,
    me: Weak<Upstream>,
    /// Until `start_tasks` runs: `Some`, holding the Consul client its watch will use.
    unstarted: Mutex<Option<Option<crate::upstream::discovery::consul::ConsulClient>>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Upstream {
    /// Builds an upstream without background tasks (static targets only).
    pub fn build(
        name: &str,
        config: &UpstreamConfig,
        metrics: &Metrics,
    ) -> Result<Upstream, String> {
        Ok(Upstream::assemble(name, config, None, &metrics.resilience)?(Weak::new()))
    }

    /// Builds an upstream ready to serve, without starting anything: its background tasks
    /// (Consul watch, health checks, pool sweeper) start with `start_tasks`, once the
    /// Runtime that holds it is in service, so a reload that fails leaves nothing running.
    /// The tasks stop when the returned `Arc` (and every clone) is dropped. `previous` is
    /// the upstream of the same name in the Runtime being replaced: when both use
    /// discovery, its last known endpoints serve until Consul answers the new watch.
    pub fn prepare(
        name: &str,
        config: &UpstreamConfig,
        consul: Option<&ConsulConfig>,
        metrics: &Metrics,
        previous: Option<&Upstream>,
    ) -> Result<Arc<Upstream>, String> {
        let consul = match (&config.discovery, consul) {
            (None, _) => None,
            (Some(_), Some(c)) => Some(c.clone()),
            (Some(_), None) => return Err("discovery needs the consul: section".into()),
        };
        let consul_client = match (&config.discovery, &consul) {
            (Some(_), Some(c)) => Some(crate::upstream::discovery::consul::ConsulClient::new(c)?),
            _ => None,
        };
        let make = Upstream::assemble(name, config, consul, &metrics.resilience)?;
        let upstream = Arc::new_cyclic(|me| make(me.clone()));
        *upstream.unstarted.lock().unwrap_or_else(|p| p.into_inner()) = Some(consul_client);
        if let Some(prev) = previous.filter(|p| p.discovery.is_some()) {
            crate::upstream::discovery::carry_over(&upstream, prev);
        }
        Ok(upstream)
    }

    /// Does everything that can fail, then returns the infallible last step, which needs
    /// the upstream's own weak reference (for the tasks it spawns later).
    fn assemble(
        name: &str,
        config: &UpstreamConfig,
        consul: Option<ConsulConfig>,
        metrics: &ResilienceMetrics,
    ) -> Result<impl FnOnce(Weak<Upstream>) -> Upstream, String> {
        let mut members = Vec::with_capacity(config.targets.len());
        for target in &config.targets {
            members.push(Arc::new(Endpoint::build(
                name,
                target.address(),
                target.weight(),
                Source::Static,
                config.max_connections,
                &config.keepalive,
                metrics,
            )?));
        }
        let breaker = config
            .circuit_breaker
            .as_ref()
            .map(|c| breaker::Breaker::new(name, c, metrics))
            .transpose()?;
        let retry = config
            .retries
            .as_ref()
            .map(|r| retry::RetryPolicy::build(r, name, metrics))
            .transpose()?;
        let tls = tls::build_tls(name, config, metrics)?;
        let (name, config, metrics) = (name.to_string(), config.clone(), metrics.clone());
        Ok(move |me: Weak<Upstream>| {
            let upstream = Upstream {
                endpoints: ArcSwap::from_pointee(EndpointSet {
                    balancer: Balancer::new(config.balance, &members),
                    endpoints: members.clone(),
                }),
                members: ArcSwap::from_pointee(members),
                refreshing: Mutex::new(()),
                tls: ArcSwapOption::from(tls),
                tls_handshakes: ["ok", "failed"]
                    .map(|result| metrics.tls_handshakes.with_label_values(&[&name, result])),
                request_timeout: config.timeouts.request.0,
                connect_timeout: config.timeouts.connect.0,
                outlier: config.outlier_detection.as_ref().map(|c| {
                    // The series exists from the start, at 0, so rate() and alerts work
                    // before the first ejection.
                    metrics.ejections.with_label_values(&[&name]);
                    outlier::OutlierPolicy::from(c)
                }),
                breaker,
                retry,
                limits: limit::Limits::new(&name, config.max_pending, &metrics),
                discovery: config
                    .discovery
                    .as_ref()
                    .map(|d| DiscoveryStatus::new(&name, &d.consul, &metrics)),
                consul,
                metrics,
                me,
                unstarted: Mutex::new(None),
                tasks: Mutex::new(Vec::new()),
                name,
                config,
            };
            upstream.update_gauges(&upstream.members.load());
            upstream
        })
    }

    /// Starts the background tasks of an upstream built by `prepare`; does nothing the
    /// second time, or for an upstream kept from the previous Runtime.
    pub fn start_tasks(&self) {
        // `portico check` builds no Runtime; without a tokio runtime there is nothing to run.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(consul_client) = self
            .unstarted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(discovery), Some(client)) = (&self.config.discovery, consul_client) {
            let watch = crate::upstream::discovery::consul::watch(
                self.me.clone(),
                client,
                discovery.consul.service.clone(),
                discovery.consul.tag.clone(),
            );
            tasks.push(handle.spawn(watch).abort_handle());
        }
        if let Some(check) = &self.config.health_check {
            let checker = health::run(self.me.clone(), health::CheckPolicy::from(check));
            tasks.push(handle.spawn(checker).abort_handle());
        }
        tasks.push(handle.spawn(sweep_pools(self.me.clone())).abort_handle());
    }

    /// Whether the definition (and, for discovery, the consul section) is unchanged, so
    /// a reload can keep this upstream with its tasks, pools and state.
    pub fn same_definition(&self, config: &UpstreamConfig, consul: Option<&ConsulConfig>) -> bool {
        &self.config == config && (config.discovery.is_none() || self.consul.as_ref() == consul)
    }

    /// Re-reads the TLS files of an upstream a reload keeps (a certificate or key renewed
    /// under the same path); `use_tls` puts the result in service.
    pub fn reread_tls(&self) -> Result<Option<Arc<ClientTls>>, String> {
        tls::build_tls(&self.name, &self.config, &self.metrics)
    }

    /// New connections from now on use `tls`.
    pub fn use_tls(&self, tls: Option<Arc<ClientTls>>) {
        self.tls.store(tls);
    }

    /// The TLS handshake with `endpoint` failed: counted, logged with the reason (which
    /// the client never sees), and answered as `TlsHandshake`.
    pub fn tls_failed(&self, endpoint: &Endpoint, error: &std::io::Error) -> UpstreamError {
        self.tls_handshakes[1].inc();
        tracing::warn!(upstream = %self.name, endpoint = %endpoint.address, error = %error, "TLS handshake with the upstream failed");
        UpstreamError::TlsHandshake(self.name.clone())
    }

    /// Counts a connection opened to `endpoint` (and its TLS handshake, when it has one).
    pub fn opened(&self, endpoint: &Endpoint, stream: &crate::wire::connect::UpstreamStream) {
        endpoint.metrics.connections_opened.inc();
        if stream.is_tls() {
            self.tls_handshakes[0].inc();
        }
    }

    /// Ready to serve: discovery has answered once, or the static targets are listed.
    pub fn ready(&self) -> bool {
        match &self.discovery {
            Some(d) => d.synced(),
            None => !self.members.load().is_empty(),
        }
    }

    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        set.balancer
            .pick(&set.endpoints)
            .and_then(|i| set.endpoints.get(i).cloned())
    }

    /// Picks a serving endpoint, preferring one not in `tried` (retries go elsewhere when
    /// another endpoint exists).
    pub fn pick_excluding(&self, tried: &[Arc<Endpoint>]) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        let first = set
            .balancer
            .pick(&set.endpoints)
            .and_then(|i| set.endpoints.get(i).cloned())?;
        let was_tried = |e: &Arc<Endpoint>| tried.iter().any(|t| t.address == e.address);
        if !was_tried(&first) {
            return Some(first);
        }
        let other = set.endpoints.iter().find(|e| !was_tried(e)).cloned();
        Some(other.unwrap_or(first))
    }

    /// The serving set (what the balancer picks from).
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    /// Every listed endpoint, serving or not.
    pub fn members(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.members.load_full()
    }

    /// Replaces the listed endpoints (discovery); endpoints that stay keep their health,
    /// ejection state and counters; requests in flight keep their endpoint.
    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        self.members.store(Arc::new(endpoints));
        self.refresh();
    }

    /// Recomputes the serving set from the members; swaps it only when it changed.
    pub fn refresh(&self) {
        let _one = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let members = self.members.load();
        let serving: Vec<Arc<Endpoint>> = members.iter().filter(|e| e.serves()).cloned().collect();
        let current = self.endpoints.load();
        let same = serving.len() == current.endpoints.len()
            && serving
                .iter()
                .zip(&current.endpoints)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            tracing::info!(
                upstream = %self.name,
                serving = serving.len(),
                listed = members.len(),
                "serving endpoints changed"
            );
            self.endpoints.store(Arc::new(EndpointSet {
                balancer: Balancer::new(self.config.balance, &serving),
                endpoints: serving,
            }));
        }
        self.update_gauges(&members);
    }

    fn update_gauges(&self, members: &[Arc<Endpoint>]) {
        for state in ["healthy", "unhealthy", "ejected"] {
            let n = members.iter().filter(|e| e.state() == state).count();
            self.metrics
                .upstream_endpoints
                .with_label_values(&[self.name.as_str(), state])
                .set(n as i64);
        }
    }

    /// Feeds one attempt's outcome to outlier detection and the circuit breaker.
    pub fn observe(&self, endpoint: &Arc<Endpoint>, outcome: AttemptOutcome) {
        let failed = is_failure(outcome);
        if let Some(policy) = &self.outlier {
            if endpoint.outlier.record(failed) >= policy.consecutive_errors {
                outlier::eject(self, endpoint, policy);
            }
        }
        if let Some(breaker) = &self.breaker {
            breaker.record(failed);
        }
    }

    /// Spawns a task holding only a weak reference to this upstream.
    /// The task is one of the upstream's own: aborted when the upstream is dropped, so a
    /// timer (an ejection's) never outlives it holding its endpoints and their pools.
    pub(crate) fn spawn_weak<F, Fut>(&self, f: F)
    where
        F: FnOnce(Weak<Upstream>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let task = handle.spawn(f(self.me.clone())).abort_handle();
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }

    /// JSON for `GET /upstreams`.
    pub fn describe(&self) -> Value {
        let now = Instant::now();
        let endpoints: Vec<Value> = self
            .members
            .load()
            .iter()
            .map(|e| {
                json!({
                    "address": e.address,
                    "weight": e.weight,
                    "source": e.source.label(),
                    "state": e.state(),
                    "health": e.health.label(self.config.health_check.is_some()),
                    "ejected": e.outlier.is_ejected(),
                    "ejected_for_ms": e.outlier.remaining(now).map(|d| d.as_millis() as u64),
                    "ejections": e.outlier.ejections(),
                    "in_flight": e.awaiting_head(),
                })
            })
            .collect();
        json!({
            "balance": self.config.balance,
            "source": if self.discovery.is_some() { "consul" } else { "static" },
            "discovery": self.discovery.as_ref().map(|d| d.describe()),
            "breaker": self.breaker.as_ref().map_or("none", |b| b.state().label()),
            "serving": self.endpoints.load().endpoints.len(),
            "endpoints": endpoints,
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

/// An attempt that counts against an endpoint: 5xx, connect failure, timeout, garbage.
pub fn is_failure(outcome: AttemptOutcome) -> bool {
    !matches!(
        outcome,
        AttemptOutcome::Success | AttemptOutcome::ClientError
    )
}

/// Sweeps the pools of an upstream's endpoints until the upstream is dropped, so idle
/// connections the upstream closed do not sit in CLOSE_WAIT.
async fn sweep_pools(upstream: Weak<Upstream>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        for endpoint in upstream.members().iter() {
            endpoint.pool.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(parse_target("127.0.0.1:3001").is_ok());
        assert!(parse_target("users.internal:80").is_ok());
        assert!(parse_target("127.0.0.1").is_err());
        assert!(parse_target(":80").is_err());
        assert!(parse_target("http://x:80").is_err());
        assert!(parse_target("x:0").is_err());
        assert!(parse_target("x:99999").is_err());
    }
}
