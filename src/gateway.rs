//! The request path. `handle` reads like a request's life: identify, route, check,
//! forward, answer, record. Each stage either continues or produces the response; a
//! refusal is a `GatewayError`, rendered in one place.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{header, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;

use crate::body::Body;
use crate::context::{ConnInfo, Context};
use crate::error::GatewayError;
use crate::forward;
use crate::observe::{access_log, AccessRecord, REQUEST_ID};
use crate::path;
use crate::router::RequestView;
use crate::runtime::{Route, Runtime};
use crate::upstream::proxy;

pub async fn handle(rt: Arc<Runtime>, conn: ConnInfo, request: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let client_ip = forward::client_ip(conn.peer.ip(), &parts.headers, &rt.trusted_proxies);
    let mut ctx = Context {
        started: Instant::now(),
        request_id: crate::observe::request_id(&parts.headers),
        conn,
        client_ip,
        peer_trusted: forward::is_trusted(conn.peer.ip(), &rt.trusted_proxies),
        route: None,
        endpoint: None,
        user: None,
        claims: None,
        rate_limit: None,
    };
    let bytes_in = content_length(&parts.headers).unwrap_or(0);
    let method = parts.method.clone();
    let raw_path = parts.uri.path().to_string();

    let mut response = match forward_request(&rt, &mut ctx, &mut parts, body).await {
        Ok(response) => response,
        Err(error) => error.to_response(&ctx.request_id),
    };
    response
        .headers_mut()
        .insert(REQUEST_ID.clone(), ctx.request_id.clone());
    if let Some(outcome) = &ctx.rate_limit {
        outcome.apply(response.headers_mut());
    }

    record(&rt, &ctx, method.as_str(), &raw_path, bytes_in, &response);
    response
}

async fn forward_request(
    rt: &Runtime,
    ctx: &mut Context,
    parts: &mut Parts,
    body: Incoming,
) -> Result<Response<Body>, GatewayError> {
    // Route on the normalised path; it is also the path that goes upstream.
    let normalised = path::normalize(parts.uri.path())
        .map_err(|_| GatewayError::BadRequest("invalid request path"))?;
    let host_header = request_host(parts);
    let route = rt
        .routes
        .find(&RequestView {
            method: &parts.method,
            host: host_without_port(host_header.as_ref()),
            path: &normalised,
            headers: &parts.headers,
        })
        .ok_or(GatewayError::NoRoute)?
        .clone();
    ctx.route = Some(route.clone());
    authenticate(&route, ctx, &parts.headers).await?;
    rate_limit(&route, ctx, &parts.headers)?;

    if content_length(&parts.headers).is_some_and(|len| len > rt.max_request_body) {
        return Err(GatewayError::BodyTooLarge);
    }

    let upstream_path = match &route.rewrite {
        Some(rewrite) => rewrite.apply(&normalised),
        None => Cow::Borrowed(normalised.as_ref()),
    };
    let path_and_query = path_and_query(&upstream_path, parts.uri.query())?;

    let upgrade = if parts.version == Version::HTTP_11 {
        forward::upgrade_protocol(&parts.headers)
    } else {
        None
    };
    let mut headers = std::mem::take(&mut parts.headers);
    forward::strip_hop_by_hop(&mut headers);
    crate::auth::strip_forwarded(&mut headers, &rt.claim_headers);
    if let (Some(verifier), Some(claims)) = (&route.jwt, &ctx.claims) {
        verifier.forward(claims, &mut headers);
    }
    forward::set_forwarded(
        &mut headers,
        ctx.conn.peer.ip(),
        ctx.peer_trusted,
        ctx.conn.proto(),
        host_header.as_ref(),
    );
    if let Some(host) = host_header {
        headers.insert(header::HOST, host);
    }
    headers.insert(REQUEST_ID.clone(), ctx.request_id.clone());

    let upstream = &route.upstream;
    let endpoint = upstream
        .pick()
        .ok_or_else(|| GatewayError::NoEndpoint(upstream.name.clone()))?;
    ctx.endpoint = Some(endpoint.clone());
    let _in_flight = endpoint.start();

    let uri = upstream_uri(&endpoint.authority, path_and_query)?;
    let mut builder = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .version(Version::HTTP_11);
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }

    let response = if let Some(protocol) = upgrade {
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(GatewayError::BadRequest("upgrade not possible on this connection"))?;
        if let Some(h) = builder.headers_mut() {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, protocol);
        }
        let request = builder
            .body(Body::empty())
            .map_err(|_| GatewayError::BadRequest("invalid request"))?;
        proxy::upgrade(upstream, &endpoint, on_upgrade, request).await?
    } else {
        let request = builder
            .body(Body::limited(body, rt.max_request_body))
            .map_err(|_| GatewayError::BadRequest("invalid request"))?;
        proxy::send(upstream, &endpoint, request, upstream.request_timeout).await?
    };

    let (mut head, incoming) = response.into_parts();
    if head.status != http::StatusCode::SWITCHING_PROTOCOLS {
        forward::strip_hop_by_hop(&mut head.headers);
    }
    Ok(Response::from_parts(head, Body::streaming(incoming)))
}

