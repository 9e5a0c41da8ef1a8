//! The one body type that flows through the gateway in both directions. An enum instead
//! of a boxed trait object, so the common cases (streamed from hyper, a prebuilt buffer,
//! nothing) cost no allocation.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

pub use super::BoxError;

/// The client sent more body than `server.limits.max_request_body` allows.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than the limit")]
pub struct BodyTooLarge;

pin_project_lite::pin_project! {
    #[project = BodyProj]
    pub enum Body {
        Empty,
        Full { data: Option<Bytes> },
        Streaming { #[pin] inner: Incoming, remaining: u64 },
        Boxed { #[pin] inner: http_body_util::combinators::BoxBody<Bytes, BoxError> },
        Upstream { inner: super::h1::UpstreamBody },
    }
}

impl Body {
    pub fn empty() -> Body {
        Body::Empty
    }

    pub fn full(data: impl Into<Bytes>) -> Body {
        let data = data.into();
        if data.is_empty() {
            Body::Empty
        } else {
            Body::Full { data: Some(data) }
        }
    }

    /// Streams `inner`, failing with `BodyTooLarge` once more than `limit` bytes arrived.
    pub fn limited(inner: Incoming, limit: u64) -> Body {
        Body::Streaming {
            inner,
            remaining: limit,
        }
    }

    /// Streams `inner` without a limit (responses from upstreams).
    pub fn streaming(inner: Incoming) -> Body {
        Body::Streaming {
            inner,
            remaining: u64::MAX,
        }
    }

    /// A response body read off a pooled upstream connection.
    pub fn upstream(inner: super::h1::UpstreamBody) -> Body {
        Body::Upstream { inner }
    }

    pub fn boxed<B>(inner: B) -> Body
    where
        B: HttpBody<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
    {
        Body::Boxed {
            inner: http_body_util::combinators::BoxBody::new(inner),
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            BodyProj::Empty => Poll::Ready(None),
            BodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyProj::Streaming { inner, remaining } => {
                match std::task::ready!(inner.poll_frame(cx)) {
                    None => Poll::Ready(None),
                    Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let len = data.len() as u64;
                            if len > *remaining {
                                *remaining = 0;
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                            }
                            *remaining -= len;
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                }
            }
            BodyProj::Boxed { inner } => inner.poll_frame(cx),
            BodyProj::Upstream { inner } => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full { data } => data.is_none(),
            Body::Streaming { inner, .. } => inner.is_end_stream(),
            Body::Boxed { inner } => inner.is_end_stream(),
            Body::Upstream { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full { data } => {
                SizeHint::with_exact(data.as_ref().map(|d| d.len() as u64).unwrap_or(0))
            }
            Body::Streaming { inner, .. } => inner.size_hint(),
            Body::Boxed { inner } => inner.size_hint(),
            Body::Upstream { inner } => inner.size_hint(),
        }
    }
}

/// True when `err` (or anything it wraps) is our `BodyTooLarge`.
pub fn is_body_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.is::<BodyTooLarge>() {
            return true;
        }
        current = e.source();
    }
    false
}
