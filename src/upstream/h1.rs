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

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::pool::Pool;
use crate::body::{Body, BoxError};

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
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
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
    stream: TcpStream,
    read: BytesMut,
    write: Vec<u8>,
}

impl Conn {
    /// Boxed once, so handing the connection between pool and response body moves a
    /// pointer.
    pub fn new(stream: TcpStream) -> Box<Conn> {
        Box::new(Conn {
            stream,
            read: BytesMut::with_capacity(READ_RESERVE),
            write: Vec::with_capacity(1024),
        })
    }

    /// True when nothing has arrived since the last response: the upstream has not
    /// closed the idle connection nor sent anything unasked.
    pub fn is_idle(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes the request: head, then the body with the framing its size calls for.
    pub async fn write_request(
        &mut self,
        method: &Method,
        path_and_query: &PathAndQuery,
        authority: &Authority,
        headers: &HeaderMap,
        mut body: Body,
    ) -> Result<(), ExchangeError> {
        let framing = request_framing(method, &body);
        self.write.clear();
        encode_head(
            &mut self.write,
            method,
            path_and_query,
            authority,
            headers,
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

fn request_framing(method: &Method, body: &Body) -> RequestFraming {
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
fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &PathAndQuery,
    authority: &Authority,
    headers: &HeaderMap,
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
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
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

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once this response's body has ended.
    pub reusable: bool,
}

/// Parses a complete head off the front of `buf`, or returns None when more bytes are
/// needed. Header values share the head's bytes instead of being copied.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, ExchangeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let length = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ExchangeError::Invalid("too many response headers"))
        }
        Err(_) => return Err(ExchangeError::Invalid("malformed response head")),
    };
    let status = StatusCode::from_u16(response.code.unwrap_or(0))
        .map_err(|_| ExchangeError::Invalid("invalid status code"))?;
    let http11 = response.version == Some(1);
    // Offsets into the head, so the parser's borrow of `buf` can end before the split.
    let base = buf.as_ptr() as usize;
    let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let count = response.headers.len();
    for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        *span = (name, name + h.name.len(), value, value + h.value.len());
    }
    let head = buf.split_to(length).freeze();

