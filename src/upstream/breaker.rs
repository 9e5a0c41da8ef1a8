//! Per-upstream circuit breaker over a bucketed time window (as linkerd does).
//!
//! Closed: every attempt lands in a `Window` of `BUCKETS` buckets of `window / BUCKETS`; once the
//! window holds at least `min_requests` attempts and failures reach `error_percent`, the
//! breaker opens. Open: requests get the fallback (or 503) without touching the upstream
//! for `open_for`. Half-open: up to `PROBES` requests go through; the first success
//! closes the breaker (with an empty window), a failure opens it again. If no probe
//! answers within `open_for`, new probes are let through. Everything is atomics; the
//! state changes are compare-and-swap so concurrent requests agree on one transition.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use prometheus::{IntCounter, IntGauge};

use crate::config::CircuitBreakerConfig;
use crate::observe::ResilienceMetrics;
use crate::window::{Tally, Window};
use crate::wire::body::Body;

const BUCKETS: usize = 10;
/// Requests let through at once while half-open.
pub const PROBES: u32 = 3;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// What the breaker says about one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    Pass,
    Probe,
    Reject,
}

pub struct Fallback {
    status: StatusCode,
    body: Bytes,
    content_type: HeaderValue,
}

pub struct Breaker {
    upstream: String,
    error_percent: f64,
    min_requests: u32,
    open_for_ms: u64,
    epoch: Instant,
    window: Window<BUCKETS>,
    state: AtomicU8,
    until_ms: AtomicU64,
    probes: AtomicU32,
    pub fallback: Option<Fallback>,
    gauges: [IntGauge; 3],
    rejected: IntCounter,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Breaker({}, {})", self.upstream, self.state().label())
    }
}

impl Breaker {
    pub fn new(
        upstream: &str,
        c: &CircuitBreakerConfig,
        metrics: &ResilienceMetrics,
    ) -> Result<Breaker, String> {
        let fallback = match &c.fallback {
            Some(f) => Some(Fallback {
                status: StatusCode::from_u16(f.status)
                    .map_err(|_| format!("invalid fallback status {}", f.status))?,
                content_type: HeaderValue::from_static(
                    if serde_json::from_str::<serde_json::Value>(&f.body).is_ok() {
                        "application/json"
                    } else {
                        "text/plain; charset=utf-8"
                    },
                ),
                body: Bytes::from(f.body.clone()),
            }),
            None => None,
        };
        let gauges = [State::Closed, State::Open, State::HalfOpen].map(|s| {
            metrics
                .breaker_state
                .with_label_values(&[upstream, s.label()])
        });
        let breaker = Breaker {
            upstream: upstream.to_string(),
            error_percent: c.error_percent.0,
            min_requests: c.min_requests.max(1),
            open_for_ms: c.open_for.0.as_millis() as u64,
            epoch: Instant::now(),
            window: Window::new(c.window.0),
            state: AtomicU8::new(CLOSED),
            until_ms: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            fallback,
            gauges,
            rejected: metrics.breaker_rejected.with_label_values(&[upstream]),
        };
        breaker.show(State::Closed);
        Ok(breaker)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            OPEN => State::Open,
            HALF_OPEN => State::HalfOpen,
            _ => State::Closed,
        }
    }

    fn show(&self, state: State) {
        for (i, g) in self.gauges.iter().enumerate() {
            g.set(i64::from(i == state as usize));
        }
    }

    pub fn admit(&self) -> Admit {
        match self.state.load(Ordering::Acquire) {
            CLOSED => return Admit::Pass,
            OPEN => {
                let now = self.now_ms();
                if now < self.until_ms.load(Ordering::Acquire) {
                    self.rejected.inc();
                    return Admit::Reject;
                }
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.probes.store(0, Ordering::Release);
                    self.until_ms
                        .store(now + self.open_for_ms, Ordering::Release);
                    self.show(State::HalfOpen);
                    tracing::info!(upstream = %self.upstream, "circuit breaker half-open: probing");
                }
            }
            _ => {
                // Probes lost (client gone before an answer): let new ones through.
                let now = self.now_ms();
                let until = self.until_ms.load(Ordering::Acquire);
                if now >= until
                    && self
                        .until_ms
                        .compare_exchange(
                            until,
                            now + self.open_for_ms,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                {
                    self.probes.store(0, Ordering::Release);
                }
            }
        }
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Admit::Pass;
        }
        if self.probes.fetch_add(1, Ordering::AcqRel) < PROBES {
            Admit::Probe
        } else {
            self.rejected.inc();
            Admit::Reject
        }
    }

    /// Records one attempt's result.
    pub fn record(&self, failed: bool) {
        match self.state.load(Ordering::Acquire) {
            HALF_OPEN => {
                if failed {
                    self.open(HALF_OPEN);
                } else if self
                    .state
                    .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.window.clear();
                    self.show(State::Closed);
                    tracing::info!(upstream = %self.upstream, "circuit breaker closed: upstream answers again");
                }
            }
            OPEN => {} // answers to requests sent before it opened
            _ => {
                self.window.record(failed);
                if failed {
                    let Tally { total, errors } = self.window.tally();
                    if total >= u64::from(self.min_requests)
                        && errors as f64 * 100.0 >= self.error_percent * total as f64
                    {
                        self.open(CLOSED);
                    }
                }
            }
        }
    }

    fn open(&self, from: u8) {
        if self
            .state
            .compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.until_ms
                .store(self.now_ms() + self.open_for_ms, Ordering::Release);
            self.show(State::Open);
            tracing::warn!(upstream = %self.upstream, open_for_ms = self.open_for_ms, "circuit breaker open: requests get the fallback");
        }
    }

    /// The configured fallback response, if any.
    pub fn fallback_response(&self) -> Option<Response<Body>> {
        let f = self.fallback.as_ref()?;
        let mut response = Response::new(Body::full(f.body.clone()));
        *response.status_mut() = f.status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, f.content_type.clone());
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Duration, Percent};

    fn breaker(open_for_ms: u64) -> Breaker {
        let metrics = crate::observe::Metrics::new();
        let config = CircuitBreakerConfig {
            error_percent: Percent(50.0),
            min_requests: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_millis(open_for_ms),
            fallback: None,
        };
        Breaker::new("t", &config, &metrics.resilience).unwrap()
    }

    #[test]
    fn opens_at_error_share_with_enough_requests() {
        let b = breaker(60_000);
        b.record(true);
        b.record(true);
        b.record(true);
        assert_eq!(b.state(), State::Closed, "below min_requests");
        b.record(false);
        b.record(true);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(), Admit::Reject);
    }

    #[test]
    fn half_open_probes_then_closes_or_reopens() {
        let b = breaker(0);
        for _ in 0..4 {
            b.record(true);
        }
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.state(), State::HalfOpen);
        b.record(true);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(), Admit::Probe);
        b.record(false);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admit(), Admit::Pass);
        b.record(true);
        assert_eq!(b.state(), State::Closed, "window was emptied on close");
    }

    #[test]
    fn half_open_limits_probes() {
        let b = breaker(60_000);
        for _ in 0..4 {
            b.record(true);
        }
        b.until_ms.store(0, Ordering::Release);
        let admitted: Vec<Admit> = (0..PROBES + 2).map(|_| b.admit()).collect();
        assert_eq!(
            admitted.iter().filter(|a| **a == Admit::Probe).count(),
            PROBES as usize
        );
    }
}
