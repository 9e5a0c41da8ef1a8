//! Active health checks: one task per upstream sends `GET <path>` to every listed endpoint
//! each `interval`, bounded by `timeout`. `unhealthy_threshold` consecutive failures take an
//! endpoint out of the serving set, `healthy_threshold` consecutive successes bring it back.
//! Endpoints start healthy (a static target or a passing Consul instance is presumed up
//! until a check says otherwise). The task holds a `Weak` to its upstream and ends with it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{header, HeaderValue};
use http_body_util::BodyExt;

use super::{Endpoint, Upstream};
use crate::config::HealthCheckConfig;
use crate::wire::body::Body;

#[derive(Clone, Debug)]
pub struct CheckPolicy {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl From<&HealthCheckConfig> for CheckPolicy {
    fn from(c: &HealthCheckConfig) -> CheckPolicy {
        CheckPolicy {
            path: c.path.clone(),
            interval: c.interval.0,
            timeout: c.timeout.0,
            healthy_threshold: c.healthy_threshold.max(1),
            unhealthy_threshold: c.unhealthy_threshold.max(1),
        }
    }
}

/// Per-endpoint check state: atomics, touched by the checker only.
#[derive(Debug)]
pub struct HealthState {
    healthy: AtomicBool,
    successes: AtomicU32,
    failures: AtomicU32,
    checked: AtomicBool,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            healthy: AtomicBool::new(true),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            checked: AtomicBool::new(false),
        }
    }
}

impl HealthState {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn label(&self, checks_configured: bool) -> &'static str {
        match (
            checks_configured,
            self.checked.load(Ordering::Relaxed),
            self.is_healthy(),
        ) {
            (false, _, _) => "unchecked",
            (true, false, _) => "pending",
            (true, true, true) => "passing",
            (true, true, false) => "failing",
        }
    }

    /// Records one check; returns `Some(new_state)` when the endpoint changed state.
    pub fn record(&self, passed: bool, policy: &CheckPolicy) -> Option<bool> {
        self.checked.store(true, Ordering::Relaxed);
        if passed {
            self.failures.store(0, Ordering::Relaxed);
            let n = self
                .successes
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if !self.is_healthy() && n >= policy.healthy_threshold {
                self.healthy.store(true, Ordering::Release);
                return Some(true);
            }
        } else {
            self.successes.store(0, Ordering::Relaxed);
            let n = self
                .failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if self.is_healthy() && n >= policy.unhealthy_threshold {
                self.healthy.store(false, Ordering::Release);
                return Some(false);
            }
        }
        None
    }
}

/// The checker loop. Holds a strong reference only while a round of checks runs.
pub async fn run(upstream: Weak<Upstream>, policy: CheckPolicy) {
    loop {
        let Some(up) = upstream.upgrade() else { return };
        let members = up.members();
        let checks = members.iter().map(|e| check(&up, e, &policy));
        let results = futures_util::future::join_all(checks).await;
        let mut changed = false;
        for (endpoint, passed) in members.iter().zip(results) {
            if let Some(healthy) = endpoint.health.record(passed, &policy) {
                changed = true;
                if healthy {
                    tracing::info!(upstream = %up.name, endpoint = %endpoint.address, "health check passing again; endpoint back in service");
                } else {
                    tracing::warn!(upstream = %up.name, endpoint = %endpoint.address, "health check failing; endpoint taken out of service");
                }
            }
        }
        if changed {
            up.refresh();
        }
        drop(up);
        tokio::time::sleep(policy.interval).await;
    }
}

/// One check: a 2xx answer within `timeout` passes; anything else fails. It goes over
/// the endpoint's own connections (TLS when the upstream has `tls:`), as requests do.
async fn check(up: &Upstream, endpoint: &Arc<Endpoint>, policy: &CheckPolicy) -> bool {
    let Ok(path_and_query) = policy.path.parse::<http::uri::PathAndQuery>() else {
        return false;
    };
    let mut headers = http::HeaderMap::new();
    if let Ok(host) = HeaderValue::from_str(endpoint.authority.as_str()) {
        headers.insert(header::HOST, host);
    }
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static("portico-health-check"),
    );
    let out = super::proxy::Outgoing {
        traceparent: None,
        method: http::Method::GET,
        path_and_query,
        headers,
    };
    let exchange = async {
        let response = super::proxy::exchange(up, endpoint, &out, Body::empty())
            .await
            .ok()?;
        let passed = response.status().is_success();
        // Read the (small) body so the connection goes back to the pool.
        let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await;
        Some(passed)
    };
    matches!(
        tokio::time::timeout(policy.timeout, exchange).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let policy = CheckPolicy {
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        };
        let s = HealthState::default();
        assert_eq!(s.record(false, &policy), None);
        assert_eq!(s.record(false, &policy), None);
        assert_eq!(s.record(true, &policy), None);
        assert_eq!(s.record(false, &policy), None);
        assert_eq!(s.record(false, &policy), None);
        assert_eq!(s.record(false, &policy), Some(false));
        assert!(!s.is_healthy());
        assert_eq!(s.record(true, &policy), None);
        assert_eq!(s.record(true, &policy), Some(true));
        assert!(s.is_healthy());
    }
}