/// The `jwt` stage: verifies the bearer token and keeps the claims in the context.
async fn authenticate(
    route: &Route,
    ctx: &mut Context,
    headers: &http::HeaderMap,
) -> Result<(), GatewayError> {
    let Some(verifier) = &route.jwt else {
        return Ok(());
    };
    match verifier.authenticate(headers).await {
        Ok(claims) => {
            ctx.user = claims.subject().map(str::to_string);
            ctx.claims = Some(Arc::new(claims));
            Ok(())
        }
        Err(e) => {
            if let Some(counter) = route.jwt_rejected.get(e.index()) {
                counter.inc();
            }
            tracing::info!(
                route = %route.name,
                reason = e.reason(),
                request_id = ctx.request_id.to_str().unwrap_or(""),
                "JWT rejected"
            );
            Err(GatewayError::Auth(e))
        }
    }
}

/// The `rate_limit` stage: spends one request of the key's budget or refuses with 429.
fn rate_limit(
    route: &Route,
    ctx: &mut Context,
    headers: &http::HeaderMap,
) -> Result<(), GatewayError> {
    let Some(limiter) = &route.rate_limit else {
        return Ok(());
    };
    let outcome = limiter.check(&crate::ratelimit::KeyInput {
        client_ip: ctx.client_ip,
        headers,
        claims: ctx.claims.as_deref(),
    });
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

/// The Host the client asked for: the Host header (HTTP/1.1) or the URI authority (HTTP/2).
fn request_host(parts: &Parts) -> Option<HeaderValue> {
    if let Some(h) = parts.headers.get(header::HOST) {
        return Some(h.clone());
    }
    parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

fn host_without_port(host: Option<&HeaderValue>) -> &str {
    let Some(text) = host.and_then(|h| h.to_str().ok()) else {
        return "";
    };
    if text.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        return text.split(']').next().map_or(text, |h| &text[..h.len() + 1]);
    }
    text.split(':').next().unwrap_or(text)
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
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

fn upstream_uri(authority: &Authority, pq: PathAndQuery) -> Result<Uri, GatewayError> {
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| GatewayError::BadRequest("invalid request target"))
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
    let bytes_out = content_length(response.headers())
        .or_else(|| http_body::Body::size_hint(response.body()).exact())
        .unwrap_or(0);
    log.write(&AccessRecord {
        time: access_log::rfc3339_now(),
        request_id: ctx.request_id.to_str().unwrap_or(""),
        client_ip: ctx.client_ip.to_string(),
        method,
        path: raw_path,
        route: route.map_or("", |r| r.name.as_str()),
        upstream: route.map_or("", |r| r.upstream.name.as_str()),
        endpoint: ctx.endpoint.as_deref().map_or("", |e| e.address.as_str()),
        status,
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        bytes_in,
        bytes_out,
        user: ctx.user.as_deref(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        let h = HeaderValue::from_static("shop.local:8080");
        assert_eq!(host_without_port(Some(&h)), "shop.local");
        let h = HeaderValue::from_static("[::1]:8080");
        assert_eq!(host_without_port(Some(&h)), "[::1]");
        assert_eq!(host_without_port(None), "");
    }
}
