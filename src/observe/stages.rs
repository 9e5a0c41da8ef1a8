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
