//! Rate limiting: one governor GCRA keyed limiter per named `rate_limits` entry, shared by
//! every route that names it (one budget), carried over a reload when its definition did
//! not change (clients keep their buckets).
//!
//! Lifecycle: `Limiter::build` creates the keyed state and, when a Tokio runtime is
//! running, a housekeeping task that calls `retain_recent` on a timer so idle keys (whose
//! bucket is full again, indistinguishable from a fresh one) are dropped and memory stays
//! bounded by the number of *active* clients, and never more than `max_keys` keys
//! (`store.rs`: the least recently used quarter goes when it is full, counted). The task holds only a `Weak`
//! reference and is aborted when the `Limiter` is dropped.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::Claims;
use crate::config::RateLimitConfig;

pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

mod shared;
mod store;

pub use shared::Unavailable;

use store::{BoundedStore, Evictions};

/// Keys a limiter holds at most, unless `max_keys` says otherwise.
pub const DEFAULT_MAX_KEYS: u64 = 100_000;

/// Key values longer than this are stored as a digest, so a client cannot make each
/// entry of the map cost kilobytes.
const MAX_KEY_BYTES: usize = 128;

/// Where a request's limiter key comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyRule {
    /// The client address: the socket peer, or the X-Forwarded-For entry a trusted proxy
    /// vouches for (resolved once per request in `forward::client_ip`).
    ClientIp,
    Header(HeaderName),
    Claim(String),
    /// The authenticated consumer's name.
    Consumer,
}

impl KeyRule {
    /// Parses `client_ip`, `header:NAME` or `claim:NAME`.
    pub fn parse(text: &str) -> Result<KeyRule, String> {
        let bad = || {
            format!(
                "invalid key {text:?} (expected client_ip, consumer, header:NAME or claim:NAME)"
            )
        };
        if text == "client_ip" {
            return Ok(KeyRule::ClientIp);
        }
        if text == "consumer" {
            return Ok(KeyRule::Consumer);
        }
        match text.split_once(':') {
            Some(("header", name)) if !name.is_empty() => HeaderName::from_bytes(name.as_bytes())
                .map(KeyRule::Header)
                .map_err(|_| format!("invalid header name {name:?} in key {text:?}")),
            Some(("claim", name)) if !name.trim().is_empty() => {
                Ok(KeyRule::Claim(name.to_string()))
            }
            _ => Err(bad()),
        }
    }
}

/// A limiter key. Requests that lack their key share `Anonymous`: limited together,
/// never let through unlimited.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BucketKey {
    Anonymous,
    Ip(IpAddr),
    Value(Box<[u8]>),
    Digest([u8; 32]),
}

impl BucketKey {
    fn from_bytes(bytes: &[u8]) -> BucketKey {
        if bytes.len() <= MAX_KEY_BYTES {
            return BucketKey::Value(bytes.into());
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        BucketKey::Digest(out)
    }
}

/// What the request offers to the key extractor.
pub struct KeyInput<'a> {
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
    pub claims: Option<&'a Claims>,
    pub consumer: Option<&'a str>,
}

type Keyed = RateLimiter<BucketKey, BoundedStore, MonotonicClock, StateInformationMiddleware>;

/// The decision for one request, with what the `RateLimit-*` headers report.
#[derive(Clone, Debug)]
pub struct Decision {
    pub limit: HeaderValue,
    pub policy: HeaderValue,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset: u64,
    /// Set when the request was refused: seconds until one request would be allowed.
    pub retry_after: Option<u64>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.retry_after.is_none()
    }

    /// Adds `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`, `RateLimit-Policy`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_LIMIT.clone(), self.limit.clone());
        headers.insert(
            RATELIMIT_REMAINING.clone(),
            HeaderValue::from(self.remaining),
        );
        headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(self.reset));
        headers.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
    }
}

pub struct Limiter {
    pub name: String,
    pub config: RateLimitConfig,
    key: KeyRule,
    state: Arc<Keyed>,
    clock: MonotonicClock,
    burst: u32,
    /// Time for one request's worth of budget to come back.
    interval: Duration,
    limit: HeaderValue,
    policy: HeaderValue,
    housekeeping: Option<tokio::task::JoinHandle<()>>,
    evictions: Arc<Evictions>,
    /// `scope: cluster`: the budget in Redis (the local state is the fallback).
    shared: Option<shared::Shared>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Limiter({})", self.name)
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        if let Some(task) = &self.housekeeping {
            task.abort();
        }
    }
}

