//! gRPC on routes with `grpc: true`: the status codes, the `grpc-timeout` header, the
//! shape of an error the gateway itself makes (HTTP 200 with `grpc-status` and
//! `grpc-message` in the head, no body: a "trailers-only" response), and the response
//! body that counts each call's final status and ends a call past its deadline.
//!
//! The bytes of the calls are not touched: messages, metadata and trailers stream both
//! ways as they come.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::{IntCounter, IntCounterVec};
use tokio::time::{Instant, Sleep};

use crate::wire::body::{Body, BoxError};

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The gRPC status codes, by the numbers the wire carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// The codes' names as `retries.on` spells them (the gRPC names in lower case).
pub const CODE_NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// The `grpc_status` label values: the codes as numbers, and `none` for a call that
/// ended without a status (the upstream reset it, or sent no trailers).
const STATUS_LABELS: [&str; 18] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "none",
];
const NONE: usize = 17;

impl Code {
    /// The code named `name` in `retries.on`.
    pub fn from_name(name: &str) -> Option<u8> {
        CODE_NAMES.iter().position(|n| *n == name).map(|i| i as u8)
    }
}

/// True when the request is a gRPC call (`Content-Type: application/grpc`, with or
/// without a `+proto`-style suffix).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The status in a head or trailers: a number 0-16, else None.
pub fn status_of(headers: &HeaderMap) -> Option<u8> {
    let value = headers.get(&GRPC_STATUS)?.to_str().ok()?;
    value.parse::<u8>().ok().filter(|c| *c <= 16)
}

/// The deadline a `grpc-timeout` header sets (`1-8 digits` then `H M S m u n`), None
/// when absent or malformed (the spec says to ignore it then).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// An error the gateway answers itself, as gRPC clients read it: HTTP 200, the status
/// and message in the head, no body.
pub fn error_response(code: Code, message: &str) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        GRPC_STATUS.clone(),
        HeaderValue::from(u16::from(code as u8)),
    );
    if let Ok(message) = HeaderValue::from_str(&encode_message(message)) {
        headers.insert(GRPC_MESSAGE.clone(), message);
    }
    response
}

/// `grpc-message` is percent-encoded: everything outside printable ASCII, and `%`.
fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One route's `portico_grpc_responses_total` handles, resolved once.
#[derive(Debug)]
pub struct GrpcMetrics {
    by_status: [IntCounter; 18],
}

impl GrpcMetrics {
    pub fn new(responses: &IntCounterVec, route: &str) -> GrpcMetrics {
        GrpcMetrics {
            by_status: std::array::from_fn(|i| {
                responses.with_label_values(&[route, STATUS_LABELS[i]])
            }),
        }
    }

    pub fn record(&self, code: Option<u8>) {
        let i = code.map_or(NONE, usize::from);
        self.by_status[i.min(NONE)].inc();
    }
}

/// Watches an upstream's answer to a gRPC call: counts its final status (in the head of
/// a trailers-only answer, else in the trailers), and past the call's deadline ends it
/// with DEADLINE_EXCEEDED in trailers (which also resets the upstream stream).
pub fn watch(
    response: Response<Body>,
    metrics: std::sync::Arc<GrpcMetrics>,
    deadline: Option<Instant>,
) -> Response<Body> {
    if let Some(code) = status_of(response.headers()) {
        metrics.record(Some(code));
        return response;
    }
    response.map(|inner| {
        Body::boxed(CallBody {
            inner,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            metrics,
            state: State::Streaming,
        })
    })
}

#[derive(PartialEq)]
enum State {
    Streaming,
    /// The status was counted; nothing more is counted.
    Counted,
    /// The deadline passed and its trailers were sent: the body has ended.
    Ended,
}

struct CallBody {
    inner: Body,
    deadline: Option<Pin<Box<Sleep>>>,
    metrics: std::sync::Arc<GrpcMetrics>,
    state: State,
}

impl CallBody {
    fn count(&mut self, code: Option<u8>) {
        if self.state == State::Streaming {
            self.metrics.record(code);
            self.state = State::Counted;
        }
    }
}

impl HttpBody for CallBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.state == State::Ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = status_of(trailers);
                    this.count(code);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => {
                this.count(None);
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(None) => {
                this.count(None);
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        let Some(deadline) = this.deadline.as_mut() else {
            return Poll::Pending;
        };
        if deadline.as_mut().poll(cx).is_pending() || this.state != State::Streaming {
            return Poll::Pending;
        }
        this.count(Some(Code::DeadlineExceeded as u8));
        this.state = State::Ended;
        // The upstream's stream is reset when its body is dropped with this one's end.
        this.inner = Body::empty();
        let mut trailers = HeaderMap::new();
        trailers.insert(
            GRPC_STATUS.clone(),
            HeaderValue::from(u16::from(Code::DeadlineExceeded as u8)),
        );
        trailers.insert(
            GRPC_MESSAGE.clone(),
            HeaderValue::from_static("deadline exceeded (grpc-timeout)"),
        );
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Ended || (self.deadline.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.deadline {
            None => self.inner.size_hint(),
            // A deadline can end the body early, with trailers.
            Some(_) => SizeHint::default(),
        }
    }
}

impl Drop for CallBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or the server cut it).
        self.count(Some(Code::Cancelled as u8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn grpc_timeout_units() {
        let t = |v| timeout(&with("grpc-timeout", v));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("150m"), Some(Duration::from_millis(150)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("7M"), Some(Duration::from_secs(420)));
        assert_eq!(t("10u"), Some(Duration::from_micros(10)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
        let mut wide = HeaderMap::new();
        wide.insert(
            "grpc-timeout",
            HeaderValue::from_bytes("１S".as_bytes()).unwrap(),
        );
        assert_eq!(timeout(&wide), None, "digits are ASCII digits");
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn statuses_and_content_types() {
        assert_eq!(status_of(&with("grpc-status", "14")), Some(14));
        assert_eq!(status_of(&with("grpc-status", "17")), None);
        assert_eq!(status_of(&with("grpc-status", "x")), None);
        assert!(is_grpc(&with("content-type", "application/grpc")));
        assert!(is_grpc(&with("content-type", "application/grpc+proto")));
        assert!(!is_grpc(&with("content-type", "application/json")));
        assert_eq!(Code::from_name("unavailable"), Some(14));
        assert_eq!(Code::from_name("Unavailable"), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("no route"), "no route");
        assert_eq!(encode_message("100% ünïcode"), "100%25 %C3%BCn%C3%AFcode");
        let r = error_response(Code::Unavailable, "upstream a\nb");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "upstream a%0Ab");
        assert_eq!(r.headers()["content-type"], "application/grpc");
    }
}
