//! Who may call: the `consumers` and `cors` sections and a route's `auth`, `allow`, `cors`,
//! `ip` and `limits` keys, as plain serde structs (behaviour lives in `auth`, `cors` and
//! `iplist`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::units::{Duration, Size};

/// A named caller: its credentials and the groups `allow.groups` reads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Plain keys, or `sha256:<hex>` digests of them.
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// JWT subjects (`sub`) that are this consumer; without a mapping a token's consumer
    /// is its subject, with no groups.
    #[serde(default)]
    pub jwt_subjects: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    /// An argon2id (`$argon2id$...`) or bcrypt (`$2b$...`) hash string.
    pub password_hash: String,
}

/// A named CORS policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://shop.example`), one-label wildcards
    /// (`https://*.shop.example`), or `"*"` (only without `credentials`).
    pub origins: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub expose: Vec<String>,
    #[serde(default)]
    pub credentials: bool,
    #[serde(default)]
    pub max_age: Option<Duration>,
}

/// A route's authentication: the methods tried in order; the first that accepts wins.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuthConfig {
    pub any: Vec<String>,
    /// The verifier `jwt` in `any` uses.
    #[serde(default)]
    pub jwt: Option<String>,
    /// Where `api_key` in `any` finds the key (default: the `X-API-Key` header).
    #[serde(default)]
    pub api_key: Option<ApiKeyConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

/// Authorization after authentication.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, ClaimValues>,
}

/// One accepted value or a list of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ClaimValues {
    One(String),
    Any(Vec<String>),
}

impl ClaimValues {
    pub fn values(&self) -> &[String] {
        match self {
            ClaimValues::One(v) => std::slice::from_ref(v),
            ClaimValues::Any(v) => v,
        }
    }
}

/// Address lists on the client address (after `trusted_proxies`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpConfig {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimitsConfig {
    #[serde(default)]
    pub max_request_body: Option<Size>,
}

impl super::RouteConfig {
    /// The JWT verifier the route uses: `jwt:`, or `auth.jwt` when `auth.any` lists jwt.
    pub fn verifier_name(&self) -> Option<&str> {
        match &self.auth {
            Some(auth) if auth.any.iter().any(|m| m == "jwt") => auth.jwt.as_deref(),
            Some(_) => None,
            None => self.jwt.as_deref(),
        }
    }

    /// Whether the route authenticates its callers (`jwt:` or `auth:`).
    pub fn authenticates(&self) -> bool {
        self.auth.is_some() || self.jwt.is_some()
    }
}
