//! The live state of one split: percentage, pause, rollback, per-side counts and the
//! window of canary outcomes. It is keyed by route name and carried from one Runtime to
//! the next, so a reload never undoes a rollback or an operator's change: the file's
//! percentage is only the starting point when the split first appears (and what
//! `{"reset": true}` returns to).
//!
//! The request path reads atomics only. Changes (admin, ramp, rollback) take one small
//! mutex, which also keeps the history consistent. The ramp task is owned here and
//! aborted when the state is dropped; it holds only a `Weak` so it never keeps the state
//! alive.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use prometheus::{Gauge, Histogram, IntCounter};
use tokio::sync::Notify;

use super::ramp::{self, RampPlan};
use crate::window::{Window, LATENCY_CLASSES};

/// Buckets of the canary's outcome window.
const BUCKETS: usize = 20;
pub type CanaryWindow = Window<BUCKETS, LATENCY_CLASSES>;
use super::Side;
use crate::observe::access_log::rfc3339_now;
use crate::observe::Metrics;

/// How many changes `GET /splits` shows per split.
const HISTORY: usize = 32;

/// Metric handles of one split, resolved once.
#[derive(Clone)]
struct SplitMetrics {
    requests: [IntCounter; 2],
    percent: Gauge,
    rollbacks: IntCounter,
    /// By `RollbackReason as usize`.
    rollbacks_by_rule: [IntCounter; 2],
    /// Time to the response head, by side.
    duration: [Histogram; 2],
}

/// Which rule took the canary out of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackReason {
    ErrorRate,
    Latency,
}

impl RollbackReason {
    pub const ALL: [RollbackReason; 2] = [RollbackReason::ErrorRate, RollbackReason::Latency];

    pub fn label(self) -> &'static str {
        match self {
            RollbackReason::ErrorRate => "error_rate",
            RollbackReason::Latency => "latency",
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RollbackInfo {
    /// What was measured against which limit, in words.
    pub reason: String,
    pub rule: RollbackReason,
    pub at: String,
    /// The replica that rolled back, when the state is shared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Change {
    pub at: String,
    pub percent: f64,
    pub cause: String,
}

/// Values set from the config on every build (the plan), and the record of changes.
pub(super) struct Book {
    start: u32,
    ramp: Option<RampPlan>,
    last_change: Instant,
    pub(super) rollback: Option<RollbackInfo>,
    history: VecDeque<Change>,
}

pub struct SplitState {
    pub route: String,
    /// Canary share in basis points (0..=10000).
    pub(super) percent: AtomicU32,
    pub(super) paused: AtomicBool,
    pub(super) rolled_back: AtomicBool,
    requests: [AtomicU64; 2],
    window: ArcSwap<CanaryWindow>,
    book: Mutex<Book>,
    pub(super) wake: Arc<Notify>,
    ramp_task: Mutex<Option<AbortOnDrop>>,
    metrics: SplitMetrics,
    /// With `cluster:`: the link to the shared hash (split/shared.rs).
    pub(super) shared: super::shared::Slot,
}

impl std::fmt::Debug for SplitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SplitState({}, {} bp)", self.route, self.percent())
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn percent_of(bp: u32) -> f64 {
    f64::from(bp) / 100.0
}

impl SplitState {
    pub fn new(route: &str, start: u32, window: Duration, metrics: &Metrics) -> Arc<SplitState> {
        let sides = [Side::Stable, Side::Canary];
        let handles = SplitMetrics {
            requests: sides.map(|s| {
                metrics
                    .split_requests
                    .with_label_values(&[route, s.label()])
            }),
            percent: metrics.split_percent.with_label_values(&[route]),
            rollbacks: metrics.split_rollbacks.with_label_values(&[route]),
            rollbacks_by_rule: RollbackReason::ALL.map(|rule| {
                metrics
                    .split_rollbacks_by_reason
                    .with_label_values(&[route, rule.label()])
            }),
            duration: sides.map(|s| {
                metrics
                    .split_duration
                    .with_label_values(&[route, s.label()])
            }),
        };
        handles.percent.set(percent_of(start));
        let state = SplitState {
            route: route.to_string(),
            percent: AtomicU32::new(start),
            paused: AtomicBool::new(false),
            rolled_back: AtomicBool::new(false),
            requests: [AtomicU64::new(0), AtomicU64::new(0)],
            window: ArcSwap::from_pointee(CanaryWindow::new(window)),
            book: Mutex::new(Book {
                start,
                ramp: None,
                last_change: Instant::now(),
                rollback: None,
                history: VecDeque::new(),
            }),
            wake: Arc::new(Notify::new()),
            ramp_task: Mutex::new(None),
            metrics: handles,
            shared: super::shared::Slot::default(),
        };
        state.log_change(&mut state.book(), start, "config");
        Arc::new(state)
    }

    pub(super) fn book(&self) -> MutexGuard<'_, Book> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the parts of the config that are plans rather than state: the starting
    /// point for `reset`, the window length and the ramp. Called on every build.
    pub fn configure(self: &Arc<Self>, start: u32, window: Duration, plan: Option<RampPlan>) {
        let mut book = self.book();
        book.start = start;
        if self.window.load().span != window {
            self.window.store(Arc::new(CanaryWindow::new(window)));
        }
        if book.ramp != plan {
            book.ramp = plan.clone();
            let mut task = self.ramp_task.lock().unwrap_or_else(|p| p.into_inner());
            *task = None; // aborts the old ramp
            if let Some(plan) = plan {
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        let handle =
                            rt.spawn(ramp::run(Arc::downgrade(self), self.wake.clone(), plan));
                        *task = Some(AbortOnDrop(handle));
                    }
                    Err(_) => {
                        tracing::warn!(route = %self.route, "no async runtime: split ramp not started")
                    }
                }
            }
        }
    }

