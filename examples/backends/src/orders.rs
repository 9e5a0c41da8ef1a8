//! Orders service: `POST /orders` runs a saga across the other services.
//!
//! 1. store the order as `pending`
//! 2. check the user (users), 3. read the product and its price (products),
//! 4. take the stock (products), 5. take the payment (payments),
//! 6. mark the order `completed` and record `order.created` in one transaction.
//!
//! When a step fails, the steps already done are compensated in reverse
//! (payment refunded, stock restored) and the order is stored as `failed`
//! with the reason, together with an `order.failed` event. The client gets
//! the step's status (402 declined, 409 out of stock, 422 unknown user or
//! product, 502 a service down) and `{"error": reason, "order": {...}}`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::{call, parse_body, AppError, AppResult, Ctx, Reply, RequestId};
use crate::{idempotency, outbox};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id          INTEGER NOT NULL,
    product_id       INTEGER NOT NULL,
    product_name     TEXT,
    quantity         INTEGER NOT NULL,
    unit_price_cents INTEGER,
    total_cents      INTEGER,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
    reason           TEXT,
    payment_id       INTEGER,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE INDEX IF NOT EXISTS orders_user ON orders (user_id);";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOrder {
    pub user_id: i64,
    pub product_id: i64,
    pub quantity: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ByUser {
    pub user_id: Option<i64>,
}

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/orders", get(list_handler).post(create_handler))
        .route("/orders/{id}", get(get_handler))
        .with_state(ctx)
}

async fn create_handler(
    State(ctx): State<Ctx>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    idempotency::guarded(&ctx, &headers, &body, || place(&ctx, &rid.0, &body)).await
}

pub(crate) async fn list_handler(
    State(ctx): State<Ctx>,
    Query(q): Query<ByUser>,
) -> AppResult<Json<Value>> {
    let orders = ctx.db.with(|c| list(c, q.user_id))?;
    Ok(Json(json!({ "orders": orders })))
}

pub(crate) async fn get_handler(
    State(ctx): State<Ctx>,
    Path(id): Path<i64>,
) -> AppResult<Json<Value>> {
    ctx.db
        .with(|c| find(c, id))?
        .map(Json)
        .ok_or_else(|| AppError::NotFound(format!("order {id} not found")))
}

pub fn validate(input: &NewOrder) -> AppResult<()> {
    if input.user_id <= 0 || input.product_id <= 0 {
        return Err(AppError::BadRequest(
            "userId and productId must be positive".into(),
        ));
    }
    if !(1..=1000).contains(&input.quantity) {
        return Err(AppError::BadRequest(
            "quantity must be between 1 and 1000".into(),
        ));
    }
    Ok(())
}

/// Why a saga step failed, with the status the client gets.
struct Failed {
    status: StatusCode,
    reason: String,
}

fn failed(status: StatusCode, reason: impl Into<String>) -> Failed {
    Failed {
        status,
        reason: reason.into(),
    }
}

/// What the saga has done so far, for compensation.
#[derive(Default)]
struct Done {
    product_name: Option<String>,
    unit_price_cents: Option<i64>,
    stock_taken: bool,
    payment_id: Option<i64>,
}

struct Saga<'a> {
    ctx: &'a Ctx,
    rid: &'a str,
    order_id: i64,
    input: &'a NewOrder,
}

