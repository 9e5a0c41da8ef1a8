//! The load harness: Portico against a direct connection, nginx and HAProxy, in one run.
//!
//!   cargo bench --bench load                      # full run (about 2.5 minutes on 2 cores)
//!   cargo bench --bench load -- --smoke           # 2-second run, as CI does
//!   cargo bench --bench load -- --check 1.2       # exit 1 if Portico's plain-proxy req/s < 1.2 x nginx's
//!   cargo bench --bench load -- --rate 10000      # open-loop latency pass at 10k req/s (0: none)
//!   cargo bench --bench load -- --defaults        # shipped defaults: a worker per core, access logs on
//!   cargo bench --bench load -- --scenario https  # TLS terminated: keep-alive, handshakes/s, h2load
//!   cargo bench --bench load -- --scaling         # 1 worker against 2, Portico and nginx
//!   cargo bench --bench load -- --scenario https --duration 2s --rounds 1   # a short check
//!   cargo bench --bench load -- --help
//!
//! `--scenario` picks the mode:
//!
//! - `tuned` (the default): every scenario; each proxy with `--proxy-threads` workers and
//!   no access log; HAProxy (`nbthread` = proxy threads, `http-reuse always`) beside nginx
//!   on the plain GET 100 B.
//! - `defaults` (`--defaults`): the proxies as they ship: Portico without `--threads`,
//!   nginx `worker_processes` = cores, HAProxy `nbthread` = cores, every access log on and
//!   written to a file; and Portico again with its log off, for the log's cost per request.
//! - `https`: the proxies terminate TLS 1.3 (RSA 2048 certificate from a CA made at start):
//!   kept-alive HTTPS, a full handshake per request, and HTTP/2 clients with h2load.
//! - `scaling` (`--scaling`): Portico `--threads 1` and `2`, nginx `worker_processes 1`
//!   and `2`, and each one's 2-worker / 1-worker throughput.
//!
//! The modes other than tuned measure the plain GET 100 B route only, in the same
//! alternating rounds, and skip the open-loop pass, `--only` and `--check`. Every Portico
//! has the same config: the measured routes among 1,000 routes and 100 upstreams, so its
//! peak RSS is that of a large deployment.
//!
//! Lifecycle: the harness re-executes itself as the backend process (`backend` mode), starts
//! the release `portico` binary and, when they are on PATH, nginx and HAProxy (`-db`, in the
//! foreground), each as its own process so their CPU time and peak RSS can be read from
//! /proc; h2load too for `--scenario https`. A missing nginx, HAProxy or h2load is skipped
//! with the reason printed. Proxies and backend are pinned to one set of cores and the load
//! generator (and h2load) to another when the machine has two or more.
//! Targets are measured in alternating rounds so machine noise spreads over all of them.
//! The closed-loop rounds (each connection sends again as soon as it has its answer) give
//! throughput; an open-loop pass at a fixed request rate then gives latency that is not
//! just queueing, measured from each request's intended send time.
//! Every child process is killed when the harness ends, with its process group, and a group
//! still alive then is reported.

mod load_support;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use load_support::{backend, defaults, drive, https, procs, report, scaling};

/// What a run measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every scenario, each proxy pinned with --proxy-threads workers, access logs off.
    Tuned,
    /// The proxies' shipped worker counts and access logs on (plain GET 100 B).
    Defaults,
    /// TLS terminated by the proxies: keep-alive, full handshakes, and h2load.
    Https,
    /// Portico and nginx with one worker and with two (plain GET 100 B).
    Scaling,
}

