//! End-to-end tests of the response cache: a real gateway in front of a scripted,
//! counting backend (`support::CacheBackend`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{eventually, gateway, CacheBackend, Client, Reply, Script};

fn yaml(backend: &CacheBackend, cache: &str) -> String {
    format!(
        r#"server: {{ listen: 127.0.0.1:0, access_log: false }}
admin: {{ listen: 127.0.0.1:0, token: secret }}
caches:
  catalog: {cache}
upstreams:
  products: {{ targets: ["{}"] }}
routes:
  - name: products
    match: {{ path_prefix: /api/products }}
    rewrite: {{ replace_prefix: {{ from: /api/products, to: /products }} }}
    cache: catalog
    upstream: products
"#,
        backend.address()
    )
}

const DEFAULT_CACHE: &str = "{ max_size: 8MiB, max_entry: 1MiB, default_ttl: 60s }";

async fn get(
    client: &Client,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    send(client, "GET", addr, path, headers).await
}

async fn send(
    client: &Client,
    method: &str,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client
        .send(req.body(Full::<Bytes>::default()).unwrap())
        .await
}

fn x_cache(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or("")
}

#[tokio::test]
async fn miss_then_hit_with_age() {
    let backend = CacheBackend::start().await;
    let (gw, _f) = gateway(&yaml(&backend, DEFAULT_CACHE)).await;
    let client = Client::new();
    let first = get(&client, gw.http_addr, "/api/products/1", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(x_cache(&first), "MISS");
    assert_eq!(first.header("age"), Some("0"));
    let second = get(&client, gw.http_addr, "/api/products/1", &[]).await;
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(second.body, first.body);
    let age: u64 = second.header("age").unwrap().parse().unwrap();
    assert!(age <= 1, "a new entry is {age}s old");
    assert_eq!(backend.hits("/products/1"), 1);
    // Age grows while the entry is served.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let r = get(&client, gw.http_addr, "/api/products/1", &[]).await;
            r.header("age")
                .and_then(|a| a.parse::<u64>().ok())
                .unwrap_or(0)
                >= 1
        })
        .await
    );
    assert_eq!(backend.hits("/products/1"), 1);
    let lookups = |result: &str| {
        support::metric(
            &gw.metrics(),
            &format!("portico_cache_lookups_total{{cache=\"catalog\",result=\"{result}\"}}"),
        )
    };
    let (hits, misses) = (lookups("hit"), lookups("miss"));
    // The query is part of the key, in any parameter order.
    get(&client, gw.http_addr, "/api/products/1?a=1&b=2", &[]).await;
    let swapped = get(&client, gw.http_addr, "/api/products/1?b=2&a=1", &[]).await;
    assert_eq!(x_cache(&swapped), "HIT");
    assert_eq!(backend.hits("/products/1"), 2);
    // A HEAD is answered from the stored GET.
    let head = send(&client, "HEAD", gw.http_addr, "/api/products/1", &[]).await;
    assert_eq!(x_cache(&head), "HIT");
    assert!(head.body.is_empty());
    assert_eq!(backend.hits("/products/1"), 2);
    // One miss (the new query), two hits (the swapped query and the HEAD), two entries.
    assert_eq!(lookups("miss") - misses, 1.0);
    assert_eq!(lookups("hit") - hits, 2.0);
    assert_eq!(
        support::metric(&gw.metrics(), r#"portico_cache_entries{cache="catalog"}"#),
        2.0
    );
}

