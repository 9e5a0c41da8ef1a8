//! A route's `auth` and `allow`: the methods tried in order (`any`), the one identity the
//! first accepting method yields, and the authorization that reads it.
//!
//! A method whose credential is absent is skipped; one whose credential is present but
//! wrong is remembered as the reason and the next method is tried, so `any` means what it
//! says. When none accepts, the refusal names what the route accepts.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use prometheus::IntCounter;
use serde_json::Value;

use super::basic::{self, Presented};
use super::consumers::{BasicError, Consumer, Consumers};
use super::{AuthError, Claims, Verifier};
use crate::config::{AllowConfig, RouteAuthConfig};

/// The header that names the consumer upstream, and the one with its groups. Client
/// copies are removed from every request.
pub static CONSUMER_HEADER: HeaderName = HeaderName::from_static("x-consumer");
pub static CONSUMER_GROUPS_HEADER: HeaderName = HeaderName::from_static("x-consumer-groups");

/// The default API key header.
const DEFAULT_KEY_HEADER: &str = "x-api-key";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    ApiKey,
    Jwt,
    Basic,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::ApiKey, Method::Jwt, Method::Basic];

    pub fn parse(text: &str) -> Option<Method> {
        match text {
            "api_key" => Some(Method::ApiKey),
            "jwt" => Some(Method::Jwt),
            "basic" => Some(Method::Basic),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Method::ApiKey => "api_key",
            Method::Jwt => "jwt",
            Method::Basic => "basic",
        }
    }
}

/// Who a request is, once a method accepted it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub consumer: Arc<Consumer>,
    pub method: Method,
}

impl Identity {
    /// Names the consumer to the upstream (the client's own copies were removed at the
    /// edge).
    pub fn forward(&self, headers: &mut HeaderMap) {
        if let Some(name) = &self.consumer.header {
            headers.insert(CONSUMER_HEADER.clone(), name.clone());
        }
        if let Some(groups) = &self.consumer.groups_header {
            headers.insert(CONSUMER_GROUPS_HEADER.clone(), groups.clone());
        }
    }
}

/// Where an API key is read from.
#[derive(Clone, Debug)]
pub enum KeySource {
    Header(HeaderName),
    /// A query parameter name.
    Query(String),
}

impl KeySource {
    pub fn build(config: Option<&crate::config::ApiKeyConfig>) -> Result<KeySource, String> {
        let Some(c) = config else {
            return Ok(KeySource::Header(HeaderName::from_static(
                DEFAULT_KEY_HEADER,
            )));
        };
        match (&c.header, &c.query) {
            (Some(_), Some(_)) => Err("set header or query, not both".into()),
            (Some(h), None) => HeaderName::from_bytes(h.as_bytes())
                .map(KeySource::Header)
                .map_err(|_| format!("invalid header name {h:?}")),
            (None, Some(q)) if !q.is_empty() && !q.contains(['&', '=', '#']) => {
                Ok(KeySource::Query(q.clone()))
            }
            (None, Some(q)) => Err(format!("invalid query parameter name {q:?}")),
            (None, None) => Ok(KeySource::Header(HeaderName::from_static(
                DEFAULT_KEY_HEADER,
            ))),
        }
    }

    /// The key the request carries: one header field, or the first parameter so named.
    fn find<'a>(&self, headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a [u8]> {
        match self {
            KeySource::Header(name) => headers.get(name).map(HeaderValue::as_bytes),
            KeySource::Query(name) => uri.query().and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    (k == name).then_some(v.as_bytes())
                })
            }),
        }
    }
}

/// Why a route refused a request: not authenticated (401), or not allowed (403).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// A route whose one method is `jwt`: the token's own error, as `jwt:` routes
    /// always answered.
    #[error("{0}")]
    Token(AuthError),
    #[error("authentication required: this route accepts {accepted}")]
    Unauthenticated {
        accepted: Arc<str>,
        /// The reason the metric records: the first presented credential's failure.
        reason: &'static str,
        method: &'static str,
        /// `WWW-Authenticate` challenges.
        challenge: Option<HeaderValue>,
    },
    #[error("signing keys are not available yet")]
    KeysUnavailable,
    #[error("password check failed")]
    Unavailable,
    #[error("not allowed: {0}")]
    Forbidden(&'static str),
}

