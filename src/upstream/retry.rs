//! Retries and the attempt loop the gateway calls instead of a single `proxy::send`.
//!
//! A request is tried again only when the upstream has `retries`, its method is idempotent
//! (GET HEAD OPTIONS PUT DELETE TRACE) or listed in `retries.methods`, the failure is one
//! of `retries.on`, the body could be kept for replay (at most `max_body`, default 64KiB,
//! with a known length), the retry budget allows it, and time is left. Each try is bounded
//! by `per_try_timeout`, all of them by `timeouts.request`. A retry prefers an endpoint
//! not tried yet. Every try passes the circuit breaker and the connection limits, and its
//! outcome feeds outlier detection and the breaker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::BodyExt;
use prometheus::IntCounter;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::breaker::Admit;
pub use super::proxy::Outgoing;
use super::{proxy, replay, Endpoint, Upstream, UpstreamError};
use crate::config::RetriesConfig;
use crate::grpc;
use crate::observe::{AttemptOutcome, ResilienceMetrics};
use crate::telemetry::{self, TraceScope};
use crate::wire::body::{is_body_too_large, Body};
use crate::wire::h1::UpstreamBody;
use crate::wire::headers::content_length;
use crate::wire::is_idempotent;

pub const DEFAULT_MAX_BODY: u64 = 64 * 1024;
pub const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
/// Retries that may always be in flight, whatever the share (Envoy's default too).
pub const DEFAULT_MIN_CONCURRENCY: u32 = 3;

/// Which failures are worth another try.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conditions {
    pub connect_failure: bool,
    pub timeout: bool,
    /// `reset` in the config: the connection broke before a complete response head, or
    /// what came back was not valid HTTP. Both are an `InvalidResponse`: the client
    /// cannot tell them apart, and neither reached the upstream's application logic.
    pub invalid_response: bool,
    pub any_5xx: bool,
    pub statuses: Vec<u16>,
    /// gRPC codes (bit n: code n) that retry a trailers-only answer, one whose status is
    /// in the response head: the call failed before the service sent anything.
    pub grpc_codes: u32,
}

impl Conditions {
    pub fn parse(on: &[String]) -> Result<Conditions, String> {
        let mut c = Conditions::default();
        let defaults = ["connect_failure", "502", "503", "504"].map(String::from);
        let on = if on.is_empty() { &defaults[..] } else { on };
        for item in on {
            match item.as_str() {
                "connect_failure" => c.connect_failure = true,
                "timeout" => c.timeout = true,
                "reset" => c.invalid_response = true,
                "5xx" => c.any_5xx = true,
                "gateway_error" => c.statuses.extend([502, 503, 504]),
                code => match (code.parse::<u16>(), grpc::Code::from_name(code)) {
                    (Ok(n), _) if (400..=599).contains(&n) => c.statuses.push(n),
                    (_, Some(grpc)) if grpc != grpc::Code::Ok as u8 => {
                        c.grpc_codes |= 1 << grpc
                    }
                    _ => {
                        return Err(format!(
                            "unknown retry condition {code:?} (expected connect_failure, timeout, reset, 5xx, gateway_error, a status code 400-599 or a gRPC code such as unavailable)"
                        ))
                    }
                },
            }
        }
        Ok(c)
    }

    /// Whether `result` is worth another try. `grpc_only`: the method is not one the
    /// policy retries (a gRPC call is a POST), so only what cannot repeat its effect
    /// counts: a connection never made, or a gRPC code the user listed.
    fn matches(
        &self,
        result: &Result<Response<UpstreamBody>, UpstreamError>,
        grpc_only: bool,
    ) -> bool {
        match result {
            Ok(r) => {
                let listed_code = grpc::status_of(r.headers())
                    .is_some_and(|code| self.grpc_codes & (1 << code) != 0);
                let s = r.status().as_u16();
                listed_code
                    || (!grpc_only && ((self.any_5xx && s >= 500) || self.statuses.contains(&s)))
            }
            // Nothing was sent either way: another endpoint may have a good certificate.
            Err(UpstreamError::ConnectFailed | UpstreamError::TlsHandshake(_)) => {
                self.connect_failure
            }
            Err(UpstreamError::Timeout) => !grpc_only && self.timeout,
            Err(UpstreamError::InvalidResponse) => !grpc_only && self.invalid_response,
            Err(_) => false,
        }
    }
}

