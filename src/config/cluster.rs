//! `cluster:` (replicas that share state through Redis) and a rate limit's `scope`, as
//! plain serde structs. Behaviour lives in `cluster` and `ratelimit::shared`.

use serde::{Deserialize, Serialize};

use super::units::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub redis: RedisConfig,
    #[serde(default)]
    pub on_redis_error: OnRedisError,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, `rediss://` for TLS, or
    /// `redis+cluster://host1:port,host2:port` for a Redis Cluster.
    pub url: String,
    /// More seed nodes of a Redis Cluster (with a `redis+cluster://` url, or instead of it).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Per command; past it the replica decides without Redis.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Trusted roots (PEM) for `rediss://`; default: the system store.
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_timeout() -> Duration {
    Duration::from_millis(50)
}

fn default_prefix() -> String {
    "portico:".into()
}

/// What shared decisions do while Redis does not answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    /// A local limiter with the same settings decides (counted as a fallback).
    #[default]
    Local,
    /// Shared limits answer 503 until Redis is back.
    Deny,
}

/// Where a rate limit's budget is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// In this replica (every replica has the full budget).
    #[default]
    Local,
    /// In Redis: one budget for all replicas.
    Cluster,
}
