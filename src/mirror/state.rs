//! The live figures of one route's mirror: copies in flight, counts by result and the
//! ring of recent mismatches. Keyed by route name and carried from one Runtime to the
//! next, so a reload neither resets the counts nor lets a second set of copies in
//! flight beside the first. The request path touches atomics only; the ring's lock is
//! taken by the copies' tasks and the admin API.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::IntCounter;
use serde_json::{json, Value};

use super::compare::{Difference, Kind};
use crate::observe::access_log::rfc3339_now;
use crate::observe::Metrics;

/// The `result` label values of `portico_mirror_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Compared = 0,
    Matched = 1,
    Mismatched = 2,
    Dropped = 3,
    Failed = 4,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Compared,
        Outcome::Matched,
        Outcome::Mismatched,
        Outcome::Dropped,
        Outcome::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Compared => "compared",
            Outcome::Matched => "matched",
            Outcome::Mismatched => "mismatched",
            Outcome::Dropped => "dropped",
            Outcome::Failed => "failed",
        }
    }
}

/// Why a copy was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// `max_in_flight` copies were already out.
    InFlight = 0,
    /// The request body was above `max_body`, of unknown length, or never read to its
    /// end by the primary's upstream.
    Body = 1,
}

/// One mismatch as `GET /mirrors/{route}` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub at: String,
    pub method: String,
    /// The request's normalised path, without its query (which may carry secrets).
    pub path: String,
    pub primary_status: u16,
    pub mirror_status: u16,
    pub kind: Kind,
    /// The first differing JSON path (`items[1].price`, `` for the root) or header name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    pub primary: Option<String>,
    pub mirror: Option<String>,
}

pub struct MirrorState {
    pub route: String,
    in_flight: AtomicUsize,
    mirrored: AtomicU64,
    dropped: [AtomicU64; 2],
    failed: AtomicU64,
    matched: AtomicU64,
    mismatched: [AtomicU64; 3],
    samples: Mutex<VecDeque<Sample>>,
    metrics: [IntCounter; 5],
}

impl std::fmt::Debug for MirrorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MirrorState({})", self.route)
    }
}

/// A copy's place among those in flight; given back when dropped.
pub struct Slot(Arc<MirrorState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl MirrorState {
    /// Every result series exists from the start (at 0), so rate() works at once.
    pub fn new(route: &str, metrics: &Metrics) -> Arc<MirrorState> {
        Arc::new(MirrorState {
            route: route.to_string(),
            in_flight: AtomicUsize::new(0),
            mirrored: AtomicU64::new(0),
            dropped: Default::default(),
            failed: AtomicU64::new(0),
            matched: AtomicU64::new(0),
            mismatched: Default::default(),
            samples: Mutex::new(VecDeque::new()),
            metrics: Outcome::ALL.map(|o| {
                metrics
                    .mirror_requests
                    .with_label_values(&[route, o.label()])
            }),
        })
    }

    fn count(&self, outcome: Outcome) {
        self.metrics[outcome as usize].inc();
    }

    /// A slot for one more copy, unless `max` are out already (never waits).
    pub fn try_slot(self: &Arc<Self>, max: usize) -> Option<Slot> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.dropped(Dropped::InFlight);
            return None;
        }
        Some(Slot(self.clone()))
    }

    /// A copy went out.
    pub fn sent(&self) {
        self.mirrored.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, why: Dropped) {
        self.dropped[why as usize].fetch_add(1, Ordering::Relaxed);
        self.count(Outcome::Dropped);
    }

    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.count(Outcome::Failed);
    }

    pub fn matched(&self) {
        self.matched.fetch_add(1, Ordering::Relaxed);
        self.count(Outcome::Compared);
        self.count(Outcome::Matched);
    }

    /// Counts a mismatch and keeps it among the last `keep`.
    pub fn mismatched(&self, sample: Sample, keep: usize) {
        self.mismatched[sample.kind as usize].fetch_add(1, Ordering::Relaxed);
        self.count(Outcome::Compared);
        self.count(Outcome::Mismatched);
        let mut ring = self.ring();
        while ring.len() >= keep.max(1) {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    fn ring(&self) -> MutexGuard<'_, VecDeque<Sample>> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts and the recent mismatches, newest last.
    pub fn view(&self) -> Value {
        let dropped = self.dropped.each_ref().map(load);
        let mismatched = self.mismatched.each_ref().map(load);
        let matched = load(&self.matched);
        let mismatches: u64 = mismatched.iter().sum();
        json!({
            "in_flight": self.in_flight(),
            "counts": {
                "mirrored": load(&self.mirrored),
                "dropped": dropped.iter().sum::<u64>(),
                "dropped_by_reason": {
                    "in_flight": dropped[Dropped::InFlight as usize],
                    "body": dropped[Dropped::Body as usize],
                },
                "failed": load(&self.failed),
                "compared": matched + mismatches,
                "matched": matched,
                "mismatched": mismatches,
                "mismatched_by_kind": {
                    "status": mismatched[Kind::Status as usize],
                    "header": mismatched[Kind::Header as usize],
                    "body": mismatched[Kind::Body as usize],
                },
            },
            "mismatches": self.ring().iter().cloned().collect::<Vec<_>>(),
        })
    }
}

impl Sample {
    pub fn new(method: &str, path: &str, statuses: (u16, u16), difference: Difference) -> Sample {
        let (json_path, header) = match difference.kind {
            Kind::Header => (None, difference.at),
            _ => (difference.at, None),
        };
        Sample {
            at: rfc3339_now(),
            method: method.to_string(),
            path: path.to_string(),
            primary_status: statuses.0,
            mirror_status: statuses.1,
            kind: difference.kind,
            json_path,
            header,
            primary: difference.primary,
            mirror: difference.mirror,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let metrics = Metrics::new();
        let state = MirrorState::new("r", &metrics);
        let a = state.try_slot(2);
        let b = state.try_slot(2);
        assert!(a.is_some() && b.is_some());
        assert!(state.try_slot(2).is_none());
        drop(a);
        assert!(state.try_slot(2).is_some());
        assert_eq!(state.in_flight(), 1);
        state.sent();
        let view = state.view();
        assert_eq!(view["counts"]["mirrored"], 1);
        assert_eq!(view["counts"]["dropped_by_reason"]["in_flight"], 1);
        let rendered = metrics.render();
        for result in ["compared", "matched", "mismatched", "failed"] {
            let series =
                format!("portico_mirror_requests_total{{result=\"{result}\",route=\"r\"}} 0");
            assert!(rendered.contains(&series), "{series}\n{rendered}");
        }
    }

    #[test]
    fn the_ring_keeps_the_last_mismatches() {
        let state = MirrorState::new("r", &Metrics::new());
        for i in 0..5 {
            let d = Difference {
                kind: Kind::Status,
                at: None,
                primary: Some("200".into()),
                mirror: Some(format!("50{i}")),
            };
            state.mismatched(Sample::new("GET", "/x", (200, 500 + i), d), 3);
        }
        let view = state.view();
        let kept = view["mismatches"].as_array().unwrap();
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[2]["mirror_status"], 504);
        assert_eq!(view["counts"]["mismatched_by_kind"]["status"], 5);
        assert_eq!(view["counts"]["compared"], 5);
    }
}
