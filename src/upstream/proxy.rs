//! Sending one request to one endpoint: a pooled connection (or a new one), a deadline
//! for the response head, errors sorted into the gateway's status table, and HTTP/1.1
//! upgrades (WebSocket) spliced through.

use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;

use super::{Endpoint, Upstream, UpstreamError};
use crate::config::UpstreamProtocol;
use crate::observe::AttemptOutcome;
use crate::wire::body::{is_body_too_large, Body};
use crate::wire::connect::{self, ConnectError, UpstreamStream};
use crate::wire::h1::{self, Conn, ExchangeError, UpstreamBody};
use crate::wire::h2::Alpn;
use crate::wire::idle::{self, Activity, IdleIo};
use crate::wire::is_idempotent;
use hyper::client::conn::http2::SendRequest;

/// What goes to the endpoint: the request line's parts and the headers.
pub struct Outgoing {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
    /// This try's `traceparent`, written after `headers` (tracing on).
    pub traceparent: Option<[u8; 55]>,
}

/// Sends the request to `endpoint` and waits at most `timeout` for the response head.
pub async fn send(
    upstream: &Upstream,
    endpoint: &Endpoint,
    out: &Outgoing,
    body: Body,
    timeout: Duration,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let exchange = exchange(upstream, endpoint, out, body);
    let failure = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(response)) => {
            endpoint
                .metrics
                .record(AttemptOutcome::from_status(response.status().as_u16()));
            return Ok(response);
        }
        Ok(Err(e)) => e,
        Err(_) => {
            endpoint.metrics.record(AttemptOutcome::Timeout);
            return Err(UpstreamError::Timeout);
        }
    };
    let (outcome, error) = match failure {
        ExchangeError::Connect(ConnectError::Tls(ref e)) => (
            Some(AttemptOutcome::ConnectFailure),
            upstream.tls_failed(endpoint, e),
        ),
        ExchangeError::Connect(_) => (
            Some(AttemptOutcome::ConnectFailure),
            UpstreamError::ConnectFailed,
        ),
        // The client's body failed, not the endpoint.
        ExchangeError::RequestBody(e) if is_body_too_large(e.as_ref()) => {
            return Err(UpstreamError::RequestBodyTooLarge)
        }
        ExchangeError::RequestBody(_) => (None, UpstreamError::RequestBodyUnreadable),
        _ => (
            Some(AttemptOutcome::InvalidResponse),
            UpstreamError::InvalidResponse,
        ),
    };
    if let Some(outcome) = outcome {
        endpoint.metrics.record(outcome);
    }
    tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.address, error = %failure, "upstream exchange failed");
    Err(error)
}

/// One request and its response head, on a pooled connection when one is idle. A pooled
/// connection that turns out to be closed already is replaced by a new one, and the
/// request sent again, when that cannot repeat its effect: nothing of the request was
/// written, or the method is idempotent and the body is in memory.
pub(super) async fn exchange(
    upstream: &Upstream,
    endpoint: &Endpoint,
    out: &Outgoing,
    body: Body,
) -> Result<Response<UpstreamBody>, ExchangeError> {
    let auto = upstream.config.protocol == UpstreamProtocol::Auto;
    let h2 = match upstream.config.protocol {
        UpstreamProtocol::H2 | UpstreamProtocol::H2c => true,
        UpstreamProtocol::Auto => endpoint.h2.learned() == Alpn::H2,
        UpstreamProtocol::Http1 => false,
    };
    if h2 {
        return exchange_h2(upstream, endpoint, out, body, None).await;
    }
    let mut body = body;
    if let Some(mut conn) = endpoint.pool.take() {
        let replay = replayable(&body);
        match round_trip(&mut conn, endpoint, out, body).await {
            Ok(head) => return Ok(respond(conn, head, endpoint)),
            Err(e) if e.is_stale_connection() => {
                // A failed write means the upstream had closed before reading anything;
                // a close without an answer might follow a request it acted on.
                let again = match &e {
                    ExchangeError::Write(_) => replay,
                    _ => replay.filter(|_| is_idempotent(&out.method)),
                };
                let Some(again) = again else {
                    return Err(e);
                };
                tracing::debug!(endpoint = %endpoint.address, error = %e, "pooled connection was closed; sending on a new one");
                body = again;
            }
            Err(e) => return Err(e),
        }
    }
    // `auto`: the first connection to an endpoint learns what it speaks, and requests
    // arriving meanwhile wait for it (else a burst would open one connection each).
    let learning = match auto && endpoint.h2.learned() == Alpn::Unknown {
        true => Some(endpoint.h2.opening().await),
        false => None,
    };
    if auto && endpoint.h2.learned() == Alpn::H2 {
        drop(learning);
        return exchange_h2(upstream, endpoint, out, body, None).await;
    }
    let stream = open_connection(upstream, endpoint).await?;
    if auto {
        if stream.negotiated_h2() {
            endpoint.h2.learn(Alpn::H2);
            let opened = endpoint
                .h2
                .open(stream)
                .await
                .map_err(|e| ExchangeError::Read(std::io::Error::other(e)))?;
            drop(learning);
            return exchange_h2(upstream, endpoint, out, body, Some(opened)).await;
        }
        endpoint.h2.learn(Alpn::Http1);
    }
    drop(learning);
    let mut conn = Conn::new(stream);
    let head = round_trip(&mut conn, endpoint, out, body).await?;
    Ok(respond(conn, head, endpoint))
}

