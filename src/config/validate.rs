//! Cross-reference and value checks that serde cannot express and that need nothing but
//! the config itself. Checks that need the runtime's builders (certificates, compiled
//! matches, policies) are in `runtime::check`, which runs beside these.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{BrokenNames, Config, ConfigIssue, RouteConfig};
use crate::wire::forward::parse_net;

/// Problems found so far, each with its YAML path (line and column are added later).
pub struct Issues(pub Vec<ConfigIssue>);

impl Issues {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.into(),
            message: message.into(),
            line: None,
            column: None,
        });
    }
}

pub fn validate(config: &Config, broken: &BrokenNames) -> Vec<ConfigIssue> {
    let mut issues = Issues(Vec::new());
    server_section(config, &mut issues);
    upstreams_section(config, &mut issues);
    caches_section(config, &mut issues);
    guards_section(config, &mut issues);
    telemetry_section(config, &mut issues);
    for (i, route) in config.routes.iter().enumerate() {
        route_entry(config, broken, i, route, &mut issues);
    }
    let mut seen = HashSet::new();
    for (i, route) in config.routes.iter().enumerate() {
        if !seen.insert(route.name.as_str()) {
            issues.push(
                format!("routes[{i}].name"),
                format!("duplicate route name {:?}", route.name),
            );
        }
    }
    issues.0
}

fn listen_address(path: &str, text: &str, issues: &mut Issues) {
    if text.parse::<SocketAddr>().is_err() {
        issues.push(
            path,
            format!("invalid listen address {text:?} (expected IP:PORT such as 0.0.0.0:8080)"),
        );
    }
}

fn server_section(config: &Config, issues: &mut Issues) {
    let server = &config.server;
    listen_address("server.listen", &server.listen, issues);
    if let Some(tls) = &server.tls {
        listen_address("server.tls.listen", &tls.listen, issues);
        if tls.certificates.is_empty() {
            issues.push(
                "server.tls.certificates",
                "at least one certificate is needed",
            );
        }
    }
    for (i, net) in server.trusted_proxies.iter().enumerate() {
        if parse_net(net).is_none() {
            issues.push(
                format!("server.trusted_proxies[{i}]"),
                format!("invalid address or CIDR range {net:?}"),
            );
        }
    }
    let limits = &server.limits;
    if limits.max_connections == 0 {
        issues.push("server.limits.max_connections", "must be at least 1");
    }
    if limits.max_request_headers.0 < 8 * 1024 {
        issues.push("server.limits.max_request_headers", "must be at least 8KiB");
    }
    if limits.max_request_line.0 < 256 {
        issues.push("server.limits.max_request_line", "must be at least 256B");
    } else if limits.max_request_line.0 > limits.max_request_headers.0 {
        issues.push(
            "server.limits.max_request_line",
            "must not be above server.limits.max_request_headers (the line is part of the head)",
        );
    }
    if limits.header_read_timeout.0.is_zero() {
        issues.push("server.limits.header_read_timeout", "must be above zero");
    }
    if limits.idle_timeout.0.is_zero() {
        issues.push("server.limits.idle_timeout", "must be above zero");
    }
    if let Some(admin) = &config.admin {
        listen_address("admin.listen", &admin.listen, issues);
        let public = admin
            .listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| !a.ip().is_loopback());
        if public && admin.token.as_deref().is_none_or(str::is_empty) {
            issues.push(
                "admin.token",
                "required when admin.listen is not a loopback address (the admin API reloads and changes the gateway); set it, e.g. from ${PORTICO_ADMIN_TOKEN}",
            );
        }
    }
}

fn upstreams_section(config: &Config, issues: &mut Issues) {
    for (name, up) in &config.upstreams {
        let path = format!("upstreams.{name}");
        if up.targets.is_empty() && up.discovery.is_none() {
            issues.push(
                format!("{path}.targets"),
                "an upstream needs targets or discovery",
            );
        }
        for (i, target) in up.targets.iter().enumerate() {
            if target.weight() == 0 {
                issues.push(
                    format!("{path}.targets[{i}].weight"),
                    "weight must be above 0",
                );
            }
        }
        if up.timeouts.connect.0.is_zero() {
            issues.push(format!("{path}.timeouts.connect"), "must be above zero");
        }
        if up.keepalive.idle_timeout.0.is_zero() {
            issues.push(
                format!("{path}.keepalive.idle_timeout"),
                "must be above zero (max_idle: 0 turns connection reuse off)",
            );
        }
        if up.timeouts.request.0.is_zero() {
            issues.push(format!("{path}.timeouts.request"), "must be above zero");
        }
    }
}

fn telemetry_section(config: &Config, issues: &mut Issues) {
    let Some(tracing) = config.telemetry.as_ref().and_then(|t| t.tracing.as_ref()) else {
        return;
    };
    let path = "telemetry.tracing";
    let endpoint = tracing.otlp_endpoint.trim();
    if !endpoint.is_empty() {
        match endpoint.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some() => {}
            _ => issues.push(
                format!("{path}.otlp_endpoint"),
                "must be an http:// or https:// URL of an OTLP/HTTP collector, such as http://127.0.0.1:4318 (or empty: tracing off)",
            ),
        }
    }
    if !(0.0..=1.0).contains(&tracing.sample_ratio) {
        issues.push(
            format!("{path}.sample_ratio"),
            "must be between 0.0 and 1.0",
        );
    }
    if tracing.service_name.trim().is_empty() {
        issues.push(format!("{path}.service_name"), "must not be empty");
    }
}

