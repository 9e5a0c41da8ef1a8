//! Request and response transformation: header edits with templates, query edits on the
//! upstream request, and JSON body edits. Everything is compiled when the config is
//! built (`Transform::build`); `check` reports the same problems with their YAML paths.
//!
//! Order on the request path: request headers and query are edited before the cache
//! lookup (so `Vary` sees what the upstream sees), then the request body. On the way
//! back the JSON body edit runs before the cache stores a response (stored bodies are
//! already edited), and header edits run on every response, cached or not, because
//! their templates (`${request_id}`, `${client_ip}`) belong to each request.
//!
//! Compressed bodies (`Content-Encoding` other than `identity`) are passed through
//! unchanged and counted: decompressing and recompressing on the gateway costs more
//! than it gives for the small JSON documents these edits are meant for.

pub mod headers;
pub mod json;
pub mod template;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{header, HeaderMap, HeaderValue, Response};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use prometheus::IntCounter;
use serde_json::{Map, Value};

use crate::config::{MessageTransformConfig, TransformConfig};
use crate::observe::TransformMetrics;
use crate::wire::body::{is_body_too_large, Body};
use crate::wire::buffer::{self, Buffered};
use crate::wire::headers::content_length;
use headers::{HeaderOps, Problem};
use json::JsonEdit;
use template::{Template, Vars};

/// Query values are encoded like form values, minus the characters safe in a query.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What a template may refer to, apart from the message's own headers.
pub struct Scope<'a> {
    pub claims: Option<&'a Map<String, Value>>,
    pub request_id: &'a HeaderValue,
    pub client_ip: IpAddr,
    pub consumer: Option<&'a str>,
    pub route: &'a str,
    pub upstream: &'a str,
}

impl<'a> Scope<'a> {
    fn vars(&self, headers: &'a HeaderMap) -> Vars<'a> {
        Vars {
            claims: self.claims,
            headers,
            request_id: self.request_id,
            client_ip: self.client_ip,
            consumer: self.consumer,
            route: self.route,
            upstream: self.upstream,
        }
    }
}

/// Why a JSON body edit was skipped; the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    TooLarge,
    NotJson,
    Compressed,
    InvalidJson,
}

const SKIPS: [&str; 4] = ["too_large", "not_json", "compressed", "invalid_json"];

/// Why a transform could not edit a message. The top layer gives each its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The edited query made the request target invalid.
    #[error("invalid request target")]
    InvalidTarget,
    #[error("request body is not valid JSON")]
    InvalidJson,
    #[error("request body is too large")]
    BodyTooLarge,
    #[error("request body could not be read")]
    BodyUnreadable,
    /// The upstream's body failed while it was read for the edit.
    #[error("invalid response from upstream")]
    ResponseBodyFailed,
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("upstream body not received in time")]
    ResponseBodyTimeout,
}

#[derive(Clone, Debug)]
struct Message {
    headers: HeaderOps,
    /// Names percent-encoded, as they are written into the query.
    set_query: Vec<(String, Template)>,
    /// The names of `remove_query` and `set_query` as written in the config: a client's
    /// parameter goes when its decoded name is one of them (`%75id` is `uid`).
    replaced_names: Vec<String>,
    json: Option<JsonEdit>,
    skipped: Vec<IntCounter>,
}

impl Message {
    fn build(config: &MessageTransformConfig, request: bool) -> Result<Message, Vec<Problem>> {
        let mut problems = Vec::new();
        let headers = HeaderOps::build(config).unwrap_or_else(|p| {
            problems.extend(p);
            HeaderOps::default()
        });
        if !request && (!config.set_query.is_empty() || !config.remove_query.is_empty()) {
            problems.push((
                "set_query".into(),
                "set_query and remove_query apply to requests only".into(),
            ));
        }
        let mut set_query = Vec::new();
        for (k, v) in &config.set_query {
            if k.is_empty() {
                problems.push(("set_query".into(), "empty query parameter name".into()));
                continue;
            }
            match Template::compile(v) {
                Ok(t) => set_query.push((utf8_percent_encode(k, QUERY_VALUE).to_string(), t)),
                Err(e) => problems.push((format!("set_query.{k}"), e)),
            }
        }
        let replaced_names = config
            .remove_query
            .iter()
            .chain(config.set_query.keys())
            .cloned()
            .collect();
        let json = match config.json_body.as_ref().map(JsonEdit::build).transpose() {
            Ok(j) => j,
            Err(e) => {
                problems.push(("json_body".into(), e));
                None
            }
        };
        if problems.is_empty() {
            Ok(Message {
                headers,
                set_query,
                replaced_names,
                json,
                skipped: Vec::new(),
            })
        } else {
            Err(problems)
        }
    }

    fn count(&self, skip: Skip) {
        if let Some(c) = self.skipped.get(skip as usize) {
            c.inc();
        }
    }
}

/// A route's compiled transform; cheap to clone.
#[derive(Clone, Debug)]
pub struct Transform(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    request: Option<Message>,
    response: Option<Message>,
}

