//! The load generator: keep-alive HTTP/1.1 connections, latencies in an HdrHistogram.
//!
//! Closed loop: each connection sends its next request as soon as the previous answer is
//! read (throughput; latency there is mostly queueing). Open loop: a pacer task releases
//! requests on a fixed schedule and latency counts from the intended send time, so a
//! request that waits behind a slow one is charged for its wait (no coordinated omission).
//! A scenario may speak TLS (rustls), and may open a new connection for every request
//! (the handshake measurement).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::backend;
use super::procs::{Fleet, Proc};
use crate::Args;

/// Which process serves a target, for its CPU time and peak RSS (None: nothing measured,
/// as for direct). Each mode's set of processes answers for its own targets.
pub trait Proxies {
    fn proxy(&self, target: Target) -> Option<&Proc>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Direct,
    Portico,
    PorticoFull,
    PorticoCache,
    Nginx,
    /// The same GET through an HTTPS upstream (TLS 1.3, kept alive).
    PorticoTls,
    NginxTls,
    /// The same GET to an h2c upstream (compared with Portico's own HTTP/1.1 path: nginx
    /// has no HTTP/2 upstreams).
    PorticoH2c,
    /// The same GET on a `grpc: true` route to the h2c upstream: what the gRPC layer
    /// (status counting, deadline watch) adds to the h2c path.
    PorticoGrpc,
    /// The plain route on a Portico with tracing on, `sample_ratio` 0.01 and 1.0.
    PorticoTraced1,
    PorticoTraced100,
    /// The plain route's request on a route with an API key, `allow`, a CORS policy and an
    /// IP allow list (the request carries the key and an allowed `Origin`).
    PorticoEdge,
    /// One route with a local limit, and the same with `scope: cluster` (Redis on
    /// loopback), on their own Portico.
    PorticoLocalLimit,
    PorticoClusterLimit,
    /// The plain route with every request (GET and POST) copied to a second backend
    /// process and the answers compared.
    PorticoMirror,
    /// HAProxy's equivalent of nginx's plain route (tuned: `nbthread` = proxy threads).
    Haproxy,
    /// `--scenario defaults`: each proxy with its shipped worker count and its access log
    /// on, and Portico again with the log off.
    PorticoLogOn,
    PorticoLogOff,
    NginxDefaults,
    HaproxyDefaults,
    /// `--scenario https`: TLS terminated by the proxy, kept-alive connections.
    PorticoHttps,
    NginxHttps,
    HaproxyHttps,
    /// `--scenario https`: a new TCP + TLS connection (full handshake) per request.
    PorticoHandshake,
    NginxHandshake,
    HaproxyHandshake,
    /// `--scenario scaling`: the plain route with one and with two workers.
    PorticoOneWorker,
    PorticoTwoWorkers,
    NginxOneWorker,
    NginxTwoWorkers,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Portico => "portico plain",
            Target::PorticoFull => "portico jwt+ratelimit+transform",
            Target::PorticoCache => "portico cache hit",
            Target::Nginx => "nginx plain",
            Target::PorticoTls => "portico https upstream",
            Target::NginxTls => "nginx https upstream",
            Target::PorticoH2c => "portico h2c upstream",
            Target::PorticoGrpc => "portico grpc route (h2c)",
            Target::PorticoTraced1 => "portico traced 1%",
            Target::PorticoTraced100 => "portico traced 100%",
            Target::PorticoEdge => "portico api_key+allow+cors+ip",
            Target::PorticoLocalLimit => "portico local limit",
            Target::PorticoClusterLimit => "portico cluster limit (redis)",
            Target::PorticoMirror => "portico mirror 100%",
            Target::Haproxy => "haproxy plain",
            Target::PorticoLogOn => "portico defaults, access log on",
            Target::PorticoLogOff => "portico defaults, access log off",
            Target::NginxDefaults => "nginx defaults, access log on",
            Target::HaproxyDefaults => "haproxy defaults, access log on",
            Target::PorticoHttps => "portico https keep-alive",
            Target::NginxHttps => "nginx https keep-alive",
            Target::HaproxyHttps => "haproxy https keep-alive",
            Target::PorticoHandshake => "portico https handshakes",
            Target::NginxHandshake => "nginx https handshakes",
            Target::HaproxyHandshake => "haproxy https handshakes",
            Target::PorticoOneWorker => "portico 1 worker",
            Target::PorticoTwoWorkers => "portico 2 workers",
            Target::NginxOneWorker => "nginx 1 worker",
            Target::NginxTwoWorkers => "nginx 2 workers",
        }
    }

    /// The nginx scenario this one is compared with.
    pub fn nginx_peer(self) -> Target {
        match self {
            Target::PorticoTls | Target::NginxTls => Target::NginxTls,
            Target::PorticoLogOn
            | Target::PorticoLogOff
            | Target::NginxDefaults
            | Target::HaproxyDefaults => Target::NginxDefaults,
            Target::PorticoHttps | Target::NginxHttps | Target::HaproxyHttps => Target::NginxHttps,
            Target::PorticoHandshake | Target::NginxHandshake | Target::HaproxyHandshake => {
                Target::NginxHandshake
            }
            Target::PorticoOneWorker | Target::NginxOneWorker => Target::NginxOneWorker,
            Target::PorticoTwoWorkers | Target::NginxTwoWorkers => Target::NginxTwoWorkers,
            _ => Target::Nginx,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    Get100,
    Get2k,
    Post1k,
}

impl Load {
    pub fn label(self) -> &'static str {
        match self {
            Load::Get100 => "GET 100 B",
            Load::Get2k => "GET 2 KiB JSON",
            Load::Post1k => "POST 1 KiB",
        }
    }
    fn path(self) -> &'static str {
        match self {
            Load::Get100 => "/100b",
            Load::Get2k => "/2k",
            Load::Post1k => "/post",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub target: Target,
    pub load: Load,
    pub port: u16,
    pub path: String,
    /// Extra request headers (a bearer token, an API key, an origin).
    pub headers: Vec<(&'static str, String)>,
    /// HTTPS to the target (server name `localhost`) with this client config.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// A new connection for every request, closed after its answer (closed loop only).
    pub fresh: bool,
}

impl Scenario {
    /// GET 100 B on the plain route of the proxy at `port` (`/100b` for direct).
    pub fn plain_get(target: Target, port: u16) -> Scenario {
        let prefix = if target == Target::Direct {
            ""
        } else {
            "/plain"
        };
        Scenario {
            target,
            load: Load::Get100,
            port,
            path: format!("{prefix}{}", Load::Get100.path()),
            headers: Vec::new(),
            tls: None,
            fresh: false,
        }
    }
}

pub struct Outcome {
    pub scenario: Scenario,
    pub requests: u64,
    /// Requests answered during the warm-ups (not measured; counted for per-request
    /// ratios of server-side counters).
    pub warmup_requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub histogram: Histogram<u64>,
    /// CPU seconds of the proxy process during the measured segments (None for direct).
    pub proxy_cpu: Option<f64>,
    pub proxy_rss_mib: Option<f64>,
}

/// Every scenario of a run; `only` keeps those whose target label contains one of its
/// comma-separated words (the direct scenario is always kept: it calibrates the rest).
pub fn scenarios(fleet: &Fleet, smoke: bool, only: Option<&str>) -> Vec<Scenario> {
    let loads: &[Load] = if smoke {
        &[Load::Get100]
    } else {
        &[Load::Get100, Load::Get2k, Load::Post1k]
    };
    let mut out = Vec::new();
    for load in loads {
        let mut add = |target: Target, port: u16, prefix: &str| {
            out.push(Scenario {
                target,
                load: *load,
                port,
                path: format!("{prefix}{}", load.path()),
                headers: match target {
                    Target::PorticoFull => vec![("authorization", fleet.basics.bearer.clone())],
                    Target::PorticoEdge => vec![
                        ("x-api-key", super::portico_conf::BENCH_API_KEY.to_string()),
                        ("origin", "https://shop.example".to_string()),
                    ],
                    _ => Vec::new(),
                },
                tls: None,
                fresh: false,
            })
        };
        add(Target::Direct, fleet.basics.backend.port, "");
        add(Target::Portico, fleet.portico.port, "/plain");
        if !smoke {
            add(Target::PorticoMirror, fleet.portico.port, "/mirrored");
            add(Target::PorticoFull, fleet.portico.port, "/full");
            add(Target::PorticoEdge, fleet.portico.port, "/edge");
            if *load != Load::Post1k {
                add(Target::PorticoCache, fleet.portico.port, "/cached");
            }
        }
        if *load == Load::Get100 {
            add(Target::PorticoTls, fleet.portico.port, "/tls");
            add(Target::PorticoH2c, fleet.portico.port, "/h2c");
            add(Target::PorticoGrpc, fleet.portico.port, "/grpc");
            if let Some(limited) = &fleet.limited {
                add(
                    Target::PorticoLocalLimit,
                    limited.portico.port,
                    "/limit-local",
                );
                add(
                    Target::PorticoClusterLimit,
                    limited.portico.port,
                    "/limit-cluster",
                );
            }
            for (ratio, proc) in &fleet.traced {
                let target = if *ratio < 1.0 {
                    Target::PorticoTraced1
                } else {
                    Target::PorticoTraced100
                };
                add(target, proc.port, "/plain");
            }
        }
        if let Some(nginx) = &fleet.nginx {
            add(Target::Nginx, nginx.port, "/plain");
            if *load == Load::Get100 {
                add(Target::NginxTls, nginx.port, "/tls");
            }
        }
        if let (Some(haproxy), Load::Get100) = (&fleet.haproxy, load) {
            add(Target::Haproxy, haproxy.port, "/plain");
        }
    }
    if let Some(only) = only {
        let chosen = |target: Target| {
            only.split(',')
                .any(|word| target.label().contains(word.trim()))
        };
        // The mirror's figures only mean something next to the same route without one.
        let with_plain = chosen(Target::PorticoMirror);
        out.retain(|s| {
            s.target == Target::Direct
                || (with_plain && s.target == Target::Portico)
                || chosen(s.target)
        });
    }
    out
}

impl Proxies for Fleet {
    fn proxy(&self, target: Target) -> Option<&Proc> {
        proxy_of(self, target)
    }
}

fn proxy_of(fleet: &Fleet, target: Target) -> Option<&Proc> {
    match target {
        Target::Direct => None,
        Target::Haproxy => fleet.haproxy.as_ref(),
        Target::Portico
        | Target::PorticoFull
        | Target::PorticoCache
        | Target::PorticoTls
        | Target::PorticoH2c
        | Target::PorticoGrpc
        | Target::PorticoEdge
        | Target::PorticoMirror => Some(&fleet.portico),
        Target::PorticoTraced1 | Target::PorticoTraced100 => {
            let sampled_all = target == Target::PorticoTraced100;
            fleet
                .traced
                .iter()
                .find(|(ratio, _)| (*ratio >= 1.0) == sampled_all)
                .map(|(_, proc)| proc)
        }
        Target::Nginx | Target::NginxTls => fleet.nginx.as_ref(),
        Target::PorticoLocalLimit | Target::PorticoClusterLimit => {
            fleet.limited.as_ref().map(|l| &l.portico)
        }
        // The other modes' targets: not in this fleet.
        _ => None,
    }
}

/// How a measurement drives its connections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// Each connection sends as soon as its previous answer arrives.
    Closed,
    /// Fixed schedule: `rate` requests per second in total over all connections. With
    /// `spin` the pacer busy-polls the load generator's runtime between sends (for when the
    /// generator has a core of its own); without, it sleeps on tokio's 1 ms timer.
    Open { rate: f64, spin: bool },
}

/// The open-loop pass: GET 100 B on direct, Portico plain, Portico full and nginx.
pub fn open_loop_scenarios(scenarios: &[Scenario]) -> Vec<Scenario> {
    scenarios
        .iter()
        .filter(|s| {
            s.load == Load::Get100
                && matches!(
                    s.target,
                    Target::Direct
                        | Target::Portico
                        | Target::PorticoFull
                        | Target::PorticoMirror
                        | Target::Nginx
                )
        })
        .cloned()
        .collect()
}

/// What one segment produced.
struct Counts {
    ok: u64,
    errors: u64,
    seconds: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Measures every scenario for `args.duration`, in `args.rounds` alternating rounds with a
/// warm-up before each measured segment.
pub fn measure(
    args: &Args,
    fleet: &dyn Proxies,
    scenarios: &[Scenario],
    pacing: Pacing,
) -> Result<Vec<Outcome>, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut outcomes: Vec<Outcome> = scenarios
        .iter()
        .map(|s| Outcome {
            scenario: s.clone(),
            requests: 0,
            warmup_requests: 0,
            errors: 0,
            seconds: 0.0,
            histogram: histogram(),
            proxy_cpu: fleet.proxy(s.target).map(|_| 0.0),
            proxy_rss_mib: None,
        })
        .collect();
    let segment = args.duration / args.rounds.max(1);
    let run = |s: &Scenario, length: Duration, h: Option<&mut Histogram<u64>>| match pacing {
        Pacing::Closed => runtime.block_on(run_segment(s, args.connections, length, h)),
        Pacing::Open { rate, spin } => {
            runtime.block_on(run_open_segment(s, args.connections, rate, spin, length, h))
        }
    };
    let mode = match pacing {
        Pacing::Closed => String::new(),
        Pacing::Open { rate, .. } => format!("open loop at {rate} req/s, "),
    };
    for round in 0..args.rounds.max(1) {
        for (i, s) in scenarios.iter().enumerate() {
            eprintln!(
                "{mode}round {}/{}: {} {} ({:?})",
                round + 1,
                args.rounds,
                s.target.label(),
                s.load.label(),
                segment
            );
            let warm = run(s, args.warmup, None);
            outcomes[i].warmup_requests += warm.ok;
            let proxy = fleet.proxy(s.target);
            let cpu_before = proxy.map(|p| p.cpu_seconds());
            let o = &mut outcomes[i];
            let counts = run(s, segment, Some(&mut o.histogram));
            o.seconds += counts.seconds;
            o.requests += counts.ok;
            o.errors += counts.errors;
            if let (Some(p), Some(before), Some(total)) = (proxy, cpu_before, o.proxy_cpu.as_mut())
            {
                *total += p.cpu_seconds() - before;
            }
        }
    }
    for o in &mut outcomes {
        o.proxy_rss_mib = fleet.proxy(o.scenario.target).map(|p| p.peak_rss_mib());
    }
    Ok(outcomes)
}

/// Runs `connections` closed-loop clients for `length`; errors count failed connections.
async fn run_segment(
    s: &Scenario,
    connections: usize,
    length: Duration,
    histogram: Option<&mut Histogram<u64>>,
) -> Counts {
    let started = Instant::now();
    let deadline = started + length;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (s, ok, errors) = (s.clone(), ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = self::histogram();
            if s.fresh {
                fresh_loop(&s, deadline, &mut h, &ok, &errors).await;
            } else if let Err(()) = client_loop(&s, deadline, &mut h, &ok).await {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            h
        }));
    }
    let merged = merge(tasks).await;
    if let Some(out) = histogram {
        let _ = out.add(&merged);
    }
    Counts {
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    }
}

