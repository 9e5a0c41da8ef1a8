//! Connection limits: `max_connections` requests in flight per endpoint (a semaphore on
//! the endpoint), and up to `max_pending` requests of the whole upstream waiting for a
//! permit. Past both, 503 at once: queues stay bounded and an overloaded upstream is not
//! made slower by the gateway piling work onto it. The permit lives as long as the
//! response body streams.

use std::sync::atomic::{AtomicUsize, Ordering};

use prometheus::IntCounter;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::{Endpoint, UpstreamError};
use crate::observe::ResilienceMetrics;

pub struct Limits {
    upstream: String,
    max_pending: usize,
    pending: AtomicUsize,
    overflow: IntCounter,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Limits(max_pending {})", self.max_pending)
    }
}

struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limits {
    pub fn new(upstream: &str, max_pending: Option<usize>, metrics: &ResilienceMetrics) -> Limits {
        Limits {
            upstream: upstream.to_string(),
            max_pending: max_pending.unwrap_or(0),
            pending: AtomicUsize::new(0),
            overflow: metrics.overflow.with_label_values(&[upstream]),
        }
    }

    /// A permit for one request to `endpoint` (None when it has no limit); waits in the
    /// bounded queue until `deadline` when the endpoint is busy.
    pub async fn acquire(
        &self,
        endpoint: &Endpoint,
        deadline: Instant,
    ) -> Result<Option<OwnedSemaphorePermit>, UpstreamError> {
        let Some(permits) = &endpoint.permits else {
            return Ok(None);
        };
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            return Ok(Some(permit));
        }
        let max = self.max_pending;
        if self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                (p < max).then_some(p + 1)
            })
            .is_err()
        {
            self.overflow.inc();
            return Err(UpstreamError::Overloaded(self.upstream.clone()));
        }
        let _pending = Pending(&self.pending);
        match tokio::time::timeout_at(deadline, permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            Ok(Err(_)) => Err(UpstreamError::Overloaded(self.upstream.clone())),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }
}