/// Every problem in a transform config, as (field under `transform`, message).
pub fn check(config: &TransformConfig) -> Vec<Problem> {
    let mut out = Vec::new();
    for (side, cfg, request) in [
        ("request", &config.request, true),
        ("response", &config.response, false),
    ] {
        if let Some(cfg) = cfg {
            if let Err(problems) = Message::build(cfg, request) {
                out.extend(
                    problems
                        .into_iter()
                        .map(|(f, m)| (format!("{side}.{f}"), m)),
                );
            }
        }
    }
    out
}

impl Transform {
    pub fn build(
        route: &str,
        config: &TransformConfig,
        metrics: &TransformMetrics,
    ) -> Result<Transform, String> {
        let build = |cfg: &Option<MessageTransformConfig>,
                     request: bool|
         -> Result<Option<Message>, String> {
            let Some(cfg) = cfg else { return Ok(None) };
            let mut m = Message::build(cfg, request).map_err(|p| {
                p.iter()
                    .map(|(f, m)| {
                        format!("{}.{f}: {m}", if request { "request" } else { "response" })
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            if m.json.is_some() {
                let direction = if request { "request" } else { "response" };
                m.skipped = SKIPS
                    .iter()
                    .map(|r| metrics.skipped.with_label_values(&[route, direction, r]))
                    .collect();
            }
            Ok(Some(m))
        };
        Ok(Transform(Arc::new(Inner {
            request: build(&config.request, true)?,
            response: build(&config.response, false)?,
        })))
    }

    /// Request headers and query. Returns the path and query to send upstream.
    pub fn request_head(
        &self,
        headers: &mut HeaderMap,
        path_and_query: PathAndQuery,
        scope: &Scope<'_>,
    ) -> Result<PathAndQuery, TransformError> {
        let Some(m) = &self.0.request else {
            return Ok(path_and_query);
        };
        let query_edit = !m.replaced_names.is_empty();
        let new_query = query_edit.then(|| {
            let original = &*headers;
            edit_query(path_and_query.query(), m, &scope.vars(original))
        });
        m.headers.apply(headers, |t, h| t.render(&scope.vars(h)));
        match new_query {
            None => Ok(path_and_query),
            Some(q) => {
                let mut s = String::with_capacity(path_and_query.path().len() + q.len() + 1);
                s.push_str(path_and_query.path());
                if !q.is_empty() {
                    s.push('?');
                    s.push_str(&q);
                }
                PathAndQuery::from_maybe_shared(s).map_err(|_| TransformError::InvalidTarget)
            }
        }
    }

    /// The request body after a JSON edit (or unchanged). Invalid JSON is the client's
    /// mistake: 400. The body is read into memory, where no idle watchdog runs: it must
    /// arrive `within`.
    pub async fn request_body(
        &self,
        headers: &mut HeaderMap,
        body: Body,
        within: Duration,
    ) -> Result<Body, TransformError> {
        let Some(m) = &self.0.request else {
            return Ok(body);
        };
        let Some(edit) = &m.json else { return Ok(body) };
        match edit_body(m, edit, headers, body, within).await {
            Edited::Done(body) => Ok(body),
            Edited::TimedOut => Err(TransformError::BodyTimeout),
            Edited::Invalid(_) => Err(TransformError::InvalidJson),
            Edited::Failed(e) if is_body_too_large(e.as_ref()) => Err(TransformError::BodyTooLarge),
            Edited::Failed(_) => Err(TransformError::BodyUnreadable),
        }
    }

    /// Response header edits (after the cache: they run for every response).
    pub fn response_head(&self, headers: &mut HeaderMap, scope: &Scope<'_>) {
        if let Some(m) = &self.0.response {
            m.headers.apply(headers, |t, h| t.render(&scope.vars(h)));
        }
    }

    /// True when responses get a JSON body edit.
    pub fn edits_response_body(&self) -> bool {
        self.0.response.as_ref().is_some_and(|m| m.json.is_some())
    }

    /// The response body after a JSON edit. Invalid JSON from an upstream is passed on
    /// unchanged and logged. The body is read into memory: it must arrive `within`.
    pub async fn response_body(
        &self,
        response: Response<Body>,
        within: Duration,
    ) -> Result<Response<Body>, TransformError> {
        let Some(m) = &self.0.response else {
            return Ok(response);
        };
        let Some(edit) = &m.json else {
            return Ok(response);
        };
        let (mut parts, body) = response.into_parts();
        match edit_body(m, edit, &mut parts.headers, body, within).await {
            Edited::Done(body) => Ok(Response::from_parts(parts, body)),
            Edited::TimedOut => Err(TransformError::ResponseBodyTimeout),
            Edited::Invalid(original) => Ok(Response::from_parts(parts, Body::full(original))),
            Edited::Failed(_) => Err(TransformError::ResponseBodyFailed),
        }
    }

    /// A response body already in memory (the cache's): edited, with `Content-Length`.
    pub fn response_bytes(&self, headers: &mut HeaderMap, bytes: Bytes) -> Bytes {
        let Some(m) = &self.0.response else {
            return bytes;
        };
        let Some(edit) = &m.json else { return bytes };
        if let Some(skip) = skip_reason(headers, edit, bytes.len() as u64) {
            m.count(skip);
            return bytes;
        }
        edit_complete(m, edit, headers, bytes).unwrap_or_else(|original| original)
    }
}

fn edit_query(query: Option<&str>, m: &Message, vars: &Vars<'_>) -> String {
    let mut out = String::new();
    let dropped = |name: &str| {
        let name = decoded_name(name);
        m.replaced_names.iter().any(|r| *r == *name)
    };
    for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let name = param.split_once('=').map_or(param, |(k, _)| k);
        if dropped(name) {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(param);
    }
    for (k, t) in &m.set_query {
        let Some(value) = t.render_string(vars) else {
            continue;
        };
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.extend(utf8_percent_encode(&value, QUERY_VALUE));
    }
    out
}

/// A query parameter name as the backend will read it: `+` is a space and
/// percent-escapes are decoded (invalid UTF-8 replaced, so it matches no configured name).
fn decoded_name(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['%', '+']) {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    Cow::Owned(percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

enum Edited {
    Done(Body),
    /// Not JSON after all: the original bytes.
    Invalid(Bytes),
    /// The body did not arrive in time.
    TimedOut,
    Failed(crate::wire::body::BoxError),
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

fn skip_reason(headers: &HeaderMap, edit: &JsonEdit, len: u64) -> Option<Skip> {
    if !is_json(headers) {
        return Some(Skip::NotJson);
    }
    let compressed = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if compressed {
        return Some(Skip::Compressed);
    }
    (len > edit.max_size).then_some(Skip::TooLarge)
}

/// The one JSON edit of a whole body in memory, for streamed bodies and the cache's
/// alike. An empty body passes untouched; otherwise the edited body with its new
/// `Content-Length`, or, when the body is not JSON after all, the original (as `Err`),
/// counted and logged.
fn edit_complete(
    m: &Message,
    edit: &JsonEdit,
    headers: &mut HeaderMap,
    bytes: Bytes,
) -> Result<Bytes, Bytes> {
    if bytes.is_empty() {
        return Ok(bytes);
    }
    match edit_bytes(edit, &bytes) {
        Some(out) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
            Ok(out)
        }
        None => {
            m.count(Skip::InvalidJson);
            tracing::warn!("body is not valid JSON; the JSON transform passed it unchanged");
            Err(bytes)
        }
    }
}

fn edit_bytes(edit: &JsonEdit, bytes: &[u8]) -> Option<Bytes> {
    let mut value: Value = serde_json::from_slice(bytes).ok()?;
    edit.apply(&mut value);
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

async fn edit_body(
    m: &Message,
    edit: &JsonEdit,
    headers: &mut HeaderMap,
    body: Body,
    within: Duration,
) -> Edited {
    use http_body::Body as _;
    if body.is_end_stream() || content_length(headers) == Some(0) {
        return Edited::Done(body);
    }
    if let Some(skip) = skip_reason(headers, edit, content_length(headers).unwrap_or(0)) {
        m.count(skip);
        return Edited::Done(body);
    }
    let Ok(buffered) = tokio::time::timeout(within, buffer::up_to(body, edit.max_size)).await
    else {
        return Edited::TimedOut;
    };
    match buffered {
        Buffered::Complete(bytes) => match edit_complete(m, edit, headers, bytes) {
            Ok(out) => Edited::Done(Body::full(out)),
            Err(original) => Edited::Invalid(original),
        },
        Buffered::Overflow(body) => {
            m.count(Skip::TooLarge);
            Edited::Done(body)
        }
        Buffered::Failed(e) => Edited::Failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Registry;

    fn config(yaml: &str) -> TransformConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn claim_templates_render_from_context_claims() {
        let metrics = TransformMetrics::register(&Registry::new());
        let t = Transform::build(
            "r",
            &config("request: { set_headers: { X-User: \"${claim.sub}\", X-Role: \"role-${claim.role}\" }, set_query: { uid: \"${claim.sub}\" } }"),
            &metrics,
        )
        .unwrap();
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::from("user 7"));
        let id = HeaderValue::from_static("rid");
        let scope = Scope {
            claims: Some(&claims),
            request_id: &id,
            client_ip: "127.0.0.1".parse().unwrap(),
            consumer: None,
            route: "r",
            upstream: "u",
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-role", HeaderValue::from_static("admin"));
        let pq = t
            .request_head(&mut headers, PathAndQuery::from_static("/x?a=1"), &scope)
            .unwrap();
        assert_eq!(headers["x-user"], "user 7");
        // `role` is not a claim: the header is left out, the client's copy with it.
        assert!(!headers.contains_key("x-role"));
        assert_eq!(pq.as_str(), "/x?a=1&uid=user%207");
        let no_claims = Scope {
            claims: None,
            ..scope
        };
        let mut headers = HeaderMap::new();
        t.request_head(&mut headers, PathAndQuery::from_static("/x"), &no_claims)
            .unwrap();
        assert!(headers.is_empty());
    }
}
