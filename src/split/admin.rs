//! `GET /splits` and `PUT /splits/{route}`: the operator's view of every split and the
//! three changes they can make (`percent`, `paused`, `reset`). The HTTP plumbing is in
//! `crate::admin`; this module turns runtime state into JSON and JSON into changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::state::percent_of;
use super::{basis_points, Side, Split};

/// Largest `PUT /splits/{route}` body read.
pub const MAX_BODY: usize = 4096;

/// A `PUT` body: any of the three keys; `reset` is applied first, then `percent`, then
/// `paused`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Update {
    #[serde(default)]
    pub percent: Option<f64>,
    #[serde(default)]
    pub paused: Option<bool>,
    #[serde(default)]
    pub reset: Option<bool>,
}

pub fn parse_update(body: &[u8]) -> Result<Update, String> {
    let update: Update = serde_json::from_slice(body).map_err(|e| {
        format!("invalid JSON body ({e}); expected {{\"percent\": N}}, {{\"paused\": true|false}} or {{\"reset\": true}}")
    })?;
    if update == Update::default() {
        return Err("nothing to change: send {\"percent\": N}, {\"paused\": true|false} or {\"reset\": true}".into());
    }
    if let Some(p) = update.percent {
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("percent must be between 0 and 100, got {p}"));
        }
    }
    if update.reset == Some(false) {
        return Err("reset only accepts true".into());
    }
    Ok(update)
}

/// Applies a checked update; returns the split's new view.
pub fn apply(split: &Split, update: &Update) -> Value {
    if update.reset == Some(true) {
        split.state.reset();
    }
    if let Some(p) = update.percent {
        split.state.set_percent(basis_points(p));
    }
    if let Some(paused) = update.paused {
        split.state.set_paused(paused);
    }
    view(split)
}

/// `PUT /splits/{route}` on the current splits: status and JSON body.
pub fn put(splits: &BTreeMap<String, Arc<Split>>, route: &str, body: &[u8]) -> (StatusCode, Value) {
    let Some(split) = splits.get(route) else {
        return (
            StatusCode::NOT_FOUND,
            json!({"error": format!("no split route named {route:?}"), "status": 404}),
        );
    };
    match parse_update(body) {
        Ok(update) => (StatusCode::OK, apply(split, &update)),
        Err(e) => (StatusCode::BAD_REQUEST, json!({"error": e, "status": 400})),
    }
}

pub fn list(splits: &BTreeMap<String, Arc<Split>>) -> Value {
    let all: serde_json::Map<String, Value> = splits
        .iter()
        .map(|(name, split)| (name.clone(), view(split)))
        .collect();
    json!({ "splits": all })
}

pub fn view(split: &Split) -> Value {
    let state = &split.state;
    let percent = state.percent();
    let rollback = state.rollback_info();
    let plan = state.ramp_plan();
    // A rolled-back split does not ramp until an operator acts.
    let next_step = plan
        .as_ref()
        .filter(|_| rollback.is_none())
        .and_then(|p| p.next_after(percent));
    let phase = if rollback.is_some() {
        "rolled_back"
    } else if state.paused() {
        "paused"
    } else if next_step.is_some() {
        "ramping"
    } else {
        "steady"
    };
    let window = state.window();
    let tally = window.tally();
    let latency = window.latency();
    let side = |s: Side| {
        json!({
            "upstream": split.side(s).upstream.name,
            "requests": state.requests(s),
        })
    };
    json!({
        "route": state.route,
        "percent": percent_of(percent),
        "state": phase,
        "paused": state.paused(),
        "rolled_back": rollback,
        "stable": side(Side::Stable),
        "canary": side(Side::Canary),
        "window": {
            "seconds": window.span.as_secs_f64(),
            "requests": tally.total,
            "errors": tally.errors,
            "error_rate_percent": tally.error_rate() * 100.0,
            "answers": latency.samples,
            "p99_ms": latency.p99.map(|d| d.as_secs_f64() * 1000.0),
        },
        "rollback": split.rule.map(|r| json!({
            "max_error_rate_percent": r.max_error_rate.map(|rate| rate * 100.0),
            "max_p99_ms": r.max_p99.map(|d| d.as_secs_f64() * 1000.0),
            "min_requests": r.min_requests,
        })),
        "ramp": plan.map(|p| json!({
            "steps": p.steps.iter().map(|s| percent_of(*s)).collect::<Vec<_>>(),
            "every_seconds": p.every.as_secs_f64(),
            "next_step": next_step.map(percent_of),
        })),
        "start_percent": percent_of(state.start()),
        "shared": state.shared_view().map(|(version, writer, replica)| json!({
            "version": version,
            "last_writer": writer,
            "replica": &*replica,
        })),
        "history": state.history(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_are_checked() {
        assert_eq!(
            parse_update(br#"{"percent": 25}"#),
            Ok(Update {
                percent: Some(25.0),
                ..Update::default()
            })
        );
        assert_eq!(
            parse_update(br#"{"paused": true}"#),
            Ok(Update {
                paused: Some(true),
                ..Update::default()
            })
        );
        assert!(parse_update(br#"{"reset": true}"#).is_ok());
        for bad in [
            &b"{"[..],
            b"{}",
            b"[]",
            br#"{"percent": 101}"#,
            br#"{"percent": -1}"#,
            br#"{"percent": "10"}"#,
            br#"{"pause": true}"#,
            br#"{"reset": false}"#,
        ] {
            assert!(
                parse_update(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
