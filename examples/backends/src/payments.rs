//! Payments service: a fake card processor. A payment above
//! `--decline-above` is declined (402, stored as `declined`); others complete
//! (201) and record `payment.completed`. Refunds record `payment.refunded` and
//! are idempotent.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::{parse_body, AppError, AppResult, Ctx};
use crate::outbox;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id     INTEGER NOT NULL,
    user_id      INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('completed', 'declined', 'refunded')),
    reason       TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    refunded_at  TEXT
);
CREATE INDEX IF NOT EXISTS payments_order ON payments (order_id);";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewPayment {
    pub order_id: i64,
    pub user_id: i64,
    pub amount: f64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ByOrder {
    order_id: Option<i64>,
}

/// The outcome of [`charge`].
pub enum Charge {
    Completed(Value),
    Declined(Value, String),
}

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/payments", post(create_handler).get(list_handler))
        .route("/payments/{id}", get(get_handler))
        .route("/payments/{id}/refund", post(refund_handler))
        .with_state(ctx)
}

async fn create_handler(
    State(ctx): State<Ctx>,
    body: Bytes,
) -> AppResult<(StatusCode, Json<Value>)> {
    let input: NewPayment = parse_body(&body)?;
    let limit = ctx.opts.decline_above;
    let outcome = ctx.db.with(|c| {
        let tx = c.transaction()?;
        let outcome = charge(&tx, &input, limit)?;
        tx.commit()?;
        Ok(outcome)
    })?;
    match outcome {
        Charge::Completed(payment) => {
            ctx.outbox_wake.notify_one();
            Ok((StatusCode::CREATED, Json(payment)))
        }
        Charge::Declined(payment, reason) => Err(AppError::Body(
            StatusCode::PAYMENT_REQUIRED,
            json!({ "error": reason, "payment": payment }),
        )),
    }
}

async fn list_handler(State(ctx): State<Ctx>, Query(q): Query<ByOrder>) -> AppResult<Json<Value>> {
    let payments = ctx.db.with(|c| list(c, q.order_id))?;
    Ok(Json(json!({ "payments": payments })))
}

async fn get_handler(State(ctx): State<Ctx>, Path(id): Path<i64>) -> AppResult<Json<Value>> {
    ctx.db
        .with(|c| find(c, id))?
        .map(Json)
        .ok_or_else(|| not_found(id))
}

async fn refund_handler(State(ctx): State<Ctx>, Path(id): Path<i64>) -> AppResult<Json<Value>> {
    let payment = ctx.db.with(|c| {
        let tx = c.transaction()?;
        let payment = refund(&tx, id)?;
        tx.commit()?;
        Ok(payment)
    })?;
    ctx.outbox_wake.notify_one();
    Ok(Json(payment))
}

fn not_found(id: i64) -> AppError {
    AppError::NotFound(format!("payment {id} not found"))
}

const COLUMNS: &str =
    "id, order_id, user_id, amount_cents, status, reason, created_at, refunded_at";

fn to_json(r: &Row) -> rusqlite::Result<Value> {
    Ok(json!({
        "id": r.get::<_, i64>(0)?,
        "orderId": r.get::<_, i64>(1)?,
        "userId": r.get::<_, i64>(2)?,
        "amount": r.get::<_, i64>(3)? as f64 / 100.0,
        "status": r.get::<_, String>(4)?,
        "reason": r.get::<_, Option<String>>(5)?,
        "createdAt": r.get::<_, String>(6)?,
        "refundedAt": r.get::<_, Option<String>>(7)?,
    }))
}

pub fn find(conn: &Connection, id: i64) -> AppResult<Option<Value>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM payments WHERE id = ?1"),
            [id],
            to_json,
        )
        .optional()?)
}

pub fn list(conn: &Connection, order_id: Option<i64>) -> AppResult<Vec<Value>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM payments WHERE ?1 IS NULL OR order_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([order_id], to_json)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Records a completed or declined payment; call inside a transaction.
pub fn charge(conn: &Connection, input: &NewPayment, decline_above: f64) -> AppResult<Charge> {
    if input.order_id <= 0 || input.user_id <= 0 {
        return Err(AppError::BadRequest(
            "orderId and userId must be positive".into(),
        ));
    }
    if !input.amount.is_finite() || input.amount <= 0.0 || input.amount > 1e12 {
        return Err(AppError::BadRequest(
            "amount must be a positive number".into(),
        ));
    }
    let cents = (input.amount * 100.0).round() as i64;
    let declined = input.amount > decline_above;
    let reason = declined.then(|| {
        format!(
            "payment declined: amount {:.2} exceeds the limit of {decline_above:.2}",
            input.amount
        )
    });
    conn.execute(
        "INSERT INTO payments (order_id, user_id, amount_cents, status, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            input.order_id,
            input.user_id,
            cents,
            if declined { "declined" } else { "completed" },
            reason
        ],
    )?;
    let payment = find(conn, conn.last_insert_rowid())?
        .ok_or_else(|| AppError::Internal("lost insert".into()))?;
    match reason {
        Some(reason) => Ok(Charge::Declined(payment, reason)),
        None => {
            outbox::record(conn, "payment.completed", input.user_id, &payment)?;
            Ok(Charge::Completed(payment))
        }
    }
}

/// Refunds a completed payment (again: no-op); 409 for a declined one.
pub fn refund(conn: &Connection, id: i64) -> AppResult<Value> {
    let payment = find(conn, id)?.ok_or_else(|| not_found(id))?;
    match payment["status"].as_str() {
        Some("refunded") => Ok(payment),
        Some("completed") => {
            conn.execute(
                "UPDATE payments SET status = 'refunded',
                 refunded_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?1",
                [id],
            )?;
            let payment = find(conn, id)?.ok_or_else(|| not_found(id))?;
            let user_id = payment["userId"].as_i64().unwrap_or_default();
            outbox::record(conn, "payment.refunded", user_id, &payment)?;
            Ok(payment)
        }
        _ => Err(AppError::Conflict(format!(
            "payment {id} was not completed and cannot be refunded"
        ))),
    }
}
