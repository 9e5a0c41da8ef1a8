//! The request path. `handle` reads like a request's life: identify, route, check,
//! forward, answer, record. Each stage either continues or produces the response; a
//! refusal is a `GatewayError`, rendered in one place.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, Version};
use hyper::body::Incoming;

use crate::auth::route::{self as auth_route, KeySource};
use crate::cache;
use crate::config::UnderscoreHeaders;
use crate::context::{ConnInfo, Context, RequestLineTooLong};
use crate::cors;
use crate::error::GatewayError;
use crate::grpc;
use crate::mirror;
use crate::observe::{access_log, AccessRecord, REQUEST_ID};
use crate::router::RequestView;
use crate::runtime::{Route, Runtime};
use crate::split;
use crate::telemetry::otlp::Any;
use crate::telemetry::TraceScope;
use crate::transform;
use crate::upstream::call::{upstream_response, UpstreamCall};
use crate::upstream::{proxy, Upstream};
use crate::wire;
use crate::wire::body::Body;
use crate::wire::forward;
use crate::wire::headers::content_length;
use crate::wire::host::CheckedHost;
use crate::wire::path;

pub async fn handle(
    rt: Arc<Runtime>,
    conn: ConnInfo,
    request: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let client_ip = forward::client_ip(conn.peer.ip(), &parts.headers, &rt.trusted_proxies);
    let peer_trusted = forward::is_trusted(conn.peer.ip(), &rt.trusted_proxies);
    let mut ctx = Context {
        started: Instant::now(),
        request_id: crate::observe::request_id(&parts.headers),
        conn,
        client_ip,
        peer_trusted,
        route: None,
        endpoint: None,
        identity: None,
        cors_origin: None,
        claims: None,
        split_side: None,
        rate_limit: None,
        trace: rt.tracer.as_ref().map(|t| t.begin(&parts.headers)),
    };
    let bytes_in = content_length(&parts.headers).unwrap_or(0);

    let (mut response, failure) = match forward_request(&rt, &mut ctx, &mut parts, body).await {
        Ok(response) => (response, None),
        Err(error) => (render_error(&ctx, &parts.headers, &error), Some(error)),
    };
    response
        .headers_mut()
        .insert(REQUEST_ID.clone(), ctx.request_id.clone());
    if let (Some(route), Some(side)) = (&ctx.route, ctx.split_side) {
        if route.split.as_ref().is_some_and(|s| s.side_header) {
            response
                .headers_mut()
                .insert(split::SIDE_HEADER.clone(), side.header_value());
        }
    }
    if let Some(outcome) = &ctx.rate_limit {
        outcome.apply(response.headers_mut());
    }
    // A preflight's answer (its headers are still in `parts`) has its CORS headers.
    if let Some(cors) = ctx.route.as_ref().and_then(|r| r.edge.cors.as_ref()) {
        if !cors::is_preflight(&parts.method, &parts.headers) {
            cors.policy
                .actual(ctx.cors_origin.as_ref(), response.headers_mut());
        }
    }
    // Every response of a caching route says what the cache did: one the cache never saw
    // (a refusal before it, an error of the upstream call) is a BYPASS.
    if ctx.route.as_ref().is_some_and(|r| r.cache.is_some())
        && !response.headers().contains_key(&cache::flow::X_CACHE)
    {
        response.headers_mut().insert(
            cache::flow::X_CACHE.clone(),
            cache::CacheStatus::Bypass.header(),
        );
    }

    if let Some(trace) = ctx.trace.as_ref().filter(|t| t.sampled) {
        server_span(trace, &ctx, &parts, &response, failure.as_ref());
    }
    // The stages take the headers but leave method and URI: the log sees what the client sent.
    record(
        &rt,
        &ctx,
        parts.method.as_str(),
        parts.uri.path(),
        bytes_in,
        &response,
    );
    response
}

