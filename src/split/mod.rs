//! Migration routing (strangler fig): a route's traffic is split between a `stable` side
//! (the monolith) and a `canary` side (the new service), each with its own upstream and
//! rewrite.
//!
//! Lifecycle: `Split` is the compiled config of one route, rebuilt with every Runtime;
//! it points at a `SplitState` that is carried across reloads by route name and owns the
//! ramp task. On the request path `choose` picks a side (force rules, rollback, then the
//! sticky bucket or a random draw against the percentage) and `record` feeds the canary's
//! outcome into the sliding window that trips the automatic rollback.

pub mod admin;
mod key;
mod ramp;
mod shared;
mod state;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

pub use key::{bucket_of, Force, StickyKey, BUCKETS};
pub use ramp::RampPlan;
pub use state::{RollbackInfo, RollbackReason, SplitState};

use crate::config::{RewriteConfig, SplitConfig};
use crate::observe::Metrics;
use crate::router::Rewrite;
use crate::upstream::Upstream;

/// The optional response header naming the side (`side_header: true`).
pub static SIDE_HEADER: HeaderName = HeaderName::from_static("x-portico-split");

/// The window used for `GET /splits` error rates when no rollback rule is set.
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Stable = 0,
    Canary = 1,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Stable => "stable",
            Side::Canary => "canary",
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.label())
    }
}

/// Where a request goes and the rewrite of its path on the way (a split's side, a
/// mirror's target).
#[derive(Debug)]
pub struct SplitSide {
    pub upstream: Arc<Upstream>,
    pub rewrite: Option<Rewrite>,
}

impl SplitSide {
    /// Errors name `{field}.upstream` or `{field}.rewrite`.
    pub fn build(
        field: &str,
        upstream: &str,
        rewrite: Option<&RewriteConfig>,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
    ) -> Result<SplitSide, (String, String)> {
        let prefix = |key: &str| {
            if field.is_empty() {
                key.to_string()
            } else {
                format!("{field}.{key}")
            }
        };
        let upstream = upstreams
            .get(upstream)
            .cloned()
            .ok_or_else(|| (prefix("upstream"), format!("unknown upstream {upstream:?}")))?;
        let rewrite = rewrite
            .map(Rewrite::build)
            .transpose()
            .map_err(|e| (prefix("rewrite"), e))?;
        Ok(SplitSide { upstream, rewrite })
    }
}

/// When the canary is taken out of traffic: at least one of the two limits is set.
#[derive(Clone, Copy, Debug)]
pub struct RollbackRule {
    /// A fraction in 0..=1.
    pub max_error_rate: Option<f64>,
    /// The canary's p99 time to its response head over the window.
    pub max_p99: Option<Duration>,
    pub min_requests: u64,
}

#[derive(Debug)]
pub struct Split {
    pub stable: SplitSide,
    pub canary: SplitSide,
    pub sticky: Option<StickyKey>,
    force_canary: Option<Force>,
    force_stable: Option<Force>,
    pub side_header: bool,
    pub rule: Option<RollbackRule>,
    pub state: Arc<SplitState>,
    /// Applied to `state` by `activate`, once the Runtime holding this split serves.
    settings: Settings,
}

/// What a split's config sets on its state: the starting percent, the rollback window,
/// the ramp.
#[derive(Debug)]
struct Settings {
    start: u32,
    window: Duration,
    plan: Option<RampPlan>,
}

impl Split {
    /// Applies the config's settings to the state, which may be the live state carried
    /// over from the Runtime being replaced; called after the swap.
    pub fn activate(&self) {
        let Settings {
            start,
            window,
            plan,
        } = &self.settings;
        self.state.configure(*start, *window, plan.clone());
    }
}

pub fn basis_points(percent: f64) -> u32 {
    (percent * 100.0).round().clamp(0.0, f64::from(BUCKETS)) as u32
}

