//! The cache stage of the request path. `serve` answers from the cache when it can,
//! otherwise sends the request upstream (once per key, however many clients ask at the
//! same time) and stores what may be stored.
//!
//! GET/HEAD: fresh entry → HIT; stale within `stale-while-revalidate` → STALE plus one
//! background refresh; otherwise the leader revalidates (`If-None-Match` /
//! `If-Modified-Since` from the entry) or fetches, and waiters share its result. An
//! upstream failure serves a stale entry within `stale-if-error`. Unsafe methods go
//! straight through and invalidate the URL when they succeed.

use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use super::flight::{self, Join, Landing, Leader};
use super::key::{self, Key};
use super::policy::{self, CacheControl};
use super::store::Entry;
use super::{CacheStatus, ResponseCache};
use crate::transform::Transform;
use crate::transform::TransformError;
use crate::upstream::call::{upstream_response, UpstreamCall};
use crate::upstream::{Endpoint, UpstreamError};
use crate::wire::body::Body;
use crate::wire::buffer::{self, Buffered};
use crate::wire::headers::content_length;

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// How many times a request re-checks the cache after waiting on another request.
const ATTEMPTS: usize = 3;

/// The client's conditional headers; taken off the upstream request because the cache
/// sends its own validators, and answered from the cache.
#[derive(Default)]
pub struct Conditional {
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
}

impl Conditional {
    fn take(headers: &mut HeaderMap) -> Conditional {
        Conditional {
            if_none_match: headers.remove(header::IF_NONE_MATCH),
            if_modified_since: headers.remove(header::IF_MODIFIED_SINCE),
        }
    }

    /// RFC 9110 §13.2.2: If-None-Match (weak comparison) wins over If-Modified-Since.
    fn not_modified(&self, entry: &Entry) -> bool {
        if entry.status != StatusCode::OK {
            return false;
        }
        if let Some(inm) = &self.if_none_match {
            let Some(etag) = entry.etag().and_then(|e| e.to_str().ok()) else {
                return false;
            };
            let Ok(list) = inm.to_str() else { return false };
            let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
            return list
                .split(',')
                .any(|t| t.trim() == "*" || weak(t) == weak(etag));
        }
        match (
            self.if_modified_since.as_ref().and_then(policy::http_date),
            entry.last_modified().and_then(policy::http_date),
        ) {
            (Some(since), Some(modified)) => modified <= since,
            _ => false,
        }
    }
}

/// Why the cache could not answer: the call to the upstream, or the route's transform of
/// the response, failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Transform(#[from] TransformError),
}

/// What `serve` needs from the request beyond the upstream call.
pub struct Request<'a> {
    /// The route's name and the client's scheme (`http` / `https`): both are part of
    /// the key.
    pub route: &'a str,
    pub scheme: &'static str,
    pub transform: &'a Option<Transform>,
    pub cache: &'a Arc<ResponseCache>,
    pub call: UpstreamCall,
    pub body: Body,
    /// Whether the client's request was authenticated: the route has `jwt:` or the client
    /// sent `Authorization`. Decided on the original request, because a transform or a
    /// `Connection: authorization` may take the header off before it goes upstream, while
    /// the upstream still knows the user (from forwarded claims, say).
    pub authenticated: bool,
    /// The endpoint that answered, for the access log (none for a HIT).
    pub endpoint: &'a mut Option<Arc<Endpoint>>,
}

pub async fn serve(req: Request<'_>) -> Result<Response<Body>, CacheError> {
    let Request {
        route,
        scheme,
        transform,
        cache,
        mut call,
        body,
        authenticated,
        endpoint,
    } = req;
    let host = call
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let primary = Key::primary(
        scheme,
        host,
        route,
        &call.upstream.name,
        call.path_and_query.path(),
        call.path_and_query.query(),
    );
    let method = call.method.clone();
    if method == Method::POST
        || method == Method::PUT
        || method == Method::PATCH
        || method == Method::DELETE
    {
        return unsafe_method(transform, cache, call, body, endpoint, &primary).await;
    }
    let request_cc = policy::request_cache_control(&call.headers);
    let cacheable_request = (method == Method::GET || method == Method::HEAD)
        && !request_cc.no_store
        && !call.headers.contains_key(header::RANGE);
    if !cacheable_request {
        return bypass(transform, cache, call, body, endpoint).await;
    }
    let conditional = Conditional::take(&mut call.headers);
    let lookup = Lookup {
        cache,
        call: Arc::new(call),
        primary,
        request_cc,
        conditional,
        head: method == Method::HEAD,
        authenticated,
        transform,
    };
    for _ in 0..ATTEMPTS {
        match lookup.look().await {
            Look::Answered(response) => return Ok(response),
            Look::Forward(status) => return lookup.forward(status, body, endpoint).await,
            Look::Lead(leader, stale) => return lookup.lead(leader, stale, body, endpoint).await,
            Look::Again => continue,
        }
    }
    lookup.forward(CacheStatus::Bypass, body, endpoint).await
}

