//! Metric families of upstream resilience and discovery: Consul sync, breaker state,
//! retries, ejections, connection-limit overflow. Registered once in the shared
//! `Metrics` registry; label handles are resolved per upstream when it is built.

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::metrics::EndpointMetrics;

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    // Names are fixed and unique, so registration cannot collide.
    let _ = registry.register(Box::new(c.clone()));
    c
}

#[derive(Clone)]
pub struct ResilienceMetrics {
    upstream_requests: IntCounterVec,
    upstream_connections: IntCounterVec,
    pub upstream_endpoints: IntGaugeVec,
    pub discovery_errors: IntCounterVec,
    pub discovery_last_sync: GaugeVec,
    pub breaker_state: IntGaugeVec,
    pub breaker_rejected: IntCounterVec,
    pub retries: IntCounterVec,
    pub ejections: IntCounterVec,
    pub overflow: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub tls_insecure: IntGaugeVec,
}

impl std::fmt::Debug for ResilienceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResilienceMetrics")
    }
}

impl ResilienceMetrics {
    /// Handles for one endpoint (same family as `Metrics::endpoint`), for endpoints that
    /// discovery adds after the Runtime was built.
    pub fn endpoint(&self, upstream: &str, endpoint: &str) -> EndpointMetrics {
        EndpointMetrics::resolve(
            &self.upstream_requests,
            &self.upstream_connections,
            upstream,
            endpoint,
        )
    }

    /// Removes an endpoint's series (it left the upstream: Consul no longer lists it),
    /// so `/metrics` does not grow with every address an upstream ever had.
    pub fn forget_endpoint(&self, upstream: &str, endpoint: &str) {
        for outcome in super::AttemptOutcome::ALL {
            let _ =
                self.upstream_requests
                    .remove_label_values(&[upstream, endpoint, outcome.label()]);
        }
        let _ = self
            .upstream_connections
            .remove_label_values(&[upstream, endpoint]);
    }

    pub(super) fn new(
        registry: &Registry,
        upstream_requests: IntCounterVec,
        upstream_endpoints: IntGaugeVec,
    ) -> ResilienceMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition"),
            )
        };
        ResilienceMetrics {
            upstream_requests,
            upstream_connections: counter(
                "portico_upstream_connections_opened_total",
                "TCP connections opened to an endpoint (the rest of its requests reused a pooled connection)",
                &["upstream", "endpoint"],
            ),
            upstream_endpoints,
            discovery_errors: counter(
                "portico_discovery_errors_total",
                "Failed Consul queries (errors, 429, 5xx, timeouts), by upstream",
                &["upstream"],
            ),
            discovery_last_sync: register(
                registry,
                GaugeVec::new(
                    Opts::new(
                        "portico_discovery_last_sync_timestamp_seconds",
                        "Unix time of the last successful Consul answer, by upstream",
                    ),
                    &["upstream"],
                )
                .expect("valid metric definition"),
            ),
            breaker_state: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "portico_circuit_breaker_state",
                        "1 for the circuit breaker's current state (closed, open, half_open), by upstream",
                    ),
                    &["upstream", "state"],
                )
                .expect("valid metric definition"),
            ),
            breaker_rejected: counter(
                "portico_circuit_breaker_rejected_total",
                "Requests answered by an open circuit breaker without reaching the upstream",
                &["upstream"],
            ),
            retries: counter(
                "portico_upstream_retries_total",
                "Retries sent, or refused by the retry budget, by upstream",
                &["upstream", "result"],
            ),
            ejections: counter(
                "portico_upstream_ejections_total",
                "Endpoints ejected by outlier detection, by upstream",
                &["upstream"],
            ),
            overflow: counter(
                "portico_upstream_overflow_total",
                "Requests refused with 503 because max_connections and max_pending were full",
                &["upstream"],
            ),
            tls_handshakes: counter(
                "portico_upstream_tls_handshakes_total",
                "TLS handshakes with an upstream's endpoints by result: ok, or failed (untrusted, expired or misnamed certificate, refused client certificate)",
                &["upstream", "result"],
            ),
            tls_insecure: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "portico_upstream_tls_insecure",
                        "1 for an upstream whose certificates are not verified (tls.insecure_skip_verify)",
                    ),
                    &["upstream"],
                )
                .expect("valid metric definition"),
            ),
        }
    }
}