#[tokio::test]
async fn vary_separates_entries() {
    let backend = CacheBackend::start().await;
    backend.script(
        "/products/v",
        Script::ok(&[("cache-control", "max-age=60"), ("vary", "Accept-Language")]),
    );
    let (gw, _f) = gateway(&yaml(&backend, DEFAULT_CACHE)).await;
    let client = Client::new();
    let de = get(
        &client,
        gw.http_addr,
        "/api/products/v",
        &[("accept-language", "de")],
    )
    .await;
    let fr = get(
        &client,
        gw.http_addr,
        "/api/products/v",
        &[("accept-language", "fr")],
    )
    .await;
    assert_eq!(x_cache(&fr), "MISS");
    assert_ne!(de.json()["n"], fr.json()["n"]);
    let de2 = get(
        &client,
        gw.http_addr,
        "/api/products/v",
        &[("accept-language", "de")],
    )
    .await;
    assert_eq!(x_cache(&de2), "HIT");
    assert_eq!(de2.json()["headers"]["accept-language"], "de");
    let none = get(&client, gw.http_addr, "/api/products/v", &[]).await;
    assert_eq!(x_cache(&none), "MISS");
    assert_eq!(backend.hits("/products/v"), 3);

    // Vary: * is never stored.
    backend.script(
        "/products/star",
        Script::ok(&[("cache-control", "max-age=60"), ("vary", "*")]),
    );
    get(&client, gw.http_addr, "/api/products/star", &[]).await;
    get(&client, gw.http_addr, "/api/products/star", &[]).await;
    assert_eq!(backend.hits("/products/star"), 2);
}

