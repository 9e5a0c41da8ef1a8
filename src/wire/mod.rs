//! The bottom layer: HTTP messages as the gateway handles them, shared by every layer
//! above. Bodies (`body`, `buffer`), request-target paths (`path`), header hygiene and
//! client addresses (`headers`, `forward`), and the clients the gateway talks through:
//! its own HTTP/1.1 client with per-endpoint connection pools (`h1`, `h1::pool`) for proxied
//! requests, and a pooled hyper client (`client`) for its own calls (JWKS, Consul,
//! health checks).
//!
//! Nothing here imports the rest of Portico: no config types, no metrics, no upstreams.
//! Callers pass plain values (durations, sizes, lists of networks).

pub mod body;
pub mod buffer;
pub mod client;
pub mod connect;
pub mod forward;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod host;
pub mod idle;
pub mod path;
pub mod tls;
pub mod worker;

/// The error type of every body the gateway passes along.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Methods whose repetition has no further effect (RFC 9110 §9.2.2): a request with one
/// may go out again when its connection failed before an answer, or to retry.
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}
