//! Prometheus metrics. The registry lives in one `Metrics` value shared by every Runtime
//! (counters survive reloads); routes and endpoints resolve their label handles when the
//! Runtime is built, so the request path only touches atomics.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    pub upstream_endpoints: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub access_log_dropped: IntCounter,
    pub connections_refused: IntCounter,
    /// Proxy connections accepted, one handle per serving runtime (`wire::worker`).
    pub connections_accepted: Vec<IntCounter>,
    /// Request header fields with `_` in their name, by action (`dropped`, `rejected`).
    pub underscore_headers: IntCounterVec,
    /// Migration splits (handles resolved per split in `split::SplitState`).
    pub split_requests: IntCounterVec,
    pub split_percent: GaugeVec,
    pub split_rollbacks: IntCounterVec,
    pub split_rollbacks_by_reason: IntCounterVec,
    pub split_duration: HistogramVec,
    /// Shadow traffic by result (handles resolved per route in `mirror`).
    pub mirror_requests: IntCounterVec,
    /// Discovery, breaker, retries, ejections, overflow (observe/resilience.rs).
    pub resilience: super::ResilienceMetrics,
    pub cache: super::CacheMetrics,
    pub transform: super::TransformMetrics,
    pub edge: super::EdgeMetrics,
    pub cluster: super::ClusterMetrics,
    jwt_rejected: IntCounterVec,
    ratelimit_rejected: IntCounterVec,
    /// Keys a limiter evicted because it held `max_keys`, by limit.
    pub ratelimit_evicted: IntCounterVec,
    /// gRPC calls on `grpc: true` routes by final status (handles in `grpc::GrpcMetrics`).
    pub grpc_responses: IntCounterVec,
    /// Spans by what became of them: exported, dropped (queue full), failed (export).
    pub tracing_spans: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    // Names are fixed and unique here, so registration cannot collide.
    let _ = registry.register(Box::new(c.clone()));
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        // The standard process series (resident memory, CPU seconds, open fds, start time),
        // read from /proc when scraped.
        #[cfg(target_os = "linux")]
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let build = register(
            &registry,
            prometheus::IntGaugeVec::new(
                Opts::new("portico_build_info", "1, labelled with the running version"),
                &["version"],
            )
            .expect("valid metric definition"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
        };
        let requests = register(
            &registry,
            counter(
                "portico_requests_total",
                "Requests answered, by route and status",
                &["route", "status"],
            ),
        );
        let duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "portico_request_duration_seconds",
                    "Time from request head to response head, by route",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                &["route"],
            )
            .expect("valid metric definition"),
        );
        let upstream_requests = register(
            &registry,
            counter(
                "portico_upstream_requests_total",
                "Requests sent to upstream endpoints, by outcome",
                &["upstream", "endpoint", "outcome"],
            ),
        );
        let upstream_endpoints = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "portico_upstream_endpoints",
                    "Endpoints per upstream, by state",
                ),
                &["upstream", "state"],
            )
            .expect("valid metric definition"),
        );
        let config_reloads = register(
            &registry,
            counter(
                "portico_config_reloads_total",
                "Config reloads, by result",
                &["result"],
            ),
        );
        let access_log_dropped = register(
            &registry,
            IntCounter::new(
                "portico_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind",
            )
            .expect("valid metric definition"),
        );
        let connections_refused = register(
            &registry,
            IntCounter::new(
                "portico_connections_refused_total",
                "Client connections closed at once because server.limits.max_connections was reached",
            )
            .expect("valid metric definition"),
        );
        let accepted = register(
            &registry,
            counter(
                "portico_connections_accepted_total",
                "Client connections accepted on the proxy listeners, by serving runtime (worker)",
                &["worker"],
            ),
        );
        let connections_accepted = (0..crate::wire::worker::count())
            .map(|worker| accepted.with_label_values(&[worker.to_string().as_str()]))
            .collect();
        let underscore_headers = register(
            &registry,
            counter(
                "portico_underscore_headers_total",
                "Request header fields whose name contains an underscore, by action (dropped, rejected)",
                &["action"],
            ),
        );
        for action in ["dropped", "rejected"] {
            underscore_headers.with_label_values(&[action]);
        }
        let split_requests = register(
            &registry,
            counter(
                "portico_split_requests_total",
                "Requests of split routes, by side (stable or canary)",
                &["route", "side"],
            ),
        );
        let split_percent = register(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "portico_split_percent",
                    "Share of a split route's traffic sent to the canary side",
                ),
                &["route"],
            )
            .expect("valid metric definition"),
        );
        let split_rollbacks = register(
            &registry,
            counter(
                "portico_split_rollbacks_total",
                "Automatic rollbacks of a split's canary side",
                &["route"],
            ),
        );
        let split_rollbacks_by_reason = register(
            &registry,
            counter(
                "portico_split_rollbacks_by_reason_total",
                "Automatic rollbacks of a split's canary side, by the rule that tripped (error_rate, latency)",
                &["route", "reason"],
            ),
        );
        let split_duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "portico_split_request_duration_seconds",
                    "Time from sending to a split side's upstream to its response head, by route and side",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["route", "side"],
            )
            .expect("valid metric definition"),
        );
        let mirror_requests = register(
            &registry,
            counter(
                "portico_mirror_requests_total",
                "Mirrored (shadow) requests by result: compared (matched + mismatched), matched, mismatched, dropped (not sent), failed (no answer)",
                &["route", "result"],
            ),
        );
        let resilience =
            super::ResilienceMetrics::new(&registry, upstream_requests, upstream_endpoints.clone());
        let jwt_rejected = register(
            &registry,
            counter(
                "portico_jwt_rejected_total",
                "Requests refused by JWT verification, by route and reason",
                &["route", "reason"],
            ),
        );
        let ratelimit_rejected = register(
            &registry,
            counter(
                "portico_ratelimit_rejected_total",
                "Requests refused with 429 by a rate limit, by route",
                &["route"],
            ),
        );
        let ratelimit_evicted = register(
            &registry,
            counter(
                "portico_ratelimit_keys_evicted_total",
                "Rate-limit keys evicted because the limit held max_keys, by limit",
                &["limit"],
            ),
        );
        let grpc_responses = register(
            &registry,
            counter(
                "portico_grpc_responses_total",
                "gRPC calls on grpc routes by route and final grpc-status (none: no status came)",
                &["route", "grpc_status"],
            ),
        );
        let tracing_spans = register(
            &registry,
            counter(
                "portico_tracing_spans_total",
                "Spans by result: exported to the collector, dropped (export queue full) or failed (the collector did not take them)",
                &["result"],
            ),
        );
        for result in ["exported", "dropped", "failed"] {
            tracing_spans.with_label_values(&[result]);
        }
        // Show both reload results from the start, so rate() works on the first reload.
        config_reloads.with_label_values(&["success"]);
        config_reloads.with_label_values(&["error"]);
        let cache = super::CacheMetrics::register(&registry);
        let transform = super::TransformMetrics::register(&registry);
        let edge = super::EdgeMetrics::register(&registry);
        let cluster = super::ClusterMetrics::register(&registry);
        Metrics {
            cache,
            transform,
            edge,
            cluster,
            registry,
            requests,
            duration,
            upstream_endpoints,
            config_reloads,
            access_log_dropped,
            connections_refused,
            connections_accepted,
            underscore_headers,
            split_requests,
            split_percent,
            split_rollbacks,
            split_rollbacks_by_reason,
            split_duration,
            mirror_requests,
            resilience,
            jwt_rejected,
            ratelimit_rejected,
            ratelimit_evicted,
            grpc_responses,
            tracing_spans,
        }
    }

    /// `portico_jwt_rejected_total` handles for one route, one per reason, in the order
    /// of `reasons`.
    pub fn jwt_rejections<'a>(
        &self,
        route: &str,
        reasons: impl IntoIterator<Item = &'a str>,
    ) -> Vec<IntCounter> {
        reasons
            .into_iter()
            .map(|reason| self.jwt_rejected.with_label_values(&[route, reason]))
            .collect()
    }

    /// The `portico_ratelimit_rejected_total` handle of one route.
    pub fn ratelimit_rejections(&self, route: &str) -> IntCounter {
        self.ratelimit_rejected.with_label_values(&[route])
    }

    /// Handles for one route. The duration histogram is resolved now; a status counter
    /// the first time the route answers with that status (so /metrics shows no zero
    /// series for statuses a route never produced) and then kept.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_string(),
            common: Arc::new(std::array::from_fn(|_| OnceLock::new())),
            requests: self.requests.clone(),
            duration: self.duration.with_label_values(&[route]),
        }
    }

    /// Handles for one endpoint of one upstream, resolved once.
    pub fn endpoint(&self, upstream: &str, endpoint: &str) -> EndpointMetrics {
        self.resilience.endpoint(upstream, endpoint)
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = encoder.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

const COMMON_STATUSES: [u16; 20] = [
    200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 405, 409, 413, 429, 431, 500, 502, 503, 504,
    101,
];
const STATUS_TEXT: [&str; 20] = [
    "200", "201", "204", "301", "302", "304", "400", "401", "403", "404", "405", "409", "413",
    "429", "431", "500", "502", "503", "504", "101",
];

#[derive(Clone)]
pub struct RouteMetrics {
    route: String,
    common: Arc<[OnceLock<IntCounter>; 20]>,
    requests: IntCounterVec,
    duration: Histogram,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RouteMetrics({})", self.route)
    }
}

