//! Route matching and path rewriting. A `RouteTable` is a list scanned in file order;
//! everything a match needs (methods, header names, host patterns, path segments) is
//! parsed when the table is built, never per request.

use std::borrow::Cow;
use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;

use crate::config::{HeaderMatchConfig, MatchConfig, RewriteConfig};

/// What a request offers to the matcher: every field already extracted once.
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Host without port, as sent (case is ignored when comparing).
    pub host: &'a str,
    /// The normalised path.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Debug)]
pub struct RouteTable<T> {
    entries: Vec<(RouteMatch, T)>,
    /// Built for large tables only: below `INDEX_FROM` routes a scan is cheaper than the
    /// lookups.
    index: Option<SegmentIndex>,
}

/// Tables with at least this many routes are searched through a `SegmentIndex`.
const INDEX_FROM: usize = 32;

impl<T> RouteTable<T> {
    pub fn new(entries: Vec<(RouteMatch, T)>) -> Self {
        let index = (entries.len() >= INDEX_FROM).then(|| {
            SegmentIndex::build(
                entries
                    .iter()
                    .map(|(m, _)| (m.literal_segments(), m.host.as_ref())),
            )
        });
        RouteTable { entries, index }
    }

    /// The first entry, in file order, whose rules all match.
    pub fn find(&self, request: &RequestView<'_>) -> Option<&T> {
        let Some(index) = &self.index else {
            return self
                .entries
                .iter()
                .find(|(m, _)| m.matches(request))
                .map(|(_, t)| t);
        };
        index
            .first_match(request.host, request.path, |i| {
                self.entries[i].0.matches(request)
            })
            .map(|i| &self.entries[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, t)| t)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A trie over the literal leading path segments of each route: `/api/users` (prefix),
/// `/api/users/me` (exact) and `/api/{v}/x` (pattern, literal up to the first parameter)
/// sit at `api/users`, `api/users/me` and `api`. A route can only match a path that
/// starts with its segments, so the routes worth checking for a path are those on the
/// trie walk along the path's segments: a few short lists instead of the whole table.
/// At each node, routes with a host rule are keyed by their host (`shop.example.com`) or
/// wildcard suffix (`.example.com`), so many tenants on one path cost a lookup or two, not
/// a check each. Each list is in file order, so "first match wins" is kept by taking the
/// lowest match over the lists.
#[derive(Debug, Default)]
struct SegmentIndex {
    /// Routes without a host rule.
    routes: Vec<usize>,
    exact_hosts: HashMap<String, Vec<usize>>,
    host_suffixes: HashMap<String, Vec<usize>>,
    children: HashMap<String, SegmentIndex>,
}

impl SegmentIndex {
    fn build<'a>(
        keys: impl Iterator<Item = (Vec<&'a str>, Option<&'a HostMatch>)>,
    ) -> SegmentIndex {
        let mut root = SegmentIndex::default();
        for (i, (segments, host)) in keys.enumerate() {
            let mut node = &mut root;
            for segment in segments {
                node = node.children.entry(segment.to_string()).or_default();
            }
            let list = match host {
                None => &mut node.routes,
                Some(HostMatch::Exact(h)) => node.exact_hosts.entry(h.clone()).or_default(),
                Some(HostMatch::Suffix(s)) => node.host_suffixes.entry(s.clone()).or_default(),
            };
            list.push(i);
        }
        root
    }

    fn first_match(
        &self,
        host: &str,
        path: &str,
        matches: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        // Host rules are stored lowercase; a request host rarely needs the copy.
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let mut best: Option<usize> = None;
        let lowest = |list: &[usize], best: &mut Option<usize>| {
            for &i in list {
                if best.is_some_and(|b| i > b) {
                    return;
                }
                if matches(i) {
                    *best = Some(i);
                    return;
                }
            }
        };
        let mut node = self;
        let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
        loop {
            lowest(&node.routes, &mut best);
            if !node.exact_hosts.is_empty() {
                if let Some(list) = node.exact_hosts.get(host.as_ref()) {
                    lowest(list, &mut best);
                }
            }
            if !node.host_suffixes.is_empty() {
                // `*.example.com` matches `a.example.com` and `a.b.example.com`: try the
                // host from each of its dots.
                for (at, _) in host.match_indices('.').filter(|&(at, _)| at > 0) {
                    if let Some(list) = node.host_suffixes.get(&host[at..]) {
                        lowest(list, &mut best);
                    }
                }
            }
            let Some(next) = segments.next().and_then(|s| node.children.get(s)) else {
                return best;
            };
            node = next;
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteMatch {
    path: PathMatch,
    host: Option<HostMatch>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
}

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    /// Segment-aware prefix, stored without a trailing slash (`/` is `Any`).
    Prefix(String),
    Exact(String),
    Pattern(Vec<Segment>),
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Param,
}

#[derive(Debug, Clone)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

type BuildError = (&'static str, String);

impl RouteMatch {
    pub fn build(config: &MatchConfig) -> Result<RouteMatch, BuildError> {
        let path = match (&config.path_prefix, &config.path) {
            (Some(_), Some(_)) => {
                return Err(("path", "use either path_prefix or path, not both".into()))
            }
            (Some(prefix), None) => prefix_match(prefix).map_err(|e| ("path_prefix", e))?,
            (None, Some(path)) => pattern_match(path).map_err(|e| ("path", e))?,
            (None, None) => PathMatch::Any,
        };
        let host = config
            .host
            .as_deref()
            .map(host_match)
            .transpose()
            .map_err(|e| ("host", e))?;
        let mut methods = Vec::new();
        for m in &config.methods {
            let method = Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| ("methods", format!("invalid method {m:?}")))?;
            methods.push(method);
        }
        let mut headers = Vec::new();
        for (name, rule) in &config.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ("headers", format!("invalid header name {name:?}")))?;
            let value = match rule {
                HeaderMatchConfig::Present(true) => None,
                HeaderMatchConfig::Present(false) => {
                    return Err((
                        "headers",
                        format!("header {name:?}: use a value to match or true for presence"),
                    ))
                }
                HeaderMatchConfig::Exact(v) => Some(
                    HeaderValue::from_str(v)
                        .map_err(|_| ("headers", format!("invalid header value {v:?}")))?,
                ),
            };
            headers.push((header, value));
        }
        Ok(RouteMatch {
            path,
            host,
            methods,
            headers,
        })
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method) {
            return false;
        }
        if let Some(host) = &self.host {
            let ok = match host {
                HostMatch::Exact(h) => req.host.eq_ignore_ascii_case(h),
                HostMatch::Suffix(s) => {
                    req.host.len() > s.len()
                        && req.host.is_char_boundary(req.host.len() - s.len())
                        && req.host[req.host.len() - s.len()..].eq_ignore_ascii_case(s)
                }
            };
            if !ok {
                return false;
            }
        }
        if !self.path_matches(req.path) {
            return false;
        }
        self.headers.iter().all(|(name, want)| match want {
            None => req.headers.contains_key(name),
            Some(v) => req.headers.get_all(name).iter().any(|got| got == v),
        })
    }