/// The retry budget, after Envoy's: the retries in flight at once may be `percent` of the
/// upstream's requests in flight, and never fewer than `min_concurrency`. During an
/// outage every request fails and wants a retry, and the budget holds the extra load to
/// that share. When one endpoint of several dies, the requests it held all fail at once:
/// a retry over the budget waits for a retry in flight to finish (at most one try's time)
/// instead of failing, so such a burst reaches the client as latency, not as errors.
#[derive(Debug)]
pub struct Budget {
    per_mille: usize,
    min_concurrency: usize,
    /// Requests of this upstream under a retry policy, from their first try until their
    /// last try has its response head.
    active: AtomicUsize,
    retrying: AtomicUsize,
    freed: Notify,
}

/// A request counted as in flight; counted out on drop.
pub struct InFlight<'a>(&'a Budget);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A retry's place in the budget, held while the retry is tried.
pub struct RetrySlot<'a>(&'a Budget);

impl Drop for RetrySlot<'_> {
    fn drop(&mut self) {
        self.0.retrying.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_waiters();
    }
}

impl Budget {
    pub fn new(percent: f64, min_concurrency: u32) -> Budget {
        Budget {
            per_mille: (percent * 10.0).round().max(0.0) as usize,
            min_concurrency: min_concurrency as usize,
            active: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    pub fn in_flight(&self) -> InFlight<'_> {
        self.active.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    /// Retries that may be in flight at once now.
    fn allowed(&self) -> usize {
        (self.active.load(Ordering::Acquire) * self.per_mille / 1000).max(self.min_concurrency)
    }

    fn try_retry(&self) -> Option<RetrySlot<'_>> {
        let allowed = self.allowed();
        self.retrying
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < allowed).then_some(n + 1)
            })
            .ok()
            .map(|_| RetrySlot(self))
    }

    /// A place for one retry, waiting until `until` for a retry in flight to finish.
    pub async fn retry_slot(&self, until: Instant) -> Option<RetrySlot<'_>> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a slot freed in between is not missed.
            freed.as_mut().enable();
            if let Some(slot) = self.try_retry() {
                return Some(slot);
            }
            if self.allowed() == 0 {
                return None;
            }
            if tokio::time::timeout_at(until, freed).await.is_err() {
                return None;
            }
        }
    }
}

#[derive(Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: Conditions,
    pub methods: Vec<Method>,
    pub max_body: u64,
    pub budget: Budget,
    retried: IntCounter,
    refused: IntCounter,
}

impl RetryPolicy {
    pub fn build(
        c: &RetriesConfig,
        upstream: &str,
        metrics: &ResilienceMetrics,
    ) -> Result<RetryPolicy, String> {
        let methods = c
            .methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| format!("invalid method {m:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RetryPolicy {
            attempts: c.attempts.max(1),
            per_try_timeout: c.per_try_timeout.map(|d| d.0),
            on: Conditions::parse(&c.on)?,
            methods,
            max_body: c.max_body.map_or(DEFAULT_MAX_BODY, |s| s.0),
            budget: Budget::new(
                c.budget.map_or(DEFAULT_BUDGET_PERCENT, |p| p.0),
                c.min_concurrency.unwrap_or(DEFAULT_MIN_CONCURRENCY),
            ),
            retried: metrics.retries.with_label_values(&[upstream, "retried"]),
            refused: metrics
                .retries
                .with_label_values(&[upstream, "budget_exhausted"]),
        })
    }

    pub fn allows(&self, method: &Method) -> bool {
        is_idempotent(method) || self.methods.contains(method)
    }
}

enum Payload {
    Replayable(Bytes),
    /// A body of unknown length: it streams to the first try while a copy is kept,
    /// which a retry can send when the body ended within `max_body`.
    Copied(Option<Body>, Arc<replay::Copy>),
    Stream(Option<Body>),
}

impl Payload {
    /// The body for the next try: a copy of the kept bytes, or the stream (once).
    fn next_body(&mut self) -> Body {
        match self {
            Payload::Replayable(bytes) => Body::full(bytes.clone()),
            Payload::Copied(first, copy) => first
                .take()
                .or_else(|| copy.whole().map(Body::full))
                .unwrap_or_else(Body::empty),
            Payload::Stream(streamed) => streamed.take().unwrap_or_else(Body::empty),
        }
    }

    /// Whether another try can send the whole body again.
    fn can_replay(&self) -> bool {
        match self {
            Payload::Replayable(_) => true,
            Payload::Copied(_, copy) => copy.is_whole(),
            Payload::Stream(_) => false,
        }
    }
}

/// What the tries so far leave for the client when no further try happens.
enum Kept {
    Nothing,
    /// A retryable answer, kept in case the retry cannot be made.
    Answer(Response<UpstreamBody>),
    /// A retryable failure.
    Failure(UpstreamError),
}

