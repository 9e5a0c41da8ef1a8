//! The same shop as one application and one database, under `/api`: the
//! users, products and payments handlers of the services, and an order
//! creation that does every step in one SQL transaction. When a step fails the
//! transaction rolls back (stock untouched, no payment) and the order is then
//! stored as `failed` with the reason and an `order.failed` event.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use rusqlite::{params, Connection};
use serde_json::{json, Value};

use crate::common::{parse_body, AppError, AppResult, Ctx};
use crate::orders::{self, NewOrder};
use crate::payments::{self, Charge, NewPayment};
use crate::{idempotency, outbox, products, users};

pub fn router(ctx: Ctx) -> Router {
    let orders = Router::new()
        .route("/orders", get(orders::list_handler).post(create_handler))
        .route("/orders/{id}", get(orders::get_handler))
        .with_state(ctx.clone());
    let api = users::router(ctx.clone())
        .merge(products::router(ctx.clone()))
        .merge(payments::router(ctx))
        .merge(orders);
    Router::new().nest("/api", api)
}

async fn create_handler(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let limit = ctx.opts.decline_above;
    let response = idempotency::guarded(&ctx, &headers, &body, || async {
        ctx.db.with(|c| place(c, &body, limit))
    })
    .await;
    ctx.outbox_wake.notify_one();
    response
}

/// Places an order in one transaction; a failure leaves a `failed` order behind.
pub fn place(
    conn: &mut Connection,
    body: &[u8],
    decline_above: f64,
) -> AppResult<(StatusCode, Value)> {
    let input: NewOrder = parse_body(body)?;
    orders::validate(&input)?;
    let mut product_name = None;
    let mut unit_price = None;
    let tx = conn.transaction()?;
    let result = steps(
        &tx,
        &input,
        decline_above,
        &mut product_name,
        &mut unit_price,
    );
    match result {
        Ok(order_id) => {
            let order = orders::find(&tx, order_id)?
                .ok_or_else(|| AppError::Internal("lost order".into()))?;
            outbox::record(&tx, "order.created", input.user_id, &order)?;
            tx.commit()?;
            Ok((StatusCode::CREATED, order))
        }
        Err(AppError::Internal(e)) => Err(AppError::Internal(e)),
        Err(e) => {
            tx.rollback()?;
            let reason = match &e {
                AppError::Body(_, body) => body["error"].as_str().unwrap_or("failed").to_owned(),
                other => other.to_string(),
            };
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO orders (user_id, product_id, product_name, quantity, unit_price_cents,
                     total_cents, status, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5 * ?4, 'failed', ?6)",
                params![
                    input.user_id,
                    input.product_id,
                    product_name,
                    input.quantity,
                    unit_price,
                    reason
                ],
            )?;
            let order = orders::find(&tx, tx.last_insert_rowid())?
                .ok_or_else(|| AppError::Internal("lost order".into()))?;
            outbox::record(&tx, "order.failed", input.user_id, &order)?;
            tx.commit()?;
            Err(AppError::Body(
                e.status(),
                json!({ "error": reason, "order": order }),
            ))
        }
    }
}

fn steps(
    tx: &Connection,
    input: &NewOrder,
    decline_above: f64,
    product_name: &mut Option<String>,
    unit_price: &mut Option<i64>,
) -> AppResult<i64> {
    if users::find(tx, input.user_id)?.is_none() {
        return Err(AppError::Unprocessable(format!(
            "user {} does not exist",
            input.user_id
        )));
    }
    let product = products::find(tx, input.product_id)?.ok_or_else(|| {
        AppError::Unprocessable(format!("product {} does not exist", input.product_id))
    })?;
    *product_name = product["name"].as_str().map(str::to_owned);
    let price = product["priceCents"]
        .as_i64()
        .ok_or_else(|| AppError::Internal("product without price".into()))?;
    *unit_price = Some(price);
    products::decrease(tx, input.product_id, input.quantity)?;
    tx.execute(
        "INSERT INTO orders (user_id, product_id, product_name, quantity, unit_price_cents,
             total_cents, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5 * ?4, 'pending')",
        params![
            input.user_id,
            input.product_id,
            *product_name,
            input.quantity,
            price
        ],
    )?;
    let order_id = tx.last_insert_rowid();
    let payment = NewPayment {
        order_id,
        user_id: input.user_id,
        amount: (price * input.quantity) as f64 / 100.0,
    };
    let payment_id = match payments::charge(tx, &payment, decline_above)? {
        Charge::Completed(p) => p["id"].as_i64(),
        Charge::Declined(_, reason) => {
            return Err(AppError::Body(
                StatusCode::PAYMENT_REQUIRED,
                json!({ "error": reason }),
            ))
        }
    };
    tx.execute(
        "UPDATE orders SET status = 'completed', payment_id = ?2,
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now') WHERE id = ?1",
        params![order_id, payment_id],
    )?;
    Ok(order_id)
}