impl Rejection {
    /// The (method, reason) the log records.
    pub fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Rejection::Token(e) => ("jwt", e.reason()),
            Rejection::Unauthenticated { method, reason, .. } => (method, reason),
            Rejection::KeysUnavailable => ("jwt", "keys_unavailable"),
            Rejection::Unavailable => ("basic", "unavailable"),
            Rejection::Forbidden(_) => ("allow", "forbidden"),
        }
    }
}

/// A route's authentication, compiled.
pub struct RouteAuth {
    pub methods: Vec<Method>,
    pub jwt: Option<Arc<Verifier>>,
    key_source: KeySource,
    consumers: Arc<Consumers>,
    /// "an API key (X-API-Key), a bearer token or basic credentials": the 401's text.
    accepted: Arc<str>,
    challenge: Option<HeaderValue>,
    /// `portico_auth_rejected_total` by (method, reason) as `rejection_labels` names them.
    counters: Vec<((&'static str, &'static str), IntCounter)>,
    /// `portico_jwt_rejected_total`, indexed by `AuthError::index`.
    jwt_rejected: Vec<IntCounter>,
}

impl std::fmt::Debug for RouteAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RouteAuth({:?})", self.methods)
    }
}

/// Every (method, reason) pair `portico_auth_rejected_total` can count.
pub fn rejection_labels() -> Vec<(&'static str, &'static str)> {
    let mut labels = vec![
        ("none", "missing"),
        ("api_key", "unknown_key"),
        ("basic", "invalid"),
        ("basic", "malformed"),
        ("any", "group"),
        ("any", "claim"),
    ];
    labels.extend(AuthError::ALL.iter().map(|e| ("jwt", e.reason())));
    labels
}

/// The methods of `auth.any` and where an API key comes from; a problem is (field,
/// message) below `auth.`.
pub fn parse(config: &RouteAuthConfig) -> Result<(Vec<Method>, KeySource), (String, String)> {
    let mut methods = Vec::new();
    for (i, name) in config.any.iter().enumerate() {
        let method = Method::parse(name).ok_or_else(|| {
            (
                format!("any[{i}]"),
                format!("unknown method {name:?} (expected api_key, jwt or basic)"),
            )
        })?;
        if methods.contains(&method) {
            return Err((format!("any[{i}]"), format!("{name} is listed twice")));
        }
        methods.push(method);
    }
    if methods.is_empty() {
        return Err(("any".into(), "list at least one method".into()));
    }
    let key_source =
        KeySource::build(config.api_key.as_ref()).map_err(|e| ("api_key".into(), e))?;
    Ok((methods, key_source))
}

impl RouteAuth {
    /// `jwt` is the route's verifier when `jwt` is among the methods (resolved by the
    /// caller, which knows the names).
    pub fn build(
        config: &RouteAuthConfig,
        jwt: Option<Arc<Verifier>>,
        consumers: Arc<Consumers>,
        counter: impl Fn(&str, &str) -> IntCounter,
        jwt_rejected: Vec<IntCounter>,
    ) -> Result<RouteAuth, (String, String)> {
        let (methods, key_source) = parse(config)?;
        let words: Vec<String> = methods
            .iter()
            .map(|m| match m {
                Method::ApiKey => match &key_source {
                    KeySource::Header(h) => format!("an API key ({h} header)"),
                    KeySource::Query(q) => format!("an API key ({q} parameter)"),
                },
                Method::Jwt => "a bearer token".into(),
                Method::Basic => "basic credentials".into(),
            })
            .collect();
        let challenges: Vec<&str> = methods
            .iter()
            .filter_map(|m| match m {
                Method::Jwt => Some("Bearer"),
                Method::Basic => Some("Basic realm=\"portico\", charset=\"UTF-8\""),
                Method::ApiKey => None,
            })
            .collect();
        let counters = rejection_labels()
            .into_iter()
            .map(|(m, r)| ((m, r), counter(m, r)))
            .collect();
        Ok(RouteAuth {
            jwt: jwt.filter(|_| methods.contains(&Method::Jwt)),
            methods,
            key_source,
            consumers,
            accepted: Arc::from(words.join(" or ")),
            challenge: (!challenges.is_empty())
                .then(|| HeaderValue::from_str(&challenges.join(", ")).ok())
                .flatten(),
            counters,
            jwt_rejected,
        })
    }

