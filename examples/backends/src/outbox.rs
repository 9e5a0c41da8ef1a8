//! Transactional outbox. A service writes its domain events into the `outbox`
//! table in the same transaction as the change they describe
//! ([`record`]); the relay task ([`start_relay`]) delivers undelivered rows to
//! the notifications service in order, marks them delivered after a 2xx, and
//! retries with exponential backoff while notifications is down. Delivery is
//! at least once; notifications de-duplicates by event id.

use std::time::Duration;

use axum::extract::State;
use axum::http::Method;
use axum::routing::get;
use axum::{Json, Router};
use rusqlite::{params, Connection};
use serde_json::{json, Value};

use crate::common::{call, random_id, AppResult, Ctx};
use crate::Service;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    type         TEXT NOT NULL,
    user_id      INTEGER NOT NULL,
    data         TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    delivered_at TEXT
);";

const IDLE_POLL: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Writes one event; call inside the transaction of the change it describes.
pub fn record(
    conn: &Connection,
    event_type: &str,
    user_id: i64,
    data: &Value,
) -> AppResult<String> {
    let event_id = random_id();
    conn.execute(
        "INSERT INTO outbox (event_id, type, user_id, data) VALUES (?1, ?2, ?3, ?4)",
        params![event_id, event_type, user_id, data.to_string()],
    )?;
    Ok(event_id)
}

struct Pending {
    seq: i64,
    body: Value,
}

fn pending(conn: &Connection, source: Service, limit: i64) -> AppResult<Vec<Pending>> {
    let mut stmt = conn.prepare(
        "SELECT seq, event_id, type, user_id, data, created_at FROM outbox
         WHERE delivered_at IS NULL ORDER BY seq LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        let data: String = r.get(4)?;
        Ok(Pending {
            seq: r.get(0)?,
            body: json!({
                "id": r.get::<_, String>(1)?,
                "type": r.get::<_, String>(2)?,
                "userId": r.get::<_, i64>(3)?,
                "source": source.name(),
                "occurredAt": r.get::<_, String>(5)?,
                "data": serde_json::from_str::<Value>(&data).unwrap_or(Value::Null),
            }),
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Delivers what is pending; `Ok(n)` delivered n events, `Err` stopped at a failure.
async fn deliver_batch(ctx: &Ctx, url: &str) -> Result<usize, String> {
    let batch = ctx
        .db
        .with(|c| pending(c, ctx.service, 100))
        .map_err(|e| e.to_string())?;
    let mut delivered = 0;
    for event in batch {
        let result = call(ctx, Method::POST, url, &random_id(), Some(&event.body)).await;
        let ok = matches!(&result, Ok(reply) if reply.status.is_success());
        let sql = if ok {
            "UPDATE outbox SET attempts = attempts + 1,
                delivered_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE seq = ?1"
        } else {
            "UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?1"
        };
        ctx.db
            .with(|c| Ok(c.execute(sql, [event.seq])?))
            .map_err(|e| e.to_string())?;
        match result {
            Ok(_) if ok => delivered += 1,
            Ok(reply) => return Err(format!("{url}: {}", reply.error_message())),
            Err(e) => return Err(e),
        }
    }
    Ok(delivered)
}

/// Starts the relay when a notifications URL is configured; it stops with the service.
pub fn start_relay(ctx: Ctx) {
    let Some(base) = ctx.opts.notifications_url.clone() else {
        return;
    };
    let url = format!("{}/events", base.trim_end_matches('/'));
    tokio::spawn(async move {
        let mut shutdown = ctx.shutdown.clone();
        let mut backoff = FIRST_BACKOFF;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let (idle, wait) = match deliver_batch(&ctx, &url).await {
                Ok(0) => {
                    backoff = FIRST_BACKOFF;
                    (true, IDLE_POLL)
                }
                Ok(_) => {
                    backoff = FIRST_BACKOFF;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(service = ctx.service.name(), error = %e, retry_in_ms = backoff.as_millis() as u64, "event delivery failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(ctx.opts.relay_max_backoff);
                    (false, wait)
                }
            };
            tokio::select! {
                _ = ctx.outbox_wake.notified(), if idle => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
    });
}

/// `GET /outbox`: every event this service wrote, with its delivery state.
pub fn router(ctx: Ctx) -> Router {
    Router::new().route("/outbox", get(list)).with_state(ctx)
}

async fn list(State(ctx): State<Ctx>) -> AppResult<Json<Value>> {
    let events = ctx.db.with(|c| {
        let mut stmt = c.prepare(
            "SELECT event_id, type, user_id, data, created_at, attempts, delivered_at
             FROM outbox ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| {
            let data: String = r.get(3)?;
            Ok(json!({
                "id": r.get::<_, String>(0)?,
                "type": r.get::<_, String>(1)?,
                "userId": r.get::<_, i64>(2)?,
                "data": serde_json::from_str::<Value>(&data).unwrap_or(Value::Null),
                "createdAt": r.get::<_, String>(4)?,
                "attempts": r.get::<_, i64>(5)?,
                "deliveredAt": r.get::<_, Option<String>>(6)?,
            }))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })?;
    Ok(Json(json!({ "events": events })))
}
