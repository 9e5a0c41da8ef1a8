//! The keyed GCRA state of one limiter, bounded: at most `max_keys` keys are held; past
//! that the least recently used ones are evicted (and counted), so a flood of distinct
//! keys costs memory set by configuration, not by the attacker. Each key holds one
//! theoretical arrival time in an atomic, updated with compare-and-swap exactly as
//! governor's own in-memory state does; the map is a moka cache (TinyLFU admission, LRU
//! eviction), which also lets a flood of one-off keys pass without pushing out the keys
//! that are used again and again.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use moka::notification::RemovalCause;
use prometheus::IntCounter;

use super::BucketKey;

pub struct BoundedStore {
    keys: moka::sync::Cache<BucketKey, Arc<AtomicU64>>,
    evicted: Arc<Evictions>,
}

/// Keys evicted because the limiter was full: counted always, and in the Prometheus
/// counter once the runtime has attached one.
#[derive(Default)]
pub struct Evictions {
    count: AtomicU64,
    counter: OnceLock<IntCounter>,
}

impl Evictions {
    fn record(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = self.counter.get() {
            counter.inc();
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Reports evictions (from now on) in `counter`; the first counter attached stays.
    pub fn report_to(&self, counter: IntCounter) {
        let _ = self.counter.set(counter);
    }
}

impl BoundedStore {
    pub fn new(max_keys: u64) -> BoundedStore {
        let evicted = Arc::new(Evictions::default());
        let listener = evicted.clone();
        let keys = moka::sync::Cache::builder()
            .max_capacity(max_keys)
            .support_invalidation_closures()
            .eviction_listener(move |_key, _state, cause| {
                if cause == RemovalCause::Size {
                    listener.record();
                }
            })
            .build();
        BoundedStore { keys, evicted }
    }

    pub fn evictions(&self) -> Arc<Evictions> {
        self.evicted.clone()
    }
}

impl StateStore for BoundedStore {
    type Key = BucketKey;

    fn measure_and_replace<T, F, E>(&self, key: &BucketKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let cell = self
            .keys
            .get_with_by_ref(key, || Arc::new(AtomicU64::new(0)));
        let seen = |v: u64| NonZeroU64::new(v).map(|n| Nanos::from(n.get()));
        let mut prev = cell.load(Ordering::Acquire);
        let mut decision = f(seen(prev));
        while let Ok((result, next)) = decision {
            match cell.compare_exchange_weak(
                prev,
                u64::from(next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(result),
                Err(actual) => prev = actual,
            }
            decision = f(seen(prev));
        }
        decision.map(|(result, _)| result)
    }
}

impl ShrinkableKeyedStateStore<BucketKey> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let below = u64::from(drop_below);
        // A key whose arrival time is in the past is a full bucket: the same as no key.
        let _ = self
            .keys
            .invalidate_entries_if(move |_, cell| cell.load(Ordering::Acquire) <= below);
        self.keys.run_pending_tasks();
    }

    fn len(&self) -> usize {
        self.keys.run_pending_tasks();
        usize::try_from(self.keys.entry_count()).unwrap_or(usize::MAX)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
