//! `UpstreamCall`: the one way to reach an upstream. The gateway sends proxied requests
//! through it, and the cache its revalidations and refreshes, so every one of them gets
//! the upstream's retries, breaker and connection limits.

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Response, StatusCode};

use super::{retry, Endpoint, Upstream, UpstreamError};
use crate::telemetry::TraceScope;
use crate::wire::body::Body;
use crate::wire::forward;

/// One request to an upstream: everything but the body and the headers, which each
/// attempt brings (the cache revalidates and refreshes with its own validators).
#[derive(Clone, Debug)]
pub struct UpstreamCall {
    pub upstream: Arc<Upstream>,
    pub method: Method,
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
    /// The caller's own deadline, when it has one before `timeouts.request` (a gRPC
    /// call's `grpc-timeout`).
    pub deadline: Option<tokio::time::Instant>,
    /// The request's trace, when tracing is on: each try gets a client span.
    pub trace: Option<TraceScope>,
}

impl UpstreamCall {
    /// Sends with the upstream's retries, breaker and connection limits; returns the
    /// endpoint that answered (none when the breaker's fallback did) with the response.
    pub async fn send(
        &self,
        headers: HeaderMap,
        body: Body,
    ) -> Result<(Option<Arc<Endpoint>>, Response<Body>), UpstreamError> {
        let mut endpoint = None;
        let out = retry::Outgoing {
            traceparent: None,
            method: self.method.clone(),
            path_and_query: self.path_and_query.clone(),
            headers,
        };
        let response = retry::send(
            &self.upstream,
            &mut endpoint,
            out,
            body,
            retry::Bounds {
                deadline: self.deadline,
                trace: self.trace.as_ref(),
            },
        )
        .await?;
        Ok((endpoint, response))
    }
}

/// An upstream response on its way to the client: hop-by-hop headers removed.
pub fn upstream_response(response: Response<Body>) -> Response<Body> {
    let (mut head, body) = response.into_parts();
    if head.status != StatusCode::SWITCHING_PROTOCOLS {
        forward::strip_hop_by_hop(&mut head.headers);
    }
    Response::from_parts(head, body)
}
