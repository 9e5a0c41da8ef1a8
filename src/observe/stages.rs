//! Metric families of the request stages that keep their own (the cache, transforms),
//! registered once per process in `Metrics`; each stage resolves its label handles
//! when the Runtime is built.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// Cache metric families, registered once per process (they live in `Metrics`).
#[derive(Clone)]
pub struct CacheMetrics {
    pub lookups: IntCounterVec,
    pub entries: IntGaugeVec,
    pub bytes: IntGaugeVec,
    pub variant_evictions: IntCounterVec,
}

impl std::fmt::Debug for CacheMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheMetrics")
    }
}

impl CacheMetrics {
    pub fn register(registry: &Registry) -> CacheMetrics {
        let lookups = IntCounterVec::new(
            Opts::new(
                "portico_cache_lookups_total",
                "Cache lookups, by cache and result",
            ),
            &["cache", "result"],
        )
        .expect("valid metric definition");
        let entries = IntGaugeVec::new(
            Opts::new("portico_cache_entries", "Entries held, by cache"),
            &["cache"],
        )
        .expect("valid metric definition");
        let bytes = IntGaugeVec::new(
            Opts::new(
                "portico_cache_bytes",
                "Bytes held (bodies, headers and keys), by cache",
            ),
            &["cache"],
        )
        .expect("valid metric definition");
        let variant_evictions = IntCounterVec::new(
            Opts::new(
                "portico_cache_variant_evictions_total",
                "Vary variants evicted because their URL held the most allowed, by cache",
            ),
            &["cache"],
        )
        .expect("valid metric definition");
        for c in [
            Box::new(lookups.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(entries.clone()),
            Box::new(bytes.clone()),
            Box::new(variant_evictions.clone()),
        ] {
            // Fixed, unique names: registration cannot collide.
            let _ = registry.register(c);
        }
        CacheMetrics {
            lookups,
            entries,
            bytes,
            variant_evictions,
        }
    }
}

/// Transform metric families, registered once per process (they live in `Metrics`).
#[derive(Clone)]
pub struct TransformMetrics {
    pub skipped: IntCounterVec,
}

impl std::fmt::Debug for TransformMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransformMetrics")
    }
}

impl TransformMetrics {
    pub fn register(registry: &Registry) -> TransformMetrics {
        let skipped = IntCounterVec::new(
            Opts::new(
                "portico_transform_body_skipped_total",
                "Bodies a JSON transform passed through unchanged, by route, direction and reason",
            ),
            &["route", "direction", "reason"],
        )
        .expect("valid metric definition");
        let _ = registry.register(Box::new(skipped.clone()));
        TransformMetrics { skipped }
    }
}

/// Who-may-call metric families: authentication and authorization refusals, CORS
/// preflights, IP list refusals.
#[derive(Clone)]
pub struct EdgeMetrics {
    pub auth_rejected: IntCounterVec,
    pub cors_preflights: IntCounterVec,
    pub ip_rejected: IntCounterVec,
}

impl std::fmt::Debug for EdgeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EdgeMetrics")
    }
}

impl EdgeMetrics {
    pub fn register(registry: &Registry) -> EdgeMetrics {
        let family = |name: &str, help: &str, labels: &[&str]| {
            let c =
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        EdgeMetrics {
            auth_rejected: family(
                "portico_auth_rejected_total",
                "Requests refused by a route's auth (401) or allow (403), by route, method and reason",
                &["route", "method", "reason"],
            ),
            cors_preflights: family(
                "portico_cors_preflights_total",
                "CORS preflights answered by the gateway, by route and result (allowed, rejected)",
                &["route", "result"],
            ),
            ip_rejected: family(
                "portico_ip_rejected_total",
                "Requests refused with 403 by a route's IP lists, by route and list (allow, deny)",
                &["route", "list"],
            ),
        }
    }
}

/// Shared-state metric families (`cluster.redis`).
#[derive(Clone)]
pub struct ClusterMetrics {
    pub errors: IntCounterVec,
    pub duration: prometheus::HistogramVec,
    pub up: prometheus::IntGauge,
    pub ratelimit_fallback: IntCounterVec,
}

impl std::fmt::Debug for ClusterMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterMetrics")
    }
}

impl ClusterMetrics {
    pub fn register(registry: &Registry) -> ClusterMetrics {
        let errors = IntCounterVec::new(
            Opts::new(
                "portico_cluster_redis_errors_total",
                "Redis commands that failed or timed out, by operation (ratelimit, ping)",
            ),
            &["op"],
        )
        .expect("valid metric definition");
        let duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "portico_cluster_redis_duration_seconds",
                "Redis command latency seen by the gateway, by operation",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
            &["op"],
        )
        .expect("valid metric definition");
        let up = prometheus::IntGauge::new(
            "portico_cluster_redis_up",
            "1 while the last Redis command succeeded, 0 otherwise",
        )
        .expect("valid metric definition");
        let ratelimit_fallback = IntCounterVec::new(
            Opts::new(
                "portico_ratelimit_fallback_total",
                "Decisions of scope: cluster limits taken without Redis (local limiter or 503), by limit",
            ),
            &["limit"],
        )
        .expect("valid metric definition");
        let _ = registry.register(Box::new(errors.clone()));
        let _ = registry.register(Box::new(duration.clone()));
        let _ = registry.register(Box::new(up.clone()));
        let _ = registry.register(Box::new(ratelimit_fallback.clone()));
        ClusterMetrics {
            errors,
            duration,
            up,
            ratelimit_fallback,
        }
    }
}
