//! The `mirror:` block of a route (shadow traffic with response comparison), as plain
//! serde structs. Checks live in `crate::mirror::validate`, compilation in
//! `crate::mirror::Mirror::build`.

use serde::{Deserialize, Serialize};

use super::schema::RewriteConfig;
use super::units::{Percent, Size};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// Where the copies go; its answers never reach the client.
    pub upstream: String,
    /// Applied to the normalised request path, as a route's rewrite.
    #[serde(default)]
    pub rewrite: Option<RewriteConfig>,
    /// Share of requests copied (default: all of them).
    #[serde(default = "all")]
    pub percent: Percent,
    /// Methods copied; empty: the safe methods (GET, HEAD, OPTIONS).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Requests with a larger body (or a body of unknown length) are not copied.
    #[serde(default = "default_max_body")]
    pub max_body: Size,
    /// Copies in flight at once; more are dropped, never queued.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    #[serde(default)]
    pub compare: Option<CompareConfig>,
}

fn all() -> Percent {
    Percent(100.0)
}

fn default_max_body() -> Size {
    Size(64 * 1024)
}

fn default_max_in_flight() -> u32 {
    100
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareConfig {
    /// `true`: statuses must be equal; `class`: of the same class (2xx, 4xx...);
    /// `false`: not compared.
    #[serde(default)]
    pub status: StatusCompare,
    /// Dotted JSON paths left out of the body comparison (`meta.generated_at`, `id`).
    #[serde(default)]
    pub json_ignore: Vec<String>,
    /// Response headers compared by value.
    #[serde(default)]
    pub headers: Vec<String>,
    /// How many recent mismatches `GET /mirrors/{route}` keeps.
    #[serde(default = "default_sample")]
    pub sample: u32,
}

fn default_sample() -> u32 {
    20
}

/// `compare.status`: `true`, `false` or `class`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StatusCompare {
    Exact(bool),
    Named(String),
}

impl Default for StatusCompare {
    fn default() -> Self {
        StatusCompare::Exact(true)
    }
}