    /// The literal segments every path this rule matches starts with.
    fn literal_segments(&self) -> Vec<&str> {
        match &self.path {
            PathMatch::Any => Vec::new(),
            PathMatch::Prefix(p) | PathMatch::Exact(p) => p[1..].split('/').collect(),
            PathMatch::Pattern(segments) => segments
                .iter()
                .map_while(|s| match s {
                    Segment::Literal(l) => Some(l.as_str()),
                    Segment::Param => None,
                })
                .collect(),
        }
    }

    fn path_matches(&self, path: &str) -> bool {
        match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(prefix) => has_segment_prefix(path, prefix),
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Pattern(segments) => {
                let mut parts = path[1..].split('/');
                for segment in segments {
                    match (segment, parts.next()) {
                        (Segment::Literal(l), Some(p)) if l == p => {}
                        (Segment::Param, Some(p)) if !p.is_empty() => {}
                        _ => return false,
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

fn has_segment_prefix(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/')
}

fn check_path(text: &str) -> Result<(), String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?} must start with /"));
    }
    match crate::wire::path::normalize(text) {
        Ok(n) if n == text => Ok(()),
        _ => Err(format!(
            "{text:?} is not a normalised path (no //, . or .. segments, no escaped unreserved characters)"
        )),
    }
}

fn prefix_match(prefix: &str) -> Result<PathMatch, String> {
    check_path(prefix)?;
    let trimmed = prefix.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        PathMatch::Any
    } else {
        PathMatch::Prefix(trimmed.to_string())
    })
}

fn pattern_match(path: &str) -> Result<PathMatch, String> {
    if !path.contains('{') {
        check_path(path)?;
        return Ok(PathMatch::Exact(path.to_string()));
    }
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with /"));
    }
    let mut segments = Vec::new();
    for part in path[1..].split('/') {
        if part.starts_with('{') && part.ends_with('}') && part.len() > 2 {
            segments.push(Segment::Param);
        } else if part.contains('{') || part.contains('}') {
            return Err(format!(
                "segment {part:?} of {path:?}: a parameter must be a whole segment such as {{id}}"
            ));
        } else {
            segments.push(Segment::Literal(part.to_string()));
        }
    }
    Ok(PathMatch::Pattern(segments))
}

