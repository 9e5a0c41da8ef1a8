//! Auth service: issues RS256 access tokens after checking the password with
//! the users service, and publishes its public keys as a JWKS.
//!
//! Keys are RSA-2048, made in memory at start (so they change on restart).
//! `POST /auth/rotate` makes a new signing key; the old one stays in the JWKS
//! until the last token it signed has expired (token lifetime after rotation).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::common::{call, parse_body, random_id, AppError, AppResult, Ctx, RequestId};

/// Audience of every token.
pub const AUDIENCE: &str = "shop-api";

struct SigningKey {
    kid: String,
    key: EncodingKey,
    jwk: Value,
    retired: Option<Instant>,
}

#[derive(Clone)]
struct Auth {
    ctx: Ctx,
    issuer: String,
    keys: Arc<RwLock<Vec<SigningKey>>>,
}

/// The claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub role: String,
    pub username: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
}

#[derive(Debug, Deserialize)]
struct Login {
    username: String,
    password: String,
}

pub fn router(ctx: Ctx) -> anyhow::Result<Router> {
    let issuer = ctx
        .opts
        .issuer
        .clone()
        .unwrap_or_else(|| format!("http://{}", ctx.opts.addr));
    let auth = Auth {
        ctx,
        issuer,
        keys: Arc::new(RwLock::new(vec![generate_key()?])),
    };
    Ok(Router::new()
        .route("/auth/login", post(login))
        .route("/auth/rotate", post(rotate))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(auth))
}

/// A fresh RSA-2048 key with its kid and public JWK.
fn generate_key() -> anyhow::Result<SigningKey> {
    let pair = KeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
    let pkcs8 = pair
        .as_der()
        .map_err(|_| anyhow::anyhow!("RSA key export failed"))?;
    let pkcs1 = pkcs1_from_pkcs8(pkcs8.as_ref()).context("unexpected PKCS#8 layout")?;
    let public = pair.public_key();
    let kid = random_id()[..16].to_owned();
    let jwk = json!({
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": B64URL.encode(public.modulus().big_endian_without_leading_zero()),
        "e": B64URL.encode(public.exponent().big_endian_without_leading_zero()),
    });
    Ok(SigningKey {
        kid,
        key: EncodingKey::from_rsa_der(pkcs1),
        jwk,
        retired: None,
    })
}

/// PKCS#8 `PrivateKeyInfo` → the PKCS#1 `RSAPrivateKey` in its OCTET STRING.
fn pkcs1_from_pkcs8(der: &[u8]) -> Option<&[u8]> {
    let (0x30, info, _) = tlv(der)? else {
        return None;
    };
    let (0x02, _, rest) = tlv(info)? else {
        return None;
    };
    let (0x30, _, rest) = tlv(rest)? else {
        return None;
    };
    let (0x04, key, _) = tlv(rest)? else {
        return None;
    };
    Some(key)
}

/// One DER tag-length-value: (tag, value, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        (
            bytes
                .iter()
                .fold(0usize, |acc, b| acc << 8 | usize::from(*b)),
            rest,
        )
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((tag, value, rest))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn login(
    State(auth): State<Auth>,
    Extension(rid): Extension<RequestId>,
    body: Bytes,
) -> AppResult<Json<Value>> {
    let input: Login = parse_body(&body)?;
    if input.username.is_empty() || input.password.is_empty() {
        return Err(AppError::BadRequest(
            "username and password are required".into(),
        ));
    }
    let url = format!("{}/users/verify", auth.ctx.opts.users_url);
    let creds = json!({ "username": input.username, "password": input.password });
    let reply = call(&auth.ctx, Method::POST, &url, &rid.0, Some(&creds))
        .await
        .map_err(|e| AppError::BadGateway(format!("users service unavailable: {e}")))?;
    match reply.status {
        StatusCode::OK => {}
        StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST => {
            return Err(AppError::Unauthorized(
                "invalid username or password".into(),
            ))
        }
        other => {
            return Err(AppError::BadGateway(format!(
                "users service answered {}: {}",
                other.as_u16(),
                reply.error_message()
            )))
        }
    }
    let user = reply.body;
    let id = user["id"]
        .as_i64()
        .ok_or_else(|| AppError::BadGateway("users service: answer without an id".into()))?;
    let ttl = auth.ctx.opts.token_ttl.as_secs();
    let now = unix_now();
    let claims = Claims {
        iss: auth.issuer.clone(),
        aud: AUDIENCE.into(),
        sub: id.to_string(),
        role: user["role"].as_str().unwrap_or("customer").into(),
        username: user["username"].as_str().unwrap_or_default().into(),
        iat: now,
        nbf: now,
        exp: now + ttl,
        jti: random_id(),
    };
    let token = {
        let keys = auth.keys.read().unwrap_or_else(|p| p.into_inner());
        let current = keys
            .last()
            .ok_or_else(|| AppError::Internal("no signing key".into()))?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(current.kid.clone());
        jsonwebtoken::encode(&header, &claims, &current.key)
            .map_err(|e| AppError::Internal(format!("signing failed: {e}")))?
    };
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "user": user,
    })))
}

async fn rotate(State(auth): State<Auth>) -> AppResult<Json<Value>> {
    let fresh = tokio::task::spawn_blocking(generate_key)
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let kid = fresh.kid.clone();
    let mut keys = auth.keys.write().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    for key in keys.iter_mut() {
        key.retired.get_or_insert(now);
    }
    keys.push(fresh);
    let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
    Ok(Json(json!({ "kid": kid, "keys": kids })))
}

async fn jwks(State(auth): State<Auth>) -> impl IntoResponse {
    // A retired key stays published until every token it signed has expired.
    let keep_for = auth.ctx.opts.token_ttl + Duration::from_secs(60);
    let mut keys = auth.keys.write().unwrap_or_else(|p| p.into_inner());
    keys.retain(|k| k.retired.is_none_or(|at| at.elapsed() < keep_for));
    let jwks: Vec<Value> = keys.iter().rev().map(|k| k.jwk.clone()).collect();
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(json!({ "keys": jwks })),
    )
}
