//! Idle connections: every write to a client connection, and every request it starts,
//! marks it active; a watchdog closes it once nothing moved for `idle_timeout` and no
//! request is in flight. Bytes the client sends do not count: a client that trickles
//! bytes which never become a request (slowloris, over HTTP/2 too, where hyper has no
//! header-read timeout) is cut off like an idle one. A connection must also start its
//! first request within `header_read_timeout` (`first_request`).
//!
//! On a client connection, writes that are only HTTP/2 connection-control frames (PING,
//! SETTINGS, WINDOW_UPDATE) do not count either: answering a client's PINGs is not
//! serving it.
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
    /// A client connection: writes that are only HTTP/2 connection-control frames do
    /// not count (see `only_h2_control_frames`).
    client: bool,
}

impl<T> IdleIo<T> {
    /// Every write counts (an upgraded tunnel).
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        IdleIo {
            inner,
            activity,
            client: false,
        }
    }

    /// A client connection: a PING or SETTINGS acknowledgement, a WINDOW_UPDATE or the
    /// gateway's own keepalive PING is no activity, so a client that only pings after its
    /// last request is still closed after `idle_timeout`.
    pub fn client(inner: T, activity: Arc<Activity>) -> Self {
        IdleIo {
            inner,
            activity,
            client: true,
        }
    }

    fn wrote(&self, data: &[u8]) {
        if !(self.client && only_h2_control_frames(data)) {
            self.activity.touch();
        }
    }
}

/// True when `data` is one or more whole HTTP/2 frames, all of them on stream 0 and of
/// type PING, SETTINGS or WINDOW_UPDATE. An HTTP/1 response starts with `HTTP/`, which
/// reads as a frame length of over 4 MB, so it never matches.
fn only_h2_control_frames(mut data: &[u8]) -> bool {
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const WINDOW_UPDATE: u8 = 0x8;
    if data.is_empty() {
        return false;
    }
    while !data.is_empty() {
        let [l0, l1, l2, kind, _flags, s0, s1, s2, s3, ..] = *data else {
            return false;
        };
        let length = (usize::from(l0) << 16) | (usize::from(l1) << 8) | usize::from(l2);
        let stream = u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]);
        if stream != 0 || !matches!(kind, SETTINGS | PING | WINDOW_UPDATE) {
            return false;
        }
        let Some(rest) = data.get(9 + length..) else {
            return false;
        };
        data = rest;
    }
    true
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
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                self.wrote(&data[..n]);
            }
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                // Control frames are small and go out in one slice; anything written
                // across slices counts.
                match bufs.iter().find(|b| !b.is_empty()) {
                    Some(first) if first.len() >= n => self.wrote(&first[..n]),
                    _ => self.activity.touch(),
                }
            }
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

#[cfg(test)]
mod tests {
    use super::only_h2_control_frames;

    #[test]
    fn only_connection_control_frames_are_not_activity() {
        let ping_ack = [0, 0, 8, 6, 1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let settings_ack = [0, 0, 0, 4, 1, 0, 0, 0, 0];
        let window_update = [0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert!(only_h2_control_frames(&ping_ack));
        assert!(only_h2_control_frames(
            &[&settings_ack[..], &ping_ack].concat()
        ));
        assert!(only_h2_control_frames(&window_update));
        // DATA on stream 1, a WINDOW_UPDATE for a stream, a cut frame, HTTP/1, nothing.
        assert!(!only_h2_control_frames(&[0, 0, 1, 0, 0, 0, 0, 0, 1, b'x']));
        assert!(!only_h2_control_frames(&[
            0, 0, 4, 8, 0, 0, 0, 0, 3, 0, 0, 1, 0
        ]));
        assert!(!only_h2_control_frames(&ping_ack[..12]));
        assert!(!only_h2_control_frames(b"HTTP/1.1 200 OK\r\n\r\n"));
        assert!(!only_h2_control_frames(&[]));
    }
}
