//! `GatewayError`: every refusal the gateway makes, its status, and the one JSON shape clients see:
//! `{"error": "...", "status": N, "request_id": "..."}`. Whether a failure is retried is the
//! upstream's policy (`retries.on`, upstream/retry.rs), not a property of the error.

use http::{header, HeaderValue, Response, StatusCode};

use crate::auth::route::Rejection;
use crate::cache::flow::CacheError;
use crate::grpc;
use crate::transform::TransformError;
use crate::upstream::UpstreamError;
use crate::wire::body::Body;

#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("method not allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("request line too long (server.limits.max_request_line)")]
    RequestLineTooLong,
    #[error("request body is too large")]
    BodyTooLarge,
    #[error("request body not received in time")]
    RequestTimeout,
    #[error("no endpoint available for upstream {0}")]
    NoEndpoint(String),
    #[error("upstream connection failed")]
    ConnectFailed,
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("invalid response from upstream")]
    BadGateway,
    #[error("TLS handshake with upstream {0} failed")]
    UpstreamTls(String),
    #[error("upstream {0} is failing; its circuit breaker is open")]
    CircuitOpen(String),
    #[error("upstream {0} is at its connection limit")]
    Overloaded(String),
    #[error("{0}")]
    Auth(crate::auth::AuthError),
    #[error("{0}")]
    Rejected(crate::auth::route::Rejection),
    #[error("client address not allowed")]
    IpRefused,
    #[error("too many requests")]
    RateLimited { retry_after: u64 },
    #[error("the shared rate limit store is unavailable")]
    LimitStoreUnavailable,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::RequestLineTooLong => StatusCode::URI_TOO_LONG,
            GatewayError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::NoEndpoint(_) | GatewayError::ConnectFailed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::BadGateway | GatewayError::UpstreamTls(_) => StatusCode::BAD_GATEWAY,
            GatewayError::CircuitOpen(_) | GatewayError::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Auth(e) => e.status(),
            GatewayError::Rejected(r) => match r {
                Rejection::Token(e) => e.status(),
                Rejection::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
                Rejection::Forbidden(_) => StatusCode::FORBIDDEN,
                Rejection::KeysUnavailable | Rejection::Unavailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
            GatewayError::IpRefused => StatusCode::FORBIDDEN,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::LimitStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status a gRPC client gets for this refusal (after gRPC's own table of
    /// HTTP statuses, with the timeouts as DEADLINE_EXCEEDED).
    pub fn grpc_code(&self) -> grpc::Code {
        use grpc::Code;
        match self {
            GatewayError::NoRoute | GatewayError::MethodNotAllowed(_) => Code::Unimplemented,
            GatewayError::BadRequest(_) | GatewayError::RequestLineTooLong => Code::Internal,
            GatewayError::BodyTooLarge => Code::ResourceExhausted,
            GatewayError::RequestTimeout | GatewayError::UpstreamTimeout => Code::DeadlineExceeded,
            GatewayError::NoEndpoint(_)
            | GatewayError::ConnectFailed
            | GatewayError::BadGateway
            | GatewayError::UpstreamTls(_)
            | GatewayError::CircuitOpen(_)
            | GatewayError::Overloaded(_)
            | GatewayError::LimitStoreUnavailable => Code::Unavailable,
            GatewayError::Auth(e) => match e.status() {
                StatusCode::FORBIDDEN => Code::PermissionDenied,
                // The keys could not be fetched: the caller did nothing wrong.
                StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
                _ => Code::Unauthenticated,
            },
            GatewayError::Rejected(_) | GatewayError::IpRefused => match self.status() {
                StatusCode::FORBIDDEN => Code::PermissionDenied,
                StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
                _ => Code::Unauthenticated,
            },
            GatewayError::RateLimited { .. } => Code::ResourceExhausted,
        }
    }

    /// The refusal as a gRPC client reads it: HTTP 200, `grpc-status` and `grpc-message`
    /// in the head (a trailers-only response), never a JSON page.
    pub fn to_grpc_response(&self, request_id: &HeaderValue) -> Response<Body> {
        let mut response = grpc::error_response(self.grpc_code(), &self.to_string());
        let headers = response.headers_mut();
        headers.insert(crate::observe::REQUEST_ID.clone(), request_id.clone());
        if let GatewayError::RateLimited { retry_after } = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        response
    }

    pub fn to_response(&self, request_id: &HeaderValue) -> Response<Body> {
        let mut response = json_error(self.status(), &self.to_string(), request_id);
        match self {
            // Nothing after the refused head was read: the connection cannot go on.
            GatewayError::RequestLineTooLong => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            GatewayError::Auth(e) | GatewayError::Rejected(Rejection::Token(e)) => {
                if let Some(challenge) = e.challenge() {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, challenge);
                }
            }
            GatewayError::Rejected(Rejection::Unauthenticated {
                challenge: Some(challenge),
                ..
            }) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge.clone());
            }
            GatewayError::RateLimited { retry_after } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        response
    }
}