impl Kept {
    /// The tries stopped with `error` (the deadline passed): a kept answer still wins.
    fn stopped_by(self, error: UpstreamError) -> Kept {
        match self {
            Kept::Answer(response) => Kept::Answer(response),
            _ => Kept::Failure(error),
        }
    }
}

/// What one try decided.
enum Step {
    /// The answer (or failure) the client gets.
    Done(Result<Response<Body>, UpstreamError>),
    /// Worth another try, if the budget, the breaker and the time allow one.
    Again(Kept),
    /// No further try can be made: the client gets what was kept (or `Some` failure
    /// that ended the tries).
    Stop(Option<UpstreamError>),
}

/// One request's tries: the policy that applies, the body for each try, the endpoints
/// already tried, the deadline of them all.
struct Tries<'a> {
    upstream: &'a Upstream,
    policy: Option<&'a RetryPolicy>,
    out: Outgoing,
    payload: Payload,
    tried: Vec<Arc<Endpoint>>,
    deadline: Instant,
    grpc_only: bool,
    trace: Option<&'a TraceScope>,
    /// Why the try before this one failed (for its client span).
    retry_reason: Option<String>,
}

/// Sends the request, retrying by the upstream's policy. Sets `endpoint_used` to the
/// endpoint of the last try.
/// What the caller adds to a request's tries.
#[derive(Default)]
pub struct Bounds<'a> {
    /// The caller's own deadline (a gRPC call's `grpc-timeout`): it bounds the tries when
    /// it comes before `timeouts.request` does.
    pub deadline: Option<Instant>,
    /// The request's trace: every try carries a child span id and is recorded.
    pub trace: Option<&'a TraceScope>,
}

pub async fn send(
    upstream: &Upstream,
    endpoint_used: &mut Option<Arc<Endpoint>>,
    out: Outgoing,
    body: Body,
    bounds: Bounds<'_>,
) -> Result<Response<Body>, UpstreamError> {
    let until = Instant::now() + upstream.request_timeout;
    let deadline = bounds.deadline.map_or(until, |d| d.min(until));
    // A gRPC call (a POST) may be retried on the gRPC codes the user listed.
    let grpc_only = !upstream
        .retry
        .as_ref()
        .is_some_and(|p| p.allows(&out.method));
    let policy = upstream.retry.as_ref().filter(|p| {
        p.attempts > 1 && (!grpc_only || (p.on.grpc_codes != 0 && grpc::is_grpc(&out.headers)))
    });
    let payload = match policy {
        // The body is read into memory here: the request's deadline bounds it, so a
        // client trickling its body cannot hold the task (the idle watchdog is off while
        // a request is in flight).
        Some(p) => tokio::time::timeout_at(
            deadline,
            Box::pin(keep_for_replay(body, &out.headers, p.max_body)),
        )
        .await
        .map_err(|_| UpstreamError::RequestBodyTimeout)??,
        None => Payload::Stream(Some(body)),
    };
    let (attempts, _in_flight) = match (&payload, policy) {
        (Payload::Replayable(_) | Payload::Copied(..), Some(p)) => {
            (p.attempts, Some(p.budget.in_flight()))
        }
        _ => (1, None),
    };
    let mut tries = Tries {
        upstream,
        policy,
        out,
        payload,
        tried: Vec::new(),
        deadline,
        grpc_only,
        trace: bounds.trace,
        retry_reason: None,
    };
    let mut kept = Kept::Nothing;
    for attempt in 0..attempts {
        let last_try = attempt + 1 == attempts;
        match tries.one(attempt, last_try, endpoint_used).await {
            Step::Done(result) => return result,
            Step::Again(next) => kept = next,
            Step::Stop(error) => {
                if let Some(error) = error {
                    kept = kept.stopped_by(error);
                }
                break;
            }
        }
    }
    match kept {
        Kept::Answer(response) => Ok(finish(response, None)),
        Kept::Failure(error) => Err(error),
        Kept::Nothing => Err(UpstreamError::NoEndpoint(upstream.name.clone())),
    }
}