async fn forward_request(
    rt: &Runtime,
    ctx: &mut Context,
    parts: &mut Parts,
    body: Incoming,
) -> Result<Response<Body>, GatewayError> {
    if parts.extensions.get::<RequestLineTooLong>().is_some() {
        return Err(GatewayError::RequestLineTooLong);
    }
    admit(rt, &parts.method, &mut parts.headers)?;
    // Route on the normalised path; it is also the path that goes upstream.
    let normalised = path::normalize_with(parts.uri.path(), rt.encoded_slash)
        .map_err(|_| GatewayError::BadRequest("invalid request path"))?;
    let host_header = request_host(parts)?;
    let route = rt
        .routes
        .find(&RequestView {
            method: &parts.method,
            host: host_header.as_ref().map_or("", CheckedHost::host),
            path: &normalised,
            headers: &parts.headers,
        })
        .ok_or(GatewayError::NoRoute)?
        .clone();
    ctx.route = Some(route.clone());
    if let Some(cors) = &route.edge.cors {
        if cors::is_preflight(&parts.method, &parts.headers) {
            return Box::pin(preflight(&route, cors, ctx, &parts.headers)).await;
        }
        ctx.cors_origin = parts.headers.get(header::ORIGIN).cloned();
    }
    check_ip(&route, ctx)?;
    // Branches only some routes take are boxed, so the future every request carries
    // (and hyper moves into place) stays small.
    if route.edge.auth.is_some() {
        Box::pin(authenticate(&route, ctx, &mut parts.headers, &parts.uri)).await?;
    }
    rate_limit(&route, ctx, &parts.headers).await?;

    if content_length(&parts.headers).is_some_and(|len| len > route.max_request_body) {
        return Err(GatewayError::BodyTooLarge);
    }

    // Migration split: the side decides the upstream and the rewrite.
    let chosen = route.split.as_ref().map(|split| {
        let side = split.choose(
            &parts.headers,
            ctx.client_ip,
            ctx.claims.as_deref().map(|c| &c.0),
        );
        (split, side)
    });
    ctx.split_side = chosen.map(|(_, side)| side);
    let (upstream, rewrite) = match chosen {
        Some((split, side)) => (&split.side(side).upstream, &split.side(side).rewrite),
        None => (&route.upstream, &route.rewrite),
    };

    let upstream_path = match rewrite {
        Some(rewrite) => rewrite.apply(&normalised),
        None => Cow::Borrowed(normalised.as_ref()),
    };
    let query = upstream_query(&route, parts.uri.query());
    let path_and_query = path_and_query(&upstream_path, query.as_deref())?;

    let upgrade = if parts.version == Version::HTTP_11 {
        forward::upgrade_protocol(&parts.headers)
    } else {
        None
    };
    // Who asked, before hop-by-hop stripping or a transform can remove `Authorization`:
    // the cache shares an authenticated request's answer only when the origin allows it.
    let authenticated =
        route.edge.auth.is_some() || parts.headers.contains_key(header::AUTHORIZATION);
    // A gRPC call's deadline bounds its upstream call, response stream included.
    let grpc_deadline = route
        .grpc
        .as_ref()
        .and_then(|_| grpc::timeout(&parts.headers))
        .map(|d| tokio::time::Instant::from_std(ctx.started) + d);
    let mut headers = std::mem::take(&mut parts.headers);
    if let Some(trace) = &ctx.trace {
        trace.strip(&mut headers);
        // An upgrade is one try on a connection of its own: it carries the server span.
        if upgrade.is_some() {
            trace.inject(&mut headers, &trace.span_id);
        }
    }
    // `TE: trailers` is the one TE an HTTP/2 upstream may receive (RFC 9113 §8.2.2), and
    // gRPC servers expect it; the HTTP/1.1 client leaves it out.
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    forward::strip_hop_by_hop(&mut headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let (Some(verifier), Some(claims)) = (&route.jwt, &ctx.claims) {
        verifier.forward(claims, &mut headers);
    }
    if let Some(identity) = &ctx.identity {
        identity.forward(&mut headers);
    }
    forward::set_forwarded(
        &mut headers,
        &ctx.conn.peer_header,
        ctx.peer_trusted,
        ctx.conn.proto(),
        host_header.as_ref().map(CheckedHost::value),
    );
    forward::set_real_ip(
        &mut headers,
        ctx.peer_trusted,
        ctx.client_ip,
        &ctx.conn.peer_header,
    );
    if let Some(host) = host_header.map(CheckedHost::into_value) {
        headers.insert(header::HOST, host);
    }
    headers.insert(REQUEST_ID.clone(), ctx.request_id.clone());

    let mut path_and_query = path_and_query;
    let mut body = Body::limited(body, route.max_request_body);
    let mut shadow = None;
    if let (Some(mirror), None) = (&route.mirror, &upgrade) {
        let request = mirror::Request {
            method: &parts.method,
            path: &normalised,
            query: query.as_deref(),
            headers: &headers,
            client_ip: ctx.client_ip,
            claims: ctx.claims.as_deref().map(|c| &c.0),
        };
        (body, shadow) = mirror.prepare(request, body);
    }
    if let Some(transform) = &route.transform {
        let scope = transform_scope(ctx, &route, upstream);
        path_and_query = transform.request_head(&mut headers, path_and_query, &scope)?;
        body = Box::pin(transform.request_body(&mut headers, body, rt.idle_timeout)).await?;
    }
    let call = UpstreamCall {
        upstream: upstream.clone(),
        method: parts.method.clone(),
        path_and_query,
        headers,
        deadline: grpc_deadline,
        trace: ctx.trace.clone(),
    };

    // The split's latency window is the only reader of this clock.
    let sent_at = chosen.is_some().then(Instant::now);
    let sent = if let Some(protocol) = upgrade {
        Box::pin(upgrade_request(ctx, parts, call, protocol, rt.idle_timeout)).await
    } else if let Some(cache) = &route.cache {
        Box::pin(cache::serve(cache::flow::Request {
            route: &route.name,
            scheme: ctx.conn.proto(),
            transform: &route.transform,
            cache,
            call,
            body,
            authenticated,
            endpoint: &mut ctx.endpoint,
        }))
        .await
        .map_err(GatewayError::from)
    } else {
        uncached(ctx, &route, call, body).await
    };
    if let (Some((split, side)), Some(sent_at)) = (chosen, sent_at) {
        split.record(
            side,
            sent.as_ref().map(|r| r.status()).map_err(|e| e.status()),
            sent_at.elapsed(),
        );
    }
    let sent = match shadow {
        Some(shadow) => shadow.dispatch(sent),
        None => sent,
    };
    let mut response = sent?;
    if let Some(transform) = &route.transform {
        let scope = transform_scope(ctx, &route, upstream);
        transform.response_head(response.headers_mut(), &scope);
    }
    if let Some(metrics) = &route.grpc {
        response = grpc::watch(response, metrics.clone(), grpc_deadline);
    }
    Ok(response)
}

/// A refusal in the shape its client reads: gRPC on a gRPC route, or for a gRPC call no
/// route took; the JSON shape otherwise. (The headers are the client's, untouched: a
/// refusal before routing, or the route's own error, which knows its kind.)
fn render_error(ctx: &Context, headers: &HeaderMap, error: &GatewayError) -> Response<Body> {
    let grpc_call = match &ctx.route {
        Some(route) => {
            if let Some(metrics) = &route.grpc {
                metrics.record(Some(error.grpc_code() as u8));
            }
            route.grpc.is_some()
        }
        None => grpc::is_grpc(headers),
    };
    if grpc_call {
        error.to_grpc_response(&ctx.request_id)
    } else {
        error.to_response(&ctx.request_id)
    }
}

/// A request that no cache answers: sent (with the upstream's retries and breaker), then
/// the response body transform when the route has one.
async fn uncached(
    ctx: &mut Context,
    route: &Route,
    mut call: UpstreamCall,
    body: Body,
) -> Result<Response<Body>, GatewayError> {
    let headers = std::mem::take(&mut call.headers);
    let (endpoint, response) = call.send(headers, body).await?;
    ctx.endpoint = endpoint;
    let response = upstream_response(response);
    match &route.transform {
        // Read into memory: bounded like the rest of the upstream call.
        Some(t) if t.edits_response_body() => {
            let within = call.upstream.request_timeout;
            Ok(Box::pin(t.response_body(response, within)).await?)
        }
        _ => Ok(response),
    }
}

/// An HTTP/1.1 upgrade (WebSocket): one endpoint, a dedicated connection, no retries.
async fn upgrade_request(
    ctx: &mut Context,
    parts: &mut Parts,
    call: UpstreamCall,
    protocol: HeaderValue,
    idle_timeout: std::time::Duration,
) -> Result<Response<Body>, GatewayError> {
    let upstream = &call.upstream;
    let endpoint = upstream
        .pick()
        .ok_or_else(|| GatewayError::NoEndpoint(upstream.name.clone()))?;
    ctx.endpoint = Some(endpoint.clone());
    let _awaiting_head = endpoint.await_head();
    // Origin form, as for every other request: backends route on the exact path.
    let mut builder = Request::builder()
        .method(call.method)
        .uri(Uri::from(call.path_and_query))
        .version(Version::HTTP_11);
    if let Some(h) = builder.headers_mut() {
        *h = call.headers;
        if !h.contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(endpoint.authority.as_str()) {
                h.insert(header::HOST, host);
            }
        }
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, protocol);
    }
    let on_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or(GatewayError::BadRequest(
            "upgrade not possible on this connection",
        ))?;
    let request = builder
        .body(Body::empty())
        .map_err(|_| GatewayError::BadRequest("invalid request"))?;
    let tunnel = proxy::Tunnel {
        idle_timeout,
        slot: ctx.conn.slot.clone(),
    };
    let response = proxy::upgrade(upstream, &endpoint, on_upgrade, request, tunnel).await?;
    Ok(upstream_response(response.map(Body::streaming)))
}

