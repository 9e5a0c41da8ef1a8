//! Idle keep-alive connections to one endpoint.
//!
//! The most recently used connection goes out first (its socket and buffers are warm);
//! the oldest is dropped first. A connection idle for the upstream's
//! `keepalive.idle_timeout`, or one the upstream closed or wrote to while idle, is never
//! handed out. The upstream's sweeper calls `sweep` on endpoints that see no traffic, so
//! they do not sit in CLOSE_WAIT.
//!
//! Each serving runtime has a shard of its own (`wire::worker`): a connection goes back
//! to, and out from, the runtime whose reactor it is registered with.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::wire::tls::ClientTls;
use http::uri::Authority;

use super::{Conn, ExchangeError};

#[derive(Debug)]
struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

#[derive(Debug)]
pub struct Pool {
    shards: Box<[Mutex<VecDeque<Idle>>]>,
    idle_timeout: Duration,
    /// Per shard: `max_idle` spread over the runtimes, rounded up.
    max_idle: usize,
}

impl Pool {
    /// Keeps up to `max_idle` connections (over all runtimes, rounded up to a multiple
    /// of their number), each for at most `idle_timeout`.
    pub fn new(idle_timeout: Duration, max_idle: usize) -> Pool {
        let shards = crate::wire::worker::count();
        Pool {
            shards: (0..shards).map(|_| Mutex::new(VecDeque::new())).collect(),
            idle_timeout,
            max_idle: max_idle.div_ceil(shards),
        }
    }

    fn shard(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        let shard = &self.shards[crate::wire::worker::index() % self.shards.len()];
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live idle connection, or None when a new one must be opened.
    pub fn take(&self) -> Option<Box<Conn>> {
        let now = Instant::now();
        let mut idle = self.shard();
        while let Some(mut entry) = idle.pop_back() {
            if now.duration_since(entry.since) < self.idle_timeout && entry.conn.is_idle() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Keeps a connection whose last response ended cleanly.
    pub fn put(&self, conn: Box<Conn>) {
        if self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.shard();
        while idle
            .front()
            .is_some_and(|e| now.duration_since(e.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle { conn, since: now });
    }

    /// Closes connections that expired or that the upstream closed.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut idle = shard.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain_mut(|e| {
                now.duration_since(e.since) < self.idle_timeout && e.conn.is_idle()
            });
        }
    }
}

/// Opens a connection to `authority` (TLS when `tls` is set) within `timeout`.
pub async fn connect(
    authority: &Authority,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<Box<Conn>, ExchangeError> {
    let stream = crate::wire::connect::connect(authority, timeout, tls)
        .await
        .map_err(ExchangeError::Connect)?;
    Ok(Conn::new(stream))
}
