//! Micro benchmarks of the core request path: route matching (10, 500 and 1 000 routes of
//! prefixes, patterns and hosts), path normalisation, and endpoint selection for each
//! balancer.
//!
//!   cargo bench --bench core

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use portico::config::{Balance, MatchConfig, TargetConfig, UpstreamConfig};
use portico::observe::Metrics;
use portico::router::{RequestView, RouteMatch, RouteTable};
use portico::upstream::Upstream;
use portico::wire::path;

/// `n` routes mixing prefixes, `{param}` patterns and host rules, all under `/api`; the
/// benchmarked request matches the last one. Ten routes are scanned; 500 and 1 000 go
/// through the segment index, whose host keys skip the 167 (333) tenant rules on `/api`.
fn table(n: usize) -> RouteTable<usize> {
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let m = match i % 3 {
            0 => MatchConfig {
                path_prefix: Some(format!("/api/svc-{i}")),
                methods: vec!["GET".into(), "POST".into()],
                ..Default::default()
            },
            1 => MatchConfig {
                path: Some(format!("/api/items-{i}/{{id}}/detail")),
                ..Default::default()
            },
            _ => MatchConfig {
                host: Some(format!("*.tenant-{i}.example.com")),
                path_prefix: Some("/api".into()),
                ..Default::default()
            },
        };
        entries.push((RouteMatch::build(&m).expect("valid route"), i));
    }
    let last = MatchConfig {
        path_prefix: Some("/api/target".into()),
        headers: BTreeMap::new(),
        ..Default::default()
    };
    entries.push((RouteMatch::build(&last).expect("valid route"), n));
    RouteTable::new(entries)
}

fn routing(c: &mut Criterion) {
    let headers = HeaderMap::new();
    for n in [10, 500, 1000] {
        let t = table(n);
        let method = Method::GET;
        c.bench_function(&format!("route match, {n} routes, last matches"), |b| {
            b.iter(|| {
                let view = RequestView {
                    method: &method,
                    host: "shop.example.com",
                    path: black_box("/api/target/items/42"),
                    headers: &headers,
                };
                black_box(t.find(&view))
            })
        });
    }
    let t = table(500);
    let method = Method::GET;
    c.bench_function("route match, 500 routes, first matches", |b| {
        b.iter(|| {
            let view = RequestView {
                method: &method,
                host: "shop.example.com",
                path: black_box("/api/svc-0/x"),
                headers: &headers,
            };
            black_box(t.find(&view))
        })
    });
}

fn normalising(c: &mut Criterion) {
    c.bench_function("normalise clean path", |b| {
        b.iter(|| black_box(path::normalize(black_box("/api/users/7/orders")).is_ok()))
    });
    c.bench_function("normalise dirty path", |b| {
        b.iter(|| black_box(path::normalize(black_box("/api//users/./%37/../7/orders")).is_ok()))
    });
}

fn balancing(c: &mut Criterion) {
    let metrics = Metrics::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    for balance in [Balance::RoundRobin, Balance::Random, Balance::LeastRequest] {
        let config = UpstreamConfig {
            balance,
            targets: (0..8)
                .map(|i| TargetConfig::Address(format!("127.0.0.1:{}", 3000 + i)))
                .collect(),
            ..Default::default()
        };
        let upstream = Upstream::build("bench", &config, &metrics).expect("upstream");
        c.bench_function(&format!("pick endpoint, {balance:?}, 8 endpoints"), |b| {
            b.iter(|| black_box(upstream.pick()))
        });
    }
}

criterion_group!(benches, routing, normalising, balancing);
criterion_main!(benches);
