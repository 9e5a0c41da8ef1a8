//! HTTP/1.1 to an upstream, written for the proxy's one pattern: write a request on a
//! pooled connection, read one response, hand the connection back when its body ends.
//!
//! It runs inside the task that serves the client, so a proxied request costs no task
//! switch and no channel, and the connection's buffers are reused from request to
//! request. Upgrades (WebSocket) still go through hyper's client (`proxy::upgrade`).
//!
//! Framing follows RFC 9112 section 6: a response to HEAD, a 1xx, 204 or 304 has no body;
//! `Transfer-Encoding: chunked` wins over `Content-Length` (and the connection is then
//! not reused, as a defence against smuggling); a bad or conflicting `Content-Length` is
//! an invalid response; without either the body runs until the upstream closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use super::connect::UpstreamStream;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;

pub mod pool;
mod response;
#[cfg(test)]
mod tests;

use response::parse_head;
pub use response::{into_response, Framing, H1Body, ResponseHead, UpstreamBody};

use super::BoxError;
use pool::Pool;

/// The largest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields accepted in a response head.
const MAX_HEADERS: usize = 128;
/// Bodies up to this size are copied behind the head and go out in one write.
const COALESCE: usize = 16 * 1024;
/// A chunk-size line longer than this is not a chunk size.
const MAX_CHUNK_LINE: usize = 4096;
/// Trailer section bytes accepted (and dropped) after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;
const READ_RESERVE: usize = 8 * 1024;

/// Why an exchange with an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Connect(super::connect::ConnectError),
    #[error("writing the request failed: {0}")]
    Write(io::Error),
    #[error("reading the client's request body failed: {0}")]
    RequestBody(BoxError),
    #[error("connection closed before a response")]
    Closed,
    #[error("reading the response failed: {0}")]
    Read(io::Error),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}

impl ExchangeError {
    /// Failures that a reused connection shows when the upstream had already closed it:
    /// nothing of a response was received, so the request can go out again on a new one.
    pub fn is_stale_connection(&self) -> bool {
        matches!(self, ExchangeError::Write(_) | ExchangeError::Closed)
    }
}

/// One keep-alive connection to an endpoint and its read and write buffers.
#[derive(Debug)]
pub struct Conn {
    stream: UpstreamStream,
    read: BytesMut,
    write: Vec<u8>,
}

impl Conn {
    /// Boxed once, so handing the connection between pool and response body moves a
    /// pointer.
    pub fn new(stream: UpstreamStream) -> Box<Conn> {
        Box::new(Conn {
            stream,
            read: BytesMut::with_capacity(READ_RESERVE),
            write: Vec::with_capacity(1024),
        })
    }

    /// True when nothing has arrived since the last response: the upstream has not
    /// closed the idle connection nor sent anything unasked.
    pub fn is_idle(&mut self) -> bool {
        self.stream.is_idle()
    }

    /// Writes the request and flushes it (TLS keeps written bytes in its records until
    /// flushed).
    /// `extra`: one more header field written after `headers` (a try's `traceparent`),
    /// so a per-try value costs no header map insert.
    pub async fn write_request<B>(
        &mut self,
        method: &Method,
        path_and_query: &PathAndQuery,
        authority: &Authority,
        headers: &HeaderMap,
        extra: Option<(&HeaderName, &[u8])>,
        body: B,
    ) -> Result<(), ExchangeError>
    where
        B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
    {
        self.write_message(method, path_and_query, authority, headers, extra, body)
            .await?;
        if !self.stream.buffers_writes() {
            return Ok(());
        }
        tokio::io::AsyncWriteExt::flush(&mut self.stream)
            .await
            .map_err(ExchangeError::Write)
    }