async fn place(ctx: &Ctx, rid: &str, body: &Bytes) -> AppResult<(StatusCode, Value)> {
    let input: NewOrder = parse_body(body)?;
    validate(&input)?;
    let order_id = ctx.db.with(|c| {
        c.execute(
            "INSERT INTO orders (user_id, product_id, quantity, status) VALUES (?1, ?2, ?3, 'pending')",
            params![input.user_id, input.product_id, input.quantity],
        )?;
        Ok(c.last_insert_rowid())
    })?;
    let saga = Saga {
        ctx,
        rid,
        order_id,
        input: &input,
    };
    let mut done = Done::default();
    let outcome = match saga.forward(&mut done).await {
        Ok(()) => ctx.db.with(|c| finish(c, order_id, &done, None)),
        Err(f) => Err(AppError::Body(f.status, json!({ "error": f.reason }))),
    };
    match outcome {
        Ok(order) => {
            ctx.outbox_wake.notify_one();
            Ok((StatusCode::CREATED, order))
        }
        Err(e) => {
            let mut reason = match &e {
                AppError::Body(_, body) => body["error"].as_str().unwrap_or("failed").to_owned(),
                other => other.to_string(),
            };
            if let Err(problem) = saga.compensate(&done).await {
                reason = format!("{reason} (compensation incomplete: {problem})");
            }
            let order = ctx.db.with(|c| finish(c, order_id, &done, Some(&reason)))?;
            ctx.outbox_wake.notify_one();
            Err(AppError::Body(
                e.status(),
                json!({ "error": reason, "order": order }),
            ))
        }
    }
}

impl Saga<'_> {
    async fn call(
        &self,
        method: Method,
        url: String,
        body: Option<Value>,
    ) -> Result<Reply, Failed> {
        call(self.ctx, method, &url, self.rid, body.as_ref())
            .await
            .map_err(|e| failed(StatusCode::BAD_GATEWAY, format!("service unavailable: {e}")))
    }

    async fn forward(&self, done: &mut Done) -> Result<(), Failed> {
        let o = &self.ctx.opts;
        let (user, product, qty) = (
            self.input.user_id,
            self.input.product_id,
            self.input.quantity,
        );

        let reply = self
            .call(Method::GET, format!("{}/users/{user}", o.users_url), None)
            .await?;
        match reply.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(failed(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("user {user} does not exist"),
                ))
            }
            _ => return Err(unexpected("users", &reply)),
        }

        let reply = self
            .call(
                Method::GET,
                format!("{}/products/{product}", o.products_url),
                None,
            )
            .await?;
        match reply.status {
            StatusCode::OK => {
                done.product_name = reply.body["name"].as_str().map(str::to_owned);
                done.unit_price_cents = reply.body["priceCents"].as_i64();
                if done.unit_price_cents.is_none() {
                    return Err(failed(
                        StatusCode::BAD_GATEWAY,
                        "products: answer without a price",
                    ));
                }
            }
            StatusCode::NOT_FOUND => {
                return Err(failed(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("product {product} does not exist"),
                ))
            }
            _ => return Err(unexpected("products", &reply)),
        }

        let url = format!("{}/products/{product}/decrease-stock", o.products_url);
        let reply = self
            .call(Method::POST, url, Some(json!({ "quantity": qty })))
            .await?;
        match reply.status {
            StatusCode::OK => done.stock_taken = true,
            StatusCode::CONFLICT => {
                return Err(failed(StatusCode::CONFLICT, reply.error_message()))
            }
            _ => return Err(unexpected("products", &reply)),
        }

        let amount = done.unit_price_cents.unwrap_or_default() * qty;
        let payment =
            json!({ "orderId": self.order_id, "userId": user, "amount": amount as f64 / 100.0 });
        match self
            .call(
                Method::POST,
                format!("{}/payments", o.payments_url),
                Some(payment),
            )
            .await
        {
            Ok(reply) if reply.status == StatusCode::CREATED => {
                done.payment_id = reply.body["id"].as_i64();
                Ok(())
            }
            Ok(reply) if reply.status == StatusCode::PAYMENT_REQUIRED => {
                Err(failed(StatusCode::PAYMENT_REQUIRED, reply.error_message()))
            }
            // The payment may or may not exist: look it up so compensation can refund it.
            Ok(reply) => {
                done.payment_id = self.find_payment().await;
                Err(unexpected("payments", &reply))
            }
            Err(f) => {
                done.payment_id = self.find_payment().await;
                Err(f)
            }
        }
    }

    async fn find_payment(&self) -> Option<i64> {
        let url = format!(
            "{}/payments?orderId={}",
            self.ctx.opts.payments_url, self.order_id
        );
        let reply = self.call(Method::GET, url, None).await.ok()?;
        reply.body["payments"]
            .as_array()?
            .iter()
            .find(|p| p["status"] == "completed")
            .and_then(|p| p["id"].as_i64())
    }

    /// Undoes the done steps in reverse; each call is tried three times.
    async fn compensate(&self, done: &Done) -> Result<(), String> {
        let o = &self.ctx.opts;
        let mut problems = Vec::new();
        if let Some(payment) = done.payment_id {
            let url = format!("{}/payments/{payment}/refund", o.payments_url);
            if let Err(e) = self.retry(url, None).await {
                problems.push(format!("refund of payment {payment}: {e}"));
            }
        }
        if done.stock_taken {
            let url = format!(
                "{}/products/{}/increase-stock",
                o.products_url, self.input.product_id
            );
            let body = json!({ "quantity": self.input.quantity });
            if let Err(e) = self.retry(url, Some(body)).await {
                problems.push(format!("stock restore: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            tracing::error!(order = self.order_id, problems = ?problems, "compensation failed");
            Err(problems.join("; "))
        }
    }

    async fn retry(&self, url: String, body: Option<Value>) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            match self.call(Method::POST, url.clone(), body.clone()).await {
                Ok(reply) if reply.status.is_success() => return Ok(()),
                Ok(reply) => last = reply.error_message(),
                Err(f) => last = f.reason,
            }
        }
        Err(last)
    }
}