fn transform_scope<'a>(
    ctx: &'a Context,
    route: &'a Route,
    upstream: &'a Upstream,
) -> transform::Scope<'a> {
    transform::Scope {
        claims: ctx.claims.as_deref().map(|c| &c.0),
        consumer: ctx.consumer(),
        request_id: &ctx.request_id,
        client_ip: ctx.client_ip,
        route: &route.name,
        upstream: &upstream.name,
    }
}

/// The `auth` stage: the route's methods in order, then `allow`. The identity and any
/// verified claims stay in the context; the credential that only the gateway needs (an
/// API key, basic credentials) is taken out of the request.
async fn authenticate(
    route: &Route,
    ctx: &mut Context,
    headers: &mut HeaderMap,
    uri: &Uri,
) -> Result<(), GatewayError> {
    let Some(auth) = &route.edge.auth else {
        return Ok(());
    };
    let outcome = match auth.authenticate(headers, uri).await {
        Ok((identity, claims)) => match &route.edge.allow {
            Some(allow) => auth
                .authorize(allow, &identity, claims.as_deref())
                .map(|()| (identity, claims)),
            None => Ok((identity, claims)),
        },
        Err(rejection) => Err(rejection),
    };
    let (identity, claims) = outcome.map_err(|rejection| {
        let (method, reason) = rejection.labels();
        tracing::info!(
            route = %route.name,
            method,
            reason,
            request_id = ctx.request_id.to_str().unwrap_or(""),
            "request refused by auth"
        );
        GatewayError::Rejected(rejection)
    })?;
    // A query key is taken out where the upstream target is made (`upstream_query`).
    if let Some(KeySource::Header(name)) = auth.key_source() {
        headers.remove(name);
    }
    if identity.method == auth_route::Method::Basic {
        headers.remove(header::AUTHORIZATION);
    }
    ctx.identity = Some(identity);
    ctx.claims = claims;
    Ok(())
}

