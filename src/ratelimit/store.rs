//! The keyed GCRA state of one limiter, bounded: at most `max_keys` keys are held, so a
//! flood of distinct keys costs memory set by configuration, not by the attacker.
//!
//! Each key holds its theoretical arrival time (TAT) in an atomic, updated with
//! compare-and-swap exactly as governor's own in-memory state does, in a DashMap as
//! governor's default store is: a known key costs one shard read lock. A new key that
//! finds the map full first makes room: it samples the TATs, and drops every key whose
//! TAT is among the oldest quarter. A key's TAT moves forward each time it is used, so
//! the oldest TATs are the least recently used keys (an approximate LRU); keys whose TAT
//! is already past are full buckets and lose nothing. The work is proportional to the
//! map, and done once per `max_keys / 4` new keys.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::StateStore;
use prometheus::IntCounter;

use super::BucketKey;

/// Keys sampled to find the TAT below which a quarter of the keys lie.
const SAMPLE: usize = 256;

pub struct BoundedStore {
    keys: DashMap<BucketKey, AtomicU64>,
    max_keys: usize,
    making_room: AtomicBool,
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
    fn record(&self, n: u64) {
        self.count.fetch_add(n, Ordering::Relaxed);
        if let Some(counter) = self.counter.get() {
            counter.inc_by(n);
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
        BoundedStore {
            keys: DashMap::new(),
            max_keys: usize::try_from(max_keys).unwrap_or(usize::MAX).max(1),
            making_room: AtomicBool::new(false),
            evicted: Arc::new(Evictions::default()),
        }
    }

    pub fn evictions(&self) -> Arc<Evictions> {
        self.evicted.clone()
    }

    /// Drops the least recently used quarter of the keys (by TAT). One thread at a time;
    /// the others go on and may overshoot the cap by what they insert meanwhile.
    fn make_room(&self) {
        if self.making_room.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut sample: Vec<u64> = self
            .keys
            .iter()
            .take(SAMPLE)
            .map(|e| e.value().load(Ordering::Relaxed))
            .collect();
        sample.sort_unstable();
        if let Some(&threshold) = sample.get(sample.len() / 4) {
            let before = self.keys.len();
            self.keys
                .retain(|_, tat| tat.load(Ordering::Relaxed) > threshold);
            let removed = before.saturating_sub(self.keys.len());
            self.evicted.record(removed as u64);
        }
        self.making_room.store(false, Ordering::Release);
    }
}

/// governor's compare-and-swap on one key's TAT (0 stands for "never seen").
fn measure<T, F, E>(cell: &AtomicU64, f: F) -> Result<T, E>
where
    F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
{
    let seen = |v: u64| NonZeroU64::new(v).map(|n| Nanos::from(n.get()));
    let mut prev = cell.load(Ordering::Acquire);
    let mut decision = f(seen(prev));
    while let Ok((result, next)) = decision {
        match cell.compare_exchange_weak(prev, u64::from(next), Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Ok(result),
            Err(actual) => prev = actual,
        }
        decision = f(seen(prev));
    }
    decision.map(|(result, _)| result)
}

impl StateStore for BoundedStore {
    type Key = BucketKey;

    fn measure_and_replace<T, F, E>(&self, key: &BucketKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(cell) = self.keys.get(key) {
            return measure(cell.value(), f);
        }
        if self.keys.len() >= self.max_keys {
            self.make_room();
        }
        let cell = self.keys.entry(key.clone()).or_default();
        measure(cell.value(), f)
    }
}

impl ShrinkableKeyedStateStore<BucketKey> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        let below = u64::from(drop_below);
        // A key whose TAT is in the past is a full bucket: the same as no key.
        self.keys
            .retain(|_, tat| tat.load(Ordering::Relaxed) > below);
    }

    fn shrink_to_fit(&self) {
        self.keys.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}