/// A cacheable request (GET or HEAD) and what the cache knows about it.
struct Lookup<'a> {
    cache: &'a Arc<ResponseCache>,
    call: Arc<UpstreamCall>,
    primary: Key,
    request_cc: CacheControl,
    conditional: Conditional,
    head: bool,
    authenticated: bool,
    transform: &'a Option<Transform>,
}

/// What one look at the cache decided.
enum Look<'a> {
    /// Answered from the store: fresh, or stale while one refresh runs in the background.
    Answered(Response<Body>),
    /// Sent upstream without storing: a HEAD that missed (a HEAD is answered from a
    /// stored GET, never stored itself), or a waiter whose leader could not share.
    Forward(CacheStatus),
    /// This request fills the entry; the stale entry, if any, is revalidated.
    Lead(Leader<'a>, Option<Arc<Entry>>),
    /// Another variant landed, or the leader went away: look again.
    Again,
}

impl Lookup<'_> {
    async fn look(&self) -> Look<'_> {
        let now = Instant::now();
        let stored = self
            .cache
            .store
            .lookup(&self.primary, &self.call.headers)
            .await;
        if let Some(entry) = &stored {
            if !self.request_cc.no_cache && entry.is_fresh(now) {
                return Look::Answered(self.respond(entry, CacheStatus::Hit));
            }
            if !self.request_cc.no_cache && entry.within_stale_while_revalidate(now) {
                refresh_in_background(self, entry);
                return Look::Answered(self.respond(entry, CacheStatus::Stale));
            }
        }
        if self.head {
            return Look::Forward(CacheStatus::Miss);
        }
        match self.cache.flights.join(&self.primary) {
            // A leader that hangs does not hold its waiters past the upstream's deadline:
            // they fetch for themselves.
            Join::Waiter(slot) => {
                match tokio::time::timeout(self.call.upstream.request_timeout, flight::wait(slot))
                    .await
                    .unwrap_or(Some(Landing::NotStored))
                {
                    Some(Landing::Stored(entry))
                        if entry.key == variant_of(&self.primary, &entry, &self.call.headers) =>
                    {
                        Look::Answered(self.respond(&entry, CacheStatus::Hit))
                    }
                    Some(Landing::NotStored) => Look::Forward(CacheStatus::Miss),
                    _ => Look::Again,
                }
            }
            Join::Leader(leader) => {
                // Between our lookup and becoming leader, another leader may have landed.
                if stored.is_none() && !self.request_cc.no_cache {
                    let again = self.cache.store.lookup(&self.primary, &self.call.headers);
                    if let Some(entry) = again.await.filter(|e| e.is_fresh(Instant::now())) {
                        return Look::Answered(self.respond(&entry, CacheStatus::Hit));
                    }
                }
                Look::Lead(leader, stored)
            }
        }
    }

    /// A stored entry as the answer, counted.
    fn respond(&self, entry: &Entry, status: CacheStatus) -> Response<Body> {
        self.cache.count(status);
        respond(entry, status, &self.conditional, self.head)
    }

    /// Sends the client's request upstream and passes the answer on, unstored.
    async fn forward(
        &self,
        status: CacheStatus,
        body: Body,
        endpoint: &mut Option<Arc<Endpoint>>,
    ) -> Result<Response<Body>, CacheError> {
        self.cache.count(status);
        let (ep, response) = self.call.send(self.call.headers.clone(), body).await?;
        *endpoint = ep;
        let response = transform_body(
            self.transform,
            upstream_response(response),
            self.call.upstream.request_timeout,
        )
        .await?;
        Ok(tag(response, status))
    }

    /// Fills (or revalidates) the entry for everyone waiting on it.
    async fn lead(
        &self,
        leader: Leader<'_>,
        stale: Option<Arc<Entry>>,
        body: Body,
        endpoint: &mut Option<Arc<Endpoint>>,
    ) -> Result<Response<Body>, CacheError> {
        let fetched = fetch(Fetch {
            transform: self.transform,
            cache: self.cache,
            call: &self.call,
            body,
            primary: &self.primary,
            stale,
            leader,
            request_cc: &self.request_cc,
            authenticated: self.authenticated,
        })
        .await?;
        self.cache.count(fetched.outcome);
        if let Some(ep) = fetched.endpoint {
            *endpoint = Some(ep);
        }
        Ok(match fetched.answer {
            Answer::Entry(entry) => respond(&entry, fetched.outcome, &self.conditional, self.head),
            Answer::Streamed(response) => tag(response, fetched.outcome),
        })
    }
}

