//! Configuration: file text -> `${VAR}` substitution -> serde structs (one section at a
//! time, so one typo does not hide the next) -> validation. Every problem carries its YAML
//! path and, when the locator finds it, line and column.

mod cluster;
mod edge;
mod env;
mod locate;
mod mirror;
mod schema;
pub mod units;
mod validate;

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

pub use cluster::*;
pub use edge::*;
pub use locate::Locator;
pub use mirror::*;
pub use schema::*;
pub use units::{Duration, Percent, Size};
pub use validate::Issues;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn single(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            issues: vec![ConfigIssue {
                path: path.into(),
                message: message.into(),
                line: None,
                column: None,
            }],
        }
    }
}

/// Checks a layer above `config` runs on a parsed config (`runtime::check::problems`):
/// config imports nothing of the runtime, so the runtime hands its checks in.
pub type ExtraChecks<'a> = &'a dyn Fn(&Config, &BrokenNames) -> Vec<ConfigIssue>;

/// A config file's text.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::single("", format!("cannot read {}: {e}", path.display())))
}

/// Substitutes `${VAR}` (through `lookup`), parses and validates config text: this
/// module's own checks, then `extra`. Every issue gets its line and column.
pub fn parse_with(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    extra: ExtraChecks<'_>,
) -> Result<Config, ConfigError> {
    let text = env::substitute(text, lookup).map_err(|errors| ConfigError {
        issues: errors
            .into_iter()
            .map(|e| ConfigIssue {
                path: String::new(),
                message: format!(
                    "environment variable ${{{}}} is not set and has no default (write ${{{}:-default}})",
                    e.name, e.name
                ),
                line: Some(e.line),
                column: Some(e.column),
            })
            .collect(),
    })?;
    let locator = Locator::new(&text);
    let value: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
        let location = e.location();
        ConfigError {
            issues: vec![ConfigIssue {
                path: String::new(),
                message: format!("invalid YAML: {e}"),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
            }],
        }
    })?;
    let mut issues = Vec::new();
    let mut broken = BrokenNames::new();
    let config = deserialize_sections(value, &mut issues, &mut broken);
    issues.extend(validate::validate(&config, &broken));
    issues.extend(extra(&config, &broken));
    if issues.is_empty() {
        return Ok(config);
    }
    for issue in &mut issues {
        if issue.line.is_none() {
            if let Some((line, column)) = locator.find(&issue.path) {
                issue.line = Some(line);
                issue.column = Some(column);
            }
        }
    }
    Err(ConfigError { issues })
}

/// Names (`upstreams.orders`) whose definitions failed to deserialise: references to them
/// are not reported a second time as unknown.
pub type BrokenNames = std::collections::HashSet<String>;

fn deserialize_sections(
    value: Value,
    issues: &mut Vec<ConfigIssue>,
    broken: &mut BrokenNames,
) -> Config {
    let mut config = Config::default();
    let mapping = match value {
        Value::Mapping(m) => m,
        Value::Null => {
            issues.push(issue("", "the config file is empty"));
            return config;
        }
        _ => {
            issues.push(issue("", "the config file must be a mapping of sections"));
            return config;
        }
    };
    let mut saw_server = false;
    for (key, value) in mapping {
        let Some(key) = key.as_str().map(str::to_string) else {
            issues.push(issue("", "section names must be strings"));
            continue;
        };
        match key.as_str() {
            "server" => {
                saw_server = true;
                if let Some(v) = section(&key, value, issues) {
                    config.server = v;
                }
            }
            "admin" => config.admin = section(&key, value, issues),
            "consul" => config.consul = section(&key, value, issues),
            "upstreams" => config.upstreams = named(&key, value, issues, broken),
            "jwt" => config.jwt = named(&key, value, issues, broken),
            "rate_limits" => config.rate_limits = named(&key, value, issues, broken),
            "caches" => config.caches = named(&key, value, issues, broken),
            "routes" => config.routes = listed(&key, value, issues),
            "telemetry" => config.telemetry = section(&key, value, issues),
            "consumers" => config.consumers = named(&key, value, issues, broken),
            "cors" => config.cors = named(&key, value, issues, broken),
            "cluster" => config.cluster = section(&key, value, issues),
            other => issues.push(issue(
                other,
                "unknown section (expected one of server, admin, consul, upstreams, jwt, rate_limits, caches, routes, telemetry, consumers, cors, cluster)",
            )),
        }
    }
    if !saw_server {
        issues.push(issue(
            "server",
            "missing section (server.listen is required)",
        ));
    }
    config
}

fn section<T: DeserializeOwned>(
    path: &str,
    mut value: Value,
    issues: &mut Vec<ConfigIssue>,
) -> Option<T> {
    // An unknown key is reported and taken out, and the section read again, so the
    // section's other problems (a bad value beside the typo) are reported too. The
    // config is refused all the same: the unknown key is an issue.
    for _ in 0..MAX_UNKNOWN_KEYS_PER_SECTION {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return Some(v),
            Err(e) => {
                let segments: Vec<serde_path_to_error::Segment> =
                    e.path().iter().cloned().collect();
                let full = full_path(path, &segments);
                let message = e.into_inner().to_string();
                let unknown = message.starts_with("unknown field");
                issues.push(issue(&full, message));
                if !unknown || !remove_key(&mut value, &segments) {
                    return None;
                }
            }
        }
    }
    None
}

/// How many unknown keys one section may carry before the rest of it goes unread.
const MAX_UNKNOWN_KEYS_PER_SECTION: usize = 16;

