//! Who may call, compiled: the `consumers` and `cors` sections once per Runtime, and each
//! route's auth, allow, CORS policy, IP lists and body limit with their metric handles.
//! The same builders back `portico check` (`problems`, `warnings`), so check and run
//! cannot disagree.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::IntCounter;

use crate::auth::consumers::Consumers;
use crate::auth::route::{self as auth_route, Allow, Method, RouteAuth};
use crate::auth::{AuthError, Verifier};
use crate::config::{Config, ConfigError, RouteAuthConfig, RouteConfig};
use crate::cors;
use crate::iplist::{IpFilter, Refusal};
use crate::observe::Metrics;

/// The sections routes refer to.
#[derive(Debug)]
pub struct Edge {
    pub consumers: Arc<Consumers>,
    pub cors: BTreeMap<String, Arc<cors::Policy>>,
}

pub fn build(config: &Config) -> Result<Edge, ConfigError> {
    let consumers = Consumers::build(&config.consumers).map_err(|problems| ConfigError {
        issues: problems
            .into_iter()
            .map(|(path, message)| issue(format!("consumers.{path}"), message))
            .collect(),
    })?;
    let mut policies = BTreeMap::new();
    for (name, cfg) in &config.cors {
        let policy = cors::Policy::build(cfg)
            .map_err(|(f, e)| ConfigError::single(format!("cors.{name}.{f}"), e))?;
        policies.insert(name.clone(), Arc::new(policy));
    }
    Ok(Edge {
        consumers: Arc::new(consumers),
        cors: policies,
    })
}

fn issue(path: String, message: String) -> crate::config::ConfigIssue {
    crate::config::ConfigIssue {
        path,
        message,
        line: None,
        column: None,
    }
}

/// A route's CORS policy and its preflight counters (allowed, rejected).
#[derive(Debug)]
pub struct RouteCors {
    pub policy: Arc<cors::Policy>,
    preflights: [IntCounter; 2],
}

impl RouteCors {
    pub fn count(&self, result: cors::Preflight) {
        self.preflights[result as usize].inc();
    }
}

/// A route's IP lists and their refusal counters (deny, allow).
#[derive(Debug)]
pub struct RouteIp {
    pub filter: IpFilter,
    rejected: [IntCounter; 2],
}

impl RouteIp {
    pub fn count(&self, refusal: Refusal) {
        self.rejected[refusal as usize].inc();
    }
}

/// Everything a route checks about its caller.
#[derive(Debug, Default)]
pub struct RouteEdge {
    pub auth: Option<RouteAuth>,
    pub allow: Option<Allow>,
    pub cors: Option<RouteCors>,
    pub ip: Option<RouteIp>,
}

/// The auth section a route means: `auth:`, or `jwt: NAME` as `any: [jwt]`.
fn auth_config(rc: &RouteConfig) -> Option<RouteAuthConfig> {
    match (&rc.auth, &rc.jwt) {
        (Some(auth), _) => Some(auth.clone()),
        (None, Some(name)) => Some(RouteAuthConfig {
            any: vec!["jwt".into()],
            jwt: Some(name.clone()),
            api_key: None,
        }),
        (None, None) => None,
    }
}

pub fn route(
    i: usize,
    rc: &RouteConfig,
    edge: &Edge,
    verifiers: &BTreeMap<String, Arc<Verifier>>,
    metrics: &Metrics,
) -> Result<RouteEdge, ConfigError> {
    let err = |field: &str, e: String| {
        let path = if field.is_empty() {
            format!("routes[{i}]")
        } else {
            format!("routes[{i}].{field}")
        };
        ConfigError::single(path, e)
    };
    let name = rc.name.as_str();
    let m = &metrics.edge;
    let auth =
        match auth_config(rc) {
            Some(cfg) => {
                let jwt =
                    match rc.verifier_name() {
                        Some(v) => Some(verifiers.get(v).cloned().ok_or_else(|| {
                            err("auth.jwt", format!("unknown jwt verifier {v:?}"))
                        })?),
                        None => None,
                    };
                let jwt_rejected =
                    metrics.jwt_rejections(name, AuthError::ALL.iter().map(|e| e.reason()));
                let auth = RouteAuth::build(
                    &cfg,
                    jwt,
                    edge.consumers.clone(),
                    |method, reason| m.auth_rejected.with_label_values(&[name, method, reason]),
                    jwt_rejected,
                )
                .map_err(|(f, e)| err(&format!("auth.{f}"), e))?;
                if auth.methods.contains(&Method::Jwt) && auth.jwt.is_none() {
                    return Err(err(
                        "auth.jwt",
                        "jwt in auth.any needs auth.jwt: NAME".into(),
                    ));
                }
                Some(auth)
            }
            None => None,
        };
    let allow = rc
        .allow
        .as_ref()
        .map(Allow::build)
        .transpose()
        .map_err(|(f, e)| err(&join("allow", &f), e))?;
    let cors = match &rc.cors {
        Some(policy) => Some(RouteCors {
            policy: edge
                .cors
                .get(policy)
                .cloned()
                .ok_or_else(|| err("cors", format!("unknown cors policy {policy:?}")))?,
            preflights: ["allowed", "rejected"]
                .map(|r| m.cors_preflights.with_label_values(&[name, r])),
        }),
        None => None,
    };
    let ip = match &rc.ip {
        Some(cfg) => Some(RouteIp {
            filter: IpFilter::build(cfg).map_err(|(f, e)| err(&join("ip", &f), e))?,
            rejected: [Refusal::Denied, Refusal::NotAllowed]
                .map(|r| m.ip_rejected.with_label_values(&[name, r.label()])),
        }),
        None => None,
    };
    Ok(RouteEdge {
        auth,
        allow,
        cors,
        ip,
    })
}

