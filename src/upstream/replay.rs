//! A request body of unknown length that may have to be sent again: it streams to the
//! first try as it arrives (a streaming gRPC call waits for answers before it sends
//! more, so it cannot be read whole first), and a copy of its chunks is kept, up to
//! `max_body`. A retry sends the copy when the body had ended within that size.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::wire::body::{Body, BoxError};

/// What was copied of the body so far.
#[derive(Debug, Default)]
pub struct Copy {
    state: Mutex<Copied>,
}

#[derive(Debug, Default)]
struct Copied {
    chunks: Vec<Bytes>,
    size: u64,
    /// The body ended and every byte of it is here.
    whole: bool,
    /// Too large, failed, or carried trailers: it cannot be sent again.
    lost: bool,
}

impl Copy {
    pub fn is_whole(&self) -> bool {
        let c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        c.whole && !c.lost
    }

    /// The whole body in one buffer, when it can be sent again.
    pub fn whole(&self) -> Option<Bytes> {
        let c = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !c.whole || c.lost {
            return None;
        }
        let mut out = BytesMut::with_capacity(c.size as usize);
        for chunk in &c.chunks {
            out.extend_from_slice(chunk);
        }
        Some(out.freeze())
    }
}

/// `body` as it streams to the first try, and the copy it leaves.
pub fn copying(body: Body, max: u64) -> (Body, Arc<Copy>) {
    let copy = Arc::new(Copy::default());
    let body = Body::boxed(Copying {
        inner: body,
        copy: copy.clone(),
        max,
    });
    (body, copy)
}

struct Copying {
    inner: Body,
    copy: Arc<Copy>,
    max: u64,
}

impl HttpBody for Copying {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Poll::Ready(result) = &polled else {
            return polled;
        };
        let mut c = this.copy.state.lock().unwrap_or_else(|p| p.into_inner());
        if c.lost {
            return polled;
        }
        match result {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) if c.size + data.len() as u64 <= this.max => {
                    c.size += data.len() as u64;
                    c.chunks.push(data.clone());
                }
                _ => {
                    c.lost = true;
                    c.chunks = Vec::new();
                }
            },
            Some(Err(_)) => c.lost = true,
            None => c.whole = true,
        }
        drop(c);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Copying {
    fn drop(&mut self) {
        // A body dropped after its last frame but before the poll that says so is whole
        // only if hyper saw its end: is_end_stream tells.
        if self.inner.is_end_stream() {
            let mut c = self.copy.state.lock().unwrap_or_else(|p| p.into_inner());
            c.whole = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_within_the_limit_is_kept_whole() {
        let (body, copy) = copying(Body::full("hello world"), 64);
        assert!(!copy.is_whole(), "nothing streamed yet");
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(sent, "hello world");
        assert_eq!(copy.whole().unwrap(), "hello world");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_streamed_but_not_kept() {
        let (body, copy) = copying(Body::full("hello world"), 5);
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(sent, "hello world", "the first try gets all of it");
        assert!(copy.whole().is_none());
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_not_kept() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
        let stream = http_body_util::StreamBody::new(tokio_stream_like(rx));
        let (body, copy) = copying(Body::boxed(stream), 64);
        tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .await
            .unwrap();
        let mut body = body;
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "part");
        drop(body);
        assert!(!copy.is_whole());
    }

    fn tokio_stream_like(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + Sync {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
