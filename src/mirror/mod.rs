//! Shadow traffic: a copy of a route's requests goes to another upstream (the new
//! service), and its answers are compared with the primary's. Mirrors never touch the
//! primary: the copy is dispatched after the primary's upstream has answered, from its
//! own bounded set of tasks (`max_in_flight`; excess copies are dropped and counted,
//! never queued), with its own deadline; its answer is compared and dropped.
//!
//! Lifecycle: `Mirror` is the compiled `mirror:` block of one route, rebuilt with every
//! Runtime; its `MirrorState` (counts, copies in flight, recent mismatches) is carried
//! across reloads by route name. On the request path `prepare` decides whether this
//! request is copied (method, percent, body size) before the primary is sent, and
//! `Shadow::dispatch` spawns the copy once the primary's answer is there. When answers
//! are compared, the primary's body is copied as it streams to the client (the chunks
//! pass at once; the copy shares them) with the same `upstream::replay` copy a retry
//! uses for request bodies, and the comparison waits for it to end.
//!
//! What is copied: the method, the normalised path with the mirror's own rewrite and the
//! query, the headers as the route forwards them (hop-by-hop headers stripped,
//! forwarding and verified identity headers set; before the route's own transform,
//! which is the primary's), `X-Portico-Mirror: 1`, and the body when it has a known
//! length within `max_body` (kept as it streams to the primary, as a retry's is).

mod compare;
mod state;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

pub use compare::{Compare, Kind};
pub use state::{MirrorState, Sample};

use crate::config::{BrokenNames, Config, MirrorConfig, RouteConfig};
use crate::observe::Metrics;
use crate::router::Rewrite;
use crate::split::{basis_points, Split, SplitSide, StickyKey, BUCKETS};
use crate::upstream::call::UpstreamCall;
use crate::upstream::replay::{self, Ended};
use crate::upstream::{Upstream, UpstreamError};
use crate::wire::body::{Body, BoxError};
use crate::wire::headers::content_length;
use state::{Dropped, Slot};

/// The header every copy carries, so the new service can avoid side effects.
pub static MIRROR_HEADER: HeaderName = HeaderName::from_static("x-portico-mirror");

/// How much of each answer's body is read for the comparison (the rest is not
/// compared, and a larger mirror body is not read further).
const COMPARE_LIMIT: u64 = 1024 * 1024;

/// How long a copy's task waits for the primary's body to finish streaming to its
/// client before giving up on the comparison.
const PRIMARY_WAIT: Duration = Duration::from_secs(60);

/// Largest `max_body`: every copy in flight holds its request body in memory.
const MAX_BODY_LIMIT: u64 = 16 * 1024 * 1024;

/// Why a copy brought back no answer.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("mirror upstream call failed: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("mirror response body failed: {0}")]
    Body(BoxError),
    #[error("mirror answer took longer than {0:?}")]
    Timeout(Duration),
}

#[derive(Debug)]
enum Methods {
    /// GET, HEAD, OPTIONS: copies of them cannot change the new service's data.
    Safe,
    Listed(Vec<Method>),
}

impl Methods {
    fn allows(&self, method: &Method) -> bool {
        match self {
            Methods::Safe => matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS),
            Methods::Listed(list) => list.contains(method),
        }
    }
}

#[derive(Debug)]
pub struct Mirror {
    /// The mirror upstream and the rewrite of the copy's path.
    pub target: SplitSide,
    /// Share copied, in basis points (as a split's percentage).
    percent: u32,
    methods: Methods,
    max_body: u64,
    max_in_flight: usize,
    /// The route's split key: the same users are mirrored as are moved.
    sticky: Option<StickyKey>,
    compare: Option<Compare>,
    pub state: Arc<MirrorState>,
}

