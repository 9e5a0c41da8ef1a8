//! Notifications service: receives domain events from the outbox relays
//! (`POST /events`), keeps each event id once (201 the first time, 200 for a
//! duplicate) and lists a user's notifications (`GET /notifications?userId=`).

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{params, Connection, Row};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::{parse_body, AppError, AppResult, Ctx};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notifications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    user_id     INTEGER NOT NULL,
    source      TEXT,
    message     TEXT NOT NULL,
    data        TEXT NOT NULL,
    occurred_at TEXT,
    received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE INDEX IF NOT EXISTS notifications_user ON notifications (user_id);";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: i64,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub occurred_at: Option<String>,
    #[serde(default)]
    pub data: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ByUser {
    user_id: Option<i64>,
}

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/events", post(receive_handler))
        .route("/notifications", get(list_handler))
        .with_state(ctx)
}

async fn receive_handler(
    State(ctx): State<Ctx>,
    body: Bytes,
) -> AppResult<(StatusCode, Json<Value>)> {
    let event: Event = parse_body(&body)?;
    if event.id.is_empty() || event.id.len() > 200 || event.kind.is_empty() {
        return Err(AppError::BadRequest(
            "event id and type are required".into(),
        ));
    }
    let inserted = ctx.db.with(|c| receive(c, &event))?;
    let status = if inserted {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "id": event.id, "duplicate": !inserted })),
    ))
}

async fn list_handler(State(ctx): State<Ctx>, Query(q): Query<ByUser>) -> AppResult<Json<Value>> {
    let items = ctx.db.with(|c| list(c, q.user_id))?;
    Ok(Json(json!({ "notifications": items })))
}

/// A line a person would read.
fn message(event: &Event) -> String {
    let d = &event.data;
    match event.kind.as_str() {
        "user.created" => format!("Welcome, {}!", d["username"].as_str().unwrap_or("new user")),
        "order.created" => format!(
            "Your order #{} for {} x {} is confirmed.",
            d["id"],
            d["quantity"],
            d["productName"].as_str().unwrap_or("a product")
        ),
        "order.failed" => format!(
            "Your order #{} could not be completed: {}",
            d["id"],
            d["reason"].as_str().unwrap_or("unknown reason")
        ),
        "payment.completed" => format!("Payment #{} of {} received.", d["id"], d["amount"]),
        "payment.refunded" => format!("Payment #{} of {} refunded.", d["id"], d["amount"]),
        other => format!("Event {other}"),
    }
}

/// Stores the event once; `false` when its id was already seen.
pub fn receive(conn: &Connection, event: &Event) -> AppResult<bool> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO notifications (event_id, type, user_id, source, message, data, occurred_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            event.id,
            event.kind,
            event.user_id,
            event.source,
            message(event),
            event.data.to_string(),
            event.occurred_at
        ],
    )?;
    Ok(n == 1)
}

fn to_json(r: &Row) -> rusqlite::Result<Value> {
    let data: String = r.get(6)?;
    Ok(json!({
        "id": r.get::<_, i64>(0)?,
        "eventId": r.get::<_, String>(1)?,
        "type": r.get::<_, String>(2)?,
        "userId": r.get::<_, i64>(3)?,
        "source": r.get::<_, Option<String>>(4)?,
        "message": r.get::<_, String>(5)?,
        "data": serde_json::from_str::<Value>(&data).unwrap_or(Value::Null),
        "occurredAt": r.get::<_, Option<String>>(7)?,
        "receivedAt": r.get::<_, String>(8)?,
    }))
}

pub fn list(conn: &Connection, user_id: Option<i64>) -> AppResult<Vec<Value>> {
    let mut stmt = conn.prepare(
        "SELECT id, event_id, type, user_id, source, message, data, occurred_at, received_at
         FROM notifications WHERE ?1 IS NULL OR user_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([user_id], to_json)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