fn variant_of(primary: &Key, entry: &Entry, headers: &HeaderMap) -> Key {
    if entry.vary.is_empty() {
        primary.clone()
    } else {
        primary.variant(&entry.vary, headers)
    }
}

async fn bypass(
    transform: &Option<Transform>,
    cache: &ResponseCache,
    call: UpstreamCall,
    body: Body,
    endpoint: &mut Option<Arc<Endpoint>>,
) -> Result<Response<Body>, CacheError> {
    cache.count(CacheStatus::Bypass);
    let headers = call.headers.clone();
    let (ep, response) = call.send(headers, body).await?;
    *endpoint = ep;
    let response = transform_body(
        transform,
        upstream_response(response),
        call.upstream.request_timeout,
    )
    .await?;
    Ok(tag(response, CacheStatus::Bypass))
}

/// RFC 9111 §4.4: a successful unsafe request invalidates the URL, and its `Location`
/// and `Content-Location` when they are on the same host.
async fn unsafe_method(
    transform: &Option<Transform>,
    cache: &ResponseCache,
    call: UpstreamCall,
    body: Body,
    endpoint: &mut Option<Arc<Endpoint>>,
    primary: &Key,
) -> Result<Response<Body>, CacheError> {
    cache.count(CacheStatus::Bypass);
    let headers = call.headers.clone();
    let (ep, response) = call.send(headers, body).await?;
    *endpoint = ep;
    let response = upstream_response(response);
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        // The resource changed for every route and scheme that stored it, not only ours.
        cache.invalidate_url(primary).await;
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(target) = response
                .headers()
                .get(&name)
                .and_then(|v| same_origin(v, &primary.host))
            {
                let (path, query) = target;
                let key = Key::primary(
                    primary.scheme,
                    &primary.host,
                    &primary.route,
                    &primary.upstream,
                    &path,
                    query.as_deref(),
                );
                cache.invalidate_url(&key).await;
            }
        }
    }
    let response = transform_body(transform, response, call.upstream.request_timeout).await?;
    Ok(tag(response, CacheStatus::Bypass))
}

/// The path and query of a `Location` on the same host (relative, or absolute with the
/// request's host).
fn same_origin(value: &HeaderValue, host: &str) -> Option<(String, Option<String>)> {
    let uri: http::Uri = value.to_str().ok()?.parse().ok()?;
    if let Some(authority) = uri.authority() {
        if !authority.as_str().eq_ignore_ascii_case(host) {
            return None;
        }
    } else if !uri.path().starts_with('/') {
        return None;
    }
    let path = crate::wire::path::normalize(uri.path()).ok()?.into_owned();
    Some((path, uri.query().map(str::to_string)))
}

enum Answer {
    Entry(Arc<Entry>),
    Streamed(Response<Body>),
}

struct Fetched {
    answer: Answer,
    outcome: CacheStatus,
    endpoint: Option<Arc<Endpoint>>,
}

struct Fetch<'a, 'b> {
    transform: &'a Option<Transform>,
    cache: &'a ResponseCache,
    call: &'a UpstreamCall,
    body: Body,
    primary: &'a Key,
    stale: Option<Arc<Entry>>,
    leader: Leader<'b>,
    request_cc: &'a CacheControl,
    authenticated: bool,
}

