//! What every service shares: the context handed to handlers, the error type
//! that renders `{"error": "..."}`, the middleware (request id, latency and
//! failure injection, one log line per request, JSON errors) and the client
//! used to call other services.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::db::Db;
use crate::{Options, Service};

/// Shared state of one running service.
#[derive(Clone)]
pub struct Ctx {
    pub service: Service,
    pub opts: Arc<Options>,
    pub db: Db,
    pub http: reqwest::Client,
    /// Wakes the outbox relay after a commit that wrote events.
    pub outbox_wake: Arc<Notify>,
    /// Turns true when the service is stopping.
    pub shutdown: watch::Receiver<bool>,
}

impl Ctx {
    pub fn new(
        service: Service,
        opts: Arc<Options>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Ctx> {
        let db = Db::open(&opts.db, service)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(opts.call_timeout)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Ctx {
            service,
            opts,
            db,
            http,
            outbox_wake: Arc::new(Notify::new()),
            shutdown,
        })
    }
}

/// Every error a handler returns; rendered as `{"error": "..."}` with its status.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    BadGateway(String),
    #[error("injected failure")]
    Injected,
    #[error("internal error: {0}")]
    Internal(String),
    /// A status with a ready body, which carries an "error" field.
    #[error("{1}")]
    Body(StatusCode, Value),
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            AppError::Injected | AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::Body(status, _) => *status,
        }
    }
}

impl From<rusqlite::Error> for AppError {
    fn from(e: rusqlite::Error) -> Self {
        AppError::Internal(format!("database: {e}"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        match self {
            AppError::Body(_, body) => (status, Json(body)).into_response(),
            AppError::Internal(msg) => {
                tracing::error!(error = %msg, "internal error");
                (status, Json(json!({ "error": "internal error" }))).into_response()
            }
            other => (status, Json(json!({ "error": other.to_string() }))).into_response(),
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// Parses a JSON request body; anything malformed is a 400.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> AppResult<T> {
    if body.is_empty() {
        return Err(AppError::BadRequest("request body must be JSON".into()));
    }
    serde_json::from_slice(body)
        .map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")))
}

/// The request id of the current request (from `X-Request-Id` or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// 32 random hex digits.
pub fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// FNV-1a, for ETags and request fingerprints (not for security).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Adds `/health` and the common middleware to a service router.
pub fn wrap(router: Router, ctx: Ctx) -> Router {
    let name = ctx.service.name();
    router
        .route(
            "/health",
            get(move || async move { Json(json!({ "status": "ok", "service": name })) }),
        )
        .layer(axum::middleware::from_fn_with_state(ctx, middleware))
}

async fn middleware(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_owned)
        .unwrap_or_else(random_id);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let injectable = path != "/health";

    if injectable && !ctx.opts.latency.is_zero() {
        tokio::time::sleep(ctx.opts.latency).await;
    }
    let response =
        if injectable && ctx.opts.fail_rate > 0.0 && rand::random::<f64>() < ctx.opts.fail_rate {
            AppError::Injected.into_response()
        } else {
            next.run(req).await
        };
    let mut response = json_errors(response).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    tracing::info!(
        service = ctx.service.name(),
        %method,
        path = %path,
        status = response.status().as_u16(),
        ms = start.elapsed().as_secs_f64() * 1000.0,
        request_id = %request_id,
        "request"
    );
    response
}

/// Turns non-JSON error responses (axum rejections, 404/405 fallbacks) into `{"error": ...}`.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let body = serde_json::to_vec(&json!({ "error": message })).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// The answer of another service: its status and JSON body (`Null` when not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    pub fn error_message(&self) -> String {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("status {}", self.status))
    }
}

/// Calls another service; `Err` is a transport failure (refused, timed out).
pub async fn call(
    ctx: &Ctx,
    method: Method,
    url: &str,
    request_id: &str,
    body: Option<&Value>,
) -> Result<Reply, String> {
    let mut req = ctx
        .http
        .request(method, url)
        .header("x-request-id", request_id);
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Reply { status, body })
}

/// `?limit=&offset=` with bounds.
#[derive(Debug, serde::Deserialize)]
pub struct Page {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl Page {
    pub fn bounds(&self) -> AppResult<(i64, i64)> {
        let limit = self.limit.unwrap_or(50);
        let offset = self.offset.unwrap_or(0);
        if !(1..=500).contains(&limit) {
            return Err(AppError::BadRequest(
                "limit must be between 1 and 500".into(),
            ));
        }
        if offset < 0 {
            return Err(AppError::BadRequest("offset must not be negative".into()));
        }
        Ok((limit, offset))
    }
}
