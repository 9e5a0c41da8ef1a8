//! Micro benches for the cache and transform hot paths: a cache hit (lookup + response
//! built from the stored entry), a header transform with templates, and a JSON body edit
//! of a 2 KiB document.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, StatusCode};
use portico::cache::flow::{respond, Conditional};
use portico::cache::policy::Freshness;
use portico::cache::{CacheStatus, Entry, Key, ResponseCache};
use portico::config::{CacheConfig, Size, TransformConfig};
use portico::observe::{CacheMetrics, TransformMetrics};
use portico::transform::{Scope, Transform};
use prometheus::Registry;

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let config = CacheConfig {
        max_size: Size(64 * 1024 * 1024),
        max_entry: None,
        default_ttl: None,
    };
    let cache = ResponseCache::build("bench", &config, &CacheMetrics::register(&Registry::new()));
    let key = Key::primary(
        "http",
        "shop.local",
        "products",
        "products",
        "/products/7",
        Some("limit=2"),
    );
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "cache-control",
        HeaderValue::from_static("public, max-age=300"),
    );
    headers.insert("etag", HeaderValue::from_static("\"abc\""));
    let freshness = Freshness {
        lifetime: Duration::from_secs(300),
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        no_cache: false,
        must_revalidate: false,
    };
    let entry = Entry::new(
        StatusCode::OK,
        headers,
        Bytes::from(vec![b'x'; 2048]),
        Duration::ZERO,
        freshness,
        Vec::new(),
        key.clone(),
    );
    rt.block_on(cache.insert(&key, Arc::new(entry)));
    let request = HeaderMap::new();
    let none = Conditional::none();
    c.bench_function("cache_hit", |b| {
        b.iter(|| {
            rt.block_on(async {
                let entry = cache.store.lookup(black_box(&key), &request).await.unwrap();
                black_box(respond(&entry, CacheStatus::Hit, &none, false))
            })
        })
    });
}

fn transform(yaml: &str) -> Transform {
    let config: TransformConfig = serde_yaml_ng::from_str(yaml).unwrap();
    Transform::build(
        "bench",
        &config,
        &TransformMetrics::register(&Registry::new()),
    )
    .unwrap()
}

fn header_template(c: &mut Criterion) {
    let t = transform(
        "request: { set_headers: { X-API-Version: '2.0', X-User: '${claim.sub}', X-Tenant: 't-${header.x-tenant}', X-Via: '${route}/${request_id}' }, remove_headers: [X-Debug] }",
    );
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), "user-7".into());
    let id = HeaderValue::from_static("0123456789abcdef0123456789abcdef");
    let scope = Scope {
        claims: Some(&claims),
        request_id: &id,
        client_ip: "10.0.0.1".parse().unwrap(),
        consumer: None,
        route: "legacy",
        upstream: "monolith",
    };
    let mut base = HeaderMap::new();
    base.insert("x-tenant", HeaderValue::from_static("acme"));
    base.insert("x-debug", HeaderValue::from_static("1"));
    base.insert("accept", HeaderValue::from_static("application/json"));
    let pq = PathAndQuery::from_static("/v1/42");
    c.bench_function("header_template_render", |b| {
        b.iter(|| {
            let mut headers = base.clone();
            let pq = t.request_head(&mut headers, pq.clone(), &scope).unwrap();
            black_box((headers, pq))
        })
    });
}

fn json_body(c: &mut Criterion) {
    let t = transform(
        "response: { json_body: { remove: ['products.*.priceCents', internal], rename: { total: count }, set: { 'meta.via': gateway } } }",
    );
    let products: Vec<serde_json::Value> = (0..14)
        .map(|i| {
            serde_json::json!({"id": i, "name": format!("Product {i}"), "description": "A fine thing to buy",
                "price": 12.5, "priceCents": 1250, "stock": 40, "createdAt": "2024-01-01T00:00:00Z"})
        })
        .collect();
    let doc = serde_json::json!({"products": products, "total": 14, "internal": "x"});
    let bytes = serde_json::to_vec(&doc).unwrap();
    let body = Bytes::from(bytes);
    assert!(body.len() > 1800 && body.len() < 2600, "{}", body.len());
    let mut base = HeaderMap::new();
    base.insert("content-type", HeaderValue::from_static("application/json"));
    c.bench_function("json_body_transform_2kib", |b| {
        b.iter(|| {
            let mut headers = base.clone();
            black_box(t.response_bytes(&mut headers, body.clone()))
        })
    });
}

criterion_group!(benches, cache_hit, header_template, json_body);
criterion_main!(benches);