/// Checks a split's config; each problem names its field below `split.`. `has_jwt`: the
/// route verifies a JWT, without which a `claim:` key would never be found.
pub fn validate(config: &SplitConfig, has_jwt: bool) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    match config.sticky.as_deref().map(StickyKey::parse) {
        Some(Err(e)) => problems.push(("sticky".into(), e)),
        Some(Ok(StickyKey::Claim(_))) if !has_jwt => problems.push((
            "sticky".into(),
            "a claim: key needs a jwt verifier on the route (jwt: NAME)".into(),
        )),
        _ => {}
    }
    for (name, force) in [
        ("force_canary", &config.force_canary),
        ("force_stable", &config.force_stable),
    ] {
        if let Some(Err((field, e))) = force.as_ref().map(Force::build) {
            let path = if field.is_empty() {
                name.to_string()
            } else {
                format!("{name}.{field}")
            };
            problems.push((path, e));
        }
    }
    if let Some(Err((field, e))) = config.ramp.as_ref().map(RampPlan::build) {
        problems.push((format!("ramp.{field}"), e));
    }
    if let Some(rb) = &config.rollback {
        match (rb.max_error_rate, rb.max_p99) {
            (None, None) => problems.push((
                "rollback".into(),
                "set max_error_rate, max_p99 or both".into(),
            )),
            (Some(rate), _) if rate.0 <= 0.0 => {
                problems.push(("rollback.max_error_rate".into(), "must be above 0%".into()))
            }
            _ => {}
        }
        if rb.max_p99.is_some_and(|d| d.0 < Duration::from_millis(1)) {
            problems.push(("rollback.max_p99".into(), "must be at least 1ms".into()));
        }
        if rb.window.0 < Duration::from_secs(1) {
            problems.push(("rollback.window".into(), "must be at least 1s".into()));
        }
        if rb.min_requests == 0 {
            problems.push(("rollback.min_requests".into(), "must be at least 1".into()));
        }
    }
    problems
}

impl Split {
    /// Compiles a route's split. The state comes from the previous Runtime's split of the
    /// same route when there is one (so reloads keep percent, pause and rollback).
    pub fn build(
        route: &str,
        config: &SplitConfig,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        metrics: &Metrics,
        previous: Option<&Arc<SplitState>>,
    ) -> Result<Split, (String, String)> {
        // The jwt check belongs to whole-config validation, which has the route.
        if let Some(problem) = validate(config, true).into_iter().next() {
            return Err(problem);
        }
        let side = |name: &str, cfg: &crate::config::SplitSideConfig| {
            SplitSide::build(name, &cfg.upstream, cfg.rewrite.as_ref(), upstreams)
        };
        let stable = side("stable", &config.stable)?;
        let canary = side("canary", &config.canary)?;
        let plan = config.ramp.as_ref().map(RampPlan::build).transpose()?;
        let start = match (&config.percent, &plan) {
            (Some(p), _) => basis_points(p.0),
            (None, Some(plan)) => plan.steps.first().copied().unwrap_or(0),
            (None, None) => 0,
        };
        let window = config
            .rollback
            .as_ref()
            .map_or(DEFAULT_WINDOW, |r| r.window.0);
        let state = match previous {
            Some(state) => state.clone(),
            None => SplitState::new(route, start, window, metrics),
        };
        Ok(Split {
            settings: Settings {
                start,
                window,
                plan,
            },
            stable,
            canary,
            sticky: config
                .sticky
                .as_deref()
                .map(StickyKey::parse)
                .transpose()
                .map_err(|e| ("sticky".into(), e))?,
            force_canary: config.force_canary.as_ref().map(Force::build).transpose()?,
            force_stable: config.force_stable.as_ref().map(Force::build).transpose()?,
            side_header: config.side_header,
            rule: config.rollback.as_ref().map(|r| RollbackRule {
                max_error_rate: r.max_error_rate.map(|p| p.0 / 100.0),
                max_p99: r.max_p99.map(|d| d.0),
                min_requests: u64::from(r.min_requests),
            }),
            state,
        })
    }

    pub fn side(&self, side: Side) -> &SplitSide {
        match side {
            Side::Stable => &self.stable,
            Side::Canary => &self.canary,
        }
    }