fn join(section: &str, field: &str) -> String {
    if field.is_empty() {
        section.to_string()
    } else {
        format!("{section}.{field}")
    }
}

/// The route's body limit: its own `limits.max_request_body`, or the server's.
pub fn max_request_body(rc: &RouteConfig, server: u64) -> u64 {
    rc.limits
        .as_ref()
        .and_then(|l| l.max_request_body)
        .map_or(server, |s| s.0.min(server))
}

/// Every who-may-call problem of a config, by YAML path.
pub fn problems(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Err(problems) = Consumers::build(&config.consumers) {
        out.extend(
            problems
                .into_iter()
                .map(|(p, m)| (format!("consumers.{p}"), m)),
        );
    }
    for (name, cfg) in &config.cors {
        if let Err((f, e)) = cors::Policy::build(cfg) {
            out.push((format!("cors.{name}.{f}"), e));
        }
    }
    let has_keys = config.consumers.values().any(|c| !c.api_keys.is_empty());
    let has_basic = config.consumers.values().any(|c| c.basic_auth.is_some());
    let server_limit = config.server.limits.max_request_body.0;
    for (i, rc) in config.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if rc.auth.is_some() && rc.jwt.is_some() {
            out.push((
                format!("{path}.jwt"),
                "set jwt or auth, not both (auth: { any: [jwt], jwt: NAME } is what jwt: NAME means)".into(),
            ));
        }
        if let Some(auth) = &rc.auth {
            match auth_route::parse(auth) {
                Err((f, e)) => out.push((format!("{path}.auth.{f}"), e)),
                Ok((methods, _)) => {
                    for (k, method) in methods.iter().enumerate() {
                        let field = format!("{path}.auth.any[{k}]");
                        match method {
                            Method::Jwt => match &auth.jwt {
                                None => out.push((
                                    format!("{path}.auth.jwt"),
                                    "jwt in auth.any needs auth.jwt: NAME".into(),
                                )),
                                Some(v) if !config.jwt.contains_key(v) => out.push((
                                    format!("{path}.auth.jwt"),
                                    format!("unknown jwt verifier {v:?}"),
                                )),
                                Some(_) => {}
                            },
                            Method::ApiKey if !has_keys => out.push((
                                field,
                                "no consumer has api_keys: this method could never accept".into(),
                            )),
                            Method::Basic if !has_basic => out.push((
                                field,
                                "no consumer has basic_auth: this method could never accept".into(),
                            )),
                            _ => {}
                        }
                    }
                }
            }
        }
        if let Some(allow) = &rc.allow {
            if !rc.authenticates() {
                out.push((
                    format!("{path}.allow"),
                    "allow needs an authenticated caller: set auth (or jwt) on the route".into(),
                ));
            }
            if let Err((f, e)) = Allow::build(allow) {
                out.push((format!("{path}.{}", join("allow", &f)), e));
            }
        }
        if let Some(name) = &rc.cors {
            if !config.cors.contains_key(name) {
                out.push((
                    format!("{path}.cors"),
                    format!("unknown cors policy {name:?}"),
                ));
            }
        }
        if let Some(ip) = &rc.ip {
            if let Err((f, e)) = IpFilter::build(ip) {
                out.push((format!("{path}.{}", join("ip", &f)), e));
            }
        }
        if let Some(limit) = rc.limits.as_ref().and_then(|l| l.max_request_body) {
            if limit.0 > server_limit {
                out.push((
                    format!("{path}.limits.max_request_body"),
                    format!("{} is above server.limits.max_request_body ({server_limit} bytes): a route can only lower it", limit.0),
                ));
            }
        }
        let consumer_keyed = rc
            .rate_limit
            .as_ref()
            .and_then(|n| config.rate_limits.get(n))
            .is_some_and(|l| l.key == "consumer");
        if consumer_keyed && !rc.authenticates() {
            out.push((
                format!("{path}.rate_limit"),
                "this rate limit is keyed by consumer: the route needs auth (or jwt)".into(),
            ));
        }
    }
    out
}

/// What is allowed but likely a mistake: `allow.groups` naming a group no consumer has.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, rc) in config.routes.iter().enumerate() {
        let Some(allow) = &rc.allow else { continue };
        for (g, group) in allow.groups.iter().enumerate() {
            let someone = config.consumers.values().any(|c| c.groups.contains(group));
            if !someone {
                out.push(format!(
                    "routes[{i}].allow.groups[{g}]: no consumer is in group {group:?}"
                ));
            }
        }
    }
    out
}
