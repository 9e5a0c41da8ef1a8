//! Products service: the catalogue and its stock. Reads carry
//! `Cache-Control: public, max-age=30` and an `ETag` and answer
//! `If-None-Match` with 304. Stock changes are one conditional UPDATE each, so
//! stock can never go negative. Store functions are reused by the monolith.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::{fnv1a, parse_body, AppError, AppResult, Ctx, Page};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    price_cents INTEGER NOT NULL CHECK (price_cents > 0),
    stock       INTEGER NOT NULL CHECK (stock >= 0),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);";

const SEED: &[(&str, &str, i64, i64)] = &[
    ("Laptop", "14-inch, 16 GB RAM", 129_999, 10),
    ("Headphones", "Noise cancelling, over-ear", 19_999, 50),
    ("Keyboard", "Mechanical, tenkeyless", 8_999, 100),
    ("Monitor", "27-inch 4K", 34_900, 20),
    ("Mouse", "Wireless", 2_999, 200),
];

/// Seeds the catalogue when it is empty.
pub fn seed(conn: &Connection) -> anyhow::Result<()> {
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0))?;
    if count == 0 {
        for (name, description, price, stock) in SEED {
            conn.execute(
                "INSERT INTO products (name, description, price_cents, stock) VALUES (?1, ?2, ?3, ?4)",
                params![name, description, price, stock],
            )?;
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct NewProduct {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub price: f64,
    #[serde(default)]
    pub stock: i64,
}

#[derive(Debug, Deserialize)]
pub struct Quantity {
    pub quantity: i64,
}

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/products", get(list_handler).post(create_handler))
        .route("/products/{id}", get(get_handler))
        .route("/products/{id}/stock", get(stock_handler))
        .route("/products/{id}/decrease-stock", post(decrease_handler))
        .route("/products/{id}/increase-stock", post(increase_handler))
        .with_state(ctx)
}

/// A cacheable JSON read: ETag over the body, 304 when `If-None-Match` matches.
pub fn cacheable(headers: &HeaderMap, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let etag = format!("\"{:016x}\"", fnv1a(&bytes));
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag);
    let status = if matches {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let mut response = if matches {
        status.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=30"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    response
}

async fn list_handler(
    State(ctx): State<Ctx>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let (limit, offset) = page.bounds()?;
    let (products, total) = ctx.db.with(|c| list(c, limit, offset))?;
    let body = json!({ "products": products, "limit": limit, "offset": offset, "total": total });
    Ok(cacheable(&headers, &body))
}

async fn get_handler(
    State(ctx): State<Ctx>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let product = ctx.db.with(|c| find(c, id))?.ok_or_else(|| not_found(id))?;
    Ok(cacheable(&headers, &product))
}

async fn stock_handler(
    State(ctx): State<Ctx>,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let product = ctx.db.with(|c| find(c, id))?.ok_or_else(|| not_found(id))?;
    let body = json!({ "productId": id, "stock": product["stock"] });
    Ok(cacheable(&headers, &body))
}

async fn create_handler(
    State(ctx): State<Ctx>,
    body: Bytes,
) -> AppResult<(StatusCode, Json<Value>)> {
    let input: NewProduct = parse_body(&body)?;
    let product = ctx.db.with(|c| create(c, &input))?;
    Ok((StatusCode::CREATED, Json(product)))
}

async fn decrease_handler(
    State(ctx): State<Ctx>,
    Path(id): Path<i64>,
    body: Bytes,
) -> AppResult<Json<Value>> {
    let q: Quantity = parse_body(&body)?;
    let stock = ctx.db.with(|c| decrease(c, id, q.quantity))?;
    Ok(Json(json!({ "productId": id, "stock": stock })))
}

async fn increase_handler(
    State(ctx): State<Ctx>,
    Path(id): Path<i64>,
    body: Bytes,
) -> AppResult<Json<Value>> {
    let q: Quantity = parse_body(&body)?;
    let stock = ctx.db.with(|c| increase(c, id, q.quantity))?;
    Ok(Json(json!({ "productId": id, "stock": stock })))
}

pub fn not_found(id: i64) -> AppError {
    AppError::NotFound(format!("product {id} not found"))
}

const COLUMNS: &str = "id, name, description, price_cents, stock, created_at";

fn to_json(r: &Row) -> rusqlite::Result<Value> {
    let cents: i64 = r.get(3)?;
    Ok(json!({
        "id": r.get::<_, i64>(0)?,
        "name": r.get::<_, String>(1)?,
        "description": r.get::<_, String>(2)?,
        "price": cents as f64 / 100.0,
        "priceCents": cents,
        "stock": r.get::<_, i64>(4)?,
        "createdAt": r.get::<_, String>(5)?,
    }))
}

pub fn find(conn: &Connection, id: i64) -> AppResult<Option<Value>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM products WHERE id = ?1"),
            [id],
            to_json,
        )
        .optional()?)
}

pub fn list(conn: &Connection, limit: i64, offset: i64) -> AppResult<(Vec<Value>, i64)> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM products ORDER BY id LIMIT ?1 OFFSET ?2"
    ))?;
    let rows = stmt
        .query_map([limit, offset], to_json)?
        .collect::<Result<Vec<_>, _>>()?;
    let total = conn.query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0))?;
    Ok((rows, total))
}

pub fn create(conn: &Connection, input: &NewProduct) -> AppResult<Value> {
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AppError::BadRequest(
            "name must be 1 to 100 characters".into(),
        ));
    }
    if input.description.chars().count() > 1000 {
        return Err(AppError::BadRequest("description is too long".into()));
    }
    if !input.price.is_finite() || input.price <= 0.0 || input.price > 1e9 {
        return Err(AppError::BadRequest(
            "price must be a positive number".into(),
        ));
    }
    if !(0..=1_000_000_000).contains(&input.stock) {
        return Err(AppError::BadRequest("stock must not be negative".into()));
    }
    let cents = (input.price * 100.0).round() as i64;
    conn.execute(
        "INSERT INTO products (name, description, price_cents, stock) VALUES (?1, ?2, ?3, ?4)",
        params![name, input.description, cents.max(1), input.stock],
    )?;
    find(conn, conn.last_insert_rowid())?.ok_or_else(|| AppError::Internal("lost insert".into()))
}

fn check_quantity(quantity: i64) -> AppResult<()> {
    if !(1..=1_000_000).contains(&quantity) {
        return Err(AppError::BadRequest(
            "quantity must be between 1 and 1000000".into(),
        ));
    }
    Ok(())
}

/// Takes `quantity` from stock atomically; 409 when there is not enough.
pub fn decrease(conn: &Connection, id: i64, quantity: i64) -> AppResult<i64> {
    check_quantity(quantity)?;
    let stock: Option<i64> = conn
        .query_row(
            "UPDATE products SET stock = stock - ?1 WHERE id = ?2 AND stock >= ?1 RETURNING stock",
            params![quantity, id],
            |r| r.get(0),
        )
        .optional()?;
    match stock {
        Some(stock) => Ok(stock),
        None => match find(conn, id)? {
            None => Err(not_found(id)),
            Some(p) => Err(AppError::Conflict(format!(
                "insufficient stock for product {id}: {} left, {quantity} requested",
                p["stock"]
            ))),
        },
    }
}

pub fn increase(conn: &Connection, id: i64, quantity: i64) -> AppResult<i64> {
    check_quantity(quantity)?;
    conn.query_row(
        "UPDATE products SET stock = stock + ?1 WHERE id = ?2 RETURNING stock",
        params![quantity, id],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| not_found(id))
}
