//! The load generator: closed-loop keep-alive HTTP/1.1 connections, each sending its next
//! request as soon as the previous answer is read, latencies in an HdrHistogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::backend;
use super::procs::{Fleet, Proc};
use crate::Args;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Direct,
    Portico,
    PorticoFull,
    PorticoCache,
    Nginx,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Portico => "portico plain",
            Target::PorticoFull => "portico jwt+ratelimit+transform",
            Target::PorticoCache => "portico cache hit",
            Target::Nginx => "nginx plain",
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
    pub authorization: Option<String>,
}

pub struct Outcome {
    pub scenario: Scenario,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub histogram: Histogram<u64>,
    /// CPU seconds of the proxy process during the measured segments (None for direct).
    pub proxy_cpu: Option<f64>,
    pub proxy_rss_mib: Option<f64>,
}

pub fn scenarios(fleet: &Fleet, smoke: bool) -> Vec<Scenario> {
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
                authorization: (target == Target::PorticoFull).then(|| fleet.bearer.clone()),
            })
        };
        add(Target::Direct, fleet.backend.port, "");
        add(Target::Portico, fleet.portico.port, "/plain");
        if !smoke {
            add(Target::PorticoFull, fleet.portico.port, "/full");
            if *load != Load::Post1k {
                add(Target::PorticoCache, fleet.portico.port, "/cached");
            }
        }
        if let Some(nginx) = &fleet.nginx {
            add(Target::Nginx, nginx.port, "/plain");
        }
    }
    out
}

fn proxy_of(fleet: &Fleet, target: Target) -> Option<&Proc> {
    match target {
        Target::Direct => None,
        Target::Portico | Target::PorticoFull | Target::PorticoCache => Some(&fleet.portico),
        Target::Nginx => fleet.nginx.as_ref(),
    }
}

pub fn measure(
    args: &Args,
    fleet: &mut Fleet,
    scenarios: &[Scenario],
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
            errors: 0,
            seconds: 0.0,
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            proxy_cpu: proxy_of(fleet, s.target).map(|_| 0.0),
            proxy_rss_mib: None,
        })
        .collect();
    let segment = args.duration / args.rounds.max(1);
    for round in 0..args.rounds.max(1) {
        for (i, s) in scenarios.iter().enumerate() {
            eprintln!(
                "round {}/{}: {} {} ({:?})",
                round + 1,
                args.rounds,
                s.target.label(),
                s.load.label(),
                segment
            );
            runtime.block_on(run_segment(s, args.connections, args.warmup, None));
            let proxy = proxy_of(fleet, s.target);
            let cpu_before = proxy.map(|p| p.cpu_seconds());
            let started = Instant::now();
            let o = &mut outcomes[i];
            let (requests, errors) = runtime.block_on(run_segment(
                s,
                args.connections,
                segment,
                Some(&mut o.histogram),
            ));
            o.seconds += started.elapsed().as_secs_f64();
            o.requests += requests;
            o.errors += errors;
            if let (Some(p), Some(before), Some(total)) = (proxy, cpu_before, o.proxy_cpu.as_mut())
            {
                *total += p.cpu_seconds() - before;
            }
        }
    }
    for o in &mut outcomes {
        o.proxy_rss_mib = proxy_of(fleet, o.scenario.target).map(|p| p.peak_rss_mib());
    }
    Ok(outcomes)
}

/// Runs `connections` closed-loop clients for `length`; returns (ok responses, errors).
async fn run_segment(
    s: &Scenario,
    connections: usize,
    length: Duration,
    histogram: Option<&mut Histogram<u64>>,
) -> (u64, u64) {
    let deadline = Instant::now() + length;
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (s, ok, errors) = (s.clone(), ok.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            if let Err(()) = client_loop(&s, deadline, &mut h, &ok).await {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            h
        }));
    }
    let mut merged = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = merged.add(&h);
        }
    }
    if let Some(out) = histogram {
        let _ = out.add(&merged);
    }
    (ok.load(Ordering::Relaxed), errors.load(Ordering::Relaxed))
}

async fn client_loop(
    s: &Scenario,
    deadline: Instant,
    h: &mut Histogram<u64>,
    ok: &AtomicU64,
) -> Result<(), ()> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .map_err(|_| ())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ())?;
    tokio::spawn(conn);
    let post_body = Bytes::from(vec![b'p'; backend::POST]);
    let uri = format!("http://127.0.0.1:{}{}", s.port, s.path);
    while Instant::now() < deadline {
        let mut req = Request::builder().uri(&uri).header("host", "bench.local");
        if let Some(auth) = &s.authorization {
            req = req.header("authorization", auth);
        }
        let body = if s.load == Load::Post1k {
            req = req
                .method(Method::POST)
                .header("content-type", "application/octet-stream");
            Full::new(post_body.clone())
        } else {
            Full::default()
        };
        let req = req.body(body).map_err(|_| ())?;
        let started = Instant::now();
        let response = sender.send_request(req).await.map_err(|_| ())?;
        let status = response.status();
        let _ = response.into_body().collect().await.map_err(|_| ())?;
        if !status.is_success() {
            return Err(());
        }
        let _ = h.record(started.elapsed().as_micros().max(1) as u64);
        ok.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
