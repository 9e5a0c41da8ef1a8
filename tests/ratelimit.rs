//! End-to-end tests of rate limiting through the real gateway, and the limiter's memory
//! bound driven directly with 200 000 keys.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portico::config::{Duration as ConfigDuration, RateLimitConfig};
use portico::ratelimit::{BucketKey, Limiter};
use serde_json::json;
use support::client::get;
use support::{eventually, gateway, Backend, Client, Reply};

fn num(r: &Reply, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} on {}", r.status))
        .parse()
        .unwrap()
}

fn yaml(server_extra: &str, backend: &Backend, limits: &str, routes: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\n{server_extra}upstreams:\n  b: {{ targets: [\"{}\"] }}\nrate_limits:\n{limits}routes:\n{routes}",
        backend.address()
    )
}

#[tokio::test]
async fn the_101st_request_is_refused_and_the_headers_count_down() {
    let backend = Backend::start("b").await;
    let (gw, _file) = gateway(&yaml(
        "",
        &backend,
        "  per-client: { key: client_ip, limit: 100, per: 15m }\n",
        "  - { name: users, match: { path_prefix: /users }, rate_limit: per-client, upstream: b }\n  - { name: open, upstream: b }\n",
    ))
    .await;
    let (client, addr) = (Client::new(), gw.http_addr);
    for i in 0..100u64 {
        let r = get(&client, addr, "/users/1", &[]).await;
        assert_eq!(r.status, 200, "request {}", i + 1);
        assert_eq!(num(&r, "ratelimit-limit"), 100);
        assert_eq!(num(&r, "ratelimit-remaining"), 99 - i, "request {}", i + 1);
        let reset = num(&r, "ratelimit-reset");
        assert!((1..=900).contains(&reset), "reset {reset}");
        assert_eq!(r.header("ratelimit-policy"), Some("100;w=900"));
    }
    let r = get(&client, addr, "/users/1", &[]).await;
    assert_eq!(r.status, 429);
    let body = r.json();
    assert_eq!(body["status"], 429);
    assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    let retry = num(&r, "retry-after");
    assert!(
        (1..=10).contains(&retry),
        "Retry-After {retry} (one request per 9s)"
    );
    assert_eq!(num(&r, "ratelimit-remaining"), 0);
    assert!(num(&r, "ratelimit-reset") >= 800);
    assert_eq!(backend.hits(), 100);
    assert!(gw
        .metrics()
        .contains("portico_ratelimit_rejected_total{route=\"users\"} 1"));
    // A route without the limit is not limited and carries no headers.
    let r = get(&client, addr, "/other", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("ratelimit-limit").is_none());
}

#[tokio::test]
async fn header_keys_have_their_own_buckets_and_missing_keys_share_one() {
    let backend = Backend::start("b").await;
    let (gw, _file) = gateway(&yaml(
        "",
        &backend,
        "  per-key: { key: \"header:X-Api-Key\", limit: 2, per: 1m }\n",
        "  - { name: api, rate_limit: per-key, upstream: b }\n",
    ))
    .await;
    let (client, addr) = (Client::new(), gw.http_addr);
    for _ in 0..2 {
        assert_eq!(
            get(&client, addr, "/", &[("x-api-key", "a")]).await.status,
            200
        );
    }
    assert_eq!(
        get(&client, addr, "/", &[("x-api-key", "a")]).await.status,
        429
    );
    assert_eq!(
        get(&client, addr, "/", &[("x-api-key", "b")]).await.status,
        200
    );
    // Without the header: one shared anonymous bucket, not unlimited.
    assert_eq!(get(&client, addr, "/", &[]).await.status, 200);
    assert_eq!(get(&client, addr, "/", &[]).await.status, 200);
    assert_eq!(get(&client, addr, "/", &[]).await.status, 429);
}

#[tokio::test]
async fn a_spoofed_forwarded_for_does_not_buy_a_new_bucket() {
    let backend = Backend::start("b").await;
    let (gw, _file) = gateway(&yaml(
        "",
        &backend,
        "  per-client: { key: client_ip, limit: 2, per: 1m }\n",
        "  - { name: api, rate_limit: per-client, upstream: b }\n",
    ))
    .await;
    let (client, addr) = (Client::new(), gw.http_addr);
    let mut statuses = Vec::new();
    for i in 0..5 {
        let xff = format!("203.0.113.{i}");
        statuses.push(
            get(&client, addr, "/", &[("x-forwarded-for", &xff)])
                .await
                .status,
        );
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429]);

    // Behind a trusted proxy, the address it vouches for is the key.
    let (gw, _file) = gateway(&yaml(
        "  trusted_proxies: [127.0.0.1/32]\n",
        &backend,
        "  per-client: { key: client_ip, limit: 1, per: 1m }\n",
        "  - { name: api, rate_limit: per-client, upstream: b }\n",
    ))
    .await;
    let addr = gw.http_addr;
    for ip in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(
            get(&client, addr, "/", &[("x-forwarded-for", ip)])
                .await
                .status,
            200
        );
    }
    assert_eq!(
        get(&client, addr, "/", &[("x-forwarded-for", "198.51.100.1")])
            .await
            .status,
        429
    );
}

