//! A sliding window of outcomes (total, errors) in time buckets, as linkerd's breaker
//! counts: the window is cut into `N` slots of `span / N` each; a slot is reused when
//! its tick is older than the window. Recording is a few atomic operations, no lock. The
//! circuit breaker (`upstream::breaker`, 10 buckets) and the split's rollback rule
//! (`split::state`, 20 buckets) both count with it.
//!
//! The count is approximate at the edges: the oldest bucket drops out whole, and a
//! request recorded in the instant a slot is recycled may be lost; a late write from a
//! thread still on an older tick is dropped rather than counted into a newer slot.
//! Neither matters for an error-rate threshold.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    /// The tick this bucket counts for (`u64::MAX` when never used).
    tick: AtomicU64,
    total: AtomicU64,
    errors: AtomicU64,
}

#[derive(Debug)]
pub struct Window<const N: usize> {
    pub span: Duration,
    width_nanos: u64,
    start: Instant,
    buckets: [Bucket; N],
}

/// What the window holds right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub total: u64,
    pub errors: u64,
}

impl Tally {
    pub fn error_rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.errors as f64 / self.total as f64
        }
    }
}

impl<const N: usize> Window<N> {
    pub fn new(span: Duration) -> Window<N> {
        let width_nanos = (span.as_nanos() / N as u128).clamp(1, u64::MAX as u128) as u64;
        Window {
            span,
            width_nanos,
            start: Instant::now(),
            buckets: std::array::from_fn(|_| Bucket {
                tick: AtomicU64::new(u64::MAX),
                total: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
        }
    }

    fn tick_at(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.start).as_nanos();
        (nanos / self.width_nanos as u128).min(u64::MAX as u128 - 1) as u64
    }

    pub fn record(&self, error: bool) {
        self.record_at(Instant::now(), error);
    }

    fn record_at(&self, now: Instant, error: bool) {
        let tick = self.tick_at(now);
        let bucket = &self.buckets[(tick % N as u64) as usize];
        loop {
            let seen = bucket.tick.load(Ordering::Acquire);
            if seen == tick {
                break;
            }
            if seen != u64::MAX && seen > tick {
                // A slower thread from an older tick: its slot is gone, drop the sample.
                return;
            }
            if bucket
                .tick
                .compare_exchange(seen, tick, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                bucket.total.store(0, Ordering::Release);
                bucket.errors.store(0, Ordering::Release);
                break;
            }
        }
        bucket.total.fetch_add(1, Ordering::AcqRel);
        if error {
            bucket.errors.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Forgets everything recorded so far.
    pub fn clear(&self) {
        for bucket in &self.buckets {
            bucket.tick.store(u64::MAX, Ordering::Release);
        }
    }

    pub fn tally(&self) -> Tally {
        self.tally_at(Instant::now())
    }

    fn tally_at(&self, now: Instant) -> Tally {
        let tick = self.tick_at(now);
        let oldest = tick.saturating_sub(N as u64 - 1);
        let mut tally = Tally::default();
        for bucket in &self.buckets {
            let t = bucket.tick.load(Ordering::Acquire);
            if t != u64::MAX && t >= oldest && t <= tick {
                tally.total += bucket.total.load(Ordering::Acquire);
                tally.errors += bucket.errors.load(Ordering::Acquire);
            }
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_the_window_and_forgets_after_it() {
        let w = Window::<20>::new(Duration::from_secs(10));
        let t0 = w.start;
        for i in 0..100 {
            w.record_at(t0 + Duration::from_millis(i * 50), i % 10 == 0);
        }
        let tally = w.tally_at(t0 + Duration::from_secs(5));
        assert_eq!(
            tally,
            Tally {
                total: 100,
                errors: 10
            }
        );
        assert!((tally.error_rate() - 0.1).abs() < 1e-9);
        // 9.5 s later the first half second's bucket has gone out of the window.
        let later = w.tally_at(t0 + Duration::from_millis(10_400));
        assert!(later.total < 100 && later.total >= 80, "{later:?}");
        // Long after, nothing is left.
        assert_eq!(w.tally_at(t0 + Duration::from_secs(60)), Tally::default());
    }

    #[test]
    fn a_recycled_slot_starts_from_zero() {
        let w = Window::<20>::new(Duration::from_secs(2));
        let t0 = w.start;
        w.record_at(t0, true);
        w.record_at(t0 + Duration::from_secs(2), false);
        let tally = w.tally_at(t0 + Duration::from_secs(2));
        assert_eq!(
            tally,
            Tally {
                total: 1,
                errors: 0
            }
        );
    }

    #[test]
    fn a_late_write_from_an_older_tick_is_dropped() {
        let w = Window::<4>::new(Duration::from_secs(4));
        let t0 = w.start;
        w.record_at(t0 + Duration::from_secs(4), false);
        // The slot of tick 0 now counts tick 4: a write still on tick 0 must not land there.
        w.record_at(t0, true);
        let tally = w.tally_at(t0 + Duration::from_secs(4));
        assert_eq!(
            tally,
            Tally {
                total: 1,
                errors: 0
            }
        );
        w.clear();
        assert_eq!(w.tally_at(t0 + Duration::from_secs(4)), Tally::default());
    }

    #[test]
    fn empty_window_has_no_error_rate() {
        assert_eq!(Tally::default().error_rate(), 0.0);
    }
}