/// The lower layers' errors, each given its place in the status table.
impl From<UpstreamError> for GatewayError {
    fn from(e: UpstreamError) -> GatewayError {
        match e {
            UpstreamError::NoEndpoint(name) => GatewayError::NoEndpoint(name),
            UpstreamError::ConnectFailed => GatewayError::ConnectFailed,
            UpstreamError::TlsHandshake(name) => GatewayError::UpstreamTls(name),
            UpstreamError::Timeout => GatewayError::UpstreamTimeout,
            UpstreamError::InvalidResponse => GatewayError::BadGateway,
            UpstreamError::CircuitOpen(name) => GatewayError::CircuitOpen(name),
            UpstreamError::Overloaded(name) => GatewayError::Overloaded(name),
            UpstreamError::RequestBodyTooLarge => GatewayError::BodyTooLarge,
            UpstreamError::RequestBodyTimeout => GatewayError::RequestTimeout,
            UpstreamError::RequestBodyUnreadable => {
                GatewayError::BadRequest("could not read the request body")
            }
        }
    }
}

impl From<TransformError> for GatewayError {
    fn from(e: TransformError) -> GatewayError {
        match e {
            TransformError::InvalidTarget => GatewayError::BadRequest("invalid request target"),
            TransformError::InvalidJson => {
                GatewayError::BadRequest("request body is not valid JSON")
            }
            TransformError::BodyTooLarge => GatewayError::BodyTooLarge,
            TransformError::BodyUnreadable => {
                GatewayError::BadRequest("request body could not be read")
            }
            TransformError::ResponseBodyFailed => GatewayError::BadGateway,
            TransformError::BodyTimeout => GatewayError::RequestTimeout,
            TransformError::ResponseBodyTimeout => GatewayError::UpstreamTimeout,
        }
    }
}

impl From<CacheError> for GatewayError {
    fn from(e: CacheError) -> GatewayError {
        match e {
            CacheError::Upstream(e) => e.into(),
            CacheError::Transform(e) => e.into(),
        }
    }
}

/// Renders the gateway's JSON error shape.
pub fn json_error(status: StatusCode, message: &str, request_id: &HeaderValue) -> Response<Body> {
    let body = serde_json::json!({
        "error": message,
        "status": status.as_u16(),
        "request_id": request_id.to_str().unwrap_or(""),
    });
    let mut response = Response::new(Body::full(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(crate::observe::REQUEST_ID.clone(), request_id.clone());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn renders_the_json_shape() {
        let id = HeaderValue::from_static("abc");
        let response = GatewayError::NoEndpoint("users".into()).to_response(&id);
        assert_eq!(response.status(), 503);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["status"], 503);
        assert_eq!(v["request_id"], "abc");
        assert!(v["error"].as_str().unwrap().contains("users"));
    }
}
