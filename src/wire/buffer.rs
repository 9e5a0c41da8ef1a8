//! Reading a body into memory up to a limit, without losing it when it is larger: the
//! cache buffers responses up to `max_entry`, JSON transforms up to their `max_size`;
//! a body past the limit continues as a stream made of what was read plus the rest.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::{Body, BoxError};

pub enum Buffered {
    /// The whole body, at most `limit` bytes.
    Complete(Bytes),
    /// Larger than the limit (or carrying trailers): the same bytes, as a stream.
    Overflow(Body),
    /// The body failed while being read.
    Failed(BoxError),
}

pub async fn up_to(mut body: Body, limit: u64) -> Buffered {
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut total: u64 = 0;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Buffered::Failed(e),
            Some(Ok(frame)) => {
                let over = match frame.data_ref() {
                    Some(data) => {
                        total += data.len() as u64;
                        total > limit
                    }
                    None => true,
                };
                frames.push_back(frame);
                if over {
                    return Buffered::Overflow(Body::boxed(Prefixed { frames, rest: body }));
                }
            }
        }
    }
    if frames.len() == 1 {
        if let Some(Ok(data)) = frames.pop_front().map(Frame::into_data) {
            return Buffered::Complete(data);
        }
        return Buffered::Complete(Bytes::new());
    }
    let mut out = BytesMut::with_capacity(usize::try_from(total).unwrap_or(0));
    for frame in frames {
        if let Some(data) = frame.data_ref() {
            out.extend_from_slice(data);
        }
    }
    Buffered::Complete(out.freeze())
}

pin_project_lite::pin_project! {
    /// Frames already read, then the rest of the body.
    struct Prefixed {
        frames: VecDeque<Frame<Bytes>>,
        #[pin]
        rest: Body,
    }
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(frame) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + buffered);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_bodies_complete_and_large_ones_stream_whole() {
        match up_to(Body::full("hello"), 5).await {
            Buffered::Complete(b) => assert_eq!(b, "hello"),
            _ => panic!("expected complete"),
        }
        match up_to(Body::full("hello!"), 5).await {
            Buffered::Overflow(body) => {
                let all = body.collect().await.unwrap().to_bytes();
                assert_eq!(all, "hello!");
            }
            _ => panic!("expected overflow"),
        }
        match up_to(Body::empty(), 5).await {
            Buffered::Complete(b) => assert!(b.is_empty()),
            _ => panic!("expected complete"),
        }
    }
}
