//! The example shop: six small services and the same shop as one monolith.
//!
//! Every service is an axum router over its own SQLite database (or none, for
//! auth). [`spawn`] starts one service on an address and returns a [`Running`]
//! handle; [`spawn_all`] starts the whole fleet with the base URLs wired
//! together, on the default ports or on ephemeral ones (for tests).
//!
//! Lifecycle: `spawn` opens the database, seeds it, starts the outbox relay
//! (for services that write events) and the HTTP server. Dropping the handle
//! or calling [`Running::stop`] stops accepting, lets in-flight requests
//! finish and stops the relay.

pub mod auth;
pub mod common;
pub mod db;
pub mod idempotency;
pub mod ledger;
pub mod monolith;
pub mod notifications;
pub mod orders;
pub mod outbox;
pub mod payments;
pub mod products;
pub mod tls;
pub mod users;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use common::Ctx;

/// One of the shop's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Monolith,
    Users,
    Products,
    Orders,
    Payments,
    Auth,
    Notifications,
}

impl Service {
    pub const ALL: [Service; 7] = [
        Service::Monolith,
        Service::Users,
        Service::Products,
        Service::Orders,
        Service::Payments,
        Service::Auth,
        Service::Notifications,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Monolith => "monolith",
            Service::Users => "users",
            Service::Products => "products",
            Service::Orders => "orders",
            Service::Payments => "payments",
            Service::Auth => "auth",
            Service::Notifications => "notifications",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Service::Monolith => 3000,
            Service::Users => 3001,
            Service::Products => 3002,
            Service::Orders => 3003,
            Service::Payments => 3004,
            Service::Auth => 3005,
            Service::Notifications => 3006,
        }
    }

    pub fn from_name(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.name() == name)
    }

    fn default_url(self) -> String {
        format!("http://127.0.0.1:{}", self.default_port())
    }
}

/// How one service runs. `Options::default()` matches the CLI defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to bind (`127.0.0.1:0` for an ephemeral port).
    pub addr: SocketAddr,
    /// SQLite file path, or `:memory:`.
    pub db: String,
    /// Added before every request except `/health`.
    pub latency: Duration,
    /// Share of requests (0.0..=1.0, except `/health`) answered with 500.
    pub fail_rate: f64,
    /// Payments above this amount are declined (402).
    pub decline_above: f64,
    pub users_url: String,
    pub products_url: String,
    pub payments_url: String,
    /// Where the outbox relay delivers events; `None` keeps them in the outbox.
    pub notifications_url: Option<String>,
    /// JWT issuer; `None` means the auth service's own base URL.
    pub issuer: Option<String>,
    /// Lifetime of issued tokens.
    pub token_ttl: Duration,
    /// Longest wait between two delivery attempts of the outbox relay.
    pub relay_max_backoff: Duration,
    /// Timeout of calls from one service to another.
    pub call_timeout: Duration,
    /// For [`spawn_all`]: payments also serves HTTPS (port 3014, or ephemeral), with a
    /// test CA and certificate kept in this directory (made when missing).
    pub tls_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            db: ":memory:".into(),
            latency: Duration::ZERO,
            fail_rate: 0.0,
            decline_above: 10_000.0,
            users_url: Service::Users.default_url(),
            products_url: Service::Products.default_url(),
            payments_url: Service::Payments.default_url(),
            notifications_url: Some(Service::Notifications.default_url()),
            issuer: None,
            token_ttl: Duration::from_secs(15 * 60),
            relay_max_backoff: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
            tls_dir: None,
        }
    }
}

/// A started service.
pub struct Running {
    pub service: Service,
    pub addr: SocketAddr,
    /// Where the service also serves HTTPS, when it does.
    pub tls_addr: Option<SocketAddr>,
    /// Where the service also serves gRPC (payments' ledger, h2c), when it does.
    pub grpc_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// `http://ADDR`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, waits (at most 10 s) for in-flight requests, stops background tasks.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            let started = std::time::Instant::now();
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                abort.abort();
            }
            tracing::info!(
                service = self.service.name(),
                ms = started.elapsed().as_millis() as u64,
                "stopped"
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Binds `opts.addr` and starts `service` on it.
pub async fn spawn(service: Service, opts: Options) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("{}: cannot bind {}", service.name(), opts.addr))?;
    spawn_on(service, listener, opts).await
}

/// Starts `service` on an already bound listener (`opts.addr` is ignored).
pub async fn spawn_on(
    service: Service,
    listener: TcpListener,
    opts: Options,
) -> anyhow::Result<Running> {
    spawn_with(service, listener, opts, Extra::default()).await
}

/// The listeners a service may have besides its HTTP one.
#[derive(Default)]
pub struct Extra {
    /// The same router (same state) over TLS.
    pub tls: Option<(TcpListener, tls::CertFiles)>,
    /// Payments only: the ledger over gRPC (h2c).
    pub grpc: Option<TcpListener>,
}