fn unexpected(service: &str, reply: &Reply) -> Failed {
    failed(
        StatusCode::BAD_GATEWAY,
        format!(
            "{service} answered {}: {}",
            reply.status.as_u16(),
            reply.error_message()
        ),
    )
}

/// Marks the order completed (`reason` = None) or failed, with its event, in one transaction.
fn finish(conn: &mut Connection, id: i64, done: &Done, reason: Option<&str>) -> AppResult<Value> {
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE orders SET status = ?2, reason = ?3, product_name = ?4, unit_price_cents = ?5,
             total_cents = ?5 * quantity, payment_id = ?6,
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')
         WHERE id = ?1",
        params![
            id,
            if reason.is_some() {
                "failed"
            } else {
                "completed"
            },
            reason,
            done.product_name,
            done.unit_price_cents,
            done.payment_id,
        ],
    )?;
    let order = find(&tx, id)?.ok_or_else(|| AppError::Internal("lost order".into()))?;
    let user_id = order["userId"].as_i64().unwrap_or_default();
    let event = if reason.is_some() {
        "order.failed"
    } else {
        "order.created"
    };
    outbox::record(&tx, event, user_id, &order)?;
    tx.commit()?;
    Ok(order)
}

const COLUMNS: &str = "id, user_id, product_id, product_name, quantity, unit_price_cents,
    total_cents, status, reason, payment_id, created_at, updated_at";

fn cents(v: Option<i64>) -> Value {
    v.map_or(Value::Null, |c| json!(c as f64 / 100.0))
}

fn to_json(r: &Row) -> rusqlite::Result<Value> {
    Ok(json!({
        "id": r.get::<_, i64>(0)?,
        "userId": r.get::<_, i64>(1)?,
        "productId": r.get::<_, i64>(2)?,
        "productName": r.get::<_, Option<String>>(3)?,
        "quantity": r.get::<_, i64>(4)?,
        "unitPrice": cents(r.get(5)?),
        "total": cents(r.get(6)?),
        "status": r.get::<_, String>(7)?,
        "reason": r.get::<_, Option<String>>(8)?,
        "paymentId": r.get::<_, Option<i64>>(9)?,
        "createdAt": r.get::<_, String>(10)?,
        "updatedAt": r.get::<_, String>(11)?,
    }))
}

pub fn find(conn: &Connection, id: i64) -> AppResult<Option<Value>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM orders WHERE id = ?1"),
            [id],
            to_json,
        )
        .optional()?)
}

pub fn list(conn: &Connection, user_id: Option<i64>) -> AppResult<Vec<Value>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM orders WHERE ?1 IS NULL OR user_id = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([user_id], to_json)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