/// One request on a multiplexed HTTP/2 connection (a new one when none has room). A
/// request the endpoint never took (the connection closed or was refused before it was
/// sent, as after a GOAWAY) goes out again once on a new connection when its body is in
/// memory.
async fn exchange_h2(
    upstream: &Upstream,
    endpoint: &Endpoint,
    out: &Outgoing,
    body: Body,
    mut opened: Option<(SendRequest<Body>, crate::wire::h2::Stream)>,
) -> Result<Response<UpstreamBody>, ExchangeError> {
    let scheme = match upstream.config.protocol {
        UpstreamProtocol::H2c => http::uri::Scheme::HTTP,
        _ => http::uri::Scheme::HTTPS,
    };
    let authority = out
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .unwrap_or_else(|| endpoint.authority.clone());
    let mut body = body;
    for attempt in 0..2 {
        let (mut sender, stream) = match opened.take().or_else(|| endpoint.h2.take()) {
            Some(open) => open,
            None => open_h2(upstream, endpoint).await?,
        };
        let replay = replayable(&body);
        let mut headers = out.headers.clone();
        if let Some(value) = &out.traceparent {
            if let Ok(value) = http::HeaderValue::from_bytes(value) {
                headers.insert(crate::telemetry::context::TRACEPARENT.clone(), value);
            }
        }
        let request = crate::wire::h2::request(
            out.method.clone(),
            scheme.clone(),
            authority.clone(),
            out.path_and_query.clone(),
            headers,
            body,
        )
        .map_err(|_| ExchangeError::Invalid("request target"))?;
        match sender.send_request(request).await {
            Ok(mut response) => {
                *response.version_mut() = http::Version::HTTP_11;
                return Ok(crate::wire::h2::into_response(response, stream));
            }
            Err(e) if attempt == 0 && (e.is_canceled() || sender.is_closed()) => {
                let Some(again) = replay.filter(|_| e.is_canceled() || is_idempotent(&out.method))
                else {
                    return Err(ExchangeError::Read(std::io::Error::other(e)));
                };
                tracing::debug!(endpoint = %endpoint.address, error = %e, "HTTP/2 connection closed before the request was taken; sending on a new one");
                body = again;
            }
            Err(e) => return Err(ExchangeError::Read(std::io::Error::other(e))),
        }
    }
    Err(ExchangeError::Closed)
}

/// A new connection to `endpoint` (TCP, then TLS with the upstream's setup), counted.
/// The TLS setup is looked up only when a connection is opened, not per request.
async fn open_connection(
    upstream: &Upstream,
    endpoint: &Endpoint,
) -> Result<UpstreamStream, ExchangeError> {
    let tls = upstream.tls.load_full();
    let stream = connect::connect(
        &endpoint.authority,
        upstream.connect_timeout,
        tls.as_deref(),
    )
    .await
    .map_err(ExchangeError::Connect)?;
    upstream.opened(endpoint, &stream);
    Ok(stream)
}

