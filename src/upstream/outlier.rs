//! Outlier detection (passive): `consecutive_errors` failed attempts in a row (5xx,
//! connect failure, timeout, invalid response) eject an endpoint for `base_ejection` × the
//! number of times it has been ejected (capped at `MAX_EJECTION`, or `base_ejection` when
//! that is larger), never more than `max_ejection_percent` of the listed endpoints at once.
//! A timer returns the endpoint when its time is up. The multiplier decays by one for
//! every `interval` the endpoint spends in service, so an endpoint that failed once long
//! ago is not punished like one that keeps failing.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Endpoint, Upstream};
use crate::config::OutlierConfig;

/// Longest ejection (Envoy's default `max_ejection_time`).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct OutlierPolicy {
    pub consecutive_errors: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: f64,
    /// Makes "count the ejected, then eject one more" one step, so two endpoints failing
    /// at the same moment cannot both pass the `max_ejection_percent` check.
    gate: Mutex<()>,
}

impl From<&OutlierConfig> for OutlierPolicy {
    fn from(c: &OutlierConfig) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_errors: c.consecutive_errors.max(1),
            interval: c.interval.0,
            base_ejection: c.base_ejection.0,
            max_ejection_percent: c.max_ejection_percent.0,
            gate: Mutex::new(()),
        }
    }
}

impl OutlierPolicy {
    /// How long the `n`th ejection lasts.
    pub fn ejection_time(&self, n: u32) -> Duration {
        let cap = MAX_EJECTION.max(self.base_ejection);
        self.base_ejection.saturating_mul(n.max(1)).min(cap)
    }

    /// Whether one more ejection keeps the ejected share within the limit.
    pub fn may_eject(&self, ejected: usize, listed: usize) -> bool {
        ((ejected + 1) as f64) * 100.0 <= self.max_ejection_percent * listed as f64
    }
}

#[derive(Debug, Default)]
struct Ejection {
    until: Option<Instant>,
    count: u32,
    returned_at: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct EndpointOutlier {
    consecutive: AtomicU32,
    ejected: AtomicBool,
    state: Mutex<Ejection>,
}

impl EndpointOutlier {
    /// Counts one attempt; returns the current run of consecutive failures.
    pub fn record(&self, failed: bool) -> u32 {
        if failed {
            self.consecutive
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            // Skip the write on the common path: most attempts succeed after a success.
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            0
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    pub fn ejections(&self) -> u32 {
        self.lock().count
    }

    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.lock()
            .until
            .filter(|_| self.is_ejected())
            .map(|u| u.saturating_duration_since(now))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ejection> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ejects `endpoint` unless that would put more than `max_ejection_percent` out at once.
pub fn eject(up: &Upstream, endpoint: &Arc<Endpoint>, policy: &OutlierPolicy) {
    let _one = policy.gate.lock().unwrap_or_else(|p| p.into_inner());
    let members = up.members();
    let ejected = members.iter().filter(|e| e.outlier.is_ejected()).count();
    if endpoint.outlier.is_ejected() {
        return;
    }
    if !policy.may_eject(ejected, members.len()) {
        tracing::debug!(upstream = %up.name, endpoint = %endpoint.address, "not ejected: max_ejection_percent reached");
        return;
    }
    let now = Instant::now();
    let duration = {
        let mut state = endpoint.outlier.lock();
        if endpoint.outlier.ejected.swap(true, Ordering::AcqRel) {
            return; // another request ejected it first
        }
        if let (Some(back), false) = (state.returned_at, policy.interval.is_zero()) {
            let quiet = now.saturating_duration_since(back).as_millis();
            let decay =
                (quiet / policy.interval.as_millis().max(1)).min(u128::from(u32::MAX)) as u32;
            state.count = state.count.saturating_sub(decay);
        }
        state.count = state.count.saturating_add(1);
        let duration = policy.ejection_time(state.count);
        state.until = Some(now + duration);
        duration
    };
    endpoint.outlier.consecutive.store(0, Ordering::Relaxed);
    up.metrics
        .ejections
        .with_label_values(&[up.name.as_str()])
        .inc();
    tracing::warn!(
        upstream = %up.name,
        endpoint = %endpoint.address,
        ejected_for_ms = duration.as_millis() as u64,
        "endpoint ejected after consecutive errors"
    );
    up.refresh();
    let endpoint = endpoint.clone();
    up.spawn_weak(move |weak| async move {
        tokio::time::sleep(duration).await;
        let Some(up) = weak.upgrade() else { return };
        {
            let mut state = endpoint.outlier.lock();
            state.until = None;
            state.returned_at = Some(Instant::now());
            endpoint.outlier.ejected.store(false, Ordering::Release);
        }
        tracing::info!(upstream = %up.name, endpoint = %endpoint.address, "ejection over; endpoint back in service");
        up.refresh();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(percent: f64) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_errors: 3,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: percent,
            gate: Mutex::new(()),
        }
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let p = policy(50.0);
        assert_eq!(p.ejection_time(1), Duration::from_secs(30));
        assert_eq!(p.ejection_time(3), Duration::from_secs(90));
        assert_eq!(p.ejection_time(100), MAX_EJECTION);
    }

    #[test]
    fn ejection_share_is_bounded() {
        let p = policy(50.0);
        assert!(p.may_eject(0, 2));
        assert!(!p.may_eject(1, 2));
        assert!(!p.may_eject(0, 1));
        assert!(p.may_eject(1, 4));
        assert!(!p.may_eject(2, 4));
    }

    #[test]
    fn consecutive_errors_reset_on_success() {
        let o = EndpointOutlier::default();
        assert_eq!(o.record(true), 1);
        assert_eq!(o.record(true), 2);
        assert_eq!(o.record(false), 0);
        assert_eq!(o.record(true), 1);
    }
}