/// Checks a route's `mirror:` block; each problem's path is below the route
/// (`mirror.upstream`).
pub fn check(route: &RouteConfig, config: &Config, broken: &BrokenNames) -> Vec<(String, String)> {
    let Some(mirror) = &route.mirror else {
        return Vec::new();
    };
    let mut problems: Vec<(String, String)> = validate(mirror)
        .into_iter()
        .map(|(field, message)| (format!("mirror.{field}"), message))
        .collect();
    let name = &mirror.upstream;
    if !config.upstreams.contains_key(name) && !broken.contains(&format!("upstreams.{name}")) {
        problems.push((
            "mirror.upstream".into(),
            format!("unknown upstream {name:?}"),
        ));
    }
    if route.grpc {
        problems.push((
            "mirror".into(),
            "gRPC calls are not mirrored (their bodies stream both ways)".into(),
        ));
    }
    problems
}

/// The checks that need nothing but the block itself; paths below `mirror.`.
fn validate(config: &MirrorConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Some(Err(e)) = config.rewrite.as_ref().map(Rewrite::build) {
        problems.push(("rewrite".into(), e));
    }
    for (i, method) in config.methods.iter().enumerate() {
        match Method::from_bytes(method.trim().as_bytes()) {
            Ok(m) if m == Method::CONNECT => problems.push((
                format!("methods[{i}]"),
                "CONNECT is not mirrored".to_string(),
            )),
            Ok(_) => {}
            Err(_) => problems.push((
                format!("methods[{i}]"),
                format!("invalid method {method:?}"),
            )),
        }
    }
    if config.max_body.0 > MAX_BODY_LIMIT {
        problems.push((
            "max_body".into(),
            "must be at most 16MiB (each copy in flight holds its body in memory)".into(),
        ));
    }
    if !(1..=100_000).contains(&config.max_in_flight) {
        problems.push((
            "max_in_flight".into(),
            "must be between 1 and 100000".into(),
        ));
    }
    if let Some(compare) = &config.compare {
        for (field, message) in compare::validate(compare) {
            problems.push((format!("compare.{field}"), message));
        }
    }
    problems
}

impl Mirror {
    /// The mirror of a route that has one, sticky by the route's split key; its state
    /// is the previous Runtime's mirror's of the same route name when there is one.
    pub fn for_route(
        route: &RouteConfig,
        split: Option<&Split>,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        metrics: &Metrics,
        previous: Option<&BTreeMap<String, Arc<Mirror>>>,
    ) -> Result<Option<Arc<Mirror>>, (String, String)> {
        let Some(config) = &route.mirror else {
            return Ok(None);
        };
        let carried = previous.and_then(|p| p.get(&route.name)).map(|m| &m.state);
        let sticky = split.and_then(|s| s.sticky.clone());
        let mirror = Mirror::build(&route.name, config, upstreams, sticky, metrics, carried)?;
        Ok(Some(Arc::new(mirror)))
    }

    /// Compiles a route's mirror. The state comes from the previous Runtime's mirror of
    /// the same route when there is one.
    pub fn build(
        route: &str,
        config: &MirrorConfig,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        sticky: Option<StickyKey>,
        metrics: &Metrics,
        previous: Option<&Arc<MirrorState>>,
    ) -> Result<Mirror, (String, String)> {
        if let Some(problem) = validate(config).into_iter().next() {
            return Err(problem);
        }
        let target = SplitSide::build("", &config.upstream, config.rewrite.as_ref(), upstreams)?;
        let methods = if config.methods.is_empty() {
            Methods::Safe
        } else {
            Methods::Listed(
                config
                    .methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.trim().as_bytes()).ok())
                    .collect(),
            )
        };
        let compare = config
            .compare
            .as_ref()
            .map(Compare::build)
            .transpose()
            .map_err(|(field, e)| (format!("compare.{field}"), e))?;
        Ok(Mirror {
            target,
            percent: basis_points(config.percent.0),
            methods,
            max_body: config.max_body.0,
            max_in_flight: config.max_in_flight as usize,
            sticky,
            compare,
            state: match previous {
                Some(state) => state.clone(),
                None => MirrorState::new(route, metrics),
            },
        })
    }

    /// `GET /mirrors/{route}`.
    pub fn view(&self) -> Value {
        let mut view = self.state.view();
        if let Some(out) = view.as_object_mut() {
            out.insert("route".into(), json!(self.state.route));
            out.insert("upstream".into(), json!(self.target.upstream.name));
            out.insert("percent".into(), json!(f64::from(self.percent) / 100.0));
            out.insert("max_in_flight".into(), json!(self.max_in_flight));
            out.insert("compare".into(), json!(self.compare.is_some()));
        }
        view
    }
}

