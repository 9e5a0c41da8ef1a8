//! Users service: accounts with salted PBKDF2 password hashes. The store
//! functions take a connection so the monolith can reuse them.
//!
//! `POST /users`, `GET /users`, `GET /users/{id}`, and `POST /users/verify`
//! (used by the auth service to check a password; answers 401 on a mismatch).

use std::num::NonZeroU32;

use aws_lc_rs::{pbkdf2, rand::SecureRandom};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine as _;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::{parse_body, AppError, AppResult, Ctx, Page};
use crate::outbox;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'customer',
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);";

const ITERATIONS: u32 = 60_000;
const ALG: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;

#[derive(Debug, Deserialize)]
pub struct NewUser {
    pub username: String,
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

pub fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/users", post(create_handler).get(list_handler))
        .route("/users/verify", post(verify_handler))
        .route("/users/{id}", get(get_handler))
        .with_state(ctx)
}

async fn create_handler(
    State(ctx): State<Ctx>,
    body: Bytes,
) -> AppResult<(StatusCode, Json<Value>)> {
    let input: NewUser = parse_body(&body)?;
    let user = ctx.db.with(|c| create(c, &input))?;
    ctx.outbox_wake.notify_one();
    Ok((StatusCode::CREATED, Json(user)))
}

async fn list_handler(State(ctx): State<Ctx>, Query(page): Query<Page>) -> AppResult<Json<Value>> {
    let (limit, offset) = page.bounds()?;
    let users = ctx.db.with(|c| list(c, limit, offset))?;
    Ok(Json(
        json!({ "users": users, "limit": limit, "offset": offset }),
    ))
}

async fn get_handler(State(ctx): State<Ctx>, Path(id): Path<i64>) -> AppResult<Json<Value>> {
    ctx.db
        .with(|c| find(c, id))?
        .map(Json)
        .ok_or_else(|| AppError::NotFound(format!("user {id} not found")))
}

async fn verify_handler(State(ctx): State<Ctx>, body: Bytes) -> AppResult<Json<Value>> {
    let input: Credentials = parse_body(&body)?;
    ctx.db
        .with(|c| verify(c, &input.username, &input.password))?
        .map(Json)
        .ok_or_else(|| AppError::Unauthorized("invalid username or password".into()))
}

fn validate(input: &NewUser) -> AppResult<()> {
    let name = &input.username;
    if !(3..=32).contains(&name.chars().count())
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(AppError::BadRequest(
            "username must be 3 to 32 characters: letters, digits, '_', '.', '-'".into(),
        ));
    }
    let email = &input.email;
    let valid_email = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !email.chars().any(char::is_whitespace)
                && email.len() <= 254
        }
        None => false,
    };
    if !valid_email {
        return Err(AppError::BadRequest("email is not a valid address".into()));
    }
    if !(8..=128).contains(&input.password.chars().count()) {
        return Err(AppError::BadRequest(
            "password must be 8 to 128 characters".into(),
        ));
    }
    Ok(())
}

fn iterations() -> NonZeroU32 {
    NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN)
}

/// `pbkdf2-sha256$ITERATIONS$SALT$HASH` with a fresh 16-byte salt.
pub fn hash_password(password: &str) -> AppResult<String> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| AppError::Internal("no randomness".into()))?;
    let mut hash = [0u8; 32];
    pbkdf2::derive(ALG, iterations(), &salt, password.as_bytes(), &mut hash);
    Ok(format!(
        "pbkdf2-sha256${ITERATIONS}${}${}",
        B64.encode(salt),
        B64.encode(hash)
    ))
}

/// Constant-time check of `password` against a stored hash.
pub fn check_password(stored: &str, password: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("pbkdf2-sha256"), Some(iter), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Some(iter), Ok(salt), Ok(hash)) = (
        iter.parse::<u32>().ok().and_then(NonZeroU32::new),
        B64.decode(salt),
        B64.decode(hash),
    ) else {
        return false;
    };
    pbkdf2::verify(ALG, iter, &salt, password.as_bytes(), &hash).is_ok()
}

fn to_json(r: &Row) -> rusqlite::Result<Value> {
    Ok(json!({
        "id": r.get::<_, i64>(0)?,
        "username": r.get::<_, String>(1)?,
        "email": r.get::<_, String>(2)?,
        "role": r.get::<_, String>(3)?,
        "createdAt": r.get::<_, String>(4)?,
    }))
}

const COLUMNS: &str = "id, username, email, role, created_at";

/// Validates, stores and records `user.created` in one transaction.
pub fn create(conn: &mut Connection, input: &NewUser) -> AppResult<Value> {
    validate(input)?;
    let hash = hash_password(&input.password)?;
    let tx = conn.transaction()?;
    let taken = |sql: &str, value: &str| -> AppResult<bool> {
        Ok(tx.query_row(sql, [value], |_| Ok(())).optional()?.is_some())
    };
    if taken("SELECT 1 FROM users WHERE username = ?1", &input.username)? {
        return Err(AppError::Conflict("username is already taken".into()));
    }
    if taken("SELECT 1 FROM users WHERE email = ?1", &input.email)? {
        return Err(AppError::Conflict("email is already registered".into()));
    }
    tx.execute(
        "INSERT INTO users (username, email, password_hash) VALUES (?1, ?2, ?3)",
        params![input.username, input.email, hash],
    )?;
    let id = tx.last_insert_rowid();
    let user = tx.query_row(
        &format!("SELECT {COLUMNS} FROM users WHERE id = ?1"),
        [id],
        to_json,
    )?;
    outbox::record(&tx, "user.created", id, &user)?;
    tx.commit()?;
    Ok(user)
}

pub fn find(conn: &Connection, id: i64) -> AppResult<Option<Value>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM users WHERE id = ?1"),
            [id],
            to_json,
        )
        .optional()?)
}

pub fn list(conn: &Connection, limit: i64, offset: i64) -> AppResult<Vec<Value>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM users ORDER BY id LIMIT ?1 OFFSET ?2"
    ))?;
    let rows = stmt.query_map([limit, offset], to_json)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The user when the password matches, `None` otherwise (also for an unknown user).
pub fn verify(conn: &Connection, username: &str, password: &str) -> AppResult<Option<Value>> {
    let found = conn
        .query_row(
            &format!("SELECT {COLUMNS}, password_hash FROM users WHERE username = ?1"),
            [username],
            |r| Ok((to_json(r)?, r.get::<_, String>(5)?)),
        )
        .optional()?;
    match found {
        Some((user, stored)) if check_password(&stored, password) => Ok(Some(user)),
        Some(_) => Ok(None),
        None => {
            // Spend the same time as for a known user.
            let _ = check_password(
                "pbkdf2-sha256$60000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                password,
            );
            Ok(None)
        }
    }
}
