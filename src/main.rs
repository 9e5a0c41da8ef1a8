//! The `portico` command: run a gateway, check a config file, print the version.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use portico::{config, Gateway, Options};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "A fast API gateway: one binary, one YAML file"
)]
struct Cli {
    /// Log format for operational logs (stderr). The access log is always JSON on stdout.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,
    /// Log level (overrides RUST_LOG), e.g. info, debug, portico=debug.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scheduler {
    PerCore,
    WorkStealing,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// How often to look for changes to the config file (0 turns watching off).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        watch_interval: Duration,
        /// Worker threads (default: one per CPU core).
        #[arg(long, env = "PORTICO_WORKER_THREADS")]
        threads: Option<usize>,
        /// How the worker threads share connections: `per-core` runs one single-threaded
        /// runtime per thread, each accepting on its own `SO_REUSEPORT` socket;
        /// `work-stealing` runs one Tokio multi-thread runtime whose threads steal tasks.
        #[arg(long, value_enum, default_value_t = Scheduler::PerCore, env = "PORTICO_SCHEDULER")]
        scheduler: Scheduler,
    },
    /// Validate a config file: exit 0 when valid, 1 with every problem listed otherwise.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print an argon2id hash of a password read from stdin, for
    /// `consumers.NAME.basic_auth.password_hash`.
    HashPassword,
    /// Print the version.
    Version,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    config::units::parse_duration(text)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format, cli.log_level.as_deref());
    match cli.command {
        Command::HashPassword => {
            let mut password = String::new();
            if std::io::stdin().read_line(&mut password).is_err() {
                eprintln!("could not read a password from stdin");
                return ExitCode::FAILURE;
            }
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                eprintln!("the password is empty");
                return ExitCode::FAILURE;
            }
            match portico::auth::basic::hash_password(password) {
                Ok(hash) => {
                    println!("{hash}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("could not hash the password: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Version => {
            println!("portico {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { config } => check(&config),
        Command::Run {
            config,
            watch_interval,
            threads,
            scheduler,
        } => match run(config, watch_interval, threads, scheduler) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portico: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logs(format: LogFormat, level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match portico::check::load_file(path) {
        Ok(config) => {
            for warning in portico::check::warnings(&config) {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: ok ({} routes, {} upstreams)",
                path.display(),
                config.routes.len(),
                config.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {} problem(s)", path.display(), e.issues.len());
            for issue in &e.issues {
                eprintln!("  {issue}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(
    path: PathBuf,
    watch_interval: Duration,
    threads: Option<usize>,
    scheduler: Scheduler,
) -> anyhow::Result<()> {
    let threads = match threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    // One thread, or one runtime per thread: current-thread runtimes, without the
    // work-stealing scheduler's cross-thread bookkeeping (measured in docs/benchmarks.md).
    let mut builder = if threads == 1 || scheduler == Scheduler::PerCore {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    let workers = match scheduler {
        Scheduler::PerCore => Workers::start(threads - 1)?,
        Scheduler::WorkStealing => Workers::start(0)?,
    };
    let worker_runtimes = workers.handles();
    runtime.block_on(async move {
        // Signal handlers first: a SIGTERM or SIGHUP that arrives while the config loads
        // and the listeners bind is acted on once the gateway runs, instead of killing
        // the process with the default action.
        let mut signals = Signals::install()?;
        let load = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || portico::check::load_file(&path))
        };
        let config = load
            .await
            .context("loading the config")?
            .map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?;
        let options = Options {
            config,
            config_path: Some(path),
            watch_interval: (!watch_interval.is_zero()).then_some(watch_interval),
        };
        let handle = Gateway::start_on(options, worker_runtimes).await?;
        signals.wait(&handle).await;
        tracing::info!("shutting down: draining in-flight requests");
        handle.shutdown().await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })?;
    workers.stop();
    Ok(())
}

/// The serving runtimes besides the main one, each a current-thread runtime on a
/// thread of its own (`--scheduler per-core`).
struct Workers {
    threads: Vec<(tokio::runtime::Handle, std::thread::JoinHandle<()>)>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Workers {
    fn start(count: usize) -> anyhow::Result<Workers> {
        // Before any config is built: upstream pools keep one shard per runtime.
        portico::wire::worker::set_count(count + 1);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut threads = Vec::with_capacity(count);
        for index in 1..=count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a worker runtime")?;
            let handle = runtime.handle().clone();
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("portico-worker-{index}"))
                .spawn(move || {
                    portico::wire::worker::enter(index);
                    runtime.block_on(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    });
                })
                .context("starting a worker thread")?;
            threads.push((handle, thread));
        }
        Ok(Workers { threads, stop })
    }

    fn handles(&self) -> Vec<tokio::runtime::Handle> {
        self.threads.iter().map(|(h, _)| h.clone()).collect()
    }

    /// After the gateway has drained: ends each worker runtime and its thread.
    fn stop(self) {
        let _ = self.stop.send(true);
        for (_, thread) in self.threads {
            let _ = thread.join();
        }
    }
}

/// SIGTERM and SIGINT stop the gateway; SIGHUP reloads its config.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }

    /// Returns at SIGTERM or SIGINT; reloads at each SIGHUP meanwhile.
    async fn wait(&mut self, handle: &portico::GatewayHandle) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading config");
                    let _ = handle.reload_off_thread().await;
                }
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals)
    }

    async fn wait(&mut self, _handle: &portico::GatewayHandle) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
