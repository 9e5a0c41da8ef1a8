//! The request line of every HTTP/1 request, seen before hyper's parser sees it, for the
//! two things hyper cannot be told: a request line over `server.limits.max_request_line`
//! gets 414 (hyper answers 431 for any head over its buffer), and `HTTP/1.2` through
//! `HTTP/1.9` are read as HTTP/1.1 (RFC 9110 §2.5; hyper refuses them with 400).
//!
//! The reader must know where each request line starts, and it never parses headers to
//! find out (a second parser that disagrees with hyper's is how requests are smuggled).
//! It finds the end of a head (the first empty line) and takes the body's length from
//! hyper itself: the service reports each request's body length as hyper framed it
//! (`Framing::on_request`). After that many bytes comes the next request line. Whenever
//! that cannot be known for certain (a chunked body, an upgrade, HTTP/2, bytes of a
//! pipelined request read before hyper framed the one before), the reader stops looking
//! for the rest of the connection and every byte goes to hyper untouched.
//!
//! A line over the limit is replaced, for hyper, by `GET / HTTP/1.1` and the request is
//! marked; the gateway answers it 414 before routing, and nothing after its head is read.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Body as _;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What hyper parses in place of a request line over the limit.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\n";

/// What the service tells the reader about the requests hyper framed, in order. A
/// sequence lock, not a mutex (HTTP/1 hands over one request at a time, so there is one
/// writer): `sequence` is odd while the service writes a request's body length and
/// twice the number of requests seen once it is done; the reader takes a length only
/// when it saw the same even sequence before and after reading it.
#[derive(Debug)]
pub struct Framing {
    sequence: AtomicU64,
    /// The body length of the last of them; `UNKNOWN` for chunked bodies and upgrades.
    last_body: AtomicU64,
    /// The request (by number) whose line was replaced; `NONE` when none was.
    refused: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;
const NONE: u64 = u64::MAX;

impl Default for Framing {
    fn default() -> Framing {
        Framing {
            sequence: AtomicU64::new(0),
            last_body: AtomicU64::new(UNKNOWN),
            refused: AtomicU64::new(NONE),
        }
    }
}

enum BodyLength {
    /// The service has not seen the request yet.
    NotYet,
    Known(u64),
    Unknown,
}

impl Framing {
    /// Called for each request in the order hyper hands them over; says whether this
    /// request's line was over the limit.
    pub fn on_request(&self, request: &http::Request<Incoming>) -> bool {
        if request.version() > http::Version::HTTP_11 {
            return false;
        }
        let upgrade = request.method() == http::Method::CONNECT
            || request.headers().contains_key(http::header::UPGRADE);
        let body = request.body();
        let length = if upgrade {
            None
        } else if body.is_end_stream() {
            Some(0)
        } else {
            body.size_hint().exact()
        };
        self.record(length)
    }

