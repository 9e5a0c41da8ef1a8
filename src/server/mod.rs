//! Listeners: accept loops for HTTP (HTTP/1.1 + h2c) and HTTPS (rustls, ALPN), the
//! connection limit, slow-client and idle cut-offs, and graceful shutdown.
//!
//! Lifecycle: `serve` runs until the shutdown channel flips; it then stops accepting and
//! lets hyper finish in-flight requests on every open connection, for at most
//! `shutdown_grace`, before returning.

mod request_line;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use http::Request;
use hyper::body::Incoming;
use request_line::{Framing, RequestLines};

use crate::context::{ConnInfo, RequestLineTooLong};
use crate::control::Control;
use crate::wire::idle::{self, Activity, IdleIo};
use stream::Stream;

pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<TlsAcceptor>,
    pub role: Role,
}

/// What a listener's connections are for. Both get the same connection handling:
/// header-read timeout, idle cut-off, connection cap, graceful drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Client traffic: `gateway::handle`.
    Proxy,
    /// The admin API: `admin::handle`.
    Admin,
}

/// How long an HTTP/2 keepalive PING may go unanswered before the connection is closed.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Connections the admin listener serves at once; more are closed at accept.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Accepts connections until shutdown, then drains them.
pub async fn serve(
    listener: Listener,
    control: Arc<Control>,
    connections: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.tcp.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection refused: max_connections reached");
            control.shared.metrics.connections_refused.inc();
            drop(stream);
            continue;
        };
        if listener.role == Role::Proxy {
            let accepted = &control.shared.metrics.connections_accepted;
            if let Some(counter) = accepted.get(crate::wire::worker::index()) {
                counter.inc();
            }
        }
        let _ = stream.set_nodelay(true);
        let limits = control.runtime.load().config.server.limits.clone();
        // The connection's slot, shared with a tunnel it upgrades to: a WebSocket counts
        // against max_connections for as long as it is open.
        let permit = Arc::new(permit);
        let conn = ConnInfo::new(peer, listener.tls.is_some(), Some(permit.clone()));
        let builder = connection_builder(&limits);
        let control = control.clone();
        let tls = listener.tls.clone();
        let role = listener.role;
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let activity = Arc::new(Activity::new());
            let framing = Arc::new(Framing::default());
            let service = {
                let (activity, framing) = (activity.clone(), framing.clone());
                service_fn(move |mut request: Request<Incoming>| {
                    let control = control.clone();
                    let guard = activity.request_started();
                    let conn = conn.clone();
                    let too_long = framing.on_request(&request);
                    if too_long {
                        request.extensions_mut().insert(RequestLineTooLong);
                    }
                    async move {
                        let response = match role {
                            Role::Proxy => {
                                let runtime = control.runtime.load_full();
                                crate::gateway::handle(runtime, conn, request).await
                            }
                            Role::Admin if too_long => {
                                crate::error::GatewayError::RequestLineTooLong
                                    .to_response(&http::HeaderValue::from_static(""))
                            }
                            Role::Admin => crate::admin::handle(&control, request).await,
                        };
                        drop(guard);
                        Ok::<_, std::convert::Infallible>(response)
                    }
                })
            };
            let idle_timeout = limits.idle_timeout.0;
            let header_read_timeout = limits.header_read_timeout.0;
            let stream = match tls {
                None => Stream::Plain(stream),
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout.0, acceptor.accept(stream))
                            .await;
                    match handshake {
                        Ok(Ok(s)) => Stream::Tls(Box::new(s)),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let max_line = limits.max_request_line.0 as usize;
            let stream = RequestLines::new(stream, framing, max_line);
            let io = TokioIo::new(IdleIo::client(stream, activity.clone()));
            let served = watcher.watch(
                builder
                    .serve_connection_with_upgrades(io, service)
                    .into_owned(),
            );
            tokio::select! {
                biased;
                _ = served => {}
                _ = idle::watchdog(activity.clone(), idle_timeout) => {}
                _ = idle::first_request(activity, header_read_timeout) => {
                    tracing::debug!(%peer, "no request within header_read_timeout");
                }
            }
        });
    }
    drop(listener);
    let grace = control.runtime.load().config.server.shutdown_grace.0;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?grace, "shutdown grace period over; returning with connections still open (they end with the process)");
    }
}

fn connection_builder(limits: &crate::config::LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let max_headers = limits.max_request_headers.0.clamp(8192, 1 << 24) as usize;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        .max_buf_size(max_headers)
        .keep_alive(true);
    // PING only a connection that has been quiet for twice the idle timeout: an idle one
    // is closed before that, so pings find dead peers under long requests and never
    // keep an idle connection open.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_headers as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(limits.idle_timeout.0.saturating_mul(2)))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// Binds a listener; `0` ports get an ephemeral port (tests).
pub async fn bind(address: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let (mut sockets, local) = bind_each(address, 1)?;
    let socket = sockets
        .pop()
        .ok_or_else(|| std::io::Error::other("no socket bound"))?;
    Ok((TcpListener::from_std(socket)?, local))
}

/// Binds `address` once for each of `count` serving runtimes. With more than one, the
/// sockets share the port through `SO_REUSEPORT` and the kernel spreads new
/// connections over them, so each runtime accepts and serves its own. The sockets are
/// registered with a runtime only when one serves them (`TcpListener::from_std` there).
pub fn bind_each(
    address: &str,
    count: usize,
) -> std::io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let addr: SocketAddr = address.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid address {address:?}"),
        )
    })?;
    let shared = count > 1;
    if shared && addr.port() != 0 {
        // SO_REUSEPORT would also let this process join a port another process (of the
        // same user) already serves, splitting its traffic silently: bind once without
        // it first, so a port in use is the same error as with one runtime.
        drop(listen_on(addr, false)?);
    }
    let first = listen_on(addr, shared)?;
    let local = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(listen_on(local, true)?);
    }
    Ok((sockets, local))
}

fn listen_on(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As Tokio's own bind does: a restart may bind while old connections are in TIME_WAIT.
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