/// `GET /mirrors`: every route's mirror by route name.
pub fn list(mirrors: &BTreeMap<String, Arc<Mirror>>) -> Value {
    let all: serde_json::Map<String, Value> = mirrors
        .iter()
        .map(|(name, mirror)| (name.clone(), mirror.view()))
        .collect();
    json!({ "mirrors": all })
}

/// What `prepare` reads of the request, after the route has forwarded its headers.
pub struct Request<'a> {
    pub method: &'a Method,
    /// The normalised path (the mirror's rewrite applies to it, as the route's does).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    pub claims: Option<&'a serde_json::Map<String, Value>>,
}

/// The request body as the copy will have it.
enum CopyBody {
    Empty,
    /// Kept as it streams to the primary; whole once the primary's upstream read it all.
    Kept(Arc<replay::Copy>),
}

/// A request chosen for mirroring, waiting for the primary's answer.
pub struct Shadow {
    mirror: Arc<Mirror>,
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: CopyBody,
    /// For a mismatch sample: the client's path without its query.
    path: String,
}

impl Mirror {
    /// Decides, before the primary is sent, whether this request is copied; when it is,
    /// `body` is returned wrapped so that a copy of it is kept as it streams.
    pub fn prepare(self: &Arc<Self>, request: Request<'_>, body: Body) -> (Body, Option<Shadow>) {
        if !self.methods.allows(request.method) || !self.chosen(&request) {
            return (body, None);
        }
        let (body, copy) = if http_body::Body::is_end_stream(&body) {
            (body, CopyBody::Empty)
        } else if content_length(request.headers).is_some_and(|len| len <= self.max_body) {
            let (body, copy) = replay::copying(body, self.max_body);
            (body, CopyBody::Kept(copy))
        } else {
            self.state.dropped(Dropped::Body);
            return (body, None);
        };
        let path = match &self.target.rewrite {
            Some(rewrite) => rewrite.apply(request.path),
            None => std::borrow::Cow::Borrowed(request.path),
        };
        let target = match request.query {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        let Ok(path_and_query) = PathAndQuery::from_maybe_shared(target) else {
            return (body, None);
        };
        let mut headers = request.headers.clone();
        headers.insert(MIRROR_HEADER.clone(), HeaderValue::from_static("1"));
        let shadow = Shadow {
            mirror: self.clone(),
            method: request.method.clone(),
            path_and_query,
            headers,
            body: copy,
            path: request.path.to_string(),
        };
        (body, Some(shadow))
    }

    /// The percent decision: the split's sticky bucket when the route has a key and the
    /// request carries it, a random draw otherwise.
    fn chosen(&self, request: &Request<'_>) -> bool {
        if self.percent == 0 {
            return false;
        }
        if self.percent >= BUCKETS {
            return true;
        }
        let bucket = self
            .sticky
            .as_ref()
            .and_then(|k| k.bucket(request.headers, request.client_ip, request.claims))
            .unwrap_or_else(|| rand::random_range(0..BUCKETS));
        bucket < self.percent
    }
}

/// The primary's answer as the comparison sees it: the head now, the body when it has
/// streamed to the client.
struct Primary {
    head: compare::Answer,
    body: Arc<replay::Copy>,
}

impl Shadow {
    /// Sends the copy, now that the primary has its answer (or its error), from a task
    /// of its own; returns the primary's answer untouched but for the copy kept of its
    /// body when answers are compared. Without a free slot the copy is dropped.
    pub fn dispatch<E>(self, sent: Result<Response<Body>, E>) -> Result<Response<Body>, E> {
        let mirror = &self.mirror;
        let Some(slot) = mirror.state.try_slot(mirror.max_in_flight) else {
            return sent;
        };
        let (sent, primary) = match (sent, &mirror.compare) {
            (Ok(response), Some(compare)) => {
                let (head, body) = response.into_parts();
                let (body, copy) = replay::copying(body, COMPARE_LIMIT);
                let primary = Primary {
                    head: compare.answer(head.status, &head.headers, None),
                    body: copy,
                };
                (Ok(Response::from_parts(head, body)), Some(primary))
            }
            (sent, _) => (sent, None),
        };
        tokio::spawn(self.run(slot, primary));
        sent
    }