/// Checks a `rate_limits` entry; returns (field, message) problems.
pub fn check(config: &RateLimitConfig) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if let Err(e) = KeyRule::parse(&config.key) {
        problems.push(("key", e));
    }
    if config.limit == 0 {
        problems.push(("limit", "must be at least 1".to_string()));
    }
    if config.per.0.is_zero() {
        problems.push(("per", "must be above zero".to_string()));
    } else if config.limit > 0 && (config.per.0 / config.limit).is_zero() {
        problems.push(("limit", "more than one request per nanosecond".to_string()));
    }
    if config.burst == Some(0) {
        problems.push(("burst", "must be at least 1".to_string()));
    }
    if config.max_keys == Some(0) {
        problems.push(("max_keys", "must be at least 1".to_string()));
    }
    problems
}

impl Limiter {
    /// Builds the limiter; with a Tokio runtime running, also its housekeeping task,
    /// every `housekeeping` or, by default, every period clamped to 1 s..60 s.
    pub fn build(
        name: &str,
        config: &RateLimitConfig,
        housekeeping: Option<Duration>,
    ) -> Result<Limiter, String> {
        if let Some((field, message)) = check(config).into_iter().next() {
            return Err(format!("{field}: {message}"));
        }
        let key = KeyRule::parse(&config.key)?;
        let limit = NonZeroU32::new(config.limit).ok_or("limit must be at least 1")?;
        let burst = config.burst.and_then(NonZeroU32::new).unwrap_or(limit);
        let interval = config.per.0 / limit.get();
        let quota = Quota::with_period(interval)
            .ok_or("the period is too short")?
            .allow_burst(burst);
        let clock = MonotonicClock;
        let max_keys = config.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
        let store = BoundedStore::new(max_keys);
        let evictions = store.evictions();
        let state: Arc<Keyed> = Arc::new(RateLimiter::new(quota, store, clock.clone()));
        let every = housekeeping.unwrap_or_else(|| {
            config
                .per
                .0
                .clamp(Duration::from_secs(1), Duration::from_secs(60))
        });
        let housekeeping = tokio::runtime::Handle::try_current()
            .ok()
            .map(|rt| rt.spawn(retain_recent(Arc::downgrade(&state), every)));
        let policy = format!("{};w={}", config.limit, config.per.0.as_secs().max(1));
        Ok(Limiter {
            name: name.to_string(),
            config: config.clone(),
            key,
            state,
            clock,
            burst: burst.get(),
            interval,
            limit: HeaderValue::from(burst.get()),
            policy: HeaderValue::from_str(&policy).map_err(|_| "invalid policy")?,
            housekeeping,
            evictions,
            shared: None,
        })
    }

    /// Keeps this limit's budget in Redis (`scope: cluster`), deciding locally without it.
    pub fn shared_through(
        mut self,
        cluster: &Arc<crate::cluster::Cluster>,
        fallback: prometheus::IntCounter,
    ) -> Limiter {
        self.shared = Some(shared::Shared::new(
            cluster,
            &self.name,
            self.interval,
            fallback,
        ));
        self
    }

    /// The cluster this limit shares its budget through, if any.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.shared.as_ref().map(|s| s.cluster())
    }

    /// The key of one request.
    pub fn key(&self, input: &KeyInput<'_>) -> BucketKey {
        match &self.key {
            KeyRule::ClientIp => BucketKey::Ip(input.client_ip),
            KeyRule::Header(name) => input.headers.get(name).map_or(BucketKey::Anonymous, |v| {
                BucketKey::from_bytes(v.as_bytes())
            }),
            KeyRule::Claim(name) => input
                .claims
                .and_then(|c| c.text(name))
                .map_or(BucketKey::Anonymous, |v| {
                    BucketKey::from_bytes(v.as_bytes())
                }),
            KeyRule::Consumer => input.consumer.map_or(BucketKey::Anonymous, |c| {
                BucketKey::from_bytes(c.as_bytes())
            }),
        }
    }

    /// Spends one request of `key`'s budget, or says how long to wait.
    pub fn check_key(&self, key: &BucketKey) -> Decision {
        let ceil_secs = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        match self.state.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(self.burst);
                let used = self.burst - remaining;
                Decision {
                    limit: self.limit.clone(),
                    policy: self.policy.clone(),
                    remaining,
                    reset: ceil_secs(self.interval * used),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let full = wait + self.interval * (self.burst - 1);
                Decision {
                    limit: self.limit.clone(),
                    policy: self.policy.clone(),
                    remaining: 0,
                    reset: ceil_secs(full).max(1),
                    retry_after: Some(ceil_secs(wait).max(1)),
                }
            }
        }
    }

    pub fn check(&self, input: &KeyInput<'_>) -> Decision {
        self.check_key(&self.key(input))
    }

    /// Keys currently held (active clients, plus idle ones not yet swept).
    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Keys evicted so far because the limiter held `max_keys`.
    pub fn evicted(&self) -> u64 {
        self.evictions.count()
    }

    /// Counts evictions in `counter` from now on (`portico_ratelimit_keys_evicted_total`).
    pub fn report_evictions_to(&self, counter: prometheus::IntCounter) {
        self.evictions.report_to(counter);
    }

    /// Drops idle keys now (the housekeeping task does this on its timer).
    pub fn retain_recent(&self) {
        self.state.retain_recent();
        self.state.shrink_to_fit();
    }

    /// Whether the housekeeping task is still running (for tests of its lifecycle).
    pub fn housekeeping_running(&self) -> bool {
        self.housekeeping.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// A handle that tells whether the housekeeping task is still running, usable after
    /// the limiter is gone.
    pub fn housekeeping_probe(&self) -> Option<tokio::task::AbortHandle> {
        self.housekeeping.as_ref().map(|t| t.abort_handle())
    }
}

