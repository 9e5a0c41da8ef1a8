//! Micro benchmarks of who-may-call on the request path: an API-key check (hit and
//! miss), a basic-auth check whose credential was verified before, an IP check against
//! a 10 000-entry list, and the CORS headers of an actual response.
//!
//!     cargo bench --bench edge

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{header, HeaderMap, HeaderValue, Uri};
use portico::auth::consumers::Consumers;
use portico::auth::route::RouteAuth;
use portico::config::{ConsumerConfig, CorsConfig, IpConfig, RouteAuthConfig};
use portico::cors::Policy;
use portico::iplist::IpFilter;
use prometheus::IntCounter;

const KEY: &str = "mobile-key-0123456789abcdef";

fn consumers() -> Arc<Consumers> {
    let yaml = format!(
        "mobile-app: {{ api_keys: [\"{KEY}\"], groups: [apps] }}\nops: {{ basic_auth: {{ username: ops, password_hash: \"{}\" }} }}\n",
        portico::auth::basic::hash_password("correct horse").expect("hash")
    );
    let mut configs: std::collections::BTreeMap<String, ConsumerConfig> =
        serde_yaml_ng::from_str(&yaml).expect("consumers");
    // A realistic number of other consumers, so the map is not trivially small.
    for i in 0..1000 {
        configs.insert(
            format!("partner-{i}"),
            ConsumerConfig {
                api_keys: vec![format!("partner-key-{i:016}")],
                ..ConsumerConfig::default()
            },
        );
    }
    Arc::new(Consumers::build(&configs).expect("valid consumers"))
}

fn route_auth(methods: &[&str], consumers: Arc<Consumers>) -> RouteAuth {
    let config = RouteAuthConfig {
        any: methods.iter().map(|m| m.to_string()).collect(),
        jwt: None,
        api_key: None,
    };
    let counter = |_: &str, _: &str| IntCounter::new("bench", "bench").expect("counter");
    RouteAuth::build(&config, None, consumers, counter, Vec::new()).expect("auth")
}

fn api_key(c: &mut Criterion) {
    let auth = route_auth(&["api_key"], consumers());
    let uri = Uri::from_static("/api/partner/orders");
    let mut hit = HeaderMap::new();
    hit.insert("x-api-key", HeaderValue::from_static(KEY));
    let mut miss = HeaderMap::new();
    miss.insert(
        "x-api-key",
        HeaderValue::from_static("wrong-key-0123456789abcde"),
    );
    let mut group = c.benchmark_group("api_key");
    group.bench_function("hit", |b| {
        b.iter(|| {
            let outcome = auth.authenticate(black_box(&hit), &uri).now_or_never();
            assert!(matches!(outcome, Some(Ok(_))));
        })
    });
    group.bench_function("miss", |b| {
        b.iter(|| {
            let outcome = auth.authenticate(black_box(&miss), &uri).now_or_never();
            assert!(matches!(outcome, Some(Err(_))));
        })
    });
    group.finish();
}

fn basic_cached(c: &mut Criterion) {
    use base64::Engine;
    let auth = route_auth(&["basic"], consumers());
    let uri = Uri::from_static("/admin");
    let mut headers = HeaderMap::new();
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ops:correct horse")
    );
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&value).expect("header"),
    );
    // The first check verifies the argon2id hash (on the blocking pool) and remembers it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = std::time::Instant::now();
    runtime
        .block_on(auth.authenticate(&headers, &uri))
        .expect("the password verifies");
    eprintln!("first (uncached) basic check: {:?}", started.elapsed());
    c.bench_function("basic_auth/cached", |b| {
        b.iter(|| {
            let outcome = auth.authenticate(black_box(&headers), &uri).now_or_never();
            assert!(matches!(outcome, Some(Ok(_))));
        })
    });
}

fn ip_list(c: &mut Criterion) {
    // 10 000 scattered /24 and /32 entries, IPv4.
    let mut allow = Vec::new();
    let mut state: u32 = 0x1234_5678;
    for i in 0..10_000 {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let ip = Ipv4Addr::from(state);
        allow.push(if i % 2 == 0 {
            format!("{ip}/32")
        } else {
            format!("{}/24", Ipv4Addr::from(u32::from(ip) & 0xffff_ff00))
        });
    }
    let inside: IpAddr = allow[5000]
        .split('/')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("an address");
    let filter = IpFilter::build(&IpConfig {
        allow,
        deny: vec!["10.6.6.0/24".into()],
    })
    .expect("valid list");
    let outside = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77));
    let mut group = c.benchmark_group("ip_check_10000");
    group.bench_function("inside", |b| {
        b.iter(|| assert!(filter.check(black_box(inside)).is_ok()))
    });
    group.bench_function("outside", |b| {
        b.iter(|| assert!(filter.check(black_box(outside)).is_err()))
    });
    group.finish();
}

fn cors_actual(c: &mut Criterion) {
    let config: CorsConfig = serde_yaml_ng::from_str(
        "{ origins: [\"https://shop.example\", \"https://*.shop.example\"], expose: [X-Request-Id, RateLimit-Remaining], credentials: true }",
    )
    .expect("policy");
    let policy = Policy::build(&config).expect("valid policy");
    let origin = HeaderValue::from_static("https://eu.shop.example");
    let mut out = HeaderMap::with_capacity(16);
    c.bench_function("cors_actual_headers", |b| {
        b.iter(|| {
            out.clear();
            policy.actual(Some(black_box(&origin)), &mut out);
            assert!(out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        })
    });
}

criterion_group!(benches, api_key, basic_cached, ip_list, cors_actual);
criterion_main!(benches);
