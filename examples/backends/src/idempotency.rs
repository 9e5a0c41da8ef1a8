//! `Idempotency-Key` for POSTs that must not run twice (order creation).
//!
//! The first request with a key claims it (a row without a response); when it
//! finishes, its status and body are stored and every retry with the same key
//! gets them back. A retry while the first is still running gets 409; the
//! same key with a different body gets 422. Internal errors (500) release
//! the key so the client can retry.

use std::future::Future;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rusqlite::{params, OptionalExtension};
use serde_json::{json, Value};

use crate::common::{fnv1a, AppError, AppResult, Ctx};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency (
    key          TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    status       INTEGER,
    response     TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);";

enum Begin {
    Claimed,
    Replay(StatusCode, Value),
}

fn begin(ctx: &Ctx, key: &str, hash: &str) -> AppResult<Begin> {
    ctx.db.with(|c| {
        let tx = c.transaction()?;
        let row: Option<(String, Option<u16>, Option<String>)> = tx
            .query_row(
                "SELECT request_hash, status, response FROM idempotency WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let result = match row {
            None => {
                tx.execute(
                    "INSERT INTO idempotency (key, request_hash) VALUES (?1, ?2)",
                    params![key, hash],
                )?;
                Begin::Claimed
            }
            Some((stored, _, _)) if stored != hash => {
                return Err(AppError::Unprocessable(
                    "Idempotency-Key was already used with a different request".into(),
                ))
            }
            Some((_, Some(status), Some(body))) => Begin::Replay(
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                serde_json::from_str(&body).unwrap_or(Value::Null),
            ),
            Some(_) => {
                return Err(AppError::Conflict(
                    "a request with this Idempotency-Key is still in progress".into(),
                ))
            }
        };
        tx.commit()?;
        Ok(result)
    })
}

/// Runs `work` at most once per `Idempotency-Key` (every time when there is none).
pub async fn guarded<F, Fut>(ctx: &Ctx, headers: &HeaderMap, body: &Bytes, work: F) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = AppResult<(StatusCode, Value)>>,
{
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 255 => Some(k.to_owned()),
        Some(_) => {
            return AppError::BadRequest(
                "Idempotency-Key must be 1 to 255 visible characters".into(),
            )
            .into_response()
        }
    };
    let Some(key) = key else {
        return render(work().await);
    };
    let hash = format!("{:016x}", fnv1a(body));
    match begin(ctx, &key, &hash) {
        Err(e) => return e.into_response(),
        Ok(Begin::Replay(status, body)) => {
            let mut response = (status, Json(body)).into_response();
            response.headers_mut().insert(
                "idempotent-replayed",
                axum::http::HeaderValue::from_static("true"),
            );
            return response;
        }
        Ok(Begin::Claimed) => {}
    }
    let result = work().await;
    let stored = match &result {
        Err(AppError::Internal(_)) => ctx.db.with(|c| {
            c.execute("DELETE FROM idempotency WHERE key = ?1", [&key])?;
            Ok(())
        }),
        other => {
            let (status, body) = match other {
                Ok((status, body)) => (*status, body.clone()),
                Err(e) => (e.status(), error_body(e)),
            };
            ctx.db.with(|c| {
                c.execute(
                    "UPDATE idempotency SET status = ?1, response = ?2 WHERE key = ?3",
                    params![status.as_u16(), body.to_string(), key],
                )?;
                Ok(())
            })
        }
    };
    if let Err(e) = stored {
        tracing::error!(error = %e, "cannot store idempotent response");
    }
    render(result)
}

fn error_body(e: &AppError) -> Value {
    match e {
        AppError::Body(_, body) => body.clone(),
        other => json!({ "error": other.to_string() }),
    }
}

fn render(result: AppResult<(StatusCode, Value)>) -> Response {
    match result {
        Ok((status, body)) => (status, Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}