    let mut headers = HeaderMap::with_capacity(count);
    let mut content_length: Option<u64> = None;
    let mut length_conflict = false;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = !http11;
    for &(ns, ne, vs, ve) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[ns..ne])
            .map_err(|_| ExchangeError::Invalid("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| ExchangeError::Invalid("invalid header value"))?;
        if name == header::CONTENT_LENGTH {
            match parse_length(value.as_bytes()) {
                Some(n) if content_length.is_none_or(|m| m == n) => content_length = Some(n),
                _ => length_conflict = true,
            }
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            chunked = last_coding_is_chunked(value.as_bytes());
        } else if name == header::CONNECTION {
            let v = value.as_bytes();
            if contains_token(v, b"close") {
                close = true;
            } else if !http11 && contains_token(v, b"keep-alive") {
                close = false;
            }
        }
        headers.append(name, value);
    }

    if transfer_encoding {
        // RFC 9112 6.3: Transfer-Encoding overrides Content-Length, which must not be
        // passed on with a body it does not describe.
        headers.remove(header::CONTENT_LENGTH);
    }
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Empty
    } else if transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if length_conflict {
        return Err(ExchangeError::Invalid("invalid content-length"));
    } else {
        match content_length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let reusable = !close
        && framing != Framing::UntilClose
        && !(transfer_encoding && content_length.is_some());
    Ok(Some(ResponseHead {
        status,
        headers,
        framing,
        reusable,
    }))
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn last_coding_is_chunked(v: &[u8]) -> bool {
    v.rsplit(|b| *b == b',')
        .next()
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn contains_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// What the body decoder does next.
enum Step {
    /// Data, and whether it is the last of the body.
    Data(Bytes, bool),
    End,
    Continue,
    Read,
    Fail(&'static str),
}

/// Where a chunked body's decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// A response body read straight off the upstream connection. When it ends cleanly on
/// a reusable connection, the connection goes back to the endpoint's pool; dropped early
/// or failed, the connection is closed. It also holds the endpoint's connection-limit
/// permit until it ends.
#[derive(Debug)]
pub struct UpstreamBody {
    conn: Option<Box<Conn>>,
    state: State,
    reusable: bool,
    pool: Arc<Pool>,
    permit: Option<OwnedSemaphorePermit>,
}

impl UpstreamBody {
    pub fn new(conn: Box<Conn>, head: &ResponseHead, pool: Arc<Pool>) -> UpstreamBody {
        let state = match head.framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = UpstreamBody {
            conn: Some(conn),
            state,
            reusable: head.reusable,
            pool,
            permit: None,
        };
        if body.state == State::Done {
            body.finish();
        }
        body
    }

    pub fn hold(&mut self, permit: Option<OwnedSemaphorePermit>) {
        if self.state != State::Done {
            self.permit = permit;
        }
    }

    /// The body ended: the connection goes back to the pool if it can carry another
    /// request (nothing unread is left on it).
    fn finish(&mut self) {
        self.state = State::Done;
        self.permit = None;
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.read.is_empty() {
                self.pool.put(conn);
            }
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Done;
        self.conn = None;
        self.permit = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let step = {
                let Some(conn) = this.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                match this.state {
                    State::Done => Step::End,
                    State::Length(remaining) if !conn.read.is_empty() => {
                        let n = (conn.read.len() as u64).min(remaining) as usize;
                        this.state = State::Length(remaining - n as u64);
                        Step::Data(conn.read.split_to(n).freeze(), remaining == n as u64)
                    }
                    State::UntilClose if !conn.read.is_empty() => {
                        Step::Data(conn.read.split().freeze(), false)
                    }
                    State::Length(_) | State::UntilClose => Step::Read,
                    State::Chunked(chunk) => match decode_chunk(&mut conn.read, chunk) {
                        Err(reason) => Step::Fail(reason),
                        Ok((None, _)) => Step::End,
                        Ok((Some(next), data)) => {
                            this.state = State::Chunked(next);
                            match data {
                                Some(data) => Step::Data(data, false),
                                None if next != chunk => Step::Continue,
                                None => Step::Read,
                            }
                        }
                    },
                }
            };
            match step {
                Step::Data(data, ended) => {
                    if ended {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::Continue => continue,
                Step::Fail(reason) => return this.fail(reason),
                Step::Read => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.state == State::UntilClose => {
                    this.state = State::Done;
                    this.conn = None;
                    this.permit = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("upstream closed the connection mid-body"),
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// One step of the chunked decoder over what is buffered: the next state (None at the
/// end of the body) and any data it produced. Returns the same state when it needs more.
fn decode_chunk(
    buf: &mut BytesMut,
    chunk: Chunk,
) -> Result<(Option<Chunk>, Option<Bytes>), &'static str> {
    match chunk {
        Chunk::Size => {
            let Some(end) = find_crlf(buf) else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err("chunk size line too long");
                }
                return Ok((Some(Chunk::Size), None));
            };
            let line = &buf[..end];
            let digits = line
                .split(|b| *b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            let size = parse_hex(digits).ok_or("invalid chunk size")?;
            buf.advance(end + 2);
            if size == 0 {
                Ok((Some(Chunk::Trailers(0)), None))
            } else {
                Ok((Some(Chunk::Data(size)), None))
            }
        }
        Chunk::Data(remaining) => {
            if buf.is_empty() {
                return Ok((Some(chunk), None));
            }
            let n = (buf.len() as u64).min(remaining) as usize;
            let data = buf.split_to(n).freeze();
            let next = if remaining == n as u64 {
                Chunk::DataEnd
            } else {
                Chunk::Data(remaining - n as u64)
            };
            Ok((Some(next), Some(data)))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok((Some(chunk), None));
            }
            if &buf[..2] != b"\r\n" {
                return Err("chunk data not followed by CRLF");
            }
            buf.advance(2);
            Ok((Some(Chunk::Size), None))
        }
        Chunk::Trailers(seen) => {
            // Trailer fields are dropped; the empty line ends the body.
            let Some(end) = find_crlf(buf) else {
                if seen + buf.len() > MAX_TRAILERS {
                    return Err("trailer section too large");
                }
                return Ok((Some(chunk), None));
            };
            buf.advance(end + 2);
            if end == 0 {
                Ok((None, None))
            } else if seen + end + 2 > MAX_TRAILERS {
                Err("trailer section too large")
            } else {
                Ok((Some(Chunk::Trailers(seen + end + 2)), None))
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        let v = (d as char).to_digit(16)?;
        n = (n << 4) | u64::from(v);
    }
    Some(n)
}

/// The response as the gateway sees it.
pub fn into_response(head: ResponseHead, body: UpstreamBody) -> http::Response<UpstreamBody> {
    let mut response = http::Response::new(body);
    *response.status_mut() = head.status;
    *response.version_mut() = Version::HTTP_11;
    *response.headers_mut() = head.headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, method: &Method) -> Result<Option<ResponseHead>, ExchangeError> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf, method)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let (get, head_method) = (Method::GET, Method::HEAD);
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                &get,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                &head_method,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                &get,
                Framing::Empty,
                true,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", &get, Framing::UntilClose, false),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                &get,
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                &get,
                Framing::Chunked,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                &get,
                Framing::Length(1),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                &get,
                Framing::Length(1),
                false,
            ),
        ];
        for (text, method, framing, reusable) in cases {
            let h = head(text, method).unwrap().unwrap();
            assert_eq!((h.framing, h.reusable), (framing, reusable), "{text:?}");
        }
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(head(bad, &get).is_err(), "{bad:?}");
        }
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: 1", &get)
            .unwrap()
            .is_none());
    }

    #[test]
    fn header_values_share_the_head() {
        let h = head(
            "HTTP/1.1 201 Created\r\nX-A: one\r\nx-a: two\r\n\r\nrest",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        let values: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["one", "two"]);
    }

    #[test]
    fn chunked_decoding() {
        let mut buf =
            BytesMut::from(&b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\nNEXT"[..]);
        let mut state = Some(Chunk::Size);
        let mut out = Vec::new();
        while let Some(c) = state {
            let (next, data) = decode_chunk(&mut buf, c).unwrap();
            if let Some(d) = &data {
                out.extend_from_slice(d);
            }
            assert!(next != Some(c) || data.is_some(), "no progress");
            state = next;
        }
        assert_eq!(out, b"helloabc");
        assert_eq!(&buf[..], b"NEXT");
        let mut bad = BytesMut::from(&b"zz\r\n"[..]);
        assert!(decode_chunk(&mut bad, Chunk::Size).is_err());
        let mut bad = BytesMut::from(&b"abXY"[..]);
        assert!(decode_chunk(&mut bad, Chunk::DataEnd).is_err());
        let mut huge = BytesMut::from(&b"ffffffffffffffffff\r\n"[..]);
        assert!(decode_chunk(&mut huge, Chunk::Size).is_err());
    }

    #[test]
    fn request_heads() {
        let mut out = Vec::new();
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        encode_head(
            &mut out,
            &Method::POST,
            &PathAndQuery::from_static("/p?q=1"),
            &Authority::from_static("b:80"),
            &headers,
            RequestFraming::Length(1234),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: b:80\r\nx-a: 1\r\ncontent-length: 1234\r\n\r\n"
        );
        let mut hex = Vec::new();
        push_hex(&mut hex, 0x1a2b);
        assert_eq!(hex, b"1a2b");
        assert_eq!(
            request_framing(&Method::GET, &Body::empty()),
            RequestFraming::None
        );
        assert_eq!(
            request_framing(&Method::POST, &Body::empty()),
            RequestFraming::Length(0)
        );
        assert_eq!(
            request_framing(&Method::PUT, &Body::full("abc")),
            RequestFraming::Length(3)
        );
    }
}
