//! The YAML contract (CONFIG.md v1) as plain serde structs. Nothing here has behaviour:
//! validation lives in `validate.rs`, compilation into runtime objects in `runtime.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::cluster::*;
use super::edge::*;
use super::units::{Duration, Percent, Size};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub consul: Option<ConsulConfig>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub jwt: BTreeMap<String, JwtConfig>,
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    #[serde(default)]
    pub caches: BTreeMap<String, CacheConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub telemetry: Option<TelemetryConfig>,
    #[serde(default)]
    pub consumers: BTreeMap<String, ConsumerConfig>,
    #[serde(default)]
    pub cors: BTreeMap<String, CorsConfig>,
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
}

/// Distributed tracing: W3C trace context in and out, spans exported over OTLP/HTTP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is added); empty: tracing off.
    #[serde(default)]
    pub otlp_endpoint: String,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of new traces recorded (0.0 to 1.0); a parent's decision is always kept.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// Context formats read from clients and sent upstream.
    #[serde(default = "default_propagate")]
    pub propagate: Vec<Propagation>,
}

fn default_service_name() -> String {
    "portico".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_propagate() -> Vec<Propagation> {
    vec![Propagation::Tracecontext, Propagation::Baggage]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    /// W3C `traceparent` and `tracestate`.
    Tracecontext,
    /// W3C `baggage`, passed on as it came.
    Baggage,
    /// Zipkin's single `b3` header.
    B3,
    /// Zipkin's `X-B3-*` headers.
    B3multi,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Duration,
    /// One JSON line per request on stdout.
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// TRACE reflects the request (cookies and credentials included) back: refused with
    /// 405 unless allowed.
    #[serde(default)]
    pub allow_trace: bool,
    #[serde(default)]
    pub path: PathConfig,
}

/// How request paths are read (`server.path`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathConfig {
    pub encoded_slash: crate::wire::path::EncodedSlash,
}

fn default_true() -> bool {
    true
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            tls: None,
            trusted_proxies: Vec::new(),
            limits: LimitsConfig::default(),
            shutdown_grace: default_shutdown_grace(),
            access_log: true,
            allow_trace: false,
            path: PathConfig::default(),
        }
    }
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: String,
    pub certificates: Vec<CertificateConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_request_headers: Size,
    /// The longest HTTP/1 request line (method, target, version); longer ones get 414.
    pub max_request_line: Size,
    pub max_request_body: Size,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Request header fields whose name contains `_`.
    pub underscore_headers: UnderscoreHeaders,
}

/// What happens to a request header whose name contains `_` (`X_User_Id`): CGI- and
/// WSGI-style backends read it as the same variable as `X-User-Id`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreHeaders {
    /// Removed before routing, counted.
    #[default]
    Drop,
    /// The request is refused with 400.
    Reject,
    /// Forwarded, except one that would read as a forwarded claim header.
    Allow,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_request_headers: Size(16 * 1024),
            max_request_line: Size(8 * 1024),
            max_request_body: Size(10 * 1024 * 1024),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            underscore_headers: UnderscoreHeaders::Drop,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulConfig {
    pub address: String,
    #[serde(default)]
    pub datacenter: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default = "default_consul_wait")]
    pub wait: Duration,
    /// For an `https://` address: trusted roots (PEM) and an optional client certificate.
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
}

fn default_consul_wait() -> Duration {
    Duration::from_secs(300)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    LeastRequest,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    #[serde(default)]
    pub retries: Option<RetriesConfig>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierConfig>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerConfig>,
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub max_pending: Option<usize>,
    #[serde(default)]
    pub keepalive: KeepaliveConfig,
    /// Present: every target of this upstream is reached over TLS.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// The HTTP version spoken to the targets.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`), multiplexed.
    H2,
    /// HTTP/2 without TLS, by prior knowledge.
    H2c,
    /// TLS with ALPN `h2`, else `http/1.1`, as each endpoint chooses.
    Auto,
}

/// TLS to an upstream's targets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// SNI and the name verified; default: the target's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Trusted roots (PEM); default: the system store, else the built-in Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// Idle keep-alive connections kept per endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeepaliveConfig {
    /// An idle connection is closed after this long; keep it below the upstream's own
    /// keep-alive timeout so the upstream never closes a connection Portico is about to use.
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint; 0 opens a new connection for every request.
    pub max_idle: usize,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig {
            idle_timeout: Duration::from_secs(60),
            max_idle: 1024,
        }
    }
}