/// Rate limits that a route cannot serve.
fn guards_section(config: &Config, issues: &mut Issues) {
    // A claim key on a route without jwt would put every request in the anonymous bucket.
    for (i, route) in config.routes.iter().enumerate() {
        let claim_keyed = route
            .rate_limit
            .as_ref()
            .and_then(|n| config.rate_limits.get(n))
            .is_some_and(|l| l.key.starts_with("claim:"));
        if claim_keyed && route.verifier_name().is_none() {
            issues.push(
                format!("routes[{i}].rate_limit"),
                "this rate limit is keyed by a claim: the route needs jwt",
            );
        }
    }
}

fn reference(
    issues: &mut Issues,
    broken: &BrokenNames,
    path: String,
    kind: &str,
    section: &str,
    name: &str,
    exists: bool,
) {
    if !exists && !broken.contains(&format!("{section}.{name}")) {
        issues.push(path, format!("unknown {kind} {name:?}"));
    }
}

fn route_entry(
    config: &Config,
    broken: &BrokenNames,
    i: usize,
    route: &RouteConfig,
    issues: &mut Issues,
) {
    let path = format!("routes[{i}]");
    if route.name.trim().is_empty() {
        issues.push(format!("{path}.name"), "a route needs a name");
    }
    match (&route.upstream, &route.split) {
        (Some(up), None) => reference(
            issues,
            broken,
            format!("{path}.upstream"),
            "upstream",
            "upstreams",
            up,
            config.upstreams.contains_key(up),
        ),
        (None, Some(split)) => {
            for (side, cfg) in [("stable", &split.stable), ("canary", &split.canary)] {
                reference(
                    issues,
                    broken,
                    format!("{path}.split.{side}.upstream"),
                    "upstream",
                    "upstreams",
                    &cfg.upstream,
                    config.upstreams.contains_key(&cfg.upstream),
                );
            }
            if route.rewrite.is_some() {
                issues.push(
                    format!("{path}.rewrite"),
                    "a split route takes its rewrites per side (split.stable.rewrite, split.canary.rewrite)",
                );
            }
        }
        (Some(_), Some(_)) => issues.push(
            format!("{path}.split"),
            "a route has either upstream or split, not both",
        ),
        (None, None) => issues.push(
            format!("{path}.upstream"),
            "a route needs an upstream (or a split)",
        ),
    }
    if let Some(name) = &route.jwt {
        reference(
            issues,
            broken,
            format!("{path}.jwt"),
            "jwt verifier",
            "jwt",
            name,
            config.jwt.contains_key(name),
        );
    }
    if let Some(name) = &route.rate_limit {
        reference(
            issues,
            broken,
            format!("{path}.rate_limit"),
            "rate limit",
            "rate_limits",
            name,
            config.rate_limits.contains_key(name),
        );
    }
    if let Some(name) = &route.cache {
        reference(
            issues,
            broken,
            format!("{path}.cache"),
            "cache",
            "caches",
            name,
            config.caches.contains_key(name),
        );
    }
    if route.grpc {
        grpc_route(config, &path, route, issues);
    }
}

/// A gRPC route needs HTTP/2 to every upstream it reaches (gRPC has no HTTP/1.1 form),
/// and passes messages through untouched.
fn grpc_route(config: &Config, path: &str, route: &RouteConfig, issues: &mut Issues) {
    use super::UpstreamProtocol;
    let upstreams = route.upstream.iter().chain(
        route
            .split
            .iter()
            .flat_map(|s| [&s.stable.upstream, &s.canary.upstream]),
    );
    for name in upstreams {
        let protocol = config.upstreams.get(name).map(|u| u.protocol);
        if protocol == Some(UpstreamProtocol::Http1) {
            issues.push(
                format!("{path}.grpc"),
                format!("gRPC needs HTTP/2 to its upstream: upstream {name:?} has protocol http1 (use h2c, h2 with tls:, or auto)"),
            );
        }
    }
    if route.cache.is_some() {
        issues.push(format!("{path}.cache"), "gRPC calls are not cached");
    }
    let edits_body = route.transform.iter().any(|t| {
        [&t.request, &t.response]
            .into_iter()
            .flatten()
            .any(|m| m.json_body.is_some())
    });
    if edits_body {
        issues.push(
            format!("{path}.transform"),
            "a gRPC route's messages are protobuf: JSON body edits do not apply",
        );
    }
}

fn caches_section(config: &Config, issues: &mut Issues) {
    for (name, cache) in &config.caches {
        let path = format!("caches.{name}");
        if cache.max_size.0 == 0 {
            issues.push(format!("{path}.max_size"), "must be above zero");
        }
        if let Some(max_entry) = cache.max_entry {
            if max_entry.0 == 0 {
                issues.push(format!("{path}.max_entry"), "must be above zero");
            } else if max_entry.0 > cache.max_size.0 {
                issues.push(
                    format!("{path}.max_entry"),
                    "must not be larger than max_size",
                );
            } else if max_entry.0 > 1024 * 1024 * 1024 {
                issues.push(format!("{path}.max_entry"), "must be at most 1GiB");
            }
        }
    }
}