#[tokio::test]
async fn claim_keys_limit_each_user_and_two_routes_share_one_named_budget() {
    let backend = Backend::start("b").await;
    let secret = "0123456789abcdef0123456789abcdef-ratelimit";
    let jwt = format!("jwt:\n  hs:\n    algorithms: [HS256]\n    secret: {secret}\n");
    let (gw, _file) = gateway(&yaml(
        &jwt,
        &backend,
        "  per-user: { key: \"claim:sub\", limit: 2, per: 1m }\n",
        "  - { name: a, match: { path_prefix: /a }, jwt: hs, rate_limit: per-user, upstream: b }\n  - { name: b, match: { path_prefix: /b }, jwt: hs, rate_limit: per-user, upstream: b }\n",
    ))
    .await;
    let (client, addr) = (Client::new(), gw.http_addr);
    let token = |sub: &str| {
        let claims = json!({"sub": sub, "exp": jsonwebtoken::get_current_timestamp() + 300});
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        format!("Bearer {t}")
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let send = |path: &'static str, t: String| {
        let client = client.clone();
        async move {
            get(&client, addr, path, &[("authorization", t.as_str())])
                .await
                .status
        }
    };
    assert_eq!(send("/a", alice.clone()).await, 200);
    assert_eq!(send("/b", alice.clone()).await, 200);
    assert_eq!(
        send("/a", alice.clone()).await,
        429,
        "one budget across both routes"
    );
    assert_eq!(send("/b", bob).await, 200, "bob has his own bucket");
}

#[tokio::test]
async fn a_reload_keeps_the_bucket_unless_the_limit_changes() {
    let backend = Backend::start("b").await;
    let limits = "  per-client: { key: client_ip, limit: 2, per: 1m }\n";
    let routes = "  - { name: api, rate_limit: per-client, upstream: b }\n";
    let (gw, file) = gateway(&yaml("", &backend, limits, routes)).await;
    let (client, addr) = (Client::new(), gw.http_addr);
    for _ in 0..2 {
        assert_eq!(get(&client, addr, "/", &[]).await.status, 200);
    }
    assert_eq!(get(&client, addr, "/", &[]).await.status, 429);

    // Another route, same limiter definition: the bucket survives.
    let more =
        format!("{routes}  - {{ name: other, match: {{ path_prefix: /x }}, upstream: b }}\n");
    std::fs::write(file.path(), yaml("", &backend, limits, &more)).unwrap();
    gw.reload().unwrap();
    assert_eq!(gw.runtime().routes.len(), 2);
    assert_eq!(get(&client, addr, "/", &[]).await.status, 429);

    // A changed definition is a new limiter with fresh buckets.
    let changed = "  per-client: { key: client_ip, limit: 3, per: 1m }\n";
    std::fs::write(file.path(), yaml("", &backend, changed, &more)).unwrap();
    gw.reload().unwrap();
    assert_eq!(get(&client, addr, "/", &[]).await.status, 200);
}

#[tokio::test]
async fn two_hundred_thousand_keys_fall_back_after_the_idle_period() {
    let config = RateLimitConfig {
        key: "client_ip".into(),
        limit: 10,
        per: ConfigDuration::from_secs(1),
        burst: None,
        max_keys: Some(300_000),
        scope: Default::default(),
    };
    let limiter = Limiter::build("flood", &config, Some(Duration::from_millis(100))).unwrap();
    for i in 0..200_000u32 {
        let key = BucketKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i)));
        assert!(limiter.check_key(&key).allowed());
    }
    let peak = limiter.len();
    assert!(peak > 150_000, "{peak} keys held while active");
    let ok = eventually(Duration::from_secs(20), || async { limiter.len() < 1_000 }).await;
    assert!(
        ok,
        "idle keys were not dropped: {} left of {peak}",
        limiter.len()
    );
}

