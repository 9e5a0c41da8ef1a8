//! Service discovery. Consul is the one source (`consul.rs`: the client and the blocking
//! query loop); this module holds what an upstream knows about its discovery (synced yet?
//! failing?) and turns a list of instances into the upstream's members, swapping them
//! only when the set really changed.

pub mod consul;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, IntCounter};
use serde_json::{json, Value};

use crate::config::ConsulServiceConfig;
use crate::observe::ResilienceMetrics;
use crate::upstream::{Endpoint, Source, Upstream};

/// One discovered instance: `host:port` and its weight.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instance {
    pub address: String,
    pub weight: u32,
}

#[derive(Debug)]
pub struct DiscoveryStatus {
    pub service: String,
    pub tag: Option<String>,
    synced: AtomicBool,
    failing: AtomicBool,
    errors: IntCounter,
    last_sync: Gauge,
}

impl DiscoveryStatus {
    pub fn new(
        upstream: &str,
        c: &ConsulServiceConfig,
        metrics: &ResilienceMetrics,
    ) -> DiscoveryStatus {
        DiscoveryStatus {
            service: c.service.clone(),
            tag: c.tag.clone(),
            synced: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            errors: metrics.discovery_errors.with_label_values(&[upstream]),
            last_sync: metrics.discovery_last_sync.with_label_values(&[upstream]),
        }
    }

    /// Consul has answered at least once.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Counts an error; returns true when this is a change of state (worth a log line).
    pub fn error(&self) -> bool {
        self.errors.inc();
        !self.failing.swap(true, Ordering::AcqRel)
    }

    /// Records an answer; returns true when Consul was failing before.
    fn carried_over(&self) {
        self.synced.store(true, Ordering::Release);
    }

    fn answered(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_sync.set(now);
        self.synced.store(true, Ordering::Release);
        self.failing.swap(false, Ordering::AcqRel)
    }

    pub fn describe(&self) -> Value {
        json!({
            "service": self.service,
            "tag": self.tag,
            "synced": self.synced(),
            "failing": self.failing(),
            "errors": self.errors.get(),
        })
    }
}

/// A rebuilt upstream (its definition changed in a reload) starts from the endpoints the
/// previous one had discovered, so it serves (and stays ready) while its own watch makes
/// its first query, and while Consul is down.
pub fn carry_over(up: &Upstream, previous: &Upstream) {
    let (Some(status), Some(prev)) = (&up.discovery, &previous.discovery) else {
        return;
    };
    // Only the same service (and tag) may lend its endpoints.
    if !prev.synced() || previous.config.discovery != up.config.discovery {
        return;
    }
    let instances = previous
        .members()
        .iter()
        .map(|e| Instance {
            address: e.address.clone(),
            weight: e.weight,
        })
        .collect();
    status.carried_over();
    replace(up, instances);
}

/// Applies one discovery answer: a response is not a change, so the members are
/// replaced only when the set of (address, weight) differs. Endpoints that stay keep
/// their state (health, ejection, connection permits, counters).
pub fn apply(up: &Upstream, instances: Vec<Instance>) {
    let Some(status) = &up.discovery else { return };
    if status.answered() {
        tracing::info!(upstream = %up.name, service = %status.service, "consul answers again");
    }
    replace(up, instances);
}