    /// The header or parameter the key came in, removed before forwarding.
    pub fn key_source(&self) -> Option<&KeySource> {
        self.methods
            .contains(&Method::ApiKey)
            .then_some(&self.key_source)
    }

    fn count(&self, method: &'static str, reason: &'static str) {
        if let Some((_, c)) = self.counters.iter().find(|(k, _)| *k == (method, reason)) {
            c.inc();
        }
    }

    /// Tries each method in order. Ok: the identity, and the claims when a token
    /// accepted.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Result<(Identity, Option<Arc<Claims>>), Rejection> {
        let mut failure: Option<(&'static str, &'static str)> = None;
        for method in &self.methods {
            match method {
                Method::ApiKey => {
                    let Some(key) = self.key_source.find(headers, uri) else {
                        continue;
                    };
                    match self.consumers.by_api_key(key) {
                        Some(consumer) => return Ok((identity(consumer, *method), None)),
                        None => {
                            failure.get_or_insert(("api_key", "unknown_key"));
                        }
                    }
                }
                Method::Jwt => {
                    let Some(verifier) = &self.jwt else { continue };
                    match verifier.authenticate(headers).await {
                        Ok(claims) => {
                            let consumer = self.consumers.token_consumer(&claims);
                            return Ok((
                                Identity {
                                    consumer,
                                    method: Method::Jwt,
                                },
                                Some(claims),
                            ));
                        }
                        Err(e) => {
                            if let Some(c) = self.jwt_rejected.get(e.index()) {
                                c.inc();
                            }
                            if self.methods.len() == 1 {
                                self.count("jwt", e.reason());
                                return Err(Rejection::Token(e));
                            }
                            match e {
                                AuthError::Missing => {}
                                AuthError::KeysUnavailable => {
                                    self.count("jwt", e.reason());
                                    return Err(Rejection::KeysUnavailable);
                                }
                                e => {
                                    failure.get_or_insert(("jwt", e.reason()));
                                }
                            }
                        }
                    }
                }
                Method::Basic => {
                    match basic::credential(headers, &mut [0u8; basic::MAX_CREDENTIAL_BYTES]) {
                        Presented::Absent => {}
                        Presented::Malformed => {
                            failure.get_or_insert(("basic", "malformed"));
                        }
                        Presented::Credential(c) => match self.consumers.verify_basic(c).await {
                            Ok(consumer) => return Ok((identity(&consumer, *method), None)),
                            Err(BasicError::Unavailable) => return Err(Rejection::Unavailable),
                            Err(BasicError::Invalid) => {
                                failure.get_or_insert(("basic", "invalid"));
                            }
                        },
                    }
                }
            }
        }
        let (method, reason) = failure.unwrap_or(("none", "missing"));
        self.count(method, reason);
        Err(Rejection::Unauthenticated {
            accepted: self.accepted.clone(),
            reason,
            method,
            challenge: self.challenge.clone(),
        })
    }

    /// Checks `allow` and counts its refusals.
    pub fn authorize(
        &self,
        allow: &Allow,
        identity: &Identity,
        claims: Option<&Claims>,
    ) -> Result<(), Rejection> {
        allow.check(identity, claims).map_err(|reason| {
            self.count("any", reason);
            Rejection::Forbidden(match reason {
                "group" => "the consumer is in none of the route's groups",
                _ => "the token's claims do not match the route's",
            })
        })
    }
}

