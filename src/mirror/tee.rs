//! A copy of the primary response body, taken as it streams to the client: each chunk is
//! passed on at once (the copy holds a reference to it, `Bytes` are shared, not copied)
//! and, when the body has ended, the chunks go to the comparison. Nothing is held back,
//! so the client sees no delay; a body larger than the limit is no longer copied.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::oneshot;

use crate::wire::body::{Body, BoxError};

/// What the comparison gets of the primary body.
#[derive(Debug, PartialEq, Eq)]
pub enum Teed {
    Whole(Bytes),
    /// Above the compare limit: compared by status and headers only.
    TooLarge,
}

/// `body` as it streams to the client, and where its copy arrives. The receiver sees an
/// error when the body did not end (the client went away, the upstream failed).
pub fn tee(body: Body, limit: usize) -> (Body, oneshot::Receiver<Teed>) {
    let (tx, rx) = oneshot::channel();
    let body = Body::boxed(Tee {
        inner: body,
        chunks: Vec::new(),
        size: 0,
        limit,
        tx: Some(tx),
    });
    (body, rx)
}

struct Tee {
    inner: Body,
    chunks: Vec<Bytes>,
    size: usize,
    limit: usize,
    tx: Option<oneshot::Sender<Teed>>,
}

impl Tee {
    fn finish(&mut self) {
        if let Some(tx) = self.tx.take() {
            let chunks = std::mem::take(&mut self.chunks);
            let whole = match chunks.len() {
                0 => Bytes::new(),
                1 => chunks.into_iter().next().unwrap_or_default(),
                _ => {
                    let mut out = BytesMut::with_capacity(self.size);
                    for chunk in &chunks {
                        out.extend_from_slice(chunk);
                    }
                    out.freeze()
                }
            };
            let _ = tx.send(Teed::Whole(whole));
        }
    }
}

impl HttpBody for Tee {
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
        if this.tx.is_none() {
            return polled;
        }
        match result {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if this.size + data.len() > this.limit {
                        this.chunks = Vec::new();
                        if let Some(tx) = this.tx.take() {
                            let _ = tx.send(Teed::TooLarge);
                        }
                    } else {
                        this.size += data.len();
                        this.chunks.push(data.clone());
                    }
                }
            }
            // A failed body is not compared: dropping the sender says so.
            Some(Err(_)) => this.tx = None,
            None => this.finish(),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) may never be polled; any body hyper saw end is
        // whole.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_client_gets_every_byte_and_the_copy_is_whole() {
        let (body, rx) = tee(Body::full("hello"), 64);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(rx.await.unwrap(), Teed::Whole(Bytes::from_static(b"hello")));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_streams_but_is_not_kept() {
        let (body, rx) = tee(Body::full("hello world"), 5);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello world");
        assert_eq!(rx.await.unwrap(), Teed::TooLarge);
    }

    #[tokio::test]
    async fn an_empty_body_never_polled_is_whole() {
        let (body, rx) = tee(Body::empty(), 5);
        drop(body);
        assert_eq!(rx.await.unwrap(), Teed::Whole(Bytes::new()));
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_not_compared() {
        let (tx, rx_frames) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
        let mut rx_frames = rx_frames;
        let stream = http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| {
            rx_frames.poll_recv(cx)
        }));
        let (mut body, rx) = tee(Body::boxed(stream), 64);
        tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .await
            .unwrap();
        let _ = body.frame().await;
        drop(body);
        assert!(rx.await.is_err());
    }
}