    pub fn percent(&self) -> u32 {
        self.percent.load(Ordering::Relaxed)
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    pub fn rolled_back(&self) -> bool {
        self.rolled_back.load(Ordering::Relaxed)
    }

    pub fn count(&self, side: Side) {
        self.requests[side as usize].fetch_add(1, Ordering::Relaxed);
        self.metrics.requests[side as usize].inc();
    }

    pub fn requests(&self, side: Side) -> u64 {
        self.requests[side as usize].load(Ordering::Relaxed)
    }

    pub fn window(&self) -> Arc<CanaryWindow> {
        self.window.load_full()
    }

    /// Records one canary outcome (with the time to its response head when there was
    /// one); returns the window so the caller can judge it.
    pub fn record_canary(
        &self,
        error: bool,
        latency: Option<Duration>,
    ) -> arc_swap::Guard<Arc<CanaryWindow>> {
        self.share_outcome(error);
        let window = self.window.load();
        match latency {
            Some(latency) => window.record_with_latency(error, latency),
            None => window.record(error),
        }
        window
    }

    /// Feeds `portico_split_request_duration_seconds`.
    pub fn observe_latency(&self, side: Side, latency: Duration) {
        self.metrics.duration[side as usize].observe(latency.as_secs_f64());
    }

    pub(super) fn log_change(&self, book: &mut Book, bp: u32, cause: &str) {
        if book.history.len() == HISTORY {
            book.history.pop_front();
        }
        book.history.push_back(Change {
            at: rfc3339_now(),
            percent: percent_of(bp),
            cause: cause.to_string(),
        });
        book.last_change = Instant::now();
        self.metrics.percent.set(percent_of(bp));
    }

    /// Takes the canary out of traffic at once. Stays so until an operator acts.
    pub fn roll_back(&self, rule: RollbackReason, reason: String) {
        let mut book = self.book();
        if self.rolled_back.swap(true, Ordering::AcqRel) {
            return;
        }
        self.percent.store(0, Ordering::Release);
        tracing::warn!(route = %self.route, rule = rule.label(), %reason, "split rolled back: canary taken out of traffic");
        self.metrics.rollbacks.inc();
        self.metrics.rollbacks_by_rule[rule as usize].inc();
        self.log_change(&mut book, 0, &format!("rollback: {reason}"));
        book.rollback = Some(RollbackInfo {
            reason,
            rule,
            at: rfc3339_now(),
            by: self.replica(),
        });
        drop(book);
        self.wake.notify_one();
        self.push(super::shared::Write::Rollback);
    }

    /// `PUT {"percent": N}`: also ends a rollback, with a fresh window so the errors that
    /// caused it cannot trip it again.
    pub fn set_percent(&self, bp: u32) {
        let mut book = self.book();
        if self.rolled_back.swap(false, Ordering::AcqRel) {
            book.rollback = None;
            self.fresh_window();
        }
        self.percent.store(bp, Ordering::Release);
        tracing::info!(route = %self.route, percent = percent_of(bp), "split percent set by admin");
        self.log_change(&mut book, bp, "admin");
        drop(book);
        self.wake.notify_one();
        self.push(super::shared::Write::Set);
    }

    /// `PUT {"paused": bool}`: holds (or resumes) the ramp; traffic keeps its split.
    pub fn set_paused(&self, paused: bool) {
        let mut book = self.book();
        self.paused.store(paused, Ordering::Release);
        tracing::info!(route = %self.route, paused, "split ramp {} by admin", if paused { "paused" } else { "resumed" });
        let bp = self.percent();
        self.log_change(
            &mut book,
            bp,
            if paused {
                "admin: paused"
            } else {
                "admin: resumed"
            },
        );
        drop(book);
        self.wake.notify_one();
        self.push(super::shared::Write::Set);
    }

    /// `PUT {"reset": true}`: back to the config's starting point, ramp from its start.
    pub fn reset(&self) {
        let mut book = self.book();
        self.rolled_back.store(false, Ordering::Release);
        self.paused.store(false, Ordering::Release);
        book.rollback = None;
        self.fresh_window();
        let start = book.start;
        self.percent.store(start, Ordering::Release);
        tracing::info!(route = %self.route, percent = percent_of(start), "split reset by admin");
        self.log_change(&mut book, start, "admin: reset");
        drop(book);
        self.wake.notify_one();
        self.push(super::shared::Write::Set);
    }

    pub(super) fn fresh_window(&self) {
        let span = self.window.load().span;
        self.window.store(Arc::new(CanaryWindow::new(span)));
    }

    /// When the ramp may take its next step (`None`: it is holding or done).
    pub(super) fn ramp_deadline(&self, plan: &RampPlan) -> Option<Instant> {
        let book = self.book();
        if self.paused() || self.rolled_back() {
            return None;
        }
        plan.next_after(self.percent())?;
        Some(book.last_change + plan.every)
    }

    /// Takes the ramp's next step if it is still due (an admin change restarts the clock).
    pub(super) fn ramp_step(&self, plan: &RampPlan) {
        let mut book = self.book();
        if self.paused() || self.rolled_back() || book.last_change.elapsed() < plan.every {
            return;
        }
        let Some(next) = plan.next_after(self.percent()) else {
            return;
        };
        self.percent.store(next, Ordering::Release);
        tracing::info!(route = %self.route, percent = percent_of(next), "split ramp step");
        self.log_change(&mut book, next, "ramp");
        drop(book);
        self.push(super::shared::Write::Set);
    }

    pub fn rollback_info(&self) -> Option<RollbackInfo> {
        self.book().rollback.clone()
    }

    pub fn history(&self) -> Vec<Change> {
        self.book().history.iter().cloned().collect()
    }

    pub fn ramp_plan(&self) -> Option<RampPlan> {
        self.book().ramp.clone()
    }

    pub fn start(&self) -> u32 {
        self.book().start
    }

    /// For tests and `GET /splits`: whether a ramp task is running.
    pub fn ramp_running(&self) -> bool {
        self.ramp_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| !t.0.is_finished())
    }
}