async fn merge(tasks: Vec<tokio::task::JoinHandle<Histogram<u64>>>) -> Histogram<u64> {
    let mut merged = histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = merged.add(&h);
        }
    }
    merged
}

/// One keep-alive connection to a scenario's port, and the scenario's request.
struct Client {
    sender: SendRequest<Full<Bytes>>,
    post_body: Bytes,
}

impl Client {
    async fn connect(s: &Scenario) -> Result<Client, ()> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .map_err(|_| ())?;
        let _ = stream.set_nodelay(true);
        if s.fresh {
            // The server closes first (the request says `Connection: close`) and our
            // close is then a reset: no TIME_WAIT on either side, so thousands of
            // connections a second do not run out of ports.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
        let sender = match &s.tls {
            None => http1(TokioIo::new(stream)).await?,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|_| ())?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|_| ())?;
                http1(TokioIo::new(stream)).await?
            }
        };
        Ok(Client {
            sender,
            post_body: if s.load == Load::Post1k {
                Bytes::from(vec![b'p'; backend::POST])
            } else {
                Bytes::new()
            },
        })
    }

    fn request(&self, s: &Scenario) -> Result<Request<Full<Bytes>>, ()> {
        // Origin-form, as clients of a reverse proxy send it (hyper's connection writes
        // the URI as given): HAProxy answers an absolute URI whose authority is not the
        // Host header with 400.
        let mut req = Request::builder()
            .uri(s.path.as_str())
            .header("host", "bench.local");
        for (name, value) in &s.headers {
            req = req.header(*name, value);
        }
        if s.fresh {
            req = req.header("connection", "close");
        }
        let body = if s.load == Load::Post1k {
            req = req
                .method(Method::POST)
                .header("content-type", "application/octet-stream");
            Full::new(self.post_body.clone())
        } else {
            Full::default()
        };
        req.body(body).map_err(|_| ())
    }

    /// Sends `req` and reads the whole answer; a non-2xx status is an error.
    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> Result<(), ()> {
        let response = self.sender.send_request(req).await.map_err(|_| ())?;
        let status = response.status();
        let _ = response.into_body().collect().await.map_err(|_| ())?;
        if status.is_success() {
            Ok(())
        } else {
            Err(())
        }
    }
}

