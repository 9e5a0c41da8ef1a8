//! Observability: Prometheus metrics, the JSON access log, request ids.

pub mod access_log;
pub mod metrics;
mod resilience;
mod stages;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue};

pub use access_log::{AccessLog, AccessRecord};
pub use metrics::{AttemptOutcome, EndpointMetrics, Metrics, RouteMetrics};
pub use resilience::ResilienceMetrics;
pub use stages::{CacheMetrics, ClusterMetrics, EdgeMetrics, TransformMetrics};

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static ID_SEED: LazyLock<u64> = LazyLock::new(rand::random);
static ID_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The client's `X-Request-Id` when it is sane (1..=128 visible ASCII characters),
/// otherwise a new one: 32 hex digits from a per-process random seed and a counter.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    new_request_id()
}

pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = ID_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    for (i, word) in [*ID_SEED, n].iter().enumerate() {
        for j in 0..16 {
            buf[i * 16 + j] = HEX[((word >> (60 - 4 * j)) & 0xf) as usize];
        }
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_client_ids_kept_when_sane() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        let mut h = HeaderMap::new();
        h.insert(&REQUEST_ID, HeaderValue::from_static("client-1"));
        assert_eq!(request_id(&h), "client-1");
        h.insert(&REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
    }
}