fn full_path(path: &str, segments: &[serde_path_to_error::Segment]) -> String {
    let mut full = path.to_string();
    for segment in segments {
        match segment {
            serde_path_to_error::Segment::Seq { index } => full.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key } => {
                full.push('.');
                full.push_str(key);
            }
            _ => {}
        }
    }
    full
}

/// Removes the key the last segment names from the mapping the others lead to.
fn remove_key(value: &mut Value, segments: &[serde_path_to_error::Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut current = value;
    for segment in parents {
        let next = match (segment, current) {
            (serde_path_to_error::Segment::Map { key }, Value::Mapping(m)) => {
                m.get_mut(key.as_str())
            }
            (serde_path_to_error::Segment::Seq { index }, Value::Sequence(items)) => {
                items.get_mut(*index)
            }
            _ => None,
        };
        let Some(next) = next else { return false };
        current = next;
    }
    match (last, current) {
        (serde_path_to_error::Segment::Map { key }, Value::Mapping(m)) => {
            m.remove(key.as_str()).is_some()
        }
        _ => false,
    }
}

fn named<T: DeserializeOwned>(
    path: &str,
    value: Value,
    issues: &mut Vec<ConfigIssue>,
    broken: &mut BrokenNames,
) -> std::collections::BTreeMap<String, T> {
    let mut out = std::collections::BTreeMap::new();
    match value {
        Value::Mapping(m) => {
            for (name, value) in m {
                let Some(name) = name.as_str().map(str::to_string) else {
                    issues.push(issue(path, "names must be strings"));
                    continue;
                };
                let full = format!("{path}.{name}");
                match section(&full, value, issues) {
                    Some(v) => {
                        out.insert(name, v);
                    }
                    None => {
                        broken.insert(full);
                    }
                }
            }
        }
        Value::Null => {}
        _ => issues.push(issue(path, "expected a mapping of names to definitions")),
    }
    out
}

fn listed<T: DeserializeOwned>(path: &str, value: Value, issues: &mut Vec<ConfigIssue>) -> Vec<T> {
    let mut out = Vec::new();
    match value {
        Value::Sequence(items) => {
            for (i, value) in items.into_iter().enumerate() {
                if let Some(v) = section(&format!("{path}[{i}]"), value, issues) {
                    out.push(v);
                }
            }
        }
        Value::Null => {}
        _ => issues.push(issue(path, "expected a list")),
    }
    out
}

fn issue(path: &str, message: impl Into<String>) -> ConfigIssue {
    ConfigIssue {
        path: path.to_string(),
        message: message.into(),
        line: None,
        column: None,
    }
}

/// Validates a config built in code (files are validated by `parse_with`): this module's
/// own checks, then `extra`.
pub fn check_with(config: &Config, extra: ExtraChecks<'_>) -> Result<(), ConfigError> {
    let broken = BrokenNames::new();
    let mut issues = validate::validate(config, &broken);
    issues.extend(extra(config, &broken));
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { issues })
    }
}

/// A URL with its `user:password@` part replaced.
pub fn redact_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://<redacted>@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The config with secrets replaced, for `GET /config`.
pub fn redacted(config: &Config) -> Config {
    let mut config = config.clone();
    if let Some(admin) = config.admin.as_mut() {
        if admin.token.as_deref().is_some_and(|t| !t.is_empty()) {
            admin.token = Some("<redacted>".into());
        }
    }
    if let Some(consul) = config.consul.as_mut() {
        if consul.token.as_deref().is_some_and(|t| !t.is_empty()) {
            consul.token = Some("<redacted>".into());
        }
    }
    // A collector URL may carry credentials in its user part.
    if let Some(tracing) = config.telemetry.as_mut().and_then(|t| t.tracing.as_mut()) {
        if let Some((scheme, rest)) = tracing.otlp_endpoint.split_once("://") {
            if let Some((_, host)) = rest.split_once('@') {
                tracing.otlp_endpoint = format!("{scheme}://<redacted>@{host}");
            }
        }
    }
    for jwt in config.jwt.values_mut() {
        if jwt.secret.is_some() {
            jwt.secret = Some("<redacted>".into());
        }
    }
    if let Some(redis) = config.cluster.as_mut().map(|c| &mut c.redis) {
        redis.url = redact_userinfo(&redis.url);
    }
    for consumer in config.consumers.values_mut() {
        for key in &mut consumer.api_keys {
            *key = "<redacted>".into();
        }
        if let Some(basic) = consumer.basic_auth.as_mut() {
            basic.password_hash = "<redacted>".into();
        }
    }
    // Header values a route matches on, sets or forces a split with are often shared
    // secrets (an internal API key, a tester's cookie): names stay, values go.
    let hide = |values: &mut std::collections::BTreeMap<String, String>| {
        for v in values.values_mut() {
            *v = "<redacted>".into();
        }
    };
    for route in &mut config.routes {
        for value in route.matcher.headers.values_mut() {
            if let HeaderMatchConfig::Exact(v) = value {
                *v = "<redacted>".into();
            }
        }
        if let Some(t) = route.transform.as_mut() {
            for m in [t.request.as_mut(), t.response.as_mut()]
                .into_iter()
                .flatten()
            {
                hide(&mut m.set_headers);
                hide(&mut m.add_headers);
                hide(&mut m.set_query);
            }
        }
        if let Some(split) = route.split.as_mut() {
            for force in [split.force_canary.as_mut(), split.force_stable.as_mut()]
                .into_iter()
                .flatten()
            {
                hide(&mut force.header);
                hide(&mut force.cookie);
            }
        }
    }
    config
}