/// `"127.0.0.1:3001"` or `{ address: "127.0.0.1:3001", weight: 3 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetConfig {
    Address(String),
    Weighted(WeightedTarget),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl TargetConfig {
    pub fn address(&self) -> &str {
        match self {
            TargetConfig::Address(a) => a,
            TargetConfig::Weighted(w) => &w.address,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            TargetConfig::Address(_) => 1,
            TargetConfig::Weighted(w) => w.weight,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    pub consul: ConsulServiceConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulServiceConfig {
    pub service: String,
    #[serde(default)]
    pub tag: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    pub connect: Duration,
    pub request: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesConfig {
    pub attempts: u32,
    #[serde(default)]
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub on: Vec<String>,
    /// Methods retried besides the idempotent ones (GET HEAD OPTIONS PUT DELETE TRACE).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Largest request body kept for replay (default 64KiB); larger bodies are not retried.
    #[serde(default)]
    pub max_body: Option<Size>,
    /// Retries in flight allowed as a share of the upstream's requests in flight
    /// (default 20%).
    #[serde(default)]
    pub budget: Option<Percent>,
    /// Retries that may always be in flight, whatever `budget` allows (default 3).
    #[serde(default)]
    pub min_concurrency: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    pub consecutive_errors: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: Percent,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    pub error_percent: Percent,
    pub min_requests: u32,
    pub window: Duration,
    pub open_for: Duration,
    #[serde(default)]
    pub fallback: Option<FallbackConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    pub status: u16,
    #[serde(default)]
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Vec<String>,
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Trusted roots (PEM) for an `https://` jwks_url; default: the system store.
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub public_key: Option<String>,
    #[serde(default)]
    pub leeway: Option<Duration>,
    #[serde(default)]
    pub required_claims: Vec<String>,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub key: String,
    pub limit: u32,
    pub per: Duration,
    #[serde(default)]
    pub burst: Option<u32>,
    /// Keys held at most (default 100 000); past it the least recently used quarter goes.
    #[serde(default)]
    pub max_keys: Option<u64>,
    /// `cluster`: one budget for all replicas, kept in Redis (needs `cluster.redis`).
    #[serde(default)]
    pub scope: Scope,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub max_size: Size,
    #[serde(default)]
    pub max_entry: Option<Size>,
    #[serde(default)]
    pub default_ttl: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: MatchConfig,
    #[serde(default)]
    pub rewrite: Option<RewriteConfig>,
    #[serde(default)]
    pub jwt: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<String>,
    #[serde(default)]
    pub cache: Option<String>,
    #[serde(default)]
    pub transform: Option<TransformConfig>,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub split: Option<SplitConfig>,
    /// Shadow traffic: a copy of requests to another upstream, its answers compared.
    #[serde(default)]
    pub mirror: Option<super::MirrorConfig>,
    /// gRPC calls: gateway errors answer as gRPC, `grpc-timeout` bounds the call, each
    /// call's status is counted.
    #[serde(default)]
    pub grpc: bool,
    #[serde(default)]
    pub auth: Option<RouteAuthConfig>,
    #[serde(default)]
    pub allow: Option<AllowConfig>,
    #[serde(default)]
    pub cors: Option<String>,
    #[serde(default)]
    pub ip: Option<IpConfig>,
    #[serde(default)]
    pub limits: Option<RouteLimitsConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header name -> exact value, or `true` for "present with any value".
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderMatchConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HeaderMatchConfig {
    Present(bool),
    Exact(String),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub replace_prefix: Option<ReplacePrefixConfig>,
    #[serde(default)]
    pub regex: Option<RegexRewriteConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplacePrefixConfig {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewriteConfig {
    pub pattern: String,
    pub replacement: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    #[serde(default)]
    pub request: Option<MessageTransformConfig>,
    #[serde(default)]
    pub response: Option<MessageTransformConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageTransformConfig {
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub add_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub remove_headers: Vec<String>,
    #[serde(default)]
    pub rename_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub set_query: BTreeMap<String, String>,
    #[serde(default)]
    pub remove_query: Vec<String>,
    #[serde(default)]
    pub json_body: Option<JsonBodyConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonBodyConfig {
    #[serde(default)]
    pub set: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    #[serde(default)]
    pub max_size: Option<Size>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    pub stable: SplitSideConfig,
    pub canary: SplitSideConfig,
    #[serde(default)]
    pub percent: Option<Percent>,
    #[serde(default)]
    pub sticky: Option<String>,
    #[serde(default)]
    pub force_canary: Option<ForceConfig>,
    #[serde(default)]
    pub force_stable: Option<ForceConfig>,
    #[serde(default)]
    pub ramp: Option<RampConfig>,
    #[serde(default)]
    pub rollback: Option<RollbackConfig>,
    #[serde(default)]
    pub side_header: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSideConfig {
    pub upstream: String,
    #[serde(default)]
    pub rewrite: Option<RewriteConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceConfig {
    #[serde(default)]
    pub header: BTreeMap<String, String>,
    #[serde(default)]
    pub cookie: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RampConfig {
    pub steps: Vec<Percent>,
    pub every: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackConfig {
    /// At least one of `max_error_rate` and `max_p99` is set.
    #[serde(default)]
    pub max_error_rate: Option<Percent>,
    /// The canary's p99 latency (to its response head) over the window.
    #[serde(default)]
    pub max_p99: Option<Duration>,
    pub window: Duration,
    pub min_requests: u32,
}
