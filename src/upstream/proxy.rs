//! Sending one request to one endpoint: the pooled client with a deadline, errors sorted
//! into the gateway's status table, and HTTP/1.1 upgrades (WebSocket) spliced through.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Endpoint, Upstream};
use crate::body::{is_body_too_large, Body};
use crate::error::GatewayError;
use crate::observe::Outcome;

/// Sends `request` to `endpoint` and waits at most `timeout` for the response head.
pub async fn send(
    upstream: &Upstream,
    endpoint: &Endpoint,
    request: Request<Body>,
    timeout: Duration,
) -> Result<Response<Incoming>, GatewayError> {
    let result = tokio::time::timeout(timeout, upstream.client.request(request)).await;
    let outcome = match &result {
        Ok(Ok(response)) => Outcome::from_status(response.status().as_u16()),
        Ok(Err(e)) if e.is_connect() => Outcome::ConnectFailure,
        Ok(Err(_)) => Outcome::InvalidResponse,
        Err(_) => Outcome::Timeout,
    };
    endpoint.metrics.record(outcome);
    match result {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) if is_body_too_large(&e) => Err(GatewayError::BodyTooLarge),
        Ok(Err(e)) if e.is_connect() => {
            tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.address, error = %e, "connect failed");
            Err(GatewayError::ConnectFailed)
        }
        Ok(Err(e)) => {
            tracing::debug!(upstream = %upstream.name, endpoint = %endpoint.address, error = %e, "upstream error");
            Err(GatewayError::BadGateway)
        }
        Err(_) => Err(GatewayError::UpstreamTimeout),
    }
}

/// Forwards an HTTP/1.1 upgrade request on a fresh connection (upgraded connections are
/// never pooled) and, when the endpoint answers 101, splices the two byte streams.
pub async fn upgrade(
    upstream: &Upstream,
    endpoint: &Endpoint,
    client_upgrade: hyper::upgrade::OnUpgrade,
    request: Request<Body>,
) -> Result<Response<Incoming>, GatewayError> {
    let address = endpoint.authority.as_str();
    let stream = match tokio::time::timeout(upstream.connect_timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) => {
            endpoint.metrics.record(Outcome::ConnectFailure);
            return Err(GatewayError::ConnectFailed);
        }
        Err(_) => {
            endpoint.metrics.record(Outcome::ConnectFailure);
            return Err(GatewayError::ConnectFailed);
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| GatewayError::BadGateway)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let sent = tokio::time::timeout(upstream.request_timeout, sender.send_request(request)).await;
    let mut response = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => {
            endpoint.metrics.record(Outcome::InvalidResponse);
            return Err(GatewayError::BadGateway);
        }
        Err(_) => {
            endpoint.metrics.record(Outcome::Timeout);
            return Err(GatewayError::UpstreamTimeout);
        }
    };
    endpoint
        .metrics
        .record(Outcome::from_status(response.status().as_u16()));
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(server)) = tokio::join!(client_upgrade, upstream_upgrade) else {
                return;
            };
            let mut client = TokioIo::new(client);
            let mut server = TokioIo::new(server);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
    Ok(response)
}
