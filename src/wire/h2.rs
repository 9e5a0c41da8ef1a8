//! HTTP/2 to an endpoint (`protocol: h2` over TLS with ALPN `h2`, or `h2c` by prior
//! knowledge): requests share multiplexed connections, a new one opens when every open
//! one carries `MAX_STREAMS` requests, and a connection the endpoint closed (GOAWAY, or
//! gone) is dropped from the set. hyper's HTTP/2 client runs each connection as a task
//! and PINGs it when quiet, so a dead peer is found.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::OwnedSemaphorePermit;

use super::body::Body;
use super::connect::UpstreamStream;
use super::BoxError;

/// Requests one connection carries before another is opened (servers commonly allow 100
/// or more concurrent streams; hyper queues past the peer's limit rather than fail).
pub const MAX_STREAMS: usize = 100;
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// One open connection and the requests it carries now.
#[derive(Debug, Clone)]
struct Open {
    sender: SendRequest<Body>,
    streams: Arc<AtomicUsize>,
}

/// An endpoint's HTTP/2 connections.
#[derive(Debug, Default)]
pub struct H2Pool {
    open: Mutex<Vec<Open>>,
    /// Held while a connection is being opened, so requests that find no room wait for
    /// it instead of each opening their own.
    opening: tokio::sync::Mutex<()>,
    /// `protocol: auto`: what the endpoint's ALPN chose last (`Alpn` as a number).
    learned: AtomicU8,
}

/// What an endpoint of a `protocol: auto` upstream speaks, as its ALPN answer said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// No connection was opened yet.
    Unknown = 0,
    Http1 = 1,
    H2 = 2,
}

/// A request's place on a connection, given back when its response body ends.
#[derive(Debug)]
pub struct Stream(Arc<AtomicUsize>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl H2Pool {
    /// A connection with room for one more request, if one is open.
    pub fn take(&self) -> Option<(SendRequest<Body>, Stream)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|o| !o.sender.is_closed());
        let o = open
            .iter()
            .find(|o| o.sender.is_ready() && o.streams.load(Ordering::Acquire) < MAX_STREAMS)?;
        o.streams.fetch_add(1, Ordering::AcqRel);
        Some((o.sender.clone(), Stream(o.streams.clone())))
    }

    /// Waits until no other request is opening a connection (then `take` again).
    pub async fn opening(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.opening.lock().await
    }

    /// Starts HTTP/2 on a new connection and adds it; the caller gets the first stream.
    pub async fn open(
        &self,
        stream: UpstreamStream,
    ) -> Result<(SendRequest<Body>, Stream), hyper::Error> {
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let streams = Arc::new(AtomicUsize::new(1));
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Open {
                sender: sender.clone(),
                streams: streams.clone(),
            });
        Ok((sender, Stream(streams)))
    }

    pub fn learned(&self) -> Alpn {
        match self.learned.load(Ordering::Acquire) {
            1 => Alpn::Http1,
            2 => Alpn::H2,
            _ => Alpn::Unknown,
        }
    }

    pub fn learn(&self, alpn: Alpn) {
        self.learned.store(alpn as u8, Ordering::Release);
    }

    /// Drops every connection (the endpoint left).
    pub fn clear(&self) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// The request as HTTP/2 carries it: the authority in the target instead of `Host`. The
/// connection-specific fields RFC 9113 §8.2.2 forbids are already gone: the gateway
/// strips hop-by-hop fields (keeping only `TE: trailers`), and hyper's HTTP/2 client
/// drops any left.
pub fn request(
    method: http::Method,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    path_and_query: http::uri::PathAndQuery,
    mut headers: HeaderMap,
    body: Body,
) -> Result<Request<Body>, http::Error> {
    headers.remove(http::header::HOST);
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path_and_query)
        .build()?;
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_2;
    *request.headers_mut() = headers;
    Ok(request)
}

/// A response body on an HTTP/2 stream; it holds the stream's place on its connection
/// and the endpoint's connection-limit permit until it ends.
#[derive(Debug)]
pub struct H2Body {
    inner: Incoming,
    stream: Option<Stream>,
    permit: Option<OwnedSemaphorePermit>,
}

impl H2Body {
    pub fn new(inner: Incoming, stream: Stream) -> H2Body {
        let mut body = H2Body {
            inner,
            stream: Some(stream),
            permit: None,
        };
        if body.inner.is_end_stream() {
            body.stream = None;
        }
        body
    }

    pub fn hold(&mut self, permit: Option<OwnedSemaphorePermit>) {
        if self.stream.is_some() {
            self.permit = permit;
        }
    }
}

/// Turns an HTTP/2 response into the gateway's upstream response.
pub fn into_response(
    response: Response<Incoming>,
    stream: Stream,
) -> Response<super::h1::UpstreamBody> {
    response.map(|inner| super::h1::UpstreamBody::H2(H2Body::new(inner, stream)))
}

impl HttpBody for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                this.stream = None;
                this.permit = None;
            }
            _ => {}
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