/// A stream on a connection opened for it, unless another request opened one meanwhile
/// (only one request at a time opens a connection to an endpoint).
async fn open_h2(
    upstream: &Upstream,
    endpoint: &Endpoint,
) -> Result<(SendRequest<Body>, crate::wire::h2::Stream), ExchangeError> {
    let _opening = endpoint.h2.opening().await;
    if let Some(open) = endpoint.h2.take() {
        return Ok(open);
    }
    let conn = open_connection(upstream, endpoint).await?;
    if upstream.config.protocol == UpstreamProtocol::Auto && !conn.negotiated_h2() {
        // Nothing was sent: the next request goes over HTTP/1.1.
        endpoint.h2.learn(Alpn::Http1);
        return Err(ExchangeError::Connect(ConnectError::NoLongerH2));
    }
    endpoint
        .h2
        .open(conn)
        .await
        .map_err(|e| ExchangeError::Read(std::io::Error::other(e)))
}

async fn round_trip(
    conn: &mut Conn,
    endpoint: &Endpoint,
    out: &Outgoing,
    body: Body,
) -> Result<h1::ResponseHead, ExchangeError> {
    conn.write_request(
        &out.method,
        &out.path_and_query,
        &endpoint.authority,
        &out.headers,
        out.traceparent
            .as_ref()
            .map(|value| (&crate::telemetry::context::TRACEPARENT, &value[..])),
        body,
    )
    .await?;
    conn.read_head(&out.method).await
}

/// A copy of a body that is in memory (or empty), to send again.
fn replayable(body: &Body) -> Option<Body> {
    if http_body::Body::is_end_stream(body) {
        return Some(Body::empty());
    }
    match body {
        Body::Full { data: Some(data) } => Some(Body::full(data.clone())),
        _ => None,
    }
}

fn respond(conn: Box<Conn>, head: h1::ResponseHead, endpoint: &Endpoint) -> Response<UpstreamBody> {
    let body = h1::H1Body::new(conn, &head, endpoint.pool.clone());
    h1::into_response(head, body)
}
/// Forwards an HTTP/1.1 upgrade request on a fresh connection (upgraded connections are
/// never pooled) and, when the endpoint answers 101, splices the two byte streams.
/// What an upgraded tunnel keeps of its client connection: the idle cut-off, and the
/// connection's `max_connections` slot (held until the tunnel closes).
pub struct Tunnel {
    pub idle_timeout: Duration,
    pub slot: Option<Arc<OwnedSemaphorePermit>>,
}

pub async fn upgrade(
    upstream: &Upstream,
    endpoint: &Endpoint,
    client_upgrade: hyper::upgrade::OnUpgrade,
    request: Request<Body>,
    tunnel: Tunnel,
) -> Result<Response<Incoming>, UpstreamError> {
    let tls = upstream.tls.load();
    let stream: UpstreamStream = match connect::connect(
        &endpoint.authority,
        upstream.connect_timeout,
        tls.as_deref(),
    )
    .await
    {
        Ok(stream) => {
            upstream.opened(endpoint, &stream);
            stream
        }
        Err(e) => {
            endpoint.metrics.record(AttemptOutcome::ConnectFailure);
            if let ConnectError::Tls(e) = &e {
                return Err(upstream.tls_failed(endpoint, e));
            }
            return Err(UpstreamError::ConnectFailed);
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| UpstreamError::InvalidResponse)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let sent = tokio::time::timeout(upstream.request_timeout, sender.send_request(request)).await;
    let mut response = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => {
            endpoint.metrics.record(AttemptOutcome::InvalidResponse);
            return Err(UpstreamError::InvalidResponse);
        }
        Err(_) => {
            endpoint.metrics.record(AttemptOutcome::Timeout);
            return Err(UpstreamError::Timeout);
        }
    };
    endpoint
        .metrics
        .record(AttemptOutcome::from_status(response.status().as_u16()));
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(server)) = tokio::join!(client_upgrade, upstream_upgrade) else {
                return;
            };
            // Bytes either way are writes to the other side: both count as activity, and a
            // tunnel quiet for the idle timeout is closed like any idle connection.
            let activity = Arc::new(Activity::new());
            let mut client = IdleIo::new(TokioIo::new(client), activity.clone());
            let mut server = IdleIo::new(TokioIo::new(server), activity.clone());
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = idle::watchdog(activity, tunnel.idle_timeout) => {}
            }
            drop(tunnel.slot);
        });
    }
    Ok(response)
}
