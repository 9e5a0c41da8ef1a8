//! The ramp: a background task that moves a split's percentage up through its steps, one
//! step `every` after the last change. It holds while the split is paused, stops for good
//! after a rollback (until an operator acts) and exits when the split state is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::state::StateRef;
use crate::config::RampConfig;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RampPlan {
    /// Ascending percentages in basis points.
    pub steps: Vec<u32>,
    pub every: Duration,
}

impl RampPlan {
    pub fn build(config: &RampConfig) -> Result<RampPlan, (String, String)> {
        if config.steps.is_empty() {
            return Err(("steps".into(), "list at least one step".into()));
        }
        let steps: Vec<u32> = config
            .steps
            .iter()
            .map(|p| super::basis_points(p.0))
            .collect();
        if steps.windows(2).any(|w| w[0] >= w[1]) {
            return Err(("steps".into(), "steps must go strictly up".into()));
        }
        if config.every.0 < Duration::from_millis(10) {
            return Err(("every".into(), "must be at least 10ms".into()));
        }
        Ok(RampPlan {
            steps,
            every: config.every.0,
        })
    }

    /// The first step above `current`: the ramp only ever moves the percentage up.
    pub fn next_after(&self, current: u32) -> Option<u32> {
        self.steps.iter().copied().find(|s| *s > current)
    }
}

pub(super) async fn run(state: StateRef, wake: Arc<Notify>, plan: RampPlan) {
    loop {
        let deadline = match state.upgrade() {
            Some(s) => s.ramp_deadline(&plan),
            None => return,
        };
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {
                        match state.upgrade() {
                            Some(s) => s.ramp_step(&plan),
                            None => return,
                        }
                    }
                    _ = wake.notified() => {}
                }
            }
            // Paused, rolled back or at the top: wait for an operator's change.
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Duration as CfgDuration, Percent};

    fn plan(steps: &[f64], every_ms: u64) -> Result<RampPlan, (String, String)> {
        RampPlan::build(&RampConfig {
            steps: steps.iter().map(|s| Percent(*s)).collect(),
            every: CfgDuration::from_millis(every_ms),
        })
    }

    #[test]
    fn steps_go_up_only() {
        let p = plan(&[10.0, 25.0, 50.0, 100.0], 1000).unwrap();
        assert_eq!(p.next_after(0), Some(1000));
        assert_eq!(p.next_after(1000), Some(2500));
        assert_eq!(p.next_after(3000), Some(5000));
        assert_eq!(p.next_after(10_000), None);
        assert!(plan(&[], 1000).is_err());
        assert!(plan(&[50.0, 25.0], 1000).is_err());
        assert!(plan(&[10.0, 10.0], 1000).is_err());
        assert!(plan(&[10.0], 0).is_err());
    }
}