fn host_match(host: &str) -> Result<HostMatch, String> {
    let host = host.trim().to_ascii_lowercase();
    let valid = |h: &str| {
        !h.is_empty()
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    if let Some(rest) = host.strip_prefix("*.") {
        if valid(rest) {
            return Ok(HostMatch::Suffix(format!(".{rest}")));
        }
    } else if valid(&host) {
        return Ok(HostMatch::Exact(host));
    }
    Err(format!(
        "invalid host {host:?} (expected shop.example.com or *.example.com)"
    ))
}

/// A path rewrite applied to the normalised path before it goes upstream.
#[derive(Debug, Clone)]
pub enum Rewrite {
    StripPrefix(String),
    ReplacePrefix { from: String, to: String },
    Regex { pattern: Regex, replacement: String },
}

impl Rewrite {
    pub fn build(config: &RewriteConfig) -> Result<Rewrite, String> {
        let chosen = [
            config.strip_prefix.is_some(),
            config.replace_prefix.is_some(),
            config.regex.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if chosen != 1 {
            return Err("use exactly one of strip_prefix, replace_prefix, regex".into());
        }
        if let Some(prefix) = &config.strip_prefix {
            check_path(prefix)?;
            return Ok(Rewrite::StripPrefix(
                prefix.trim_end_matches('/').to_string(),
            ));
        }
        if let Some(rp) = &config.replace_prefix {
            check_path(&rp.from)?;
            check_path(&rp.to)?;
            return Ok(Rewrite::ReplacePrefix {
                from: rp.from.trim_end_matches('/').to_string(),
                to: rp.to.trim_end_matches('/').to_string(),
            });
        }
        let rx = config.regex.as_ref().ok_or("missing regex")?;
        let pattern = Regex::new(&rx.pattern).map_err(|e| {
            let detail = e.to_string();
            let last = detail
                .lines()
                .last()
                .unwrap_or("")
                .trim_start_matches("error: ");
            format!("invalid regex {:?}: {last}", rx.pattern)
        })?;
        Ok(Rewrite::Regex {
            pattern,
            replacement: rx.replacement.clone(),
        })
    }

    pub fn apply<'a>(&self, path: &'a str) -> Cow<'a, str> {
        match self {
            Rewrite::StripPrefix(prefix) => {
                if prefix.is_empty() || !has_segment_prefix(path, prefix) {
                    return Cow::Borrowed(path);
                }
                let rest = &path[prefix.len()..];
                Cow::Borrowed(if rest.is_empty() { "/" } else { rest })
            }
            Rewrite::ReplacePrefix { from, to } => {
                if !has_segment_prefix(path, from) {
                    return Cow::Borrowed(path);
                }
                let rest = &path[from.len()..];
                let mut out = String::with_capacity(to.len() + rest.len() + 1);
                out.push_str(to);
                out.push_str(rest);
                if out.is_empty() {
                    out.push('/');
                }
                Cow::Owned(out)
            }
            Rewrite::Regex {
                pattern,
                replacement,
            } => {
                let replaced = pattern.replace(path, replacement.as_str());
                if replaced.starts_with('/') {
                    replaced
                } else {
                    Cow::Owned(format!("/{replaced}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RegexRewriteConfig, ReplacePrefixConfig};

    fn view<'a>(
        method: &'a Method,
        host: &'a str,
        path: &'a str,
        h: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            method,
            host,
            path,
            headers: h,
        }
    }

    #[test]
    fn prefix_is_segment_aware() {
        let m = RouteMatch::build(&MatchConfig {
            path_prefix: Some("/api/users".into()),
            ..Default::default()
        })
        .unwrap();
        let h = HeaderMap::new();
        let get = Method::GET;
        assert!(m.matches(&view(&get, "x", "/api/users", &h)));
        assert!(m.matches(&view(&get, "x", "/api/users/7", &h)));
        assert!(!m.matches(&view(&get, "x", "/api/usersX", &h)));
        assert!(!m.matches(&view(&get, "x", "/api", &h)));
    }

    #[test]
    fn patterns_hosts_methods_headers() {
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("x-beta".to_string(), HeaderMatchConfig::Exact("1".into()));
        headers.insert("x-key".to_string(), HeaderMatchConfig::Present(true));
        let m = RouteMatch::build(&MatchConfig {
            path: Some("/api/legacy/{id}".into()),
            host: Some("*.shop.local".into()),
            methods: vec!["get".into()],
            headers,
            ..Default::default()
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-beta", HeaderValue::from_static("1"));
        h.insert("x-key", HeaderValue::from_static("anything"));
        let get = Method::GET;
        assert!(m.matches(&view(&get, "Legacy.Shop.local", "/api/legacy/7", &h)));
        assert!(!m.matches(&view(&get, "shop.local", "/api/legacy/7", &h)));
        assert!(!m.matches(&view(&get, "a.shop.local", "/api/legacy/7/x", &h)));
        assert!(!m.matches(&view(&get, "a.shop.local", "/api/legacy/", &h)));
        assert!(!m.matches(&view(&Method::POST, "a.shop.local", "/api/legacy/7", &h)));
        h.remove("x-key");
        assert!(!m.matches(&view(&get, "a.shop.local", "/api/legacy/7", &h)));
    }

    #[test]
    fn the_segment_index_finds_what_a_scan_finds() {
        // A small alphabet makes prefixes, exact paths and patterns overlap a lot.
        let words = ["a", "b", "api", "x"];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut found, mut missed) = (0, 0);
        for round in 0..20 {
            let mut entries = Vec::new();
            for i in 0..(INDEX_FROM + round * 5) {
                let depth = 1 + next(3);
                let mut text = String::new();
                for _ in 0..depth {
                    text.push('/');
                    text.push_str(if next(5) == 0 {
                        "{p}"
                    } else {
                        words[next(words.len())]
                    });
                }
                if next(40) == 0 {
                    text = "/".into(); // a catch-all, at the trie's root
                }
                let mut config = MatchConfig::default();
                match next(3) {
                    0 if !text.contains('{') => config.path_prefix = Some(text),
                    1 if !text.contains('{') => config.path = Some(text),
                    _ => config.path = Some(text),
                }
                if next(4) == 0 {
                    config.methods = vec!["POST".into()];
                }
                if next(3) == 0 {
                    let hosts = ["a.shop.local", "*.shop.local", "*.local", "B.Shop.Local"];
                    config.host = Some(hosts[next(hosts.len())].into());
                }
                entries.push((RouteMatch::build(&config).unwrap(), i));
            }
            let scan: Vec<RouteMatch> = entries.iter().map(|(m, _)| m.clone()).collect();
            let table = RouteTable::new(entries);
            assert!(table.index.is_some());
            let headers = HeaderMap::new();
            for _ in 0..300 {
                let mut path = String::new();
                for _ in 0..next(5) {
                    path.push('/');
                    path.push_str(["a", "b", "api", "x", "7", ""][next(6)]);
                }
                if path.is_empty() {
                    path.push('/');
                }
                let method = if next(2) == 0 {
                    Method::GET
                } else {
                    Method::POST
                };
                let hosts = [
                    "h",
                    "a.shop.local",
                    "x.a.shop.local",
                    "A.SHOP.local",
                    "shop.local",
                    "b.local",
                    "b.shop.local",
                ];
                let req = view(&method, hosts[next(hosts.len())], &path, &headers);
                let expected = scan.iter().position(|m| m.matches(&req));
                assert_eq!(table.find(&req).copied(), expected, "{method} {path}");
                if expected.is_some() {
                    found += 1;
                } else {
                    missed += 1;
                }
            }
        }
        // The generated cases exercise both outcomes.
        assert!(
            found > 500 && missed > 500,
            "found {found}, missed {missed}"
        );
    }

    #[test]
    fn rewrites() {
        let strip = Rewrite::build(&RewriteConfig {
            strip_prefix: Some("/api".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(strip.apply("/api/users/7"), "/users/7");
        assert_eq!(strip.apply("/api"), "/");
        assert_eq!(strip.apply("/apix"), "/apix");
        let replace = Rewrite::build(&RewriteConfig {
            replace_prefix: Some(ReplacePrefixConfig {
                from: "/api/products".into(),
                to: "/products".into(),
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(replace.apply("/api/products/3"), "/products/3");
        let regex = Rewrite::build(&RewriteConfig {
            regex: Some(RegexRewriteConfig {
                pattern: "^/api/legacy/(.*)$".into(),
                replacement: "/v1/$1".into(),
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(regex.apply("/api/legacy/42"), "/v1/42");
        assert!(Rewrite::build(&RewriteConfig::default()).is_err());
    }
}