    /// Picks the side of one request and counts it. Order: `force_stable`, rollback
    /// (a rolled-back canary gets nothing, forced testers included), `force_canary`, then
    /// the sticky key's bucket (or a random draw without a key) against the percentage.
    pub fn choose(
        &self,
        headers: &HeaderMap,
        client_ip: IpAddr,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Side {
        let side = self.decide(headers, client_ip, claims);
        self.state.count(side);
        side
    }

    fn decide(
        &self,
        headers: &HeaderMap,
        client_ip: IpAddr,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Side {
        if self
            .force_stable
            .as_ref()
            .is_some_and(|f| f.matches(headers))
        {
            return Side::Stable;
        }
        if self.state.rolled_back() {
            return Side::Stable;
        }
        if self
            .force_canary
            .as_ref()
            .is_some_and(|f| f.matches(headers))
        {
            return Side::Canary;
        }
        let bp = self.state.percent();
        if bp == 0 {
            return Side::Stable;
        }
        if bp >= BUCKETS {
            return Side::Canary;
        }
        let bucket = self
            .sticky
            .as_ref()
            .and_then(|k| k.bucket(headers, client_ip, claims))
            .unwrap_or_else(|| rand::random_range(0..BUCKETS));
        if bucket < bp {
            Side::Canary
        } else {
            Side::Stable
        }
    }

    /// Feeds the outcome of a request into the side's latency histogram and, for the
    /// canary, into the window, and rolls back when a limit of the rule is met. A failure
    /// is a 5xx answer or a gateway 5xx (connection failure, timeout, invalid response,
    /// no endpoint); client-side refusals (400, 413) are not the canary's fault and are
    /// not counted. `outcome` is the status of the upstream's answer, or the status of
    /// the gateway's own error when there was none; `latency` is the time to the answer's
    /// head (only answers have one).
    pub fn record(&self, side: Side, outcome: Result<StatusCode, StatusCode>, latency: Duration) {
        let answered = outcome.is_ok();
        if answered {
            self.state.observe_latency(side, latency);
        }
        if side != Side::Canary {
            return;
        }
        let error = match outcome {
            Ok(status) => status.is_server_error(),
            Err(status) if status.is_server_error() => true,
            Err(_) => return,
        };
        let window = self.state.record_canary(error, answered.then_some(latency));
        let Some(rule) = self.rule else {
            return;
        };
        if self.state.rolled_back() {
            return;
        }
        if let Some((reason, text)) = rule.tripped(&window) {
            self.state.roll_back(reason, text);
        }
    }
}

impl Split {
    /// The error-rate rule judged over all replicas' outcomes when state is shared (the
    /// latency rule is judged by each replica on its own answers).
    pub fn shared_rule(&self) -> Option<shared::SharedRule> {
        let rule = self.rule?;
        Some(shared::SharedRule {
            max_error_rate: rule.max_error_rate?,
            min_requests: rule.min_requests,
            window: self.state.window().span,
        })
    }
}

impl RollbackRule {
    /// The limit the window's figures reach, if any, and why in words (error rate first:
    /// a failing canary is also often slow).
    fn tripped(&self, window: &state::CanaryWindow) -> Option<(RollbackReason, String)> {
        let seconds = window.span.as_secs_f64();
        let tally = window.tally();
        if let Some(max) = self.max_error_rate {
            if tally.total >= self.min_requests && tally.error_rate() >= max {
                return Some((RollbackReason::ErrorRate, format!(
                    "canary error rate {:.1}% ({} of {} requests in the last {seconds}s) reached max_error_rate {}%",
                    tally.error_rate() * 100.0,
                    tally.errors,
                    tally.total,
                    (max * 100_000.0).round() / 1000.0,
                )));
            }
        }
        let max = self.max_p99?;
        let latency = window.latency();
        let p99 = latency.p99?;
        if latency.samples >= self.min_requests && p99 > max {
            return Some((RollbackReason::Latency, format!(
                "canary p99 latency {:.0}ms ({} answers in the last {seconds}s) is above max_p99 {}ms",
                p99.as_secs_f64() * 1000.0,
                latency.samples,
                max.as_millis(),
            )));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basis_points_round_and_clamp() {
        assert_eq!(basis_points(10.0), 1000);
        assert_eq!(basis_points(2.5), 250);
        assert_eq!(basis_points(0.004), 0);
        assert_eq!(basis_points(100.0), 10_000);
        assert_eq!(basis_points(250.0), 10_000);
    }
}