#[derive(Parser, Debug, Clone)]
#[command(name = "load", about = "Portico load harness")]
pub struct Args {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Measured time per scenario, split over the rounds.
    #[arg(long, default_value = "6s", value_parser = portico::config::units::parse_duration)]
    duration: Duration,
    /// Warm-up before each measured segment.
    #[arg(long, default_value = "500ms", value_parser = portico::config::units::parse_duration)]
    warmup: Duration,
    /// Alternating rounds over all scenarios.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Worker threads of the proxies (Portico threads, nginx worker processes, HAProxy
    /// nbthread), in the tuned and https modes.
    #[arg(long, default_value_t = 1)]
    proxy_threads: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Open-loop latency pass after the closed-loop rounds: total requests per second over
    /// all connections, each on a fixed schedule (GET 100 B; 0 disables; skipped by --smoke
    /// and by the modes other than tuned).
    #[arg(long, value_name = "REQ_PER_S", default_value_t = 5000.0, value_parser = parse_rate)]
    rate: f64,
    /// What to measure: one of the modes below (benches/load.rs has the details).
    #[arg(long = "scenario", value_enum, default_value_t = Mode::Tuned)]
    mode: Mode,
    /// The same as --scenario defaults.
    #[arg(long, conflicts_with_all = ["mode", "scaling"])]
    defaults: bool,
    /// The same as --scenario scaling.
    #[arg(long, conflicts_with = "mode")]
    scaling: bool,
    /// A 2-second run of the plain 100 B GET only, without nginx or HAProxy (what CI runs).
    #[arg(long, conflicts_with_all = ["mode", "defaults", "scaling"])]
    smoke: bool,
    /// Exit 1 when Portico's plain-proxy req/s is below RATIO x nginx's (100 B GET).
    #[arg(long, value_name = "RATIO", conflicts_with_all = ["mode", "defaults", "scaling"])]
    check: Option<f64>,
    /// Where the markdown table and the SVG plot go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Only the scenarios whose target label contains one of these comma-separated words,
    /// e.g. `plain,h2c,grpc` (direct is always run). Tuned mode only.
    #[arg(long, conflicts_with_all = ["mode", "defaults", "scaling"])]
    only: Option<String>,
    /// Skip nginx even when it is installed.
    #[arg(long)]
    no_nginx: bool,
    /// Skip HAProxy even when it is installed.
    #[arg(long)]
    no_haproxy: bool,
    /// Internal: run as the backend process on this port.
    #[arg(long, hide = true)]
    backend_port: Option<u16>,
    /// Internal: the backend's HTTPS port, with --backend-cert and --backend-key.
    #[arg(long, hide = true)]
    backend_tls_port: Option<u16>,
    #[arg(long, hide = true)]
    backend_cert: Option<PathBuf>,
    #[arg(long, hide = true)]
    backend_key: Option<PathBuf>,
    /// cargo bench passes --bench; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a request rate (a number >= 0)")),
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(port) = args.backend_port {
        let tls = match (
            args.backend_tls_port,
            args.backend_cert.take(),
            args.backend_key.take(),
        ) {
            (Some(p), Some(cert), Some(key)) => Some((p, cert, key)),
            _ => None,
        };
        backend::run(port, tls);
        return ExitCode::SUCCESS;
    }
    if args.smoke {
        args.connections = args.connections.min(4);
        args.duration = Duration::from_secs(2);
        args.warmup = Duration::from_millis(200);
        args.rounds = 1;
        args.no_nginx = true;
        args.no_haproxy = true;
        args.rate = 0.0;
    }
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let cores = procs::cores();
    let pinning = procs::Pinning::plan(cores);
    pinning.pin_self();
    let mode = if args.defaults {
        Mode::Defaults
    } else if args.scaling {
        Mode::Scaling
    } else {
        args.mode
    };
    let (tag, (table, results)) = match mode {
        Mode::Tuned => return run_tuned(args, &pinning),
        Mode::Defaults => ("defaults", defaults::run(args, &pinning)?),
        Mode::Https => ("https", https::run(args, &pinning)?),
        Mode::Scaling => ("scaling", scaling::run(args, &pinning)?),
    };
    println!("{table}");
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let stamp = procs::timestamp();
    let md = args.out.join(format!("load-{stamp}-{tag}.md"));
    let svg = args.out.join(format!("load-{stamp}-{tag}.svg"));
    std::fs::write(&md, &table).map_err(|e| format!("{}: {e}", md.display()))?;
    std::fs::write(&svg, report::svg(&results)).map_err(|e| format!("{}: {e}", svg.display()))?;
    println!("written: {} and {}", md.display(), svg.display());
    if results.iter().all(|r| r.requests == 0) {
        return Err("no request completed: the harness is broken".into());
    }
    Ok(ExitCode::SUCCESS)
}

/// The default mode: every scenario, the open-loop pass, and the optional release gate.
fn run_tuned(args: &Args, pinning: &procs::Pinning) -> Result<ExitCode, String> {
    let fleet = procs::Fleet::start(args, pinning)?;
    let scenarios = drive::scenarios(&fleet, args.smoke, args.only.as_deref());
    let results = drive::measure(args, &fleet, &scenarios, drive::Pacing::Closed)?;
    let open = if args.rate > 0.0 {
        let pacing = drive::Pacing::Open {
            rate: args.rate,
            // Busy-poll only on a core of the load generator's own.
            spin: !pinning.client.is_empty(),
        };
        let open_scenarios = drive::open_loop_scenarios(&scenarios);
        drive::measure(args, &fleet, &open_scenarios, pacing)?
    } else {
        Vec::new()
    };
    let mut table = report::markdown(args, pinning, &fleet, &results);
    if let Some(calls) = fleet.limited.as_ref().and_then(|l| l.redis_evalsha_calls()) {
        // Warm-up requests reach Redis too: count them with the measured ones.
        let requests: u64 = results
            .iter()
            .filter(|r| r.scenario.target == drive::Target::PorticoClusterLimit)
            .map(|r| r.requests + r.warmup_requests)
            .sum();
        if requests > 0 {
            table.push_str(&format!(
                "\nRedis round trips per cluster-limit request: {:.3} ({calls} EVALSHA for {requests} requests, warm-up included)\n",
                calls as f64 / requests as f64
            ));
        }
    }
    if !open.is_empty() {
        table.push('\n');
        table.push_str(&report::open_loop_markdown(args, &open));
    }
    println!("{table}");
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let stamp = procs::timestamp();
    let md = args.out.join(format!("load-{stamp}.md"));
    let svg = args.out.join(format!("load-{stamp}.svg"));
    std::fs::write(&md, &table).map_err(|e| e.to_string())?;
    std::fs::write(&svg, report::svg(&results)).map_err(|e| e.to_string())?;
    if open.is_empty() {
        println!("written: {} and {}", md.display(), svg.display());
    } else {
        let open_svg = args.out.join(format!("load-{stamp}-open.svg"));
        std::fs::write(&open_svg, report::open_loop_svg(args, &open)).map_err(|e| e.to_string())?;
        println!(
            "written: {}, {} and {}",
            md.display(),
            svg.display(),
            open_svg.display()
        );
    }
    if results.iter().all(|r| r.requests == 0) {
        return Err("no request completed: the harness is broken".into());
    }
    if let Some(ratio) = args.check {
        return Ok(report::check(ratio, &results));
    }
    Ok(ExitCode::SUCCESS)
}
