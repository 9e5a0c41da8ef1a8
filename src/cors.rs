//! CORS (the Fetch standard's CORS protocol) for a named policy: preflights answered by the
//! gateway, and the headers an actual response needs for the browser to hand it to the
//! page. Every header value is made once, when the policy is built; a request costs an
//! origin lookup and a few inserts.
//!
//! Rules that matter: `Access-Control-Allow-Origin: *` never goes with credentials (the
//! browser refuses it), so a credentialed policy echoes the origin; every response of a
//! policy's route says `Vary: Origin`, so a shared cache never hands one origin's answer
//! to another; a disallowed origin gets no CORS header at all (the browser blocks the
//! read). A preflight is `OPTIONS` with `Origin` and `Access-Control-Request-Method`; a
//! plain `OPTIONS` is a request like any other.

use std::collections::HashSet;

use http::{header, HeaderMap, HeaderValue, Method};

use crate::config::CorsConfig;

#[derive(Debug)]
pub struct Policy {
    any_origin: bool,
    /// Lower-case exact origins; a short list is compared in order, a long one hashed.
    exact: Vec<Box<[u8]>>,
    exact_set: HashSet<Box<[u8]>>,
    /// `https://*.shop.example` as ("https://", ".shop.example").
    wildcards: Vec<(String, String)>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    pub credentials: bool,
}

/// What a preflight got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preflight {
    Allowed,
    Rejected,
}

/// Up to this many exact origins are compared one by one (cheaper than hashing).
const SHORT_LIST: usize = 16;

const DEFAULT_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

