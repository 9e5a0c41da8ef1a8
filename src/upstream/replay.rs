//! A request body of unknown length that may have to be sent again: it streams to the
//! first try as it arrives (a streaming gRPC call waits for answers before it sends
//! more, so it cannot be read whole first), and a copy of its chunks is kept, up to
//! `max_body`. A retry sends the copy when the body had ended within that size.
//!
//! The mirror copies bodies the same way (a request body for its copy, the primary's
//! response body for the comparison) and waits for `ended` to learn the outcome.

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
    /// Told once the copy is whole or lost.
    settled: tokio::sync::Notify,
}

/// How a copy turned out.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Whole(Bytes),
    /// The body went above `max`.
    TooLarge,
    /// It failed, carried trailers, or was dropped before its end.
    Lost,
}

#[derive(Debug, Default)]
struct Copied {
    chunks: Vec<Bytes>,
    size: u64,
    /// The body ended and every byte of it is here.
    whole: bool,
    /// Too large, failed, carried trailers or dropped unfinished: it cannot be sent again.
    lost: bool,
    too_large: bool,
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
        Some(c.joined())
    }

    /// Waits until the body has ended or the copy is lost (the body is dropped at the
    /// latest, which settles it).
    pub async fn ended(&self) -> Ended {
        loop {
            {
                let c = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if c.too_large {
                    return Ended::TooLarge;
                }
                if c.lost {
                    return Ended::Lost;
                }
                if c.whole {
                    return Ended::Whole(c.joined());
                }
            }
            // A permit is stored when nobody waits yet, so a settle between the check
            // and this wait is not missed.
            self.settled.notified().await;
        }
    }
}

impl Copied {
    fn joined(&self) -> Bytes {
        match self.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(self.size as usize);
                for chunk in many {
                    out.extend_from_slice(chunk);
                }
                out.freeze()
            }
        }
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
        if c.lost || c.whole {
            return polled;
        }
        match result {
            Some(Ok(frame)) => match frame.data_ref() {
                Some(data) if c.size + data.len() as u64 <= this.max => {
                    c.size += data.len() as u64;
                    c.chunks.push(data.clone());
                    return polled;
                }
                Some(_) => {
                    c.too_large = true;
                    c.lost = true;
                    c.chunks = Vec::new();
                }
                None => {
                    c.lost = true;
                    c.chunks = Vec::new();
                }
            },
            Some(Err(_)) => c.lost = true,
            None => c.whole = true,
        }
        drop(c);
        this.copy.settled.notify_one();
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
        // only if hyper saw its end: is_end_stream tells. Otherwise it never will be.
        let mut c = self.copy.state.lock().unwrap_or_else(|p| p.into_inner());
        if c.whole || c.lost {
            return;
        }
        if self.inner.is_end_stream() {
            c.whole = true;
        } else {
            c.lost = true;
            c.chunks = Vec::new();
        }
        drop(c);
        self.copy.settled.notify_one();
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
        assert_eq!(copy.ended().await, Ended::Whole(Bytes::from("hello world")));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_streamed_but_not_kept() {
        let (body, copy) = copying(Body::full("hello world"), 5);
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(sent, "hello world", "the first try gets all of it");
        assert!(copy.whole().is_none());
        assert_eq!(copy.ended().await, Ended::TooLarge);
    }

    #[tokio::test]
    async fn an_empty_body_never_polled_is_whole_once_dropped() {
        let (body, copy) = copying(Body::empty(), 5);
        let waiter = tokio::spawn({
            let copy = copy.clone();
            async move { copy.ended().await }
        });
        tokio::task::yield_now().await;
        drop(body);
        assert_eq!(waiter.await.unwrap(), Ended::Whole(Bytes::new()));
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
        assert_eq!(copy.ended().await, Ended::Lost);
    }

    fn tokio_stream_like(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + Sync {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
