//! Portico: an API gateway. `Gateway::start` binds the listeners for a config and returns
//! a handle to reload and stop it; `portico run` (main.rs) and the tests both use it.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod context;
pub mod control;
pub mod cors;
pub mod error;
pub mod gateway;
pub mod grpc;
pub mod iplist;
pub mod mirror;
pub mod observe;
pub mod ratelimit;
pub mod router;
pub mod runtime;
pub mod server;
pub mod split;
pub mod telemetry;
pub mod tls;
pub mod transform;
pub mod upstream;
pub mod window;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

pub use config::{Config, ConfigError};
pub use error::GatewayError;
pub use runtime::check;

use control::Control;
use observe::{AccessLog, Metrics};
use runtime::{Runtime, Shared};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid config:\n{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// How to start: the config, where it came from (for reloads) and how often to look
/// for changes to that file.
pub struct Options {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub watch_interval: Option<Duration>,
}

impl Options {
    pub fn new(config: Config) -> Options {
        Options {
            config,
            config_path: None,
            watch_interval: None,
        }
    }
}

pub struct Gateway;

/// A running gateway. Dropping it stops it as `shutdown` does, without waiting for the
/// drain: listeners stop accepting and background tasks end.
#[must_use = "dropping the handle stops the gateway"]
pub struct GatewayHandle {
    pub http_addr: SocketAddr,
    pub https_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    control: Arc<Control>,
    shutdown: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    /// The proxy listeners' connection slots and their number: upgraded tunnels hold
    /// theirs while open, so all of them back means no tunnel is left.
    connections: Arc<Semaphore>,
    max_connections: usize,
}

impl Gateway {
    pub async fn start(options: Options) -> Result<GatewayHandle, StartError> {
        Gateway::start_on(options, Vec::new()).await
    }

    /// Starts a gateway whose proxy listeners are served by the calling runtime and by
    /// each of `workers` too: every runtime accepts on a socket of its own bound to the
    /// same address (`SO_REUSEPORT`) and serves its connections start to end. Admin,
    /// reload and background tasks stay on the calling runtime.
    pub async fn start_on(
        options: Options,
        workers: Vec<tokio::runtime::Handle>,
    ) -> Result<GatewayHandle, StartError> {
        let config = options.config;
        let metrics = Metrics::new();
        let dropped = metrics.access_log_dropped.clone();
        let access_log = if config.server.access_log {
            AccessLog::stdout(dropped)
        } else {
            AccessLog::disabled(dropped)
        };
        let shared = Arc::new(Shared {
            metrics,
            access_log,
        });
        let certs = match &config.server.tls {
            Some(tls) => Some(Arc::new(ArcSwap::from_pointee(tls::CertStore::build(tls)?))),
            None => None,
        };
        let serving = 1 + workers.len();
        let bind = |address: String, count: usize| {
            server::bind_each(&address, count)
                .map_err(|source| StartError::Bind { address, source })
        };
        let (http, http_addr) = bind(config.server.listen.clone(), serving)?;
        let https = match &config.server.tls {
            Some(tls) => Some(bind(tls.listen.clone(), serving)?),
            None => None,
        };
        let admin = match &config.admin {
            Some(admin) => {
                Some(
                    server::bind(&admin.listen)
                        .await
                        .map_err(|source| StartError::Bind {
                            address: admin.listen.clone(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        check::config(&config)?;
        let max_connections = config.server.limits.max_connections;
        let runtime = Runtime::build(config, &shared, None)?;
        let control = Arc::new(Control::new(
            runtime,
            shared,
            options.config_path,
            certs.clone(),
        ));
        control.runtime.load().activate();
        // A replica in a cluster serves with the shared split state, not the file's.
        let serving = control.runtime.load_full();
        serving
            .shared_ready(std::time::Duration::from_secs(1))
            .await;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let connections = Arc::new(Semaphore::new(max_connections));

        let proxy = |sockets: Vec<std::net::TcpListener>,
                     tls: Option<tokio_rustls::TlsAcceptor>| {
            let runtimes =
                std::iter::once(tokio::runtime::Handle::current()).chain(workers.clone());
            sockets
                .into_iter()
                .zip(runtimes)
                .map(|(socket, runtime)| {
                    let (control, connections, shutdown) =
                        (control.clone(), connections.clone(), shutdown_rx.clone());
                    let tls = tls.clone();
                    runtime.spawn(async move {
                        // Registered with the reactor of the runtime that serves it.
                        match tokio::net::TcpListener::from_std(socket) {
                            Ok(tcp) => {
                                let listener = server::Listener {
                                    tcp,
                                    tls,
                                    role: server::Role::Proxy,
                                };
                                server::serve(listener, control, connections, shutdown).await;
                            }
                            Err(e) => tracing::error!(error = %e, "listener not served"),
                        }
                    })
                })
                .collect::<Vec<_>>()
        };
        let mut listeners = proxy(http, None);
        let mut https_addr = None;
        if let (Some((sockets, addr)), Some(store)) = (https, certs) {
            https_addr = Some(addr);
            listeners.extend(proxy(sockets, Some(tls::acceptor(store)?)));
        }
        let mut background = Vec::new();
        let mut admin_addr = None;
        if let Some((tcp, addr)) = admin {
            admin_addr = Some(addr);
            background.push(tokio::spawn(server::serve(
                server::Listener {
                    tcp,
                    tls: None,
                    role: server::Role::Admin,
                },
                control.clone(),
                Arc::new(Semaphore::new(server::ADMIN_MAX_CONNECTIONS)),
                shutdown_rx.clone(),
            )));
        }
        if let (Some(interval), Some(path)) = (options.watch_interval, control.config_path.clone())
        {
            // The content the running config came from, read now: a change made from here
            // on is one the watcher must see, however late its task first runs.
            let seen = std::fs::read(&path).ok();
            background.push(tokio::spawn(watch_file(
                control.clone(),
                path,
                seen,
                interval,
                shutdown_rx,
            )));
        }
        control
            .listeners_up
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(%http_addr, ?https_addr, ?admin_addr, "portico listening");
        Ok(GatewayHandle {
            http_addr,
            https_addr,
            admin_addr,
            control,
            shutdown,
            listeners,
            background,
            connections,
            max_connections,
        })
    }
}

impl GatewayHandle {
    /// Re-reads the config file, as SIGHUP and `POST /reload` do.
    pub fn reload(&self) -> Result<(), ConfigError> {
        self.control.reload()
    }

    /// `reload` on a blocking thread, so the threads serving requests go on serving.
    pub async fn reload_off_thread(&self) -> Result<(), ConfigError> {
        self.control.reload_off_thread().await
    }

    /// Applies a config directly.
    pub fn apply(&self, config: Config) -> Result<(), ConfigError> {
        self.control.apply(config)
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.control.runtime.load_full()
    }

    pub fn metrics(&self) -> String {
        self.control.shared.metrics.render()
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdown_grace`), returns.
    /// Upgraded tunnels (WebSocket) get what is left of the grace to end, then are cut
    /// when the process exits.
    pub async fn shutdown(mut self) {
        let grace_ends = tokio::time::Instant::now()
            + self.control.runtime.load().config.server.shutdown_grace.0;
        let _ = self.shutdown.send(true);
        for listener in std::mem::take(&mut self.listeners) {
            let _ = listener.await;
        }
        self.wait_for_tunnels(grace_ends).await;
        for task in std::mem::take(&mut self.background) {
            task.abort();
        }
        // Every request has been answered (or the grace is over): their log lines are
        // queued, and are written before the process may exit.
        self.control
            .shared
            .access_log
            .flush(std::time::Duration::from_secs(5))
            .await;
    }
}

impl GatewayHandle {
    async fn wait_for_tunnels(&self, until: tokio::time::Instant) {
        let open = self
            .max_connections
            .saturating_sub(self.connections.available_permits());
        if open == 0 {
            return;
        }
        tracing::info!(tunnels = open, "waiting for upgraded connections to close");
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout_at(until, self.connections.acquire_many(all))
            .await
            .is_err()
        {
            let open = self
                .max_connections
                .saturating_sub(self.connections.available_permits());
            tracing::warn!(
                tunnels = open,
                "shutdown grace period over; closing the upgraded connections still open"
            );
        }
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for task in &self.background {
            task.abort();
        }
    }
}

/// Reloads when the file's content changes. Polling the content (not inotify) works the
/// same on every filesystem, including the symlink swaps of Kubernetes ConfigMaps.
async fn watch_file(
    control: Arc<Control>,
    path: PathBuf,
    mut last: Option<Vec<u8>>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // File reads run on a blocking thread: a stalled filesystem must not stall a worker.
    let read = |path: &PathBuf| {
        let path = path.clone();
        async move {
            tokio::task::spawn_blocking(move || std::fs::read(path).ok())
                .await
                .ok()
                .flatten()
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let Some(content) = read(&path).await else {
            continue;
        };
        if last.as_deref() == Some(content.as_slice()) {
            continue;
        }
        last = Some(content);
        tracing::info!(path = %path.display(), "config file changed; reloading");
        let _ = control.reload_off_thread().await;
    }
}