impl RouteMetrics {
    pub fn record(&self, status: u16, seconds: f64) {
        match COMMON_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.common[i]
                .get_or_init(|| {
                    self.requests
                        .with_label_values(&[self.route.as_str(), STATUS_TEXT[i]])
                })
                .inc(),
            None => self
                .requests
                .with_label_values(&[self.route.as_str(), &status.to_string()])
                .inc(),
        }
        self.duration.observe(seconds);
    }
}

/// What became of one attempt to an upstream endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Success,
    ClientError,
    ServerError,
    ConnectFailure,
    Timeout,
    InvalidResponse,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 6] = [
        AttemptOutcome::Success,
        AttemptOutcome::ClientError,
        AttemptOutcome::ServerError,
        AttemptOutcome::ConnectFailure,
        AttemptOutcome::Timeout,
        AttemptOutcome::InvalidResponse,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::ClientError => "client_error",
            AttemptOutcome::ServerError => "server_error",
            AttemptOutcome::ConnectFailure => "connect_failure",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::InvalidResponse => "invalid_response",
        }
    }

    pub fn from_status(status: u16) -> AttemptOutcome {
        match status {
            500.. => AttemptOutcome::ServerError,
            400..=499 => AttemptOutcome::ClientError,
            _ => AttemptOutcome::Success,
        }
    }
}

#[derive(Clone)]
pub struct EndpointMetrics {
    outcomes: [IntCounter; 6],
    /// Connections opened to the endpoint (requests minus this is what the pool reused).
    pub connections_opened: IntCounter,
}

impl std::fmt::Debug for EndpointMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointMetrics")
    }
}

impl EndpointMetrics {
    pub fn record(&self, outcome: AttemptOutcome) {
        self.outcomes[outcome as usize].inc();
    }
}

impl EndpointMetrics {
    /// Handles for one endpoint from the `portico_upstream_requests_total` family.
    pub(crate) fn resolve(
        family: &IntCounterVec,
        connections: &IntCounterVec,
        upstream: &str,
        endpoint: &str,
    ) -> EndpointMetrics {
        EndpointMetrics {
            outcomes: AttemptOutcome::ALL
                .map(|o| family.with_label_values(&[upstream, endpoint, o.label()])),
            connections_opened: connections.with_label_values(&[upstream, endpoint]),
        }
    }
}
