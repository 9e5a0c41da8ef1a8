//! `shop <service>|all [flags]`: runs the example shop services.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use shop_backends::{spawn, spawn_all, Options, Ports, Service};

/// The example shop behind Portico: six services and a monolith.
#[derive(Debug, Parser)]
#[command(name = "shop", version)]
struct Args {
    /// monolith | users | products | orders | payments | auth | notifications | all
    service: String,
    /// Port to listen on (default: the service's own, 3000..3006).
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// SQLite database file, or :memory:.
    #[arg(long, env = "SHOP_DB", default_value = ":memory:")]
    db: String,
    /// For `all`: keep one database file per service in this directory (default: in memory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// For `all`: payments also serves HTTPS on 3014, with a test CA and certificate
    /// kept in this directory (made when missing).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
    /// Delay added to every request but /health, e.g. 50ms.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    latency: Duration,
    /// Share of requests (0..1) answered with 500, /health excepted.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Payments above this amount are declined (402).
    #[arg(long, default_value_t = 10_000.0)]
    decline_above: f64,
    #[arg(long, env = "SHOP_USERS_URL", default_value = "http://127.0.0.1:3001")]
    users_url: String,
    #[arg(
        long,
        env = "SHOP_PRODUCTS_URL",
        default_value = "http://127.0.0.1:3002"
    )]
    products_url: String,
    #[arg(
        long,
        env = "SHOP_PAYMENTS_URL",
        default_value = "http://127.0.0.1:3004"
    )]
    payments_url: String,
    /// Where events are delivered; "none" keeps them in the outbox
    /// (default: http://127.0.0.1:3006, and none for the monolith).
    #[arg(long, env = "SHOP_NOTIFICATIONS_URL")]
    notifications_url: Option<String>,
    /// JWT issuer (default: the auth service's own URL, http://127.0.0.1:3005).
    #[arg(long, env = "SHOP_ISSUER")]
    issuer: Option<String>,
    /// Lifetime of issued tokens.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    token_ttl: Duration,
}

/// `250ms`, `10s`, `15m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration {s:?}: use ms, s, m or h")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.fail_rate) {
        bail!("--fail-rate must be between 0 and 1");
    }
    let trim = |s: &str| s.trim_end_matches('/').to_owned();
    let opts = Options {
        addr: SocketAddr::new(args.host, 0),
        db: args.db.clone(),
        latency: args.latency,
        fail_rate: args.fail_rate,
        decline_above: args.decline_above,
        users_url: trim(&args.users_url),
        products_url: trim(&args.products_url),
        payments_url: trim(&args.payments_url),
        notifications_url: match args.notifications_url.as_deref() {
            Some("none") => None,
            Some(url) => Some(trim(url)),
            None if args.service == "monolith" => None,
            None => Options::default().notifications_url,
        },
        issuer: args.issuer.clone(),
        token_ttl: args.token_ttl,
        tls_dir: args.tls_dir.clone(),
        ..Options::default()
    };

    if args.service == "all" {
        if let Some(dir) = &args.data_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let fleet = spawn_all(opts, Ports::Default, args.data_dir.clone()).await?;
        for running in &fleet.services {
            println!("{:<14} {}", running.service.name(), running.url());
            if let Some(addr) = running.tls_addr {
                println!("{:<14} https://{addr}", running.service.name());
            }
            if let Some(addr) = running.grpc_addr {
                println!(
                    "{:<14} grpc://{addr} (shop.ledger.v1.Ledger, h2c)",
                    "ledger"
                );
            }
        }
        shutdown_signal().await;
        tracing::info!("shutting down");
        fleet.stop().await;
        return Ok(());
    }

    let Some(service) = Service::from_name(&args.service) else {
        bail!(
            "unknown service {:?}: monolith, users, products, orders, payments, auth, notifications or all",
            args.service
        );
    };
    let opts = Options {
        addr: SocketAddr::new(args.host, args.port.unwrap_or(service.default_port())),
        ..opts
    };
    let running = spawn(service, opts).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