fn replace(up: &Upstream, mut instances: Vec<Instance>) {
    instances.sort();
    instances.dedup_by(|a, b| a.address == b.address);
    let members = up.members();
    let mut current: Vec<Instance> = members
        .iter()
        .map(|e| Instance {
            address: e.address.clone(),
            weight: e.weight,
        })
        .collect();
    current.sort();
    if current == instances {
        return;
    }
    let mut by_address: BTreeMap<&str, &Arc<Endpoint>> =
        members.iter().map(|e| (e.address.as_str(), e)).collect();
    let mut next = Vec::with_capacity(instances.len());
    for instance in &instances {
        match by_address.remove(instance.address.as_str()) {
            Some(e) if e.weight == instance.weight => next.push(e.clone()),
            _ => match Endpoint::build(
                &up.name,
                &instance.address,
                instance.weight,
                Source::Consul,
                up.config.max_connections,
                &up.config.keepalive,
                &up.metrics,
            ) {
                Ok(e) => {
                    tracing::info!(upstream = %up.name, endpoint = %instance.address, weight = instance.weight, "endpoint discovered");
                    next.push(Arc::new(e));
                }
                Err(e) => {
                    tracing::warn!(upstream = %up.name, "ignoring discovered instance: {e}");
                }
            },
        }
    }
    for gone in by_address.keys() {
        tracing::info!(upstream = %up.name, endpoint = %gone, "endpoint no longer listed");
        up.metrics.forget_endpoint(&up.name, gone);
    }
    up.set_endpoints(next);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConsulConfig, DiscoveryConfig, UpstreamConfig};
    use crate::observe::Metrics;
    use crate::upstream::health::CheckPolicy;

    fn upstream(metrics: &Metrics) -> Arc<Upstream> {
        let config = UpstreamConfig {
            discovery: Some(DiscoveryConfig {
                consul: ConsulServiceConfig {
                    service: "orders".into(),
                    tag: None,
                },
            }),
            ..UpstreamConfig::default()
        };
        let consul = ConsulConfig {
            address: "http://127.0.0.1:8500".into(),
            datacenter: None,
            token: None,
            wait: crate::config::Duration::from_secs(60),
            ca_file: None,
            client_cert: None,
            client_key: None,
        };
        // No tokio runtime here, so no watch task is started.
        Upstream::prepare("orders", &config, Some(&consul), metrics, None).unwrap()
    }

    fn instance(address: &str, weight: u32) -> Instance {
        Instance {
            address: address.into(),
            weight,
        }
    }

    #[test]
    fn an_answer_is_not_a_change_and_endpoints_keep_their_state() {
        let metrics = Metrics::new();
        let up = upstream(&metrics);
        assert!(!up.ready());
        apply(
            &up,
            vec![instance("10.0.0.1:80", 1), instance("10.0.0.2:80", 1)],
        );
        assert!(up.ready());
        let first = up.members();
        assert_eq!(up.endpoints().endpoints.len(), 2);

        // Same set, other order: nothing is swapped.
        apply(
            &up,
            vec![instance("10.0.0.2:80", 1), instance("10.0.0.1:80", 1)],
        );
        assert!(Arc::ptr_eq(&first, &up.members()));

        // One more instance: the two that stay are the same endpoints.
        apply(
            &up,
            vec![
                instance("10.0.0.1:80", 1),
                instance("10.0.0.2:80", 1),
                instance("10.0.0.3:80", 2),
            ],
        );
        let next = up.members();
        assert_eq!(next.len(), 3);
        assert!(Arc::ptr_eq(&first[0], &next[0]) && Arc::ptr_eq(&first[1], &next[1]));
        assert_eq!(next[2].source, Source::Consul);
    }

    #[test]
    fn an_endpoint_serves_only_when_listed_healthy_and_not_ejected() {
        let metrics = Metrics::new();
        let up = upstream(&metrics);
        apply(
            &up,
            vec![instance("10.0.0.1:80", 1), instance("10.0.0.2:80", 1)],
        );
        let members = up.members();
        let policy = CheckPolicy {
            path: "/health".into(),
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
        };
        assert_eq!(members[1].health.record(false, &policy), Some(false));
        up.refresh();
        let serving = up.endpoints();
        assert_eq!(serving.endpoints.len(), 1);
        assert_eq!(serving.endpoints[0].address, "10.0.0.1:80");
        let gauges = metrics.render();
        assert!(
            gauges.contains(r#"portico_upstream_endpoints{state="unhealthy",upstream="orders"} 1"#)
        );

        // Delisted, then listed again: a new endpoint, healthy.
        apply(&up, vec![instance("10.0.0.1:80", 1)]);
        apply(
            &up,
            vec![instance("10.0.0.1:80", 1), instance("10.0.0.2:80", 1)],
        );
        assert_eq!(up.endpoints().endpoints.len(), 2);
        assert!(up.pick().is_some());
    }
}