impl Tries<'_> {
    /// Try number `attempt` (0 is the first): admitted by the budget and the breaker, to
    /// an endpoint not tried yet when there is one, within the connection limits and the
    /// time left. The first try reports why it could not be made; a retry that cannot be
    /// made stops the tries.
    async fn one(
        &mut self,
        attempt: u32,
        last_try: bool,
        endpoint_used: &mut Option<Arc<Endpoint>>,
    ) -> Step {
        let first = attempt == 0;
        let upstream = self.upstream;
        let _retry_slot = match (first, self.policy) {
            (false, Some(policy)) => match self.retry_slot(policy).await {
                Some(slot) => Some(slot),
                None => return Step::Stop(None),
            },
            _ => None,
        };
        if let Some(Admit::Reject) = upstream.breaker.as_ref().map(|b| b.admit()) {
            if !first {
                return Step::Stop(None);
            }
            let fallback = upstream
                .breaker
                .as_ref()
                .and_then(|b| b.fallback_response());
            return Step::Done(
                fallback.ok_or_else(|| UpstreamError::CircuitOpen(upstream.name.clone())),
            );
        }
        let Some(endpoint) = upstream.pick_excluding(&self.tried) else {
            if !first {
                return Step::Stop(None);
            }
            return Step::Done(Err(UpstreamError::NoEndpoint(upstream.name.clone())));
        };
        *endpoint_used = Some(endpoint.clone());
        let permit = match upstream.limits.acquire(&endpoint, self.deadline).await {
            Ok(permit) => permit,
            Err(e) if first => return Step::Done(Err(e)),
            Err(_) => return Step::Stop(None),
        };
        let Some(timeout) = self.time_for_one_try() else {
            return Step::Stop(Some(UpstreamError::Timeout));
        };
        let body = self.payload.next_body();
        let span = self.trace.map(|t| t.attempt(&mut self.out.headers));
        self.out.traceparent = span.as_ref().and_then(|s| s.traceparent);
        let awaiting_head = endpoint.await_head();
        let result = proxy::send(upstream, &endpoint, &self.out, body, timeout).await;
        drop(awaiting_head);
        // Attributes are built only for a span that is recorded.
        if let (Some(trace), Some(span)) = (self.trace.filter(|t| t.sampled), span) {
            self.record_attempt(trace, span, attempt, &endpoint, &result);
        }
        if let Some(outcome) = outcome_of(&result) {
            upstream.observe(&endpoint, outcome);
        }
        let again = !last_try
            && self
                .policy
                .is_some_and(|p| p.on.matches(&result, self.grpc_only))
            && self.payload.can_replay();
        if !again {
            return Step::Done(result.map(|response| finish(response, permit)));
        }
        // Only a request that will be retried pays for this list. The endpoint's slot is
        // freed: the retry may need it (one endpoint, max_connections 1).
        self.tried.push(endpoint);
        drop(permit);
        Step::Again(match result {
            Ok(response) => Kept::Answer(response),
            Err(e) => Kept::Failure(e),
        })
    }

    /// The try's client span, with what it met (OpenTelemetry HTTP client attributes).
    fn record_attempt(
        &mut self,
        trace: &TraceScope,
        attempt_span: telemetry::Attempt,
        attempt: u32,
        endpoint: &Endpoint,
        result: &Result<Response<UpstreamBody>, UpstreamError>,
    ) {
        let method = self.out.method.as_str();
        let mut span = trace.client_span(&attempt_span, method);
        span.str("http.request.method", method);
        span.str("server.address", endpoint.authority.host());
        if let Some(port) = endpoint.authority.port_u16() {
            span.int("server.port", i64::from(port));
        }
        span.str("url.path", self.out.path_and_query.path());
        span.str("portico.upstream", &self.upstream.name);
        span.str("portico.endpoint", &endpoint.address);
        if attempt > 0 {
            span.int("http.request.resend_count", i64::from(attempt));
            if let Some(reason) = self.retry_reason.take() {
                span.str("portico.retry_reason", &reason);
            }
        }
        let (outcome, error) = match result {
            Ok(r) => {
                let status = r.status().as_u16();
                span.int("http.response.status_code", i64::from(status));
                let text = status.to_string();
                let error = (status >= 500).then(|| text.clone());
                (text, error)
            }
            Err(e) => {
                let kind = failure_kind(e);
                span.str("error.type", kind);
                (kind.to_string(), Some(e.to_string()))
            }
        };
        self.retry_reason = Some(outcome);
        trace.record(span, error.as_deref());
    }

    /// A place in the retry budget for one more try (counted either way), waiting at
    /// most as long as one try may take.
    async fn retry_slot<'p>(&self, policy: &'p RetryPolicy) -> Option<RetrySlot<'p>> {
        let wait = self.time_for_one_try()?;
        let Some(slot) = policy.budget.retry_slot(Instant::now() + wait).await else {
            policy.refused.inc();
            return None;
        };
        policy.retried.inc();
        Some(slot)
    }

    /// The bound of the next try: `per_try_timeout` within what is left of the request's
    /// deadline; None when nothing is left.
    fn time_for_one_try(&self) -> Option<Duration> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        let remaining = self.deadline - now;
        Some(
            self.policy
                .and_then(|p| p.per_try_timeout)
                .map_or(remaining, |t| t.min(remaining)),
        )
    }
}

