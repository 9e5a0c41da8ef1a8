//! `scope: cluster`: the limit's GCRA state lives in Redis, one budget for every replica.
//!
//! One Lua script makes the decision inside Redis, atomically and on Redis's clock
//! (`TIME`), so replicas whose clocks disagree still agree on every bucket, and no
//! read-modify-write race between replicas exists. The key is
//! `key_prefix + "rl:" + limit name + ":" + the request's key` (one key per decision, so
//! it works on a Redis Cluster) and expires when its bucket would be full again, so idle
//! keys vanish by themselves. The arithmetic is the local limiter's (governor's GCRA with
//! the same interval and burst), so both scopes give the same answers and headers.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::IntCounter;

use super::{BucketKey, Decision, Limiter};
use crate::cluster::{Cluster, Op, Script};
use crate::config::OnRedisError;

/// Returns {allowed (0|1), remaining, microseconds until the bucket is full, microseconds
/// until a request would be allowed}. ARGV: the emission interval in microseconds, the
/// burst.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = interval * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
if tat - now > tolerance then
  return {0, 0, tat - now, tat - now - tolerance}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
local remaining = burst - math.ceil((new_tat - now) / interval)
if remaining < 0 then remaining = 0 end
return {1, remaining, new_tat - now, 0}
"#;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA));

/// A limit's link to the shared store.
pub struct Shared {
    cluster: Arc<Cluster>,
    /// `key_prefix + "rl:" + name + ":"`.
    key_prefix: Vec<u8>,
    interval_us: u64,
    fallback: IntCounter,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

/// A `scope: cluster` decision that could not be made: Redis is down and
/// `on_redis_error: deny`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the shared rate limit store is unavailable")]
pub struct Unavailable;

impl Shared {
    pub fn new(
        cluster: &Arc<Cluster>,
        name: &str,
        interval: Duration,
        fallback: IntCounter,
    ) -> Shared {
        let mut key_prefix = cluster.key_prefix.as_bytes().to_vec();
        key_prefix.extend_from_slice(b"rl:");
        key_prefix.extend_from_slice(name.as_bytes());
        key_prefix.push(b':');
        Shared {
            cluster: cluster.clone(),
            key_prefix,
            interval_us: u64::try_from(interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            fallback,
        }
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    fn redis_key(&self, key: &BucketKey) -> Vec<u8> {
        use std::io::Write as _;
        let mut out = Vec::with_capacity(self.key_prefix.len() + 48);
        out.extend_from_slice(&self.key_prefix);
        match key {
            BucketKey::Anonymous => out.extend_from_slice(b"-"),
            BucketKey::Ip(ip) => {
                out.extend_from_slice(b"ip:");
                let _ = write!(out, "{ip}");
            }
            BucketKey::Value(v) => {
                out.extend_from_slice(b"v:");
                out.extend_from_slice(v);
            }
            BucketKey::Digest(d) => {
                out.extend_from_slice(b"d:");
                for b in d {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
            }
        }
        out
    }
}

impl Limiter {
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// A `scope: cluster` decision from Redis; without Redis, the local limiter's
    /// (`on_redis_error: local`, counted) or `Unavailable` (`deny`, counted).
    pub async fn check_shared(&self, key: &BucketKey) -> Result<Decision, Unavailable> {
        let Some(shared) = &self.shared else {
            return Ok(self.check_key(key));
        };
        let redis_key = shared.redis_key(key);
        let mut call = SCRIPT.call(1);
        call.arg(&redis_key).arg(shared.interval_us).arg(self.burst);
        let answer: Result<(i64, i64, i64, i64), _> =
            shared.cluster.eval(Op::RateLimit, &SCRIPT, &call).await;
        match answer {
            Ok((allowed, remaining, full_us, wait_us)) => {
                Ok(self.decision(allowed == 1, remaining, full_us, wait_us))
            }
            Err(_) => {
                shared.fallback.inc();
                match shared.cluster.on_error {
                    OnRedisError::Local => Ok(self.check_key(key)),
                    OnRedisError::Deny => Err(Unavailable),
                }
            }
        }
    }

    /// The script's answer in the local limiter's terms.
    fn decision(&self, allowed: bool, remaining: i64, full_us: i64, wait_us: i64) -> Decision {
        let secs = |us: i64| {
            let us = u64::try_from(us).unwrap_or(0);
            us.div_ceil(1_000_000)
        };
        Decision {
            limit: self.limit.clone(),
            policy: self.policy.clone(),
            remaining: u32::try_from(remaining).unwrap_or(0).min(self.burst),
            reset: if allowed {
                secs(full_us)
            } else {
                secs(full_us).max(1)
            },
            retry_after: (!allowed).then(|| secs(wait_us).max(1)),
        }
    }
}