/// The leader's work: one upstream request (conditional when a stale entry has
/// validators), then refresh the stale entry (304), serve it (`stale-if-error`), or store
/// or pass on the new answer; the waiters are told in every case.
async fn fetch(f: Fetch<'_, '_>) -> Result<Fetched, CacheError> {
    let Fetch {
        transform,
        cache,
        call,
        body,
        primary,
        stale,
        leader,
        request_cc,
        authenticated,
    } = f;
    let headers = with_validators(&call.headers, stale.as_deref());
    let (endpoint, response) = match call.send(headers, body).await {
        Ok(pair) => pair,
        Err(error) => {
            return match stale_if_error(&stale) {
                Some(entry) => Ok(Fetched::stale(entry, None)),
                None => Err(error.into()),
            }
        }
    };
    let response = upstream_response(response);
    let status = response.status();
    if let Some(old) = &stale {
        if status == StatusCode::NOT_MODIFIED {
            let refresh = Refresh {
                cache,
                primary,
                request_cc,
                authenticated,
            };
            let entry = refresh.revalidated(old, response.headers(), leader).await;
            return Ok(Fetched {
                answer: Answer::Entry(entry),
                outcome: CacheStatus::Hit,
                endpoint,
            });
        }
        if status.is_server_error() {
            if let Some(entry) = stale_if_error(&stale) {
                return Ok(Fetched::stale(entry, endpoint));
            }
        }
    }
    let fill = Fill {
        transform,
        cache,
        call,
        primary,
        leader,
        endpoint,
    };
    let storable = policy::storable(
        request_cc,
        authenticated,
        status,
        response.headers(),
        cache.default_ttl,
    );
    match storable {
        Ok(freshness) => fill.store(response, freshness).await,
        Err(reason) => {
            tracing::trace!(cache = %cache.name, ?reason, "response not stored");
            if stale.is_some() {
                cache.invalidate(primary).await;
            }
            fill.pass_on(response).await
        }
    }
}

impl Fetched {
    fn stale(entry: Arc<Entry>, endpoint: Option<Arc<Endpoint>>) -> Fetched {
        Fetched {
            answer: Answer::Entry(entry),
            outcome: CacheStatus::Stale,
            endpoint,
        }
    }
}

/// The client's headers, plus the stale entry's validators.
fn with_validators(headers: &HeaderMap, stale: Option<&Entry>) -> HeaderMap {
    let mut headers = headers.clone();
    if let Some(entry) = stale {
        if let Some(etag) = entry.etag() {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(modified) = entry.last_modified() {
            headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
        }
    }
    headers
}

/// The stale entry, while `stale-if-error` still allows serving it.
fn stale_if_error(stale: &Option<Arc<Entry>>) -> Option<Arc<Entry>> {
    stale
        .as_ref()
        .filter(|e| e.within_stale_if_error(Instant::now()))
        .cloned()
}

/// What a 304 needs to refresh the stale entry.
struct Refresh<'a> {
    cache: &'a ResponseCache,
    primary: &'a Key,
    request_cc: &'a CacheControl,
    authenticated: bool,
}

impl Refresh<'_> {
    /// The stored body with the 304's headers (RFC 9111 §4.3.4): stored again when the
    /// merged headers still allow it, otherwise served once and dropped from the store.
    async fn revalidated(
        &self,
        old: &Entry,
        not_modified: &HeaderMap,
        leader: Leader<'_>,
    ) -> Arc<Entry> {
        let merged = merge_headers(&old.headers, not_modified);
        let fresh = policy::storable(
            self.request_cc,
            self.authenticated,
            old.status,
            &merged,
            self.cache.default_ttl,
        );
        let entry = Arc::new(Entry::new(
            old.status,
            merged,
            old.body.clone(),
            policy::age_header(not_modified),
            fresh.unwrap_or(old.freshness),
            old.vary.clone(),
            old.key.clone(),
        ));
        if fresh.is_ok() {
            self.cache.insert(self.primary, entry.clone()).await;
            leader.land(Landing::Stored(entry.clone()));
        } else {
            self.cache.invalidate(self.primary).await;
            leader.land(Landing::NotStored);
        }
        entry
    }
}

/// A new answer on its way to the store or, when it cannot be stored, to the client.
struct Fill<'a, 'b> {
    transform: &'a Option<Transform>,
    cache: &'a ResponseCache,
    call: &'a UpstreamCall,
    primary: &'a Key,
    leader: Leader<'b>,
    endpoint: Option<Arc<Endpoint>>,
}

