//! Per-request context: what the stages learn about a request as it moves along, and what
//! the access log and metrics report at the end.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use tokio::sync::OwnedSemaphorePermit;

use crate::runtime::Route;
use crate::upstream::Endpoint;

/// Marks a request whose HTTP/1 request line was over `server.limits.max_request_line`
/// (a request extension the server sets, which no client can send); the gateway answers
/// it 414.
#[derive(Clone, Copy, Debug)]
pub struct RequestLineTooLong;

/// Facts about the client connection, fixed for its lifetime.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer address as an `X-Forwarded-For` entry, formatted once per connection.
    pub peer_header: HeaderValue,
    /// The connection's `max_connections` slot; an upgraded tunnel keeps it.
    pub slot: Option<Arc<OwnedSemaphorePermit>>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool, slot: Option<Arc<OwnedSemaphorePermit>>) -> ConnInfo {
        ConnInfo {
            peer,
            tls,
            peer_header: crate::wire::forward::peer_header(peer.ip()),
            slot,
        }
    }

    pub fn proto(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

pub struct Context {
    pub started: Instant,
    pub request_id: HeaderValue,
    pub conn: ConnInfo,
    pub client_ip: IpAddr,
    pub peer_trusted: bool,
    pub route: Option<Arc<Route>>,
    pub endpoint: Option<Arc<Endpoint>>,
    /// Who the request is, once a method of the route's auth accepted it.
    pub identity: Option<crate::auth::route::Identity>,
    /// The client's `Origin` on a CORS route (not a preflight): the response's CORS
    /// headers are decided from it at the end.
    pub cors_origin: Option<HeaderValue>,
    /// The verified JWT claims, for later stages (`${claim.X}`, `claim:X` keys).
    pub claims: Option<Arc<crate::auth::Claims>>,
    /// The side a migration split chose for this request.
    pub split_side: Option<crate::split::Side>,
    /// The rate limit decision, reported in `RateLimit-*` headers on the response.
    pub rate_limit: Option<crate::ratelimit::Decision>,
    /// The request's trace, when `telemetry.tracing` is on.
    pub trace: Option<crate::telemetry::TraceScope>,
}

impl Context {
    /// The consumer's name, for logs, spans, rate-limit keys and templates.
    pub fn consumer(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| &*i.consumer.name)
    }
}