/// The ramp task's view of a state it does not own.
pub(super) type StateRef = Weak<SplitState>;

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(every_ms: u64) -> RampPlan {
        RampPlan {
            steps: vec![1000, 5000, 10_000],
            every: Duration::from_millis(every_ms),
        }
    }

    #[tokio::test]
    async fn the_ramp_task_ends_with_its_state() {
        let metrics = Metrics::new();
        let state = SplitState::new("r", 1000, Duration::from_secs(10), &metrics);
        state.configure(1000, Duration::from_secs(10), Some(plan(60_000)));
        assert!(state.ramp_running());
        let wake = state.wake.clone();
        assert_eq!(Arc::strong_count(&wake), 3); // state, task, this test
        drop(state);
        for _ in 0..200 {
            if Arc::strong_count(&wake) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the ramp task outlived its split state");
    }

    #[tokio::test]
    async fn rollback_sets_zero_and_only_an_operator_lifts_it() {
        let metrics = Metrics::new();
        let state = SplitState::new("r", 2500, Duration::from_secs(10), &metrics);
        state.configure(2500, Duration::from_secs(10), Some(plan(20)));
        state.roll_back(RollbackReason::Latency, "test".into());
        state.roll_back(RollbackReason::ErrorRate, "again".into());
        assert!(state.rolled_back());
        assert_eq!(state.percent(), 0);
        assert_eq!(state.rollback_info().map(|r| r.reason), Some("test".into()));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(state.percent(), 0, "the ramp moved a rolled-back split");
        // A reload reconfigures but keeps the rollback.
        state.configure(5000, Duration::from_secs(10), Some(plan(20)));
        assert_eq!(state.percent(), 0);
        state.set_percent(1000);
        assert!(!state.rolled_back());
        assert_eq!(state.rollback_info().map(|r| r.reason), None);
        let rendered = metrics.render();
        assert!(
            rendered.contains("portico_split_rollbacks_total{route=\"r\"} 1"),
            "{rendered}"
        );
        assert!(
            rendered.contains(
                "portico_split_rollbacks_by_reason_total{reason=\"latency\",route=\"r\"} 1"
            ),
            "{rendered}"
        );
        assert!(
            rendered.contains(
                "portico_split_rollbacks_by_reason_total{reason=\"error_rate\",route=\"r\"} 0"
            ),
            "{rendered}"
        );
    }
}
