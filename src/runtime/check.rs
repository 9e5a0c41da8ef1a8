//! The checks of a config that need the runtime's own builders: loading a certificate,
//! compiling a route match or a rewrite, a JWT verifier's keys, a rate limit's key, a
//! split's rules, a transform's templates, an upstream's resilience keys. They run beside
//! `config`'s own value checks, by YAML path, so `portico check` and `portico run` use the
//! same code to decide and cannot disagree.
//!
//! `parse`, `load_file` and `config` are the ways in: each runs both sets of checks.

use std::path::Path;

use crate::config::{self, BrokenNames, Config, ConfigError, ConfigIssue, Issues, RouteConfig};
use crate::{auth, mirror, ratelimit, router, split, tls, transform, upstream};

/// Reads, substitutes, parses and checks a config file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = config::read_file(path)?;
    parse(&text)
}

/// Parses and checks config text, with `${VAR}` taken from the process environment.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with_env(text, &|name| std::env::var(name).ok())
}

pub fn parse_with_env(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    config::parse_with(text, lookup, &problems)
}

/// What is allowed but worth saying: the YAML paths of settings that weaken security
/// (`tls.insecure_skip_verify`), and `allow.groups` naming a group no consumer has.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = upstream::validate::insecure_upstreams(config)
        .into_iter()
        .map(|path| format!("{path}: certificates of this upstream are not verified"))
        .collect();
    out.extend(super::edge::warnings(config));
    out
}

/// Checks a config built in code (files are checked by `parse`).
pub fn config(config: &Config) -> Result<(), ConfigError> {
    config::check_with(config, &problems)
}

/// Every problem the runtime's builders find, by YAML path.
pub fn problems(config: &Config, broken: &BrokenNames) -> Vec<ConfigIssue> {
    let mut issues = Issues(Vec::new());
    if let Some(tls) = &config.server.tls {
        for (i, cert) in tls.certificates.iter().enumerate() {
            if let Err(e) = tls::load_certificate(cert) {
                issues.push(format!("server.tls.certificates[{i}]"), e.to_string());
            }
            for (j, host) in cert.hosts.iter().enumerate() {
                if let Err(e) = tls::host_pattern(host) {
                    issues.push(format!("server.tls.certificates[{i}].hosts[{j}]"), e);
                }
            }
        }
    }
    for (name, up) in &config.upstreams {
        for (i, target) in up.targets.iter().enumerate() {
            if let Err(e) = upstream::parse_target(target.address()) {
                issues.push(format!("upstreams.{name}.targets[{i}]"), e);
            }
        }
    }
    for (path, message) in upstream::validate::problems(config) {
        issues.push(path, message);
    }
    for (name, jwt) in &config.jwt {
        for (field, message) in auth::check(jwt) {
            issues.push(format!("jwt.{name}.{field}"), message);
        }
    }
    for (name, limit) in &config.rate_limits {
        for (field, message) in ratelimit::check(limit) {
            issues.push(format!("rate_limits.{name}.{field}"), message);
        }
        if limit.scope == crate::config::Scope::Cluster && config.cluster.is_none() {
            issues.push(
                format!("rate_limits.{name}.scope"),
                "scope: cluster needs cluster.redis (a shared store)",
            );
        }
    }
    if let Some(cluster) = &config.cluster {
        for (field, message) in crate::cluster::check(cluster) {
            issues.push(format!("cluster.{field}"), message);
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        route_entry(i, route, &mut issues);
        for (field, message) in mirror::check(route, config, broken) {
            issues.push(format!("routes[{i}].{field}"), message);
        }
    }
    for (path, message) in super::edge::problems(config) {
        issues.push(path, message);
    }
    issues.0
}

fn route_entry(i: usize, route: &RouteConfig, issues: &mut Issues) {
    let path = format!("routes[{i}]");
    if let Some(split) = &route.split {
        for (side, cfg) in [("stable", &split.stable), ("canary", &split.canary)] {
            if let Some(rw) = &cfg.rewrite {
                if let Err(e) = router::Rewrite::build(rw) {
                    issues.push(format!("{path}.split.{side}.rewrite"), e);
                }
            }
        }
        for (field, problem) in split::validate(split, route.verifier_name().is_some()) {
            issues.push(format!("{path}.split.{field}"), problem);
        }
    }
    if let Err((field, e)) = router::RouteMatch::build(&route.matcher) {
        issues.push(format!("{path}.match.{field}"), e);
    }
    if let Some(rw) = &route.rewrite {
        if let Err(e) = router::Rewrite::build(rw) {
            issues.push(format!("{path}.rewrite"), e);
        }
    }
    if let Some(t) = &route.transform {
        for (field, message) in transform::check(t) {
            issues.push(format!("{path}.transform.{field}"), message);
        }
    }
}