    /// The next request, with the body length hyper framed it with.
    fn record(&self, length: Option<u64>) -> bool {
        let sequence = self.sequence.load(Ordering::Relaxed);
        let number = sequence / 2;
        self.sequence.store(sequence | 1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        self.last_body
            .store(length.unwrap_or(UNKNOWN), Ordering::Relaxed);
        self.sequence.store(2 * (number + 1), Ordering::Release);
        self.refused.load(Ordering::Acquire) == number
    }

    fn body_length(&self, number: u64) -> BodyLength {
        let before = self.sequence.load(Ordering::Acquire);
        if before % 2 == 1 {
            // Being written: the request is being handed over right now.
            return BodyLength::NotYet;
        }
        let length = self.last_body.load(Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Acquire);
        if self.sequence.load(Ordering::Relaxed) != before {
            return BodyLength::NotYet;
        }
        match (before / 2).checked_sub(1) {
            Some(last) if last == number && length != UNKNOWN => BodyLength::Known(length),
            Some(last) if last >= number => BodyLength::Unknown,
            _ => BodyLength::NotYet,
        }
    }

    fn refuse(&self, number: u64) {
        self.refused.store(number, Ordering::Release);
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// At the start of a request line.
    Line,
    /// Dropping the rest of a request line over the limit, up to its LF.
    Discarding,
    /// In a head, after its request line: `after_lf` is 1 after an LF, 2 after LF CR.
    Head { after_lf: u8 },
    /// In a body, `seen` bytes of it so far.
    Body { seen: u64 },
    /// After the head of a refused request: nothing more goes to hyper.
    Closed,
    /// Not looking: every byte goes to hyper as read.
    Off,
}

/// What `feed` decided about a run of bytes.
#[derive(Debug, PartialEq)]
enum Feed {
    /// All of it goes to hyper (possibly edited in place).
    Deliver,
    /// `[..from]` goes; `[from..]` is a request line not finished yet.
    Hold(usize),
    /// `[..from]` goes; a request line over the limit starts at `from`. `end` is where
    /// the bytes after its LF start, when the LF is in this run.
    Refuse { from: usize, end: Option<usize> },
    /// `[..at]` goes, the rest is dropped (after a refused head).
    Truncate(usize),
}

pub struct RequestLines<S> {
    inner: S,
    framing: Arc<Framing>,
    limit: usize,
    phase: Phase,
    /// The number of the request whose bytes are being read.
    number: u64,
    /// A request line not finished yet.
    held: Vec<u8>,
    /// Bytes ready for hyper, delivered before anything else is read.
    out: Vec<u8>,
    out_at: usize,
    /// The head being read is the one whose line was replaced.
    refused_head: bool,
}

impl<S> RequestLines<S> {
    pub fn new(inner: S, framing: Arc<Framing>, limit: usize) -> RequestLines<S> {
        RequestLines {
            inner,
            framing,
            limit,
            phase: Phase::Line,
            number: 0,
            held: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            refused_head: false,
        }
    }

    /// Walks `data` through the phases, editing a request line's version in place.
    fn feed(&mut self, data: &mut [u8]) -> Feed {
        let mut at = 0;
        while at < data.len() {
            match self.phase {
                Phase::Off => return Feed::Deliver,
                Phase::Closed => return Feed::Truncate(at),
                // `settle` drops these bytes before it feeds; never reached.
                Phase::Discarding => return Feed::Truncate(at),
                Phase::Line => {
                    let rest = &mut data[at..];
                    if rest.starts_with(b"PRI * HTTP/2.0") {
                        self.phase = Phase::Off;
                        return Feed::Deliver;
                    }
                    let Some(lf) = memchr::memchr(b'\n', rest) else {
                        if rest.len() > self.limit + 2 {
                            return Feed::Refuse {
                                from: at,
                                end: None,
                            };
                        }
                        return Feed::Hold(at);
                    };
                    if lf > self.limit + 1 {
                        return Feed::Refuse {
                            from: at,
                            end: Some(at + lf + 1),
                        };
                    }
                    let line = &mut rest[..lf];
                    at += lf + 1;
                    match line {
                        // Empty lines before a request line are ignored (RFC 9112 §2.2).
                        [] | [b'\r'] => {}
                        _ => {
                            read_higher_minor_as_1_1(line);
                            self.phase = Phase::Head { after_lf: 1 };
                        }
                    }
                }
                Phase::Head { after_lf } => {
                    let (used, ended, after_lf) = head_end(&data[at..], after_lf);
                    at += used;
                    self.phase = if !ended {
                        Phase::Head { after_lf }
                    } else if self.refused_head {
                        Phase::Closed
                    } else {
                        Phase::Body { seen: 0 }
                    };
                }
                Phase::Body { seen } => {
                    let left = (data.len() - at) as u64;
                    match self.framing.body_length(self.number) {
                        BodyLength::Unknown => self.phase = Phase::Off,
                        BodyLength::NotYet => {
                            self.phase = Phase::Body { seen: seen + left };
                            return Feed::Deliver;
                        }
                        BodyLength::Known(length) if seen > length => self.phase = Phase::Off,
                        BodyLength::Known(length) => {
                            let take = (length - seen).min(left);
                            at += take as usize;
                            if seen + take == length {
                                self.number += 1;
                                self.phase = Phase::Line;
                            } else {
                                self.phase = Phase::Body { seen: seen + take };
                            }
                        }
                    }
                }
            }
        }
        Feed::Deliver
    }

    /// Runs owned bytes through `feed`: what may go to hyper is appended to `out`, an
    /// unfinished request line is kept in `held`.
    fn settle(&mut self, mut data: Vec<u8>) {
        let mut start = 0;
        loop {
            if self.phase == Phase::Discarding {
                let Some(lf) = memchr::memchr(b'\n', &data[start..]) else {
                    return;
                };
                start += lf + 1;
                self.phase = Phase::Head { after_lf: 1 };
            }
            if start >= data.len() {
                return;
            }
            match self.feed(&mut data[start..]) {
                Feed::Deliver => {
                    self.out.extend_from_slice(&data[start..]);
                    return;
                }
                Feed::Hold(from) => {
                    self.out.extend_from_slice(&data[start..start + from]);
                    self.held = data[start + from..].to_vec();
                    return;
                }
                Feed::Truncate(at) => {
                    self.out.extend_from_slice(&data[start..start + at]);
                    return;
                }
                Feed::Refuse { from, end } => {
                    self.out.extend_from_slice(&data[start..start + from]);
                    self.begin_refusal(end.is_some());
                    match end {
                        Some(end) => start += end,
                        None => return,
                    }
                }
            }
        }
    }

    /// The request line being read is over the limit: hyper gets the stand-in, the
    /// service is told which request it is, the rest of the line is dropped.
    fn begin_refusal(&mut self, line_ended: bool) {
        self.framing.refuse(self.number);
        self.refused_head = true;
        self.out.extend_from_slice(STAND_IN);
        self.phase = if line_ended {
            Phase::Head { after_lf: 1 }
        } else {
            Phase::Discarding
        };
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for RequestLines<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.phase {
                Phase::Off => return Pin::new(&mut this.inner).poll_read(cx, buf),
                // Hyper answers the refused request with `Connection: close` and closes;
                // an end of input now would make it drop that answer.
                Phase::Closed => return Poll::Pending,
                _ => {}
            }
            if !this.held.is_empty() || this.phase == Phase::Discarding {
                // A request line split across reads: gathered here until it is whole.
                let mut scratch = [0u8; 2048];
                let mut read = ReadBuf::new(&mut scratch);
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                if read.filled().is_empty() {
                    // The peer stopped mid-line: hyper gets what there is, then the end.
                    this.out = std::mem::take(&mut this.held);
                    this.phase = Phase::Off;
                    if this.out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                let mut data = std::mem::take(&mut this.held);
                data.extend_from_slice(read.filled());
                this.settle(data);
                continue;
            }
            let start = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let end = buf.filled().len();
            if end == start {
                return Poll::Ready(Ok(()));
            }
            let cut = match this.feed(&mut buf.filled_mut()[start..end]) {
                Feed::Deliver => return Poll::Ready(Ok(())),
                Feed::Hold(from) => {
                    this.held = buf.filled()[start + from..end].to_vec();
                    from
                }
                Feed::Truncate(at) => at,
                Feed::Refuse {
                    from,
                    end: line_end,
                } => {
                    let rest = line_end.map(|e| buf.filled()[start + e..end].to_vec());
                    this.begin_refusal(rest.is_some());
                    if let Some(rest) = rest {
                        this.settle(rest);
                    }
                    from
                }
            };
            buf.set_filled(start + cut);
            if cut > 0 || (this.phase == Phase::Closed && this.out.is_empty()) {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for RequestLines<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// `HTTP/1.2` .. `HTTP/1.9` at the end of a request line become `HTTP/1.1`.
fn read_higher_minor_as_1_1(line: &mut [u8]) {
    let line = match line {
        [rest @ .., b'\r'] => rest,
        whole => whole,
    };
    if let [.., b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] = line {
        if (b'2'..=b'9').contains(minor) {
            *minor = b'1';
        }
    }
}

/// Looks for the empty line that ends a head, continuing from `after_lf` (1: the last
/// byte was LF; 2: LF then CR). Returns the bytes used, whether the head ended, and the
/// state to go on from.
fn head_end(data: &[u8], mut after_lf: u8) -> (usize, bool, u8) {
    let mut i = 0;
    loop {
        match after_lf {
            1 => match data.get(i) {
                None => return (i, false, 1),
                Some(b'\n') => return (i + 1, true, 0),
                Some(b'\r') => {
                    after_lf = 2;
                    i += 1;
                }
                Some(_) => after_lf = 0,
            },
            2 => match data.get(i) {
                None => return (i, false, 2),
                Some(b'\n') => return (i + 1, true, 0),
                Some(_) => after_lf = 0,
            },
            _ => match memchr::memchr(b'\n', &data[i..]) {
                None => return (data.len(), false, 0),
                Some(lf) => {
                    i += lf + 1;
                    after_lf = 1;
                }
            },
        }
    }
}

#[cfg(test)]
#[path = "request_line_tests.rs"]
mod tests;
