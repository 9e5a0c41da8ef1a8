//! The response side of the HTTP/1.1 client: the head parsed off the read buffer and the
//! body decoded straight off the connection (length, chunked or until close).

use super::*;
use crate::wire::headers::parse_content_length;

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
pub(super) fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, ExchangeError> {
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
            match parse_content_length(value.as_bytes()) {
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
pub(super) enum Step {
    /// Data, and whether it is the last of the body.
    Data(Bytes, bool),
    End,
    Continue,
    Read,
    Fail(&'static str),
}

/// Where a chunked body's decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
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
pub struct H1Body {
    conn: Option<Box<Conn>>,
    state: State,
    reusable: bool,
    pool: Arc<Pool>,
    permit: Option<OwnedSemaphorePermit>,
}

impl H1Body {
    pub fn new(conn: Box<Conn>, head: &ResponseHead, pool: Arc<Pool>) -> H1Body {
        let state = match head.framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = H1Body {
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

impl HttpBody for H1Body {
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
pub(super) fn decode_chunk(
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
pub fn into_response(head: ResponseHead, body: H1Body) -> http::Response<UpstreamBody> {
    let body = UpstreamBody::H1(body);
    let mut response = http::Response::new(body);
    *response.status_mut() = head.status;
    *response.version_mut() = Version::HTTP_11;
    *response.headers_mut() = head.headers;
    response
}

/// A response body from an endpoint: read off a pooled HTTP/1.1 connection, or a stream of
/// a multiplexed HTTP/2 connection. Either holds the endpoint's connection-limit permit
/// until it ends.
#[derive(Debug)]
pub enum UpstreamBody {
    H1(H1Body),
    H2(crate::wire::h2::H2Body),
}

impl UpstreamBody {
    pub fn hold(&mut self, permit: Option<OwnedSemaphorePermit>) {
        match self {
            UpstreamBody::H1(b) => b.hold(permit),
            UpstreamBody::H2(b) => b.hold(permit),
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::H2(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}