#[tokio::test]
async fn private_responses_are_not_shared_between_users() {
    let backend = CacheBackend::start().await;
    backend.script(
        "/products/nostore",
        Script::ok(&[("cache-control", "no-store")]),
    );
    backend.script(
        "/products/private",
        Script::ok(&[("cache-control", "private, max-age=60")]),
    );
    backend.script(
        "/products/cookie",
        Script::ok(&[
            ("cache-control", "max-age=60"),
            ("set-cookie", "session=alice"),
        ]),
    );
    backend.script(
        "/products/me",
        Script::ok(&[("cache-control", "max-age=60")]),
    );
    backend.script(
        "/products/public",
        Script::ok(&[("cache-control", "public, max-age=60")]),
    );
    let (gw, _f) = gateway(&yaml(&backend, DEFAULT_CACHE)).await;
    let client = Client::new();
    for path in ["nostore", "private", "cookie"] {
        let a = get(
            &client,
            gw.http_addr,
            &format!("/api/products/{path}"),
            &[("authorization", "Bearer alice")],
        )
        .await;
        let b = get(
            &client,
            gw.http_addr,
            &format!("/api/products/{path}"),
            &[("authorization", "Bearer bob")],
        )
        .await;
        assert_eq!(x_cache(&b), "MISS", "{path}");
        assert_eq!(b.json()["headers"]["authorization"], "Bearer bob", "{path}");
        assert_ne!(a.body, b.body, "{path}");
        assert_eq!(backend.hits(&format!("/products/{path}")), 2, "{path}");
    }
    // Authorization without public or s-maxage: not stored.
    let alice = get(
        &client,
        gw.http_addr,
        "/api/products/me",
        &[("authorization", "Bearer alice")],
    )
    .await;
    let bob = get(
        &client,
        gw.http_addr,
        "/api/products/me",
        &[("authorization", "Bearer bob")],
    )
    .await;
    assert_eq!(alice.json()["headers"]["authorization"], "Bearer alice");
    assert_eq!(bob.json()["headers"]["authorization"], "Bearer bob");
    assert_eq!(backend.hits("/products/me"), 2);
    // ... unless the origin says it is public.
    get(
        &client,
        gw.http_addr,
        "/api/products/public",
        &[("authorization", "Bearer alice")],
    )
    .await;
    let shared = get(
        &client,
        gw.http_addr,
        "/api/products/public",
        &[("authorization", "Bearer bob")],
    )
    .await;
    assert_eq!(x_cache(&shared), "HIT");
    assert_eq!(backend.hits("/products/public"), 1);
    // A request with no-store is not stored and not answered from the cache.
    let r = get(
        &client,
        gw.http_addr,
        "/api/products/public",
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(x_cache(&r), "BYPASS");
}

#[tokio::test]
async fn revalidation_with_etag_becomes_a_304_upstream_and_a_200_hit() {
    let backend = CacheBackend::start().await;
    backend.script(
        "/products/e",
        Script {
            etag: Some("\"v1\"".into()),
            ..Script::ok(&[("cache-control", "no-cache")])
        },
    );
    let (gw, _f) = gateway(&yaml(&backend, DEFAULT_CACHE)).await;
    let client = Client::new();
    let first = get(&client, gw.http_addr, "/api/products/e", &[]).await;
    assert_eq!(x_cache(&first), "MISS");
    let second = get(&client, gw.http_addr, "/api/products/e", &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(backend.not_modified(), 1);
    assert_eq!(backend.hits("/products/e"), 2);

    // A client's own conditional request is answered 304 from a fresh entry.
    backend.script(
        "/products/f",
        Script {
            etag: Some("\"f1\"".into()),
            ..Script::ok(&[("cache-control", "max-age=60")])
        },
    );
    get(&client, gw.http_addr, "/api/products/f", &[]).await;
    let cond = get(
        &client,
        gw.http_addr,
        "/api/products/f",
        &[("if-none-match", "W/\"f1\"")],
    )
    .await;
    assert_eq!(cond.status, 304);
    assert!(cond.body.is_empty());
    let other = get(
        &client,
        gw.http_addr,
        "/api/products/f",
        &[("if-none-match", "\"zzz\"")],
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(backend.hits("/products/f"), 1);
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_backend_is_down() {
    let backend = CacheBackend::start().await;
    backend.script(
        "/products/s",
        Script::ok(&[("cache-control", "max-age=0, stale-if-error=300")]),
    );
    backend.script(
        "/products/m",
        Script::ok(&[(
            "cache-control",
            "max-age=0, must-revalidate, stale-if-error=300",
        )]),
    );
    let (gw, _f) = gateway(&yaml(&backend, DEFAULT_CACHE)).await;
    let client = Client::new();
    let first = get(&client, gw.http_addr, "/api/products/s", &[]).await;
    assert_eq!(first.status, 200);
    get(&client, gw.http_addr, "/api/products/m", &[]).await;
    backend.set_down(true);
    let stale = get(&client, gw.http_addr, "/api/products/s", &[]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(x_cache(&stale), "STALE");
    assert_eq!(stale.body, first.body);
    // must-revalidate forbids serving stale.
    let strict = get(&client, gw.http_addr, "/api/products/m", &[]).await;
    assert!(strict.status >= 500, "{}", strict.status);
    // Back up: fresh content again.
    backend.set_down(false);
    let fresh = get(&client, gw.http_addr, "/api/products/s", &[]).await;
    assert_eq!(x_cache(&fresh), "MISS");
    assert_ne!(fresh.json()["n"], first.json()["n"]);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let backend = CacheBackend::start().await;
    backend.script(
        "/products/w",
        Script::ok(&[("cache-control", "max-age=0, stale-while-revalidate=300")]),
    );
    let (gw, _f) = gateway(&yaml(&backend, DEFAULT_CACHE)).await;
    let client = Client::new();
    let first = get(&client, gw.http_addr, "/api/products/w", &[]).await;
    assert_eq!(x_cache(&first), "MISS");
    let stale = get(&client, gw.http_addr, "/api/products/w", &[]).await;
    assert_eq!(x_cache(&stale), "STALE");
    assert_eq!(stale.body, first.body);
    assert!(
        eventually(Duration::from_secs(10), || async {
            backend.hits("/products/w") == 2
        })
        .await
    );
    // The refreshed entry is what is served next.
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&client, gw.http_addr, "/api/products/w", &[])
                .await
                .body
                != first.body
        })
        .await
    );
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_url() {
    let backend = CacheBackend::start().await;
    backend.script(
        "/products",
        Script::ok(&[("cache-control", "max-age=60"), ("location", "/products/9")]),
    );
    let (gw, _f) = gateway(&yaml(&backend, DEFAULT_CACHE)).await;
    let client = Client::new();
    get(&client, gw.http_addr, "/api/products/7", &[]).await;
    assert_eq!(
        x_cache(&get(&client, gw.http_addr, "/api/products/7", &[]).await),
        "HIT"
    );
    get(&client, gw.http_addr, "/api/products/9", &[]).await;
    get(&client, gw.http_addr, "/api/products", &[]).await;
    let post = send(&client, "POST", gw.http_addr, "/api/products/7", &[]).await;
    assert_eq!(post.status, 200);
    assert_eq!(
        x_cache(&get(&client, gw.http_addr, "/api/products/7", &[]).await),
        "MISS"
    );
    // POST to the collection invalidates it and the Location it names.
    assert_eq!(
        x_cache(&get(&client, gw.http_addr, "/api/products/9", &[]).await),
        "HIT"
    );
    send(&client, "POST", gw.http_addr, "/api/products", &[]).await;
    assert_eq!(
        x_cache(&get(&client, gw.http_addr, "/api/products/9", &[]).await),
        "MISS"
    );
    assert_eq!(
        x_cache(&get(&client, gw.http_addr, "/api/products", &[]).await),
        "MISS"
    );
}

#[tokio::test]
async fn one_hundred_concurrent_requests_for_a_cold_key_make_one_upstream_request() {
    let backend = CacheBackend::start().await;
    backend.script(
        "/products/hot",
        Script {
            delay: Some(Duration::from_millis(300)),
            ..Script::ok(&[("cache-control", "max-age=60")])
        },
    );
    let (gw, _f) = gateway(&yaml(&backend, DEFAULT_CACHE)).await;
    let client = Client::new();
    let addr = gw.http_addr;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            get(&client, addr, "/api/products/hot", &[]).await
        }));
    }
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        bodies.insert(r.body);
    }
    assert_eq!(backend.hits("/products/hot"), 1);
    assert_eq!(bodies.len(), 1);

    // Errors are not cached: a failing cold key is retried by the next request.
    backend.script(
        "/products/err",
        Script {
            status: 503,
            ..Script::default()
        },
    );
    assert_eq!(
        get(&client, addr, "/api/products/err", &[]).await.status,
        503
    );
    assert_eq!(
        get(&client, addr, "/api/products/err", &[]).await.status,
        503
    );
    assert_eq!(backend.hits("/products/err"), 2);
}