async fn retain_recent(state: Weak<Keyed>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let before = state.len();
        state.retain_recent();
        if state.len() < before {
            state.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration as ConfigDuration;

    fn config(key: &str, limit: u32, per: u64, burst: Option<u32>) -> RateLimitConfig {
        RateLimitConfig {
            key: key.into(),
            limit,
            per: ConfigDuration::from_secs(per),
            burst,
            max_keys: None,
            scope: Default::default(),
        }
    }

    #[test]
    fn keys_parse() {
        assert_eq!(KeyRule::parse("client_ip"), Ok(KeyRule::ClientIp));
        assert!(matches!(
            KeyRule::parse("header:X-Api-BucketKey"),
            Ok(KeyRule::Header(_))
        ));
        assert_eq!(
            KeyRule::parse("claim:sub"),
            Ok(KeyRule::Claim("sub".into()))
        );
        for bad in ["", "ip", "header:", "claim:", "header:bad name", "cookie:x"] {
            assert!(KeyRule::parse(bad).is_err(), "{bad}");
        }
        assert!(!check(&config("client_ip", 0, 1, None)).is_empty());
        assert!(!check(&config("client_ip", 1, 0, None)).is_empty());
        assert!(!check(&config("client_ip", 1, 1, Some(0))).is_empty());
        assert!(check(&config("client_ip", 100, 900, None)).is_empty());
    }

    #[test]
    fn budget_counts_down_then_refuses() {
        let limiter = Limiter::build("t", &config("client_ip", 3, 60, None), None).unwrap();
        let key = BucketKey::Ip("10.0.0.1".parse().unwrap());
        let remaining: Vec<u32> = (0..3).map(|_| limiter.check_key(&key).remaining).collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let refused = limiter.check_key(&key);
        assert!(!refused.allowed());
        let retry = refused.retry_after.unwrap();
        assert!((1..=20).contains(&retry), "{retry}");
        assert!(
            refused.reset >= retry && refused.reset <= 60,
            "{}",
            refused.reset
        );
        // Another key has its own bucket.
        assert!(limiter
            .check_key(&BucketKey::Ip("10.0.0.2".parse().unwrap()))
            .allowed());
    }

    #[test]
    fn long_values_are_digested_and_missing_keys_share_one_bucket() {
        let limiter = Limiter::build("t", &config("header:x-api-key", 1, 60, None), None).unwrap();
        let mut headers = HeaderMap::new();
        let input = KeyInput {
            client_ip: "10.0.0.1".parse().unwrap(),
            headers: &headers,
            claims: None,
            consumer: None,
        };
        assert_eq!(limiter.key(&input), BucketKey::Anonymous);
        headers.insert(
            "x-api-key",
            HeaderValue::from_str(&"k".repeat(4000)).unwrap(),
        );
        let input = KeyInput {
            client_ip: "10.0.0.1".parse().unwrap(),
            headers: &headers,
            claims: None,
            consumer: None,
        };
        assert!(matches!(limiter.key(&input), BucketKey::Digest(_)));
    }

    #[tokio::test]
    async fn housekeeping_stops_when_the_limiter_is_dropped() {
        let limiter = Limiter::build(
            "t",
            &config("client_ip", 10, 1, None),
            Some(Duration::from_millis(20)),
        )
        .unwrap();
        assert!(limiter.housekeeping_running());
        let probe = limiter.housekeeping_probe().unwrap();
        let weak = Arc::downgrade(&limiter.state);
        drop(limiter);
        assert!(weak.upgrade().is_none());
        for _ in 0..100 {
            if probe.is_finished() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("housekeeping task still running after the limiter was dropped");
    }
}