    /// Writes the request: head, then the body with the framing its size calls for.
    async fn write_message<B>(
        &mut self,
        method: &Method,
        path_and_query: &PathAndQuery,
        authority: &Authority,
        headers: &HeaderMap,
        extra: Option<(&HeaderName, &[u8])>,
        mut body: B,
    ) -> Result<(), ExchangeError>
    where
        B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
    {
        let framing = request_framing(method, &body);
        self.write.clear();
        encode_head(
            &mut self.write,
            method,
            path_and_query,
            authority,
            headers,
            extra,
            framing,
        );
        // A small body of known length is gathered behind the head and goes out in one
        // write: one segment and one wake-up for the upstream instead of two, even when
        // the client's body arrives a moment after its head.
        let gather = matches!(framing, RequestFraming::Length(n) if n <= COALESCE as u64);
        if !gather {
            self.stream
                .write_all(&self.write)
                .await
                .map_err(ExchangeError::Write)?;
            if framing == RequestFraming::None {
                return Ok(());
            }
        }
        let chunked = framing == RequestFraming::Chunked;
        let mut sent: u64 = 0;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(ExchangeError::RequestBody)?;
            let Ok(data) = frame.into_data() else {
                continue; // request trailers are not forwarded
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            if let RequestFraming::Length(n) = framing {
                if sent > n {
                    return Err(ExchangeError::RequestBody(
                        "request body longer than its length".into(),
                    ));
                }
            }
            if gather {
                self.write.extend_from_slice(&data);
            } else {
                self.write_data(&data, chunked).await?;
            }
        }
        if let RequestFraming::Length(n) = framing {
            if sent != n {
                return Err(ExchangeError::RequestBody(
                    "request body shorter than its length".into(),
                ));
            }
        }
        if gather {
            return self
                .stream
                .write_all(&self.write)
                .await
                .map_err(ExchangeError::Write);
        }
        if chunked {
            self.stream
                .write_all(b"0\r\n\r\n")
                .await
                .map_err(ExchangeError::Write)?;
        }
        Ok(())
    }

    async fn write_data(&mut self, data: &Bytes, chunked: bool) -> Result<(), ExchangeError> {
        if !chunked {
            return self
                .stream
                .write_all(data)
                .await
                .map_err(ExchangeError::Write);
        }
        self.write.clear();
        push_hex(&mut self.write, data.len() as u64);
        self.write.extend_from_slice(b"\r\n");
        if data.len() <= COALESCE {
            self.write.extend_from_slice(data);
            self.write.extend_from_slice(b"\r\n");
            return self
                .stream
                .write_all(&self.write)
                .await
                .map_err(ExchangeError::Write);
        }
        self.stream
            .write_all(&self.write)
            .await
            .map_err(ExchangeError::Write)?;
        self.stream
            .write_all(data)
            .await
            .map_err(ExchangeError::Write)?;
        self.stream
            .write_all(b"\r\n")
            .await
            .map_err(ExchangeError::Write)
    }

    /// Reads the response head, skipping interim (1xx) responses.
    pub async fn read_head(&mut self, method: &Method) -> Result<ResponseHead, ExchangeError> {
        let mut received = !self.read.is_empty();
        loop {
            if !self.read.is_empty() {
                if let Some(head) = parse_head(&mut self.read, method)? {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        // Upgrades go through `proxy::upgrade`; here nothing asked for one.
                        return Err(ExchangeError::Invalid("101 to a request without Upgrade"));
                    }
                    if head.status.is_informational() {
                        continue;
                    }
                    return Ok(head);
                }
                if self.read.len() >= MAX_HEAD {
                    return Err(ExchangeError::Invalid("response head too large"));
                }
            }
            self.read.reserve(READ_RESERVE);
            match tokio::io::AsyncReadExt::read_buf(&mut self.stream, &mut self.read).await {
                Ok(0) if !received => return Err(ExchangeError::Closed),
                Ok(0) => return Err(ExchangeError::Invalid("response head cut short")),
                Ok(_) => received = true,
                Err(e) if !received && is_reset(&e) => return Err(ExchangeError::Closed),
                Err(e) => return Err(ExchangeError::Read(e)),
            }
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_RESERVE / 2 {
            self.read.reserve(READ_RESERVE);
        }
        // Through AsyncRead, not try_read: a short read then clears the socket's readiness,
        // so the pool's idle check needs no system call.
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read)
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestFraming {
    None,
    Length(u64),
    Chunked,
}

fn request_framing(method: &Method, body: &impl HttpBody) -> RequestFraming {
    if body.is_end_stream() {
        // RFC 9110 8.6: a body-less POST, PUT or PATCH still says its length is zero.
        return if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            RequestFraming::Length(0)
        } else {
            RequestFraming::None
        };
    }
    match body.size_hint().exact() {
        Some(n) => RequestFraming::Length(n),
        None => RequestFraming::Chunked,
    }
}

/// The request line and header section. The framing headers are ours, whatever the
/// client sent; Host falls back to the endpoint's authority.
fn push_field(out: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &PathAndQuery,
    authority: &Authority,
    headers: &HeaderMap,
    extra: Option<(&HeaderName, &[u8])>,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        // `TE: trailers` is kept for HTTP/2 upstreams (gRPC needs it); this client
        // reads no trailers, so it does not offer them.
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::TE
        {
            continue;
        }
        push_field(out, name, value.as_bytes());
    }
    if let Some((name, value)) = extra {
        push_field(out, name, value);
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
