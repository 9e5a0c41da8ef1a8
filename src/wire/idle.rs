//! Idle connections: every write to a client connection, and every request it starts,
//! marks it active; a watchdog closes it once nothing moved for `idle_timeout` and no
//! request is in flight. Bytes the client sends do not count: a client that trickles
//! bytes which never become a request (slowloris, over HTTP/2 too, where hyper has no
//! header-read timeout) is cut off like an idle one. A connection must also start its
//! first request within `header_read_timeout` (`first_request`).
//!
//! Marking is a counter increment, not a clock read: the watchdog looks at the counter
//! four times per `idle_timeout` and closes the connection when it has not moved for a
//! whole timeout, so a connection is closed between 1 and 1.25 times `idle_timeout`
//! after its last byte.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const CHECKS_PER_TIMEOUT: u32 = 4;

pub struct Activity {
    moves: AtomicU64,
    in_flight: AtomicUsize,
    started: AtomicU64,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity::new()
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            moves: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }
}

pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Resolves when the connection has started no request `within` its start; never once
/// it has.
pub async fn first_request(activity: Arc<Activity>, within: Duration) {
    tokio::time::sleep(within).await;
    if activity.started.load(Ordering::Relaxed) > 0 {
        std::future::pending::<()>().await;
    }
}

/// Resolves once the connection has been idle for `timeout`.
pub async fn watchdog(activity: Arc<Activity>, timeout: Duration) {
    let tick = (timeout / CHECKS_PER_TIMEOUT).max(Duration::from_millis(10));
    let mut seen = activity.moves.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.moves.load(Ordering::Relaxed);
        if now != seen || activity.in_flight.load(Ordering::Relaxed) > 0 {
            seen = now;
            quiet = Duration::ZERO;
            continue;
        }
        quiet += tick;
        if quiet >= timeout {
            return;
        }
    }
}

pub struct IdleIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        IdleIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
