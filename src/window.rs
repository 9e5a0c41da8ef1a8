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
//!
//! A window may also count latencies (`L` classes, the split's rollback uses
//! `LATENCY_CLASSES`): each slot holds a small fixed-bound histogram, so a quantile over
//! the window is a sum of counters, never a sort of samples. The breaker's windows have
//! `L = 0` and pay nothing for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds, in seconds, of the latency classes; the last class holds everything
/// slower. Dense where rollback thresholds usually sit (50 ms to 1 s).
pub const LATENCY_BOUNDS: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
    5.0,
];
pub const LATENCY_CLASSES: usize = LATENCY_BOUNDS.len() + 1;

#[derive(Debug)]
struct Bucket<const L: usize> {
    /// The tick this bucket counts for (`u64::MAX` when never used).
    tick: AtomicU64,
    total: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; L],
}

#[derive(Debug)]
pub struct Window<const N: usize, const L: usize = 0> {
    pub span: Duration,
    width_nanos: u64,
    start: Instant,
    buckets: [Bucket<L>; N],
}

/// The latencies the window holds: how many, and the estimated 99th percentile.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyTally {
    pub samples: u64,
    pub p99: Option<Duration>,
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

impl<const N: usize, const L: usize> Window<N, L> {
    pub fn new(span: Duration) -> Window<N, L> {
        let width_nanos = (span.as_nanos() / N as u128).clamp(1, u64::MAX as u128) as u64;
        Window {
            span,
            width_nanos,
            start: Instant::now(),
            buckets: std::array::from_fn(|_| Bucket {
                tick: AtomicU64::new(u64::MAX),
                total: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                latency: std::array::from_fn(|_| AtomicU64::new(0)),
            }),
        }
    }

    fn tick_at(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.start).as_nanos();
        (nanos / self.width_nanos as u128).min(u64::MAX as u128 - 1) as u64
    }

    pub fn record(&self, error: bool) {
        self.record_at(Instant::now(), error, None);
    }

    /// Records an outcome with its latency (counted only when the window has classes).
    pub fn record_with_latency(&self, error: bool, latency: Duration) {
        self.record_at(Instant::now(), error, Some(latency));
    }

    fn record_at(&self, now: Instant, error: bool, latency: Option<Duration>) {
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
                for class in &bucket.latency {
                    class.store(0, Ordering::Release);
                }
                break;
            }
        }
        bucket.total.fetch_add(1, Ordering::AcqRel);
        if error {
            bucket.errors.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(latency) = latency.filter(|_| L > 0) {
            let secs = latency.as_secs_f64();
            let class = LATENCY_BOUNDS
                .iter()
                .position(|bound| secs <= *bound)
                .unwrap_or(LATENCY_BOUNDS.len())
                .min(L - 1);
            bucket.latency[class].fetch_add(1, Ordering::AcqRel);
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
        let mut tally = Tally::default();
        for bucket in self.live_buckets(now) {
            tally.total += bucket.total.load(Ordering::Acquire);
            tally.errors += bucket.errors.load(Ordering::Acquire);
        }
        tally
    }

    fn live_buckets(&self, now: Instant) -> impl Iterator<Item = &Bucket<L>> {
        let tick = self.tick_at(now);
        let oldest = tick.saturating_sub(N as u64 - 1);
        self.buckets.iter().filter(move |bucket| {
            let t = bucket.tick.load(Ordering::Acquire);
            t != u64::MAX && t >= oldest && t <= tick
        })
    }

    pub fn latency(&self) -> LatencyTally {
        self.latency_at(Instant::now())
    }

    /// The p99 is interpolated inside its class, as Prometheus' `histogram_quantile`
    /// does; in the open last class it is that class's lower bound.
    fn latency_at(&self, now: Instant) -> LatencyTally {
        let mut classes = [0u64; L];
        for bucket in self.live_buckets(now) {
            for (sum, class) in classes.iter_mut().zip(&bucket.latency) {
                *sum += class.load(Ordering::Acquire);
            }
        }
        let samples: u64 = classes.iter().sum();
        if samples == 0 {
            return LatencyTally::default();
        }
        let rank = 0.99 * samples as f64;
        let mut below = 0u64;
        let mut p99 = None;
        for (i, count) in classes.iter().enumerate() {
            if *count > 0 && (below + count) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
                let secs = match LATENCY_BOUNDS.get(i) {
                    Some(upper) => lower + (upper - lower) * (rank - below as f64) / *count as f64,
                    None => lower,
                };
                p99 = Some(Duration::from_secs_f64(secs.max(0.0)));
                break;
            }
            below += count;
        }
        LatencyTally { samples, p99 }
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
            w.record_at(t0 + Duration::from_millis(i * 50), i % 10 == 0, None);
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
        w.record_at(t0, true, None);
        w.record_at(t0 + Duration::from_secs(2), false, None);
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
        w.record_at(t0 + Duration::from_secs(4), false, None);
        // The slot of tick 0 now counts tick 4: a write still on tick 0 must not land there.
        w.record_at(t0, true, None);
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
    fn the_p99_comes_from_the_classes_of_the_live_slots() {
        let w = Window::<10, LATENCY_CLASSES>::new(Duration::from_secs(10));
        let t0 = w.start;
        assert_eq!(w.latency_at(t0), LatencyTally::default());
        for i in 0..1000u64 {
            // 98% fast (3 ms), 2% at 1.2 s.
            let latency = if i % 50 < 49 { 3 } else { 1200 };
            w.record_at(t0, false, Some(Duration::from_millis(latency)));
        }
        let tally = w.latency_at(t0 + Duration::from_secs(1));
        assert_eq!(tally.samples, 1000);
        let p99 = tally.p99.unwrap();
        assert!(
            p99 > Duration::from_secs(1) && p99 <= Duration::from_millis(1500),
            "{p99:?}"
        );
        // All fast: the p99 stays in the first class.
        let fast = Window::<10, LATENCY_CLASSES>::new(Duration::from_secs(10));
        for _ in 0..100 {
            fast.record_at(fast.start, false, Some(Duration::from_millis(1)));
        }
        assert!(fast.latency_at(fast.start).p99.unwrap() <= Duration::from_millis(5));
        // Slower than the last bound: the last bound.
        let slow = Window::<10, LATENCY_CLASSES>::new(Duration::from_secs(10));
        slow.record_at(slow.start, false, Some(Duration::from_secs(30)));
        assert_eq!(
            slow.latency_at(slow.start).p99,
            Some(Duration::from_secs(5))
        );
        // Out of the window: forgotten with the slot.
        assert_eq!(
            w.latency_at(t0 + Duration::from_secs(60)),
            LatencyTally::default()
        );
    }

    #[test]
    fn a_window_without_classes_ignores_latencies() {
        let w = Window::<4>::new(Duration::from_secs(4));
        w.record_at(w.start, false, Some(Duration::from_secs(1)));
        assert_eq!(w.latency_at(w.start), LatencyTally::default());
        assert_eq!(w.tally_at(w.start).total, 1);
    }

    #[test]
    fn empty_window_has_no_error_rate() {
        assert_eq!(Tally::default().error_rate(), 0.0);
    }
}