#[tokio::test]
async fn a_five_mib_response_streams_through_uncached() {
    let backend = CacheBackend::start().await;
    let big = 5 * 1024 * 1024;
    backend.script(
        "/products/big",
        Script {
            size: Some(big),
            ..Script::ok(&[("cache-control", "max-age=60")])
        },
    );
    backend.script(
        "/products/chunked",
        Script {
            size: Some(big),
            chunked: true,
            ..Script::ok(&[("cache-control", "max-age=60")])
        },
    );
    let (gw, _f) = gateway(&yaml(&backend, DEFAULT_CACHE)).await;
    let client = Client::new();
    for path in ["big", "chunked"] {
        for _ in 0..2 {
            let r = get(&client, gw.http_addr, &format!("/api/products/{path}"), &[]).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), big, "{path}");
            assert_eq!(x_cache(&r), "MISS");
        }
        assert_eq!(backend.hits(&format!("/products/{path}")), 2);
    }
    let cache = gw.runtime().caches["catalog"].clone();
    assert!(cache.store.bytes() < 1024 * 1024);
}

#[tokio::test]
async fn purge_through_the_admin_api() {
    let backend = CacheBackend::start().await;
    let (gw, _f) = gateway(&yaml(&backend, DEFAULT_CACHE)).await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();
    get(&client, gw.http_addr, "/api/products/7", &[]).await;
    get(&client, gw.http_addr, "/api/products/8?x=1", &[]).await;
    assert_eq!(
        x_cache(&get(&client, gw.http_addr, "/api/products/7", &[]).await),
        "HIT"
    );
    let refused = send(
        &client,
        "DELETE",
        admin,
        "/cache/catalog?path=/products/7",
        &[],
    )
    .await;
    assert_eq!(refused.status, 401);
    let purged = send(
        &client,
        "DELETE",
        admin,
        "/cache/catalog?path=/products/7",
        &[("authorization", "Bearer secret")],
    )
    .await;
    assert_eq!(purged.status, 200, "{:?}", purged.body);
    assert_eq!(
        x_cache(&get(&client, gw.http_addr, "/api/products/7", &[]).await),
        "MISS"
    );
    assert_eq!(
        x_cache(&get(&client, gw.http_addr, "/api/products/8?x=1", &[]).await),
        "HIT"
    );
    let all = send(
        &client,
        "DELETE",
        admin,
        "/cache/catalog",
        &[("authorization", "Bearer secret")],
    )
    .await;
    assert_eq!(all.status, 200);
    assert_eq!(
        x_cache(&get(&client, gw.http_addr, "/api/products/8?x=1", &[]).await),
        "MISS"
    );
    let unknown = send(
        &client,
        "DELETE",
        admin,
        "/cache/nope",
        &[("authorization", "Bearer secret")],
    )
    .await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn memory_stays_under_max_size_while_ten_times_that_passes_through() {
    let backend = CacheBackend::start().await;
    let max_size = 256 * 1024;
    let entry = 60 * 1024;
    let (gw, _f) = gateway(&yaml(
        &backend,
        "{ max_size: 256KiB, max_entry: 64KiB, default_ttl: 60s }",
    ))
    .await;
    let client = Client::new();
    let cache = gw.runtime().caches["catalog"].clone();
    let mut passed = 0;
    let mut i = 0;
    while passed < 10 * max_size {
        let path = format!("/products/m{i}");
        backend.script(
            &path,
            Script {
                size: Some(entry),
                ..Script::ok(&[("cache-control", "max-age=60")])
            },
        );
        let r = get(&client, gw.http_addr, &format!("/api{path}"), &[]).await;
        assert_eq!(r.body.len(), entry);
        passed += entry;
        i += 1;
        assert!(
            cache.store.bytes() <= max_size as u64,
            "held {} after {i}",
            cache.store.bytes()
        );
    }
    assert!(cache.store.bytes() > 0);
    let metrics = gw.metrics();
    let bytes_line = metrics
        .lines()
        .find(|l| l.starts_with(r#"portico_cache_bytes{cache="catalog"}"#))
        .unwrap();
    let gauge: u64 = bytes_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(gauge <= max_size as u64);
}

#[tokio::test]
async fn the_cache_survives_a_reload_when_unchanged() {
    let backend = CacheBackend::start().await;
    let text = yaml(&backend, DEFAULT_CACHE);
    let (gw, _f) = gateway(&text).await;
    let client = Client::new();
    get(&client, gw.http_addr, "/api/products/1", &[]).await;
    let before = Arc::as_ptr(&gw.runtime().caches["catalog"]);
    // Another route changes the config, not the cache: its entries stay.
    let mut config = portico::check::parse(&text).unwrap();
    let mut extra = config.routes[0].clone();
    extra.name = "products-too".into();
    config.routes.push(extra);
    gw.apply(config.clone()).unwrap();
    assert_eq!(Arc::as_ptr(&gw.runtime().caches["catalog"]), before);
    assert_eq!(
        x_cache(&get(&client, gw.http_addr, "/api/products/1", &[]).await),
        "HIT"
    );
    // The route's name is part of the key: a renamed route starts with no entries.
    config.routes[0].name = "products-renamed".into();
    gw.apply(config.clone()).unwrap();
    assert_eq!(Arc::as_ptr(&gw.runtime().caches["catalog"]), before);
    assert_eq!(
        x_cache(&get(&client, gw.http_addr, "/api/products/1", &[]).await),
        "MISS"
    );
    config.caches.get_mut("catalog").unwrap().default_ttl =
        Some(portico::config::Duration::from_secs(5));
    gw.apply(config).unwrap();
    assert_eq!(
        x_cache(&get(&client, gw.http_addr, "/api/products/1", &[]).await),
        "MISS"
    );
}

#[tokio::test]
async fn check_refuses_bad_cache_definitions() {
    let err = portico::check::parse(
        "server: { listen: 127.0.0.1:0 }\ncaches:\n  c: { max_size: 1MiB, max_entry: 2MiB }\nupstreams:\n  u: { targets: [\"127.0.0.1:1\"] }\nroutes:\n  - { name: r, cache: nope, upstream: u }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("caches.c.max_entry"), "{err}");
    assert!(err.contains("routes[0].cache"), "{err}");
}