/// The query the upstream gets: the client's, without an API key parameter.
fn upstream_query<'a>(route: &Route, query: Option<&'a str>) -> Option<Cow<'a, str>> {
    let query = query?;
    match route.edge.auth.as_ref().and_then(|a| a.key_source()) {
        Some(KeySource::Query(name)) => forward::without_query_param(query, name),
        _ => Some(Cow::Borrowed(query)),
    }
}

/// The `ip` stage: the route's lists on the client address.
fn check_ip(route: &Route, ctx: &Context) -> Result<(), GatewayError> {
    match &route.edge.ip {
        Some(ip) => ip.filter.check(ctx.client_ip).map_err(|refusal| {
            ip.count(refusal);
            GatewayError::IpRefused
        }),
        None => Ok(()),
    }
}

/// A CORS preflight on a route with a policy: answered here, never forwarded. It carries
/// no credentials, so auth does not apply; the IP lists and the rate limit do.
async fn preflight(
    route: &Route,
    cors: &crate::runtime::edge::RouteCors,
    ctx: &mut Context,
    headers: &HeaderMap,
) -> Result<Response<Body>, GatewayError> {
    check_ip(route, ctx)?;
    rate_limit(route, ctx, headers).await?;
    let mut response = Response::new(Body::empty());
    let result = cors.policy.preflight(headers, response.headers_mut());
    cors.count(result);
    *response.status_mut() = match result {
        cors::Preflight::Allowed => http::StatusCode::NO_CONTENT,
        cors::Preflight::Rejected => http::StatusCode::FORBIDDEN,
    };
    Ok(response)
}