/// [`spawn_on`], also serving on the `extra` listeners.
pub async fn spawn_with(
    service: Service,
    listener: TcpListener,
    mut opts: Options,
    extra: Extra,
) -> anyhow::Result<Running> {
    let Extra { tls, grpc } = extra;
    let addr = listener.local_addr()?;
    opts.addr = addr;
    let (shutdown, rx) = watch::channel(false);
    let ctx = Ctx::new(service, Arc::new(opts), rx.clone())?;
    let router = match service {
        Service::Users => users::router(ctx.clone()),
        Service::Products => products::router(ctx.clone()),
        Service::Orders => orders::router(ctx.clone()),
        Service::Payments => payments::router(ctx.clone()),
        Service::Notifications => notifications::router(ctx.clone()),
        Service::Auth => auth::router(ctx.clone())?,
        Service::Monolith => monolith::router(ctx.clone()),
    };
    let writes_events = matches!(
        service,
        Service::Users | Service::Orders | Service::Payments | Service::Monolith
    );
    let router = if writes_events {
        outbox::start_relay(ctx.clone());
        router.merge(outbox::router(ctx.clone()))
    } else {
        router
    };
    let grpc_addr = match grpc {
        Some(listener) if service == Service::Payments => {
            let addr = listener.local_addr()?;
            ledger::serve(listener, ctx.clone(), rx.clone());
            tracing::info!(service = service.name(), %addr, "listening (gRPC ledger, h2c)");
            Some(addr)
        }
        _ => None,
    };
    let app = common::wrap(router, ctx);
    let tls_addr = match tls {
        Some((listener, files)) => {
            let addr = listener.local_addr()?;
            tls::serve(listener, app.clone(), &files, rx.clone())?;
            tracing::info!(service = service.name(), %addr, "listening (https)");
            Some(addr)
        }
        None => None,
    };
    let mut stop = rx;
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(service = service.name(), error = %e, "server failed");
        }
    });
    tracing::info!(service = service.name(), %addr, "listening");
    Ok(Running {
        service,
        addr,
        tls_addr,
        grpc_addr,
        shutdown,
        task: Some(task),
    })
}

/// Where payments serves HTTPS in `shop all --tls-dir` (its plain port plus ten).
pub const PAYMENTS_TLS_PORT: u16 = 3014;

/// Which ports [`spawn_all`] binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// 3000..=3006 on 127.0.0.1.
    Default,
    /// 127.0.0.1:0 for every service.
    Ephemeral,
}

/// The whole shop, started by [`spawn_all`].
pub struct Fleet {
    pub services: Vec<Running>,
}

impl Fleet {
    pub fn get(&self, service: Service) -> Option<&Running> {
        self.services.iter().find(|r| r.service == service)
    }

    /// The address of a service; panics when it was taken out of the fleet.
    pub fn addr(&self, service: Service) -> SocketAddr {
        match self.get(service) {
            Some(running) => running.addr,
            None => panic!("{} is not running in this fleet", service.name()),
        }
    }

    /// `http://ADDR` of a service; panics when it was taken out of the fleet.
    pub fn url(&self, service: Service) -> String {
        format!("http://{}", self.addr(service))
    }

    /// Takes one service out of the fleet (to stop or restart it in a test).
    pub fn take(&mut self, service: Service) -> Option<Running> {
        let index = self.services.iter().position(|r| r.service == service)?;
        Some(self.services.remove(index))
    }

    /// Stops every service at once and waits for all of them.
    pub async fn stop(self) {
        for running in &self.services {
            let _ = running.shutdown.send(true);
        }
        let stops: Vec<_> = self
            .services
            .into_iter()
            .map(|r| tokio::spawn(r.stop()))
            .collect();
        for stop in stops {
            let _ = stop.await;
        }
    }
}

/// Starts every service with the base URLs wired to each other.
///
/// `base` supplies latency, fail rate, decline limit and the like; its address
/// and URLs are replaced, and the issuer too unless `base.issuer` is set. With `data_dir` each service keeps its own
/// SQLite file there (`users.db`, ...); without it every database is in memory.
pub async fn spawn_all(
    base: Options,
    ports: Ports,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<Fleet> {
    let mut listeners = Vec::new();
    for service in Service::ALL {
        let port = match ports {
            Ports::Default => service.default_port(),
            Ports::Ephemeral => 0,
        };
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("{}: cannot bind {addr}", service.name()))?;
        listeners.push((service, listener));
    }
    let url_of = |s: Service| -> anyhow::Result<String> {
        let (_, l) = listeners
            .iter()
            .find(|(x, _)| *x == s)
            .context("missing listener")?;
        Ok(format!("http://{}", l.local_addr()?))
    };
    let mut opts = base;
    opts.users_url = url_of(Service::Users)?;
    opts.products_url = url_of(Service::Products)?;
    opts.payments_url = url_of(Service::Payments)?;
    opts.notifications_url = Some(url_of(Service::Notifications)?);
    opts.issuer = Some(match opts.issuer.take() {
        Some(issuer) => issuer,
        None => url_of(Service::Auth)?,
    });
    let mut services = Vec::new();
    for (service, listener) in listeners {
        let mut o = opts.clone();
        o.db = match &data_dir {
            Some(dir) => dir
                .join(format!("{}.db", service.name()))
                .to_string_lossy()
                .into_owned(),
            None => ":memory:".into(),
        };
        if service == Service::Monolith {
            // The monolith's users are not the services' users: keep its events local.
            o.notifications_url = None;
        }
        let tls = match (&opts.tls_dir, service) {
            (Some(dir), Service::Payments) => {
                let port = match ports {
                    Ports::Default => PAYMENTS_TLS_PORT,
                    Ports::Ephemeral => 0,
                };
                let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("payments (https): cannot bind {addr}"))?;
                Some((listener, tls::ensure_certs(dir)?))
            }
            _ => None,
        };
        let grpc = match service {
            Service::Payments => {
                let port = match ports {
                    Ports::Default => ledger::LEDGER_PORT,
                    Ports::Ephemeral => 0,
                };
                let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("payments (gRPC ledger): cannot bind {addr}"))?;
                Some(listener)
            }
            _ => None,
        };
        services.push(spawn_with(service, listener, o, Extra { tls, grpc }).await?);
    }
    Ok(Fleet { services })
}