impl Policy {
    /// Compiles a policy; a problem is (field, message).
    pub fn build(config: &CorsConfig) -> Result<Policy, (String, String)> {
        if config.origins.is_empty() {
            return Err(("origins".into(), "list at least one origin".into()));
        }
        let mut policy = Policy {
            any_origin: false,
            exact: Vec::new(),
            exact_set: HashSet::new(),
            wildcards: Vec::new(),
            methods: Vec::new(),
            allow_methods: HeaderValue::from_static(""),
            allow_headers: None,
            expose: None,
            max_age: None,
            credentials: config.credentials,
        };
        for (i, origin) in config.origins.iter().enumerate() {
            let path = || format!("origins[{i}]");
            if origin == "*" {
                if config.credentials {
                    return Err((
                        path(),
                        "\"*\" cannot go with credentials: true (browsers refuse it); list the origins".into(),
                    ));
                }
                policy.any_origin = true;
                continue;
            }
            let (scheme, host) = origin
                .split_once("://")
                .filter(|(s, h)| {
                    matches!(*s, "http" | "https") && !h.is_empty() && !h.contains('/')
                })
                .ok_or_else(|| {
                    (
                        path(),
                        format!("{origin:?} is not an origin (scheme://host[:port], no path)"),
                    )
                })?;
            match host.strip_prefix("*.") {
                Some(rest) if !rest.is_empty() && !rest.contains('*') => policy.wildcards.push((
                    format!("{scheme}://"),
                    format!(".{}", rest.to_ascii_lowercase()),
                )),
                _ if host.contains('*') => {
                    return Err((
                        path(),
                        "a wildcard stands for one leading label: https://*.example.com".into(),
                    ))
                }
                _ => {
                    policy
                        .exact
                        .push(origin.to_ascii_lowercase().into_bytes().into_boxed_slice());
                }
            }
        }
        let methods: Vec<&str> = if config.methods.is_empty() {
            DEFAULT_METHODS.to_vec()
        } else {
            config.methods.iter().map(String::as_str).collect()
        };
        for (i, m) in methods.iter().enumerate() {
            let method = Method::from_bytes(m.as_bytes())
                .map_err(|_| (format!("methods[{i}]"), format!("invalid method {m:?}")))?;
            policy.methods.push(method);
        }
        policy.allow_methods = list_value(&methods).map_err(|e| ("methods".into(), e))?;
        for (i, h) in config.headers.iter().enumerate() {
            http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                (
                    format!("headers[{i}]"),
                    format!("invalid header name {h:?}"),
                )
            })?;
        }
        for (i, h) in config.expose.iter().enumerate() {
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| (format!("expose[{i}]"), format!("invalid header name {h:?}")))?;
        }
        policy.allow_headers = non_empty(&config.headers).map_err(|e| ("headers".into(), e))?;
        policy.expose = non_empty(&config.expose).map_err(|e| ("expose".into(), e))?;
        policy.max_age = config.max_age.map(|d| HeaderValue::from(d.0.as_secs()));
        if policy.exact.len() > SHORT_LIST {
            policy.exact_set = std::mem::take(&mut policy.exact).into_iter().collect();
        }
        Ok(policy)
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        if self.any_origin {
            return true;
        }
        let bytes = origin.as_bytes();
        if self.exact.iter().any(|o| o.eq_ignore_ascii_case(bytes)) {
            return true;
        }
        // Browsers send origins in lower case; only an odd one pays for a copy.
        if !self.exact_set.is_empty()
            && (self.exact_set.contains(bytes)
                || (bytes.iter().any(u8::is_ascii_uppercase)
                    && self.exact_set.contains(&*bytes.to_ascii_lowercase())))
        {
            return true;
        }
        let Ok(text) = origin.to_str() else {
            return false;
        };
        self.wildcards.iter().any(|(scheme, suffix)| {
            text.len() > scheme.len() + suffix.len()
                && text[..scheme.len()].eq_ignore_ascii_case(scheme)
                && text[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && {
                    let label = &text[scheme.len()..text.len() - suffix.len()];
                    !label.contains(['.', '/', ':', '@'])
                }
        })
    }

    /// `Access-Control-Allow-Origin` for an allowed origin: `*` for an open policy
    /// without credentials, the origin itself otherwise.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Answers a preflight's headers into `out`; Rejected leaves `out` without CORS
    /// headers (the browser then refuses the actual request).
    pub fn preflight(&self, request: &HeaderMap, out: &mut HeaderMap) -> Preflight {
        out.append(header::VARY, HeaderValue::from_static("Origin"));
        out.append(
            header::VARY,
            HeaderValue::from_static("Access-Control-Request-Method"),
        );
        out.append(
            header::VARY,
            HeaderValue::from_static("Access-Control-Request-Headers"),
        );
        let Some(origin) = request.get(header::ORIGIN).filter(|o| self.allows(o)) else {
            return Preflight::Rejected;
        };
        let wanted = request
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
        let method_ok = wanted.is_some_and(|m| {
            self.methods.contains(&m) || matches!(m, Method::GET | Method::HEAD | Method::POST)
        });
        if !method_ok {
            return Preflight::Rejected;
        }
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        if let Some(h) = &self.allow_headers {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
        }
        if let Some(age) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        Preflight::Allowed
    }

    /// Adds what an actual response needs when the request's origin is allowed, and
    /// `Vary: Origin` whatever it is.
    pub fn actual(&self, origin: Option<&HeaderValue>, out: &mut HeaderMap) {
        if !self.any_origin || self.credentials {
            out.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = origin.filter(|o| self.allows(o)) else {
            return;
        };
        out.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin(origin),
        );
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose {
            out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// Whether a request is a CORS preflight.
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn list_value(items: &[&str]) -> Result<HeaderValue, String> {
    HeaderValue::from_str(&items.join(", ")).map_err(|_| "not a valid header value".to_string())
}

fn non_empty(items: &[String]) -> Result<Option<HeaderValue>, String> {
    if items.is_empty() {
        return Ok(None);
    }
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    list_value(&refs).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        Policy::build(&serde_yaml_ng::from_str(yaml).unwrap()).unwrap()
    }

    fn origin(o: &str) -> HeaderValue {
        HeaderValue::from_str(o).unwrap()
    }

    #[test]
    fn origins_match_exactly_or_by_one_label() {
        let p = policy("{ origins: [\"https://shop.example\", \"https://*.shop.example\"], credentials: true }");
        assert!(p.allows(&origin("https://shop.example")));
        assert!(p.allows(&origin("https://SHOP.example")));
        assert!(p.allows(&origin("https://eu.shop.example")));
        assert!(!p.allows(&origin("https://a.b.shop.example")));
        assert!(!p.allows(&origin("http://eu.shop.example")));
        assert!(!p.allows(&origin("https://evilshop.example")));
        assert!(!p.allows(&origin("https://shop.example.evil")));
        assert!(!p.allows(&origin("null")));
    }

    #[test]
    fn a_long_list_is_hashed_and_still_case_blind() {
        let origins: Vec<String> = (0..40)
            .map(|i| format!("\"https://s{i}.example\""))
            .collect();
        let p = policy(&format!("{{ origins: [{}] }}", origins.join(", ")));
        assert!(p.exact.is_empty());
        assert!(p.allows(&origin("https://s39.example")));
        assert!(p.allows(&origin("https://S7.example")));
        assert!(!p.allows(&origin("https://s40.example")));
    }

    #[test]
    fn credentials_echo_the_origin_and_never_star() {
        let p = policy(
            "{ origins: [\"https://shop.example\"], credentials: true, expose: [X-Request-Id] }",
        );
        let mut out = HeaderMap::new();
        p.actual(Some(&origin("https://shop.example")), &mut out);
        assert_eq!(
            out[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://shop.example"
        );
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(out[header::ACCESS_CONTROL_EXPOSE_HEADERS], "X-Request-Id");
        assert_eq!(out[header::VARY], "Origin");
        let mut out = HeaderMap::new();
        p.actual(Some(&origin("https://evil.example")), &mut out);
        assert!(!out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let star = Policy::build(
            &serde_yaml_ng::from_str("{ origins: [\"*\"], credentials: true }").unwrap(),
        );
        assert_eq!(star.unwrap_err().0, "origins[0]");
    }

    #[test]
    fn preflights_need_an_allowed_origin_and_method() {
        let p = policy("{ origins: [\"https://shop.example\"], methods: [GET, PUT], headers: [X-Trace], max_age: 10m }");
        let mut req = HeaderMap::new();
        req.insert(header::ORIGIN, origin("https://shop.example"));
        req.insert(header::ACCESS_CONTROL_REQUEST_METHOD, origin("PUT"));
        let mut out = HeaderMap::new();
        assert_eq!(p.preflight(&req, &mut out), Preflight::Allowed);
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT");
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_HEADERS], "X-Trace");
        assert_eq!(out[header::ACCESS_CONTROL_MAX_AGE], "600");
        req.insert(header::ACCESS_CONTROL_REQUEST_METHOD, origin("DELETE"));
        let mut out = HeaderMap::new();
        assert_eq!(p.preflight(&req, &mut out), Preflight::Rejected);
        assert!(!out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    }
}