/// A flood of distinct keys holds at most `max_keys` of them; the rest are evicted and
/// counted, and the keys in steady use keep their buckets.
#[tokio::test]
async fn a_key_flood_is_bounded_by_max_keys() {
    let config = RateLimitConfig {
        key: "client_ip".into(),
        limit: 2,
        per: ConfigDuration::from_secs(60),
        burst: None,
        max_keys: Some(1_000),
        scope: Default::default(),
    };
    let limiter = Limiter::build("flood", &config, None).unwrap();
    let regular = BucketKey::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    assert!(limiter.check_key(&regular).allowed());
    for i in 0..50_000u32 {
        let key = BucketKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i)));
        assert!(limiter.check_key(&key).allowed());
        if i % 1_000 == 0 {
            // The regular client keeps coming back: it is not the one that goes.
            let _ = limiter.check_key(&regular);
        }
    }
    let held = limiter.len();
    assert!(held <= 1_000, "{held} keys held, max_keys is 1000");
    assert!(
        limiter.evicted() >= 48_000,
        "{} evictions counted",
        limiter.evicted()
    );
    // Its budget (2 per minute) was spent and remembered: refused.
    assert!(!limiter.check_key(&regular).allowed());
}

/// Through the gateway: a flood of API keys on a route whose limit holds `max_keys: 20`
/// keeps at most about that many, and the evictions show in /metrics.
#[tokio::test]
async fn the_gateway_evicts_past_max_keys_and_counts_it() {
    let backend = Backend::start("b").await;
    let (gw, _file) = gateway(&yaml(
        "",
        &backend,
        "  per-key: { key: \"header:X-Api-Key\", limit: 5, per: 1m, max_keys: 20 }\n",
        "  - { name: api, rate_limit: per-key, upstream: b }\n",
    ))
    .await;
    let (client, addr) = (Client::new(), gw.http_addr);
    for i in 0..200 {
        let key = format!("flood-{i}");
        assert_eq!(
            get(&client, addr, "/", &[("x-api-key", &key)]).await.status,
            200
        );
    }
    let limiter = gw.runtime().limiters["per-key"].clone();
    assert!(
        limiter.len() <= 21,
        "{} keys held, max_keys 20",
        limiter.len()
    );
    let evicted = support::metric(
        &gw.metrics(),
        r#"portico_ratelimit_keys_evicted_total{limit="per-key"}"#,
    );
    assert!(evicted >= 170.0, "{evicted} evictions counted");
    assert_eq!(evicted, limiter.evicted() as f64);
}

#[tokio::test]
async fn the_gateway_sweeps_idle_client_keys() {
    let backend = Backend::start("b").await;
    let (gw, _file) = gateway(&yaml(
        "",
        &backend,
        "  per-key: { key: \"header:X-Api-Key\", limit: 5, per: 10s }\n",
        "  - { name: api, rate_limit: per-key, upstream: b }\n",
    ))
    .await;
    let (client, addr) = (Client::new(), gw.http_addr);
    for i in 0..300 {
        let key = format!("client-{i}");
        assert_eq!(
            get(&client, addr, "/", &[("x-api-key", &key)]).await.status,
            200
        );
    }
    let limiter = gw.runtime().limiters["per-key"].clone();
    assert!(limiter.len() >= 150, "{}", limiter.len());
    let ok = eventually(Duration::from_secs(20), || async { limiter.is_empty() }).await;
    assert!(ok, "{} keys left", limiter.len());
}

#[test]
fn invalid_rate_limits_are_refused_with_paths() {
    let cases = [
        ("{ key: ip, limit: 1, per: 1s }", "rate_limits.r.key"),
        (
            "{ key: \"header:\", limit: 1, per: 1s }",
            "rate_limits.r.key",
        ),
        (
            "{ key: client_ip, limit: 0, per: 1s }",
            "rate_limits.r.limit",
        ),
        ("{ key: client_ip, limit: 1, per: 0s }", "rate_limits.r.per"),
        (
            "{ key: client_ip, limit: 1, per: 1s, burst: 0 }",
            "rate_limits.r.burst",
        ),
        (
            "{ key: \"claim:sub\", limit: 1, per: 1s }",
            "routes[0].rate_limit",
        ),
        (
            "{ key: client_ip, limit: 1, per: 1s, max_keys: 0 }",
            "rate_limits.r.max_keys",
        ),
    ];
    for (limit, path) in cases {
        let yaml = format!(
            "server: {{ listen: 127.0.0.1:0 }}\nupstreams:\n  b: {{ targets: [\"127.0.0.1:9\"] }}\nrate_limits:\n  r: {limit}\nroutes:\n  - {{ name: x, rate_limit: r, upstream: b }}\n"
        );
        support::assert_refused_at(&yaml, path);
    }
    let unknown = "server: { listen: 127.0.0.1:0 }\nupstreams:\n  b: { targets: [\"127.0.0.1:9\"] }\nroutes:\n  - { name: x, rate_limit: nope, upstream: b }\n";
    support::assert_refused_at(unknown, "routes[0].rate_limit");
}