/// The `rate_limit` stage: spends one request of the key's budget or refuses with 429.
/// A `scope: cluster` limit asks Redis (boxed: only those routes carry that future).
async fn rate_limit(
    route: &Route,
    ctx: &mut Context,
    headers: &http::HeaderMap,
) -> Result<(), GatewayError> {
    let Some(limiter) = &route.rate_limit else {
        return Ok(());
    };
    let key = limiter.key(&crate::ratelimit::KeyInput {
        client_ip: ctx.client_ip,
        headers,
        claims: ctx.claims.as_deref(),
        consumer: ctx.consumer(),
    });
    let outcome = if limiter.is_shared() {
        Box::pin(limiter.check_shared(&key))
            .await
            .map_err(|_| GatewayError::LimitStoreUnavailable)?
    } else {
        limiter.check_key(&key)
    };
    let retry_after = outcome.retry_after;
    ctx.rate_limit = Some(outcome);
    match retry_after {
        None => Ok(()),
        Some(retry_after) => {
            if let Some(counter) = &route.ratelimit_rejected {
                counter.inc();
            }
            Err(GatewayError::RateLimited { retry_after })
        }
    }
}

/// Longest method token accepted (longer: 400).
const MAX_METHOD_LEN: usize = 32;

/// What the edge refuses or repairs before anything reads the request: TRACE (unless
/// `server.allow_trace`), header names with `_` (`server.limits.underscore_headers`),
/// and the client's own copies of the headers forwarded claims go in, which routing,
/// rate-limit keys and split stickiness must never see.
fn admit(rt: &Runtime, method: &Method, headers: &mut HeaderMap) -> Result<(), GatewayError> {
    // The longest registered method (RFC 9110 and the IANA registry) has 17 bytes; a
    // longer token is no method a backend implements, only a way to smuggle bytes.
    if method.as_str().len() > MAX_METHOD_LEN {
        return Err(GatewayError::BadRequest("method token too long"));
    }
    if *method == Method::TRACE && !rt.allow_trace {
        return Err(GatewayError::MethodNotAllowed(
            "TRACE is refused (server.allow_trace)",
        ));
    }
    let [dropped, rejected] = &rt.underscore_counters;
    let removed = match rt.underscore_headers {
        UnderscoreHeaders::Drop => wire::headers::remove_underscored(headers, |_| true),
        UnderscoreHeaders::Reject if wire::headers::has_underscored(headers) => {
            rejected.inc();
            return Err(GatewayError::BadRequest("header name with an underscore"));
        }
        UnderscoreHeaders::Reject => 0,
        UnderscoreHeaders::Allow => wire::headers::remove_underscored(headers, |name| {
            rt.claim_headers
                .iter()
                .any(|claim| wire::headers::shadows(name, claim))
        }),
    };
    if removed > 0 {
        dropped.inc_by(removed as u64);
    }
    crate::auth::strip_forwarded(headers, &rt.claim_headers);
    Ok(())
}

/// The authority the client asked for, checked: the request target's authority when it
/// has one (absolute form, or HTTP/2's `:authority`), which wins over `Host` (RFC 9112
/// §3.2.2); otherwise the one `Host` header. HTTP/1.1 requires exactly one `Host`; a
/// value that is not `uri-host[:port]` is refused whatever the version.
fn request_host(parts: &Parts) -> Result<Option<CheckedHost>, GatewayError> {
    if let Some(authority) = parts.uri.authority() {
        let bad = || GatewayError::BadRequest("invalid request target authority");
        let value = HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?;
        return CheckedHost::check(value).map(Some).map_err(|_| bad());
    }
    let mut values = parts.headers.get_all(header::HOST).iter();
    let Some(value) = values.next() else {
        if parts.version == Version::HTTP_11 {
            return Err(GatewayError::BadRequest("missing Host header"));
        }
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Host header"));
    }
    CheckedHost::check(value.clone())
        .map(Some)
        .map_err(|_| GatewayError::BadRequest("invalid Host header"))
}

fn path_and_query(path: &str, query: Option<&str>) -> Result<PathAndQuery, GatewayError> {
    let result = match query {
        Some(q) => {
            let mut s = String::with_capacity(path.len() + q.len() + 1);
            s.push_str(path);
            s.push('?');
            s.push_str(q);
            PathAndQuery::from_maybe_shared(s)
        }
        None => PathAndQuery::from_maybe_shared(bytes::Bytes::copy_from_slice(path.as_bytes())),
    };
    result.map_err(|_| GatewayError::BadRequest("invalid request target"))
}