/// An HTTP/1.1 connection over `io`, its connection task spawned.
async fn http1<IO>(io: IO) -> Result<SendRequest<Full<Bytes>>, ()>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| ())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// A new connection per request until `deadline`; latency includes connecting (and the
/// TLS handshake). Errors count failed requests, and the loop goes on.
async fn fresh_loop(
    s: &Scenario,
    deadline: Instant,
    h: &mut Histogram<u64>,
    ok: &AtomicU64,
    errors: &AtomicU64,
) {
    while Instant::now() < deadline {
        let started = Instant::now();
        let done = async {
            let mut client = Client::connect(s).await?;
            let req = client.request(s)?;
            client.exchange(req).await
        }
        .await;
        match done {
            Ok(()) => {
                let _ = h.record(micros(started.elapsed()));
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(()) => {
                errors.fetch_add(1, Ordering::Relaxed);
                // A server that refuses would otherwise be hammered in a tight loop.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

async fn client_loop(
    s: &Scenario,
    deadline: Instant,
    h: &mut Histogram<u64>,
    ok: &AtomicU64,
) -> Result<(), ()> {
    let mut client = Client::connect(s).await?;
    while Instant::now() < deadline {
        let req = client.request(s)?;
        let started = Instant::now();
        client.exchange(req).await?;
        let _ = h.record(micros(started.elapsed()));
        ok.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn micros(d: Duration) -> u64 {
    d.as_micros().max(1) as u64
}

/// Runs `connections` open-loop clients sending `rate` requests/s in total for `length`.
///
/// Connection i sends its k-th request at start + (k * connections + i) / rate, that is
/// start + offset_i + k * interval with interval = connections / rate. A pacer task hands
/// each connection its intended send times; a connection still busy sends as soon as it is
/// free, and the latency counts from the intended time. Errors count failed requests (the
/// connection is then re-opened). The backlog left at the end of the schedule is drained for
/// up to `length` more; requests still unanswered then are errors too, and are recorded at
/// their wait so far (a lower bound).
async fn run_open_segment(
    s: &Scenario,
    connections: usize,
    rate: f64,
    spin: bool,
    length: Duration,
    histogram: Option<&mut Histogram<u64>>,
) -> Counts {
    let connections = connections.max(1);
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // Connect first so the schedule starts on established connections.
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { Client::connect(&s).await.ok() })
        })
        .collect();
    let mut ready = Vec::with_capacity(connections);
    for c in clients {
        ready.push(c.await.ok().flatten());
    }
    let start = Instant::now() + Duration::from_millis(1);
    let deadline = start + length;
    let hard_stop = deadline + length;
    let mut ticks = Vec::with_capacity(connections);
    let mut tasks = Vec::with_capacity(connections);
    for client in ready {
        let (tx, rx) = mpsc::unbounded_channel::<Instant>();
        ticks.push(tx);
        let (s, ok, errors) = (s.clone(), ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = self::histogram();
            open_client(&s, client, rx, hard_stop, &mut h, &ok, &errors).await;
            h
        }));
    }
    let pacer = tokio::spawn(pace(ticks, start, deadline, rate, spin));
    let merged = merge(tasks).await;
    let _ = pacer.await;
    if let Some(out) = histogram {
        let _ = out.add(&merged);
    }
    Counts {
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Releases the k-th request of connection i at start + (k * n + i) / rate until `deadline`.
///
/// Tokio's timer fires up to 1 ms late, and a pacer thread sleeping in nanosleep and then
/// waking the runtime measured ~50 us late at the median (ms at p99) on a 2-core VM, all of
/// it counted as latency. Spinning on `yield_now` keeps the runtime polling its sockets
/// without blocking, and sends within a few microseconds of the intended time.
async fn pace(
    ticks: Vec<mpsc::UnboundedSender<Instant>>,
    start: Instant,
    deadline: Instant,
    rate: f64,
    spin: bool,
) {
    let n = ticks.len() as u64;
    for j in 0u64.. {
        let intended = start + Duration::from_secs_f64(j as f64 / rate);
        if intended >= deadline {
            break;
        }
        if spin {
            while Instant::now() < intended {
                tokio::task::yield_now().await;
            }
        } else {
            tokio::time::sleep_until(intended.into()).await;
        }
        let _ = ticks[(j % n) as usize].send(intended);
        // When behind schedule nothing above awaits: let the connections run now and then.
        tokio::task::coop::consume_budget().await;
    }
}

/// One open-loop connection: sends at each intended time it receives (or at once when late).
async fn open_client(
    s: &Scenario,
    mut client: Option<Client>,
    mut rx: mpsc::UnboundedReceiver<Instant>,
    hard_stop: Instant,
    h: &mut Histogram<u64>,
    ok: &AtomicU64,
    errors: &AtomicU64,
) {
    let mut in_flight = None;
    let run = async {
        while let Some(intended) = rx.recv().await {
            in_flight = Some(intended);
            if client.is_none() {
                client = Client::connect(s).await.ok();
            }
            let sent = match client.as_mut() {
                Some(c) => match c.request(s) {
                    Ok(req) => c.exchange(req).await,
                    Err(()) => Err(()),
                },
                None => Err(()),
            };
            in_flight = None;
            match sent {
                Ok(()) => {
                    let _ = h.record(micros(intended.elapsed()));
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(()) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    client = None;
                }
            }
        }
    };
    let drained = tokio::time::timeout_at(hard_stop.into(), run).await.is_ok();
    if !drained {
        // Requests still unanswered at the hard stop are errors, and enter the percentiles
        // at their wait so far.
        let now = Instant::now();
        for intended in in_flight
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
        {
            let _ = h.record(micros(now - intended));
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