fn finish(
    response: Response<UpstreamBody>,
    permit: Option<OwnedSemaphorePermit>,
) -> Response<Body> {
    response.map(|mut body| {
        body.hold(permit);
        Body::upstream(body)
    })
}

/// A failed try in the words of `retries.on`.
fn failure_kind(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::ConnectFailed | UpstreamError::TlsHandshake(_) => "connect_failure",
        UpstreamError::Timeout => "timeout",
        UpstreamError::InvalidResponse => "reset",
        _ => "request_body",
    }
}

fn outcome_of(result: &Result<Response<UpstreamBody>, UpstreamError>) -> Option<AttemptOutcome> {
    match result {
        Ok(r) => Some(AttemptOutcome::from_status(r.status().as_u16())),
        Err(UpstreamError::ConnectFailed | UpstreamError::TlsHandshake(_)) => {
            Some(AttemptOutcome::ConnectFailure)
        }
        Err(UpstreamError::Timeout) => Some(AttemptOutcome::Timeout),
        Err(UpstreamError::InvalidResponse) => Some(AttemptOutcome::InvalidResponse),
        // The client's fault (body too large), not the endpoint's.
        Err(_) => None,
    }
}

/// Reads a small body into memory so it can be sent again; a body without a known length
/// or larger than `max` streams (and will not be retried).
async fn keep_for_replay(
    body: Body,
    headers: &HeaderMap,
    max: u64,
) -> Result<Payload, UpstreamError> {
    if http_body::Body::is_end_stream(&body) {
        return Ok(Payload::Replayable(Bytes::new()));
    }
    let length = content_length(headers);
    match length {
        Some(n) if n <= max => {
            let limited = http_body_util::Limited::new(body, max as usize);
            match limited.collect().await {
                Ok(collected) => Ok(Payload::Replayable(collected.to_bytes())),
                Err(e)
                    if is_body_too_large(e.as_ref())
                        || e.is::<http_body_util::LengthLimitError>() =>
                {
                    Err(UpstreamError::RequestBodyTooLarge)
                }
                Err(_) => Err(UpstreamError::RequestBodyUnreadable),
            }
        }
        // Unknown length (chunked, or HTTP/2 without content-length, as gRPC calls
        // are): streamed at once, copied on the way.
        None => {
            let (body, copy) = replay::copying(body, max);
            Ok(Payload::Copied(Some(body), copy))
        }
        _ => Ok(Payload::Stream(Some(body))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse() {
        let c = Conditions::parse(&[]).unwrap();
        assert!(c.connect_failure && !c.timeout && c.statuses == vec![502, 503, 504]);
        let c = Conditions::parse(&["timeout".into(), "5xx".into(), "429".into()]).unwrap();
        assert!(c.timeout && c.any_5xx && c.statuses == vec![429]);
        assert!(Conditions::parse(&["sometimes".into()]).is_err());
        assert!(Conditions::parse(&["200".into()]).is_err());
    }

    #[test]
    fn budget_allows_a_share_of_requests_in_flight_and_a_minimum() {
        let b = Budget::new(20.0, 3);
        let requests: Vec<_> = (0..50).map(|_| b.in_flight()).collect();
        let slots: Vec<_> = std::iter::from_fn(|| b.try_retry()).take(100).collect();
        assert_eq!(slots.len(), 10, "20% of 50 in flight");
        drop(slots);
        drop(requests);
        let one = b.in_flight();
        let slots: Vec<_> = std::iter::from_fn(|| b.try_retry()).take(100).collect();
        assert_eq!(slots.len(), 3, "the minimum, with one request in flight");
        drop(one);
        let none = Budget::new(0.0, 0);
        let _r = none.in_flight();
        assert!(none.try_retry().is_none());
    }

    #[tokio::test]
    async fn a_retry_over_the_budget_waits_for_a_slot_then_gives_up() {
        let b = Budget::new(0.0, 1);
        let _r = b.in_flight();
        let held = b.try_retry().expect("the minimum");
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(b.retry_slot(soon).await.is_none(), "no slot freed in time");
        let (got, ()) = tokio::join!(
            b.retry_slot(Instant::now() + Duration::from_secs(30)),
            async {
                tokio::task::yield_now().await;
                drop(held);
            }
        );
        assert!(got.is_some(), "the freed slot goes to the waiting retry");
        let none = Budget::new(0.0, 0);
        assert!(none
            .retry_slot(Instant::now() + Duration::from_secs(30))
            .await
            .is_none());
    }
}