fn identity(consumer: &Arc<Consumer>, method: Method) -> Identity {
    Identity {
        consumer: consumer.clone(),
        method,
    }
}

/// `allow`: the identity passes when it is in one of `groups`, or when its token's
/// claims match every entry of `claims` (a string claim equal to a listed value, or an
/// array claim holding one). Either rule admits; a route with both lets group members
/// and matching tokens in.
#[derive(Clone, Debug, Default)]
pub struct Allow {
    pub groups: Vec<String>,
    pub claims: Vec<(String, Vec<String>)>,
}

impl Allow {
    pub fn build(config: &AllowConfig) -> Result<Allow, (String, String)> {
        if config.groups.is_empty() && config.claims.is_empty() {
            return Err((String::new(), "list groups, claims or both".into()));
        }
        let mut claims = Vec::new();
        for (name, values) in &config.claims {
            if values.values().is_empty() {
                return Err((format!("claims.{name}"), "list at least one value".into()));
            }
            claims.push((name.clone(), values.values().to_vec()));
        }
        Ok(Allow {
            groups: config.groups.clone(),
            claims,
        })
    }

    /// Ok, or the rule that failed ("group" or "claim") for the metric.
    fn check(&self, identity: &Identity, claims: Option<&Claims>) -> Result<(), &'static str> {
        if self.groups.iter().any(|g| identity.consumer.in_group(g)) {
            return Ok(());
        }
        if !self.claims.is_empty() {
            if let Some(claims) = claims {
                let matches = self.claims.iter().all(|(name, wanted)| {
                    claims
                        .get(name)
                        .is_some_and(|value| claim_matches(value, wanted))
                });
                if matches {
                    return Ok(());
                }
            }
            return Err("claim");
        }
        Err("group")
    }
}

fn claim_matches(value: &Value, wanted: &[String]) -> bool {
    let one = |v: &Value| match v {
        Value::String(s) => wanted.iter().any(|w| w == s),
        Value::Number(n) => wanted.iter().any(|w| *w == n.to_string()),
        Value::Bool(b) => wanted
            .iter()
            .any(|w| w == if *b { "true" } else { "false" }),
        _ => false,
    };
    match value {
        Value::Array(items) => items.iter().any(one),
        v => one(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn consumer(groups: &[&str]) -> Identity {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        Identity {
            consumer: Arc::new(Consumer::new("c", &groups)),
            method: Method::ApiKey,
        }
    }

    fn claims(v: Value) -> Claims {
        Claims(v.as_object().cloned().unwrap_or_default())
    }

    #[test]
    fn allow_reads_groups_or_claims() {
        let allow = Allow {
            groups: vec!["admins".into()],
            claims: vec![("role".into(), vec!["admin".into(), "partner".into()])],
        };
        assert!(allow.check(&consumer(&["admins"]), None).is_ok());
        assert_eq!(allow.check(&consumer(&["apps"]), None), Err("claim"));
        let token = consumer(&[]);
        assert!(allow
            .check(&token, Some(&claims(json!({"role": "partner"}))))
            .is_ok());
        assert!(allow
            .check(&token, Some(&claims(json!({"role": ["user", "admin"]}))))
            .is_ok());
        assert_eq!(
            allow.check(&token, Some(&claims(json!({"role": "user"})))),
            Err("claim")
        );
        let groups_only = Allow {
            groups: vec!["admins".into()],
            claims: vec![],
        };
        assert_eq!(groups_only.check(&token, None), Err("group"));
    }

    #[test]
    fn query_keys_are_found() {
        let source = KeySource::Query("apikey".into());
        let uri: Uri = "/a?x=1&apikey=abc&apikey=def".parse().unwrap();
        assert_eq!(source.find(&HeaderMap::new(), &uri), Some(&b"abc"[..]));
        let uri: Uri = "/a?apikeyx=1".parse().unwrap();
        assert_eq!(source.find(&HeaderMap::new(), &uri), None);
    }
}