/// The request's server span (OpenTelemetry HTTP server attributes, Portico's own under
/// `portico.`), with events for the refusals a trace reader looks for.
fn server_span(
    trace: &TraceScope,
    ctx: &Context,
    parts: &Parts,
    response: &Response<Body>,
    failure: Option<&GatewayError>,
) {
    let route = ctx.route.as_deref();
    let method = parts.method.as_str();
    let mut span = match route {
        Some(route) => {
            let mut name = String::with_capacity(method.len() + 1 + route.name.len());
            name.push_str(method);
            name.push(' ');
            name.push_str(&route.name);
            trace.server_span(&name)
        }
        None => trace.server_span(method),
    };
    let status = response.status().as_u16();
    span.str("http.request.method", method);
    span.str("url.path", parts.uri.path());
    span.str("url.scheme", ctx.conn.proto());
    span.int("http.response.status_code", i64::from(status));
    span.str("portico.request_id", ctx.request_id.to_str().unwrap_or(""));
    // The peer's address is formatted once per connection already (X-Forwarded-For);
    // the client's is usually the same.
    let peer = ctx.conn.peer_header.to_str().unwrap_or("");
    span.str("network.peer.address", peer);
    if ctx.client_ip == ctx.conn.peer.ip() {
        span.str("client.address", peer);
    } else {
        span.str("client.address", &ctx.client_ip.to_string());
    }
    if let Some(route) = route {
        span.str("http.route", &route.name);
        span.str("portico.upstream", &route.upstream_for(ctx.split_side).name);
    }
    if let Some(endpoint) = &ctx.endpoint {
        span.str("portico.endpoint", &endpoint.address);
    }
    if let Some(consumer) = ctx.consumer() {
        span.str("portico.consumer", consumer);
    }
    if let Some(side) = ctx.split_side {
        span.str("portico.split.side", side.label());
    }
    if let Some(cache) = response
        .headers()
        .get(&cache::flow::X_CACHE)
        .and_then(|v| v.to_str().ok())
    {
        span.str("portico.cache", cache);
    }
    if let Some(decision) = &ctx.rate_limit {
        span.bool("portico.rate_limited", decision.retry_after.is_some());
    }
    if let Some(code) = grpc::status_of(response.headers()) {
        span.int("rpc.grpc.status_code", i64::from(code));
    }
    match failure {
        Some(GatewayError::Auth(e)) => {
            span.event("jwt rejected", "portico.reason", Any::Str(e.reason()))
        }
        Some(GatewayError::Rejected(r)) => {
            span.event("auth rejected", "portico.reason", Any::Str(r.labels().1))
        }
        Some(GatewayError::CircuitOpen(upstream)) => span.event(
            "circuit breaker open",
            "portico.upstream",
            Any::Str(upstream),
        ),
        Some(GatewayError::RateLimited { retry_after }) => span.event(
            "rate limited",
            "portico.retry_after",
            Any::Int(*retry_after as i64),
        ),
        _ => {}
    }
    let error = (status >= 500).then(|| match failure {
        Some(e) => e.to_string(),
        None => format!("upstream answered {status}"),
    });
    trace.record(span, error.as_deref());
}

fn record(
    rt: &Runtime,
    ctx: &Context,
    method: &str,
    raw_path: &str,
    bytes_in: u64,
    response: &Response<Body>,
) {
    let elapsed = ctx.started.elapsed();
    let status = response.status().as_u16();
    let route: Option<&Route> = ctx.route.as_deref();
    match route {
        Some(r) => r.metrics.record(status, elapsed.as_secs_f64()),
        None => rt.no_route.record(status, elapsed.as_secs_f64()),
    }
    let log = &rt.shared.access_log;
    if !log.enabled() {
        return;
    }
    let trace_ids = ctx
        .trace
        .as_ref()
        .map(|t| (t.trace_id_hex(), t.span_id_hex()));
    let bytes_out = content_length(response.headers())
        .or_else(|| http_body::Body::size_hint(response.body()).exact())
        .unwrap_or(0);
    log.write(&AccessRecord {
        time: access_log::Timestamp::now(),
        request_id: ctx.request_id.to_str().unwrap_or(""),
        client_ip: ctx.client_ip,
        method,
        path: raw_path,
        route: route.map_or("", |r| r.name.as_str()),
        upstream: route.map_or("", |r| r.upstream_for(ctx.split_side).name.as_str()),
        endpoint: ctx.endpoint.as_deref().map_or("", |e| e.address.as_str()),
        status,
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        bytes_in,
        bytes_out,
        consumer: ctx.consumer(),
        trace_id: trace_ids.as_ref().map(|(t, _)| t.as_str()),
        span_id: trace_ids.as_ref().map(|(_, s)| s.as_str()),
    });
}