impl Fill<'_, '_> {
    /// Buffers the body up to `max_entry`, applies the route's JSON edit and stores the
    /// entry under its variant; a larger body streams through unstored.
    async fn store(
        self,
        response: Response<Body>,
        freshness: policy::Freshness,
    ) -> Result<Fetched, CacheError> {
        let cache = self.cache;
        if content_length(response.headers()).is_some_and(|len| len > cache.max_entry) {
            return self.pass_on(response).await;
        }
        let status = response.status();
        let (mut parts, body) = response.into_parts();
        let fill = buffer::up_to(body, cache.max_entry);
        let buffered = tokio::time::timeout(self.call.upstream.request_timeout, fill)
            .await
            .map_err(|_| UpstreamError::Timeout)?;
        let bytes = match buffered {
            Buffered::Complete(bytes) => bytes,
            Buffered::Overflow(body) => {
                return self.pass_on(Response::from_parts(parts, body)).await;
            }
            // The leader goes away without landing: the waiters look again.
            Buffered::Failed(_) => return Err(UpstreamError::InvalidResponse.into()),
        };
        let bytes = match self.transform {
            Some(t) => t.response_bytes(&mut parts.headers, bytes),
            None => bytes,
        };
        let initial_age = policy::age_header(&parts.headers);
        parts.headers.remove(header::AGE);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        let vary = key::vary_names(&parts.headers);
        let variant = if vary.is_empty() {
            self.primary.clone()
        } else {
            self.primary.variant(&vary, &self.call.headers)
        };
        let entry = Arc::new(Entry::new(
            status,
            parts.headers,
            bytes,
            initial_age,
            freshness,
            vary,
            variant,
        ));
        cache.insert(self.primary, entry.clone()).await;
        self.leader.land(Landing::Stored(entry.clone()));
        Ok(Fetched {
            answer: Answer::Entry(entry),
            outcome: CacheStatus::Miss,
            endpoint: self.endpoint,
        })
    }

    /// Not stored: the waiters fetch for themselves, this answer streams to its client.
    async fn pass_on(self, response: Response<Body>) -> Result<Fetched, CacheError> {
        self.leader.land(Landing::NotStored);
        Ok(Fetched {
            answer: Answer::Streamed(
                transform_body(self.transform, response, self.call.upstream.request_timeout)
                    .await?,
            ),
            outcome: CacheStatus::Miss,
            endpoint: self.endpoint,
        })
    }
}

/// RFC 9111 §3.2: the stored headers updated with those of a 304.
fn merge_headers(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut headers = stored.clone();
    for name in not_modified.keys() {
        if name == header::CONTENT_LENGTH || name == header::AGE || name == header::CONTENT_ENCODING
        {
            continue;
        }
        headers.remove(name);
        for v in not_modified.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    headers
}

/// One background revalidation per stale entry (`stale-while-revalidate`).
fn refresh_in_background(lookup: &Lookup<'_>, entry: &Arc<Entry>) {
    if entry
        .refreshing
        .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        return;
    }
    let (transform, cache, call, primary, entry) = (
        lookup.transform.clone(),
        lookup.cache.clone(),
        lookup.call.clone(),
        lookup.primary.clone(),
        entry.clone(),
    );
    let authenticated = lookup.authenticated;
    tokio::spawn(async move {
        if let Join::Leader(leader) = cache.flights.join(&primary) {
            let result = fetch(Fetch {
                transform: &transform,
                cache: &cache,
                call: &call,
                body: Body::empty(),
                primary: &primary,
                stale: Some(entry.clone()),
                leader,
                request_cc: &CacheControl::default(),
                authenticated,
            })
            .await;
            if let Err(e) = result {
                tracing::debug!(cache = %cache.name, error = %e, "background revalidation failed");
            }
        }
        entry
            .refreshing
            .store(false, std::sync::atomic::Ordering::Release);
    });
}

async fn transform_body(
    transform: &Option<Transform>,
    response: Response<Body>,
    read_within: std::time::Duration,
) -> Result<Response<Body>, CacheError> {
    match transform {
        // Read into memory: bounded like the upstream call that produced it.
        Some(t) if t.edits_response_body() => Ok(t.response_body(response, read_within).await?),
        _ => Ok(response),
    }
}

fn tag(mut response: Response<Body>, outcome: CacheStatus) -> Response<Body> {
    response
        .headers_mut()
        .insert(X_CACHE.clone(), outcome.header());
    response
}

/// A response built from a stored entry, with `Age` and `X-Cache`; 304 when the
/// client's own validators match; no body for HEAD.
pub fn respond(
    entry: &Entry,
    outcome: CacheStatus,
    conditional: &Conditional,
    head: bool,
) -> Response<Body> {
    // RFC 9111 §5.1: an age past what can be represented is sent as 2^31.
    let age = entry
        .age(Instant::now())
        .as_secs()
        .min(policy::MAX_DELTA_SECONDS);
    let mut headers = entry.headers.clone();
    headers.insert(header::AGE, HeaderValue::from(age));
    headers.insert(X_CACHE.clone(), outcome.header());
    let (status, body) = if conditional.not_modified(entry) {
        headers.remove(header::CONTENT_LENGTH);
        (StatusCode::NOT_MODIFIED, Body::empty())
    } else if head {
        (entry.status, Body::empty())
    } else {
        (entry.status, Body::full(entry.body.clone()))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

impl Conditional {
    /// No conditional headers.
    pub fn none() -> Conditional {
        Conditional::default()
    }
}