    async fn run(mut self, slot: Slot, primary: Option<Primary>) {
        // A new task would run next on this worker, ahead of requests that are ready;
        // the copy waits behind them instead.
        tokio::task::yield_now().await;
        let mirror = self.mirror.clone();
        let within = mirror.target.upstream.request_timeout;
        // The primary's upstream has answered; its request body is whole once it was
        // read to the end (or lost if it never will be).
        let body = match &self.body {
            CopyBody::Empty => Bytes::new(),
            CopyBody::Kept(copy) => match tokio::time::timeout(within, copy.ended()).await {
                Ok(Ended::Whole(body)) => body,
                _ => {
                    mirror.state.dropped(Dropped::Body);
                    return;
                }
            },
        };
        mirror.state.sent();
        let answer = tokio::time::timeout(within, self.fetch(body))
            .await
            .unwrap_or(Err(MirrorError::Timeout(within)));
        let (status, headers, body) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                tracing::debug!(route = %mirror.state.route, error = %e, "mirror copy failed");
                mirror.state.failed();
                return;
            }
        };
        let (Some(compare), Some(primary)) = (&mirror.compare, primary) else {
            return;
        };
        // The primary's body streams at its client's pace; a body that did not end is
        // not compared.
        let primary_body = match tokio::time::timeout(PRIMARY_WAIT, primary.body.ended()).await {
            Ok(Ended::Whole(body)) => Some(body),
            Ok(Ended::TooLarge) => None,
            Ok(Ended::Lost) | Err(_) => return,
        };
        let a = compare::Answer {
            body: primary_body,
            ..primary.head
        };
        let b = compare.answer(status, &headers, body);
        match compare.compare(&a, &b) {
            None => mirror.state.matched(),
            Some(difference) => {
                let statuses = (a.status.as_u16(), b.status.as_u16());
                let sample = Sample::new(self.method.as_str(), &self.path, statuses, difference);
                mirror.state.mismatched(sample, compare.sample);
            }
        }
        drop(slot);
    }

    /// The copy's answer: status, headers and the body up to the compare limit (`None`
    /// above it).
    async fn fetch(
        &mut self,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Option<Bytes>), MirrorError> {
        let call = UpstreamCall {
            upstream: self.mirror.target.upstream.clone(),
            method: self.method.clone(),
            path_and_query: self.path_and_query.clone(),
            headers: HeaderMap::new(),
            deadline: None,
            trace: None,
        };
        let headers = std::mem::take(&mut self.headers);
        let (_, response) = call.send(headers, Body::full(body)).await?;
        let (head, mut body) = response.into_parts();
        let mut kept = Vec::new();
        let mut whole = true;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(MirrorError::Body)?;
            if let Some(data) = frame.data_ref() {
                if (kept.len() + data.len()) as u64 > COMPARE_LIMIT {
                    // Not read further: the connection is closed rather than drained.
                    whole = false;
                    break;
                }
                kept.extend_from_slice(data);
            }
        }
        let body = whole.then(|| Bytes::from(kept));
        Ok((head.status, head.headers, body))
    }
}
