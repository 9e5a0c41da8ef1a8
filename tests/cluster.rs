//! Replicas that share rate limits through Redis: real `redis-server` processes (one
//! server, or a three-node Redis Cluster) started by the test support on free loopback
//! ports, and several real gateways in front of one echo backend. Skipped, with the
//! reason printed, where redis-server is not installed.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::redis_server::{free_port, missing, Redis, RedisCluster, TlsFiles};
use support::{eventually, gateway, metric, Backend, Client, Reply};

fn skip() -> bool {
    match missing() {
        Some(reason) => {
            eprintln!("skipped: {reason}");
            true
        }
        None => false,
    }
}

fn config(backend: &Backend, redis_url: &str, limit: &str, on_error: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, access_log: false }}
admin: {{ listen: 127.0.0.1:0 }}
cluster:
  redis: {{ url: "{redis_url}", timeout: 50ms, key_prefix: "t:" }}
  on_redis_error: {on_error}
upstreams:
  b: {{ targets: ["{}"] }}
rate_limits:
  per-key: {limit}
routes:
  - name: api
    match: {{ path_prefix: / }}
    rate_limit: per-key
    upstream: b
"#,
        backend.address()
    )
}

async fn hit(client: &Client, addr: SocketAddr) -> Reply {
    support::client::get(client, addr, "/x", &[("x-api-key", "partner-1")]).await
}

/// Sends `n` requests spread over `gateways` in turn; returns the admitted count, the
/// time it took, and every refusal.
async fn spread(
    client: &Client,
    gateways: &[SocketAddr],
    n: usize,
) -> (usize, Duration, Vec<Reply>) {
    let started = Instant::now();
    let mut admitted = 0;
    let mut refused = Vec::new();
    for i in 0..n {
        let r = hit(client, gateways[i % gateways.len()]).await;
        match r.status {
            200 => admitted += 1,
            429 => refused.push(r),
            other => panic!("unexpected status {other}"),
        }
    }
    (admitted, started.elapsed(), refused)
}

async fn wait_until_up(client: &Client, admin: SocketAddr) {
    let up = eventually(Duration::from_secs(15), || async {
        client.get(admin, "/readyz").await.json()["redis"]["up"] == true
    })
    .await;
    assert!(up, "the gateway never reached redis");
}

#[tokio::test]
async fn three_replicas_admit_one_budget_and_local_scope_admits_three() {
    if skip() {
        return;
    }
    let redis = Redis::start();
    let backend = Backend::start("b").await;
    let limit = "{ key: \"header:x-api-key\", limit: 100, per: 1m, scope: cluster }";
    let yaml = config(&backend, &redis.url(), limit, "local");
    let (g1, _f1) = gateway(&yaml).await;
    let (g2, _f2) = gateway(&yaml).await;
    let (g3, _f3) = gateway(&yaml).await;
    let client = Client::new();
    for g in [&g1, &g2, &g3] {
        wait_until_up(&client, g.admin_addr.expect("admin")).await;
    }
    let gateways = [g1.http_addr, g2.http_addr, g3.http_addr];
    let (admitted, took, refused) = spread(&client, &gateways, 400).await;
    // The GCRA bound: the burst (100) at once, then one per 600 ms, whatever the replicas.
    let refill = (took.as_secs_f64() / 0.6).ceil() as usize;
    assert!(
        (100..=100 + refill + 1).contains(&admitted),
        "admitted {admitted} in {took:?} (bound 100..={})",
        100 + refill + 1
    );
    for r in &refused {
        assert_eq!(r.header("ratelimit-limit"), Some("100"));
        assert_eq!(r.header("ratelimit-remaining"), Some("0"));
        assert_eq!(r.header("ratelimit-policy"), Some("100;w=60"));
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((1..=60).contains(&retry), "retry-after {retry}");
    }
    let fallbacks: f64 = [&g1, &g2, &g3]
        .iter()
        .map(|g| {
            metric(
                &g.metrics(),
                "portico_ratelimit_fallback_total{limit=\"per-key\"}",
            )
        })
        .sum();
    assert_eq!(fallbacks, 0.0, "no decision was taken without redis");
    assert!(redis.cli(&["exists", "t:rl:per-key:v:partner-1"]).trim() == "1");
    for g in [g1, g2, g3] {
        g.shutdown().await;
    }

    // The same with the default scope: each replica has the whole budget.
    let local = "{ key: \"header:x-api-key\", limit: 100, per: 1m }";
    let yaml = config(&backend, &redis.url(), local, "local");
    let (g1, _f1) = gateway(&yaml).await;
    let (g2, _f2) = gateway(&yaml).await;
    let (g3, _f3) = gateway(&yaml).await;
    let gateways = [g1.http_addr, g2.http_addr, g3.http_addr];
    let (admitted, _, _) = spread(&client, &gateways, 400).await;
    assert!(admitted >= 300, "local scope admitted {admitted}");
    for g in [g1, g2, g3] {
        g.shutdown().await;
    }
}

#[tokio::test]
async fn without_redis_limits_fall_back_locally_and_shared_mode_resumes() {
    if skip() {
        return;
    }
    let mut redis = Redis::start();
    let backend = Backend::start("b").await;
    // A big burst that refills slowly: the key lives (its TTL is the refill horizon).
    let limit = "{ key: \"header:x-api-key\", limit: 10, per: 1h, burst: 100000, scope: cluster }";
    let (gw, _file) = gateway(&config(&backend, &redis.url(), limit, "local")).await;
    let client = Client::new();
    let admin = gw.admin_addr.expect("admin");
    wait_until_up(&client, admin).await;
    assert_eq!(hit(&client, gw.http_addr).await.status, 200);

    redis.kill();
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let started = Instant::now();
        let r = hit(&client, gw.http_addr).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(r.status, 200, "a request failed because redis is down");
        assert!(r.header("ratelimit-limit").is_some());
    }
    // 50 ms timeout per command; generous for a slow machine, far below a hang.
    assert!(
        slowest < Duration::from_secs(2),
        "a request waited {slowest:?}"
    );
    let fallbacks = metric(
        &gw.metrics(),
        "portico_ratelimit_fallback_total{limit=\"per-key\"}",
    );
    assert!(fallbacks >= 1.0, "fallbacks: {fallbacks}");
    let ready = client.get(admin, "/readyz").await;
    assert_eq!(ready.status, 200, "redis down is degraded, not unready");
    assert_eq!(ready.json()["status"], "degraded");
    assert!(ready.json()["redis"]["last_error"].is_string());

    redis.restart();
    wait_until_up(&client, admin).await;
    let resumed = eventually(Duration::from_secs(10), || async {
        let before = metric(
            &gw.metrics(),
            "portico_ratelimit_fallback_total{limit=\"per-key\"}",
        );
        let ok = hit(&client, gw.http_addr).await.status == 200;
        let after = metric(
            &gw.metrics(),
            "portico_ratelimit_fallback_total{limit=\"per-key\"}",
        );
        ok && after == before
    })
    .await;
    assert!(resumed, "shared decisions did not resume");
    assert_eq!(
        redis.cli(&["exists", "t:rl:per-key:v:partner-1"]).trim(),
        "1"
    );
    assert_eq!(client.get(admin, "/readyz").await.json()["status"], "ready");
    gw.shutdown().await;
}

#[tokio::test]
async fn deny_answers_503_while_redis_is_down() {
    if skip() {
        return;
    }
    let mut redis = Redis::start();
    let backend = Backend::start("b").await;
    let limit = "{ key: \"header:x-api-key\", limit: 1000000, per: 1s, scope: cluster }";
    let (gw, _file) = gateway(&config(&backend, &redis.url(), limit, "deny")).await;
    let client = Client::new();
    wait_until_up(&client, gw.admin_addr.expect("admin")).await;
    assert_eq!(hit(&client, gw.http_addr).await.status, 200);
    redis.kill();
    let r = hit(&client, gw.http_addr).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json()["error"],
        "the shared rate limit store is unavailable"
    );
    redis.restart();
    let back = eventually(Duration::from_secs(10), || async {
        hit(&client, gw.http_addr).await.status == 200
    })
    .await;
    assert!(
        back,
        "requests were not admitted again after redis came back"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_in_readyz() {
    if skip() {
        return;
    }
    let redis = Redis::with_password("right-password");
    let backend = Backend::start("b").await;
    let url = format!("redis://:wrong-password@127.0.0.1:{}/0", redis.port);
    let limit = "{ key: client_ip, limit: 1000, per: 1s, scope: cluster }";
    let (gw, _file) = gateway(&config(&backend, &url, limit, "local")).await;
    let client = Client::new();
    let admin = gw.admin_addr.expect("admin");
    let named = eventually(Duration::from_secs(10), || async {
        let body = client.get(admin, "/readyz").await.json();
        body["redis"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("WRONGPASS") || e.contains("AuthenticationFailed"))
    })
    .await;
    let body = client.get(admin, "/readyz").await.json();
    assert!(named, "readyz: {body}");
    assert!(
        !body.to_string().contains("wrong-password"),
        "the password leaked: {body}"
    );
    assert_eq!(
        hit(&client, gw.http_addr).await.status,
        200,
        "the gateway serves, degraded"
    );
    let config = client.get(admin, "/config").await;
    assert!(!String::from_utf8_lossy(&config.body).contains("wrong-password"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_three_node_redis_cluster_holds_the_shared_budget() {
    if skip() {
        return;
    }
    let cluster = RedisCluster::start();
    let backend = Backend::start("b").await;
    let limit = "{ key: \"header:x-api-key\", limit: 10, per: 1h, burst: 30, scope: cluster }";
    let yaml = config(&backend, &cluster.url(), limit, "local");
    let (g1, _f1) = gateway(&yaml).await;
    let (g2, _f2) = gateway(&yaml).await;
    let client = Client::new();
    for g in [&g1, &g2] {
        wait_until_up(&client, g.admin_addr.expect("admin")).await;
    }
    let (admitted, took, _) = spread(&client, &[g1.http_addr, g2.http_addr], 100).await;
    // 30 at once, then one per 6 minutes (slow, so every key outlives the test).
    let refill = (took.as_secs_f64() / 360.0).ceil() as usize;
    assert!(
        (30..=30 + refill + 1).contains(&admitted),
        "admitted {admitted} in {took:?}"
    );
    // Other clients' keys land on other nodes: each decision is one key, so it works
    // wherever the cluster puts that key's slot.
    for i in 0..30 {
        let key = format!("k{i}");
        let r = support::client::get(&client, g1.http_addr, "/x", &[("x-api-key", &key)]).await;
        assert_eq!(r.status, 200);
    }
    let per_node = cluster.keys_per_node();
    assert_eq!(per_node.iter().sum::<usize>(), 31, "{per_node:?}");
    assert!(per_node.iter().all(|n| *n > 0), "{per_node:?}");
    for g in [g1, g2] {
        g.shutdown().await;
    }
}

#[test]
fn scope_cluster_needs_cluster_redis() {
    support::assert_refused_at(
        "server: { listen: 127.0.0.1:0 }\nrate_limits:\n  a: { key: client_ip, limit: 1, per: 1s, scope: cluster }\n",
        "rate_limits.a.scope",
    );
    support::assert_refused_at(
        "server: { listen: 127.0.0.1:0 }\ncluster:\n  redis: { url: \"redis+sentinel://h:26379\" }\n",
        "cluster.redis.url",
    );
}

fn split_config(redis_url: &str, stable: &Backend, canary: &Backend) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, access_log: false }}
admin: {{ listen: 127.0.0.1:0 }}
cluster:
  redis: {{ url: "{redis_url}", timeout: 200ms, key_prefix: "s:" }}
upstreams:
  monolith: {{ targets: ["{}"] }}
  orders: {{ targets: ["{}"] }}
routes:
  - name: orders
    match: {{ path_prefix: / }}
    split:
      stable: {{ upstream: monolith }}
      canary: {{ upstream: orders }}
      percent: 50
      side_header: true
      rollback: {{ max_error_rate: 50%, window: 30s, min_requests: 5 }}
"#,
        stable.address(),
        canary.address()
    )
}

async fn split_view(client: &Client, admin: SocketAddr) -> serde_json::Value {
    client.get(admin, "/splits").await.json()["splits"]["orders"].clone()
}

async fn sides(client: &Client, addr: SocketAddr, n: usize) -> (usize, usize) {
    let mut canary = 0;
    for _ in 0..n {
        let r = client.get(addr, "/x").await;
        if r.header("x-portico-split") == Some("canary") {
            canary += 1;
        }
    }
    (n - canary, canary)
}

#[tokio::test]
async fn replicas_share_a_split_rollback_a_restart_and_an_operator_change() {
    if skip() {
        return;
    }
    let redis = Redis::start();
    let stable = Backend::start("monolith").await;
    let canary = Backend::start("orders").await;
    let yaml = split_config(&redis.url(), &stable, &canary);
    let (g1, _f1) = gateway(&yaml).await;
    let (g2, _f2) = gateway(&yaml).await;
    let (g3, _f3) = gateway(&yaml).await;
    let client = Client::new();
    let admins: Vec<SocketAddr> = [&g1, &g2, &g3]
        .iter()
        .map(|g| g.admin_addr.expect("admin"))
        .collect();
    for admin in &admins {
        wait_until_up(&client, *admin).await;
    }
    let shared = split_view(&client, admins[0]).await;
    assert!(shared["shared"]["version"].as_u64() >= Some(1), "{shared}");

    // Only replica 1 sees the failing canary (every answer is a 500 on /status/500).
    let mut sent = 0;
    while split_view(&client, admins[0]).await["state"] != "rolled_back" && sent < 400 {
        client.get(g1.http_addr, "/status/500").await;
        sent += 1;
    }
    let first = split_view(&client, admins[0]).await;
    assert_eq!(first["state"], "rolled_back", "{first}");
    let event = first["rolled_back"].clone();
    assert!(
        event["by"].is_string(),
        "the event names its replica: {event}"
    );

    // Within 2 s every replica holds the same rolled-back state and the same event.
    for admin in &admins[1..] {
        let same = eventually(Duration::from_secs(2), || async {
            let v = split_view(&client, *admin).await;
            v["state"] == "rolled_back" && v["rolled_back"] == event
        })
        .await;
        assert!(same, "{}", split_view(&client, *admin).await);
    }
    for g in [&g2, &g3] {
        assert_eq!(
            sides(&client, g.http_addr, 20).await,
            (20, 0),
            "canary traffic after the rollback"
        );
    }

    // A restarted replica comes back rolled back, before its first request.
    let admin3 = admins[2];
    g2.shutdown().await;
    let (g2, _f2b) = gateway(&yaml).await;
    let admin2 = g2.admin_addr.expect("admin");
    let restarted = split_view(&client, admin2).await;
    assert_eq!(restarted["state"], "rolled_back", "{restarted}");
    assert_eq!(sides(&client, g2.http_addr, 20).await, (20, 0));

    // An operator's change on replica 2 holds on 1 and 3 within 1 s.
    let put = client
        .send(
            http::Request::put(format!("http://{admin2}/splits/orders"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"{\"percent\": 20}",
                )))
                .expect("request"),
        )
        .await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    for admin in [admins[0], admin3] {
        let seen = eventually(Duration::from_secs(1), || async {
            let v = split_view(&client, admin).await;
            v["percent"] == 20.0 && v["state"] != "rolled_back"
        })
        .await;
        assert!(seen, "{}", split_view(&client, admin).await);
    }
    let view = split_view(&client, admins[0]).await;
    assert!(view["shared"]["last_writer"].is_string());
    for g in [g1, g2, g3] {
        g.shutdown().await;
    }
}

#[tokio::test]
async fn the_rollback_rule_judges_the_outcomes_of_all_replicas() {
    if skip() {
        return;
    }
    let redis = Redis::start();
    let stable = Backend::start("monolith").await;
    let canary = Backend::start("orders").await;
    // Each replica sees 6 failing canary answers: fewer than min_requests on its own,
    // 18 together.
    let yaml = split_config(&redis.url(), &stable, &canary)
        .replace("percent: 50", "percent: 100")
        .replace("min_requests: 5", "min_requests: 15");
    let (g1, _f1) = gateway(&yaml).await;
    let (g2, _f2) = gateway(&yaml).await;
    let (g3, _f3) = gateway(&yaml).await;
    let client = Client::new();
    let admins: Vec<SocketAddr> = [&g1, &g2, &g3]
        .iter()
        .map(|g| g.admin_addr.expect("admin"))
        .collect();
    for admin in &admins {
        wait_until_up(&client, *admin).await;
    }
    for g in [&g1, &g2, &g3] {
        for _ in 0..6 {
            assert_eq!(client.get(g.http_addr, "/status/500").await.status, 500);
        }
    }
    let rolled_back = eventually(Duration::from_secs(3), || async {
        let mut all = true;
        for admin in &admins {
            all &= split_view(&client, *admin).await["state"] == "rolled_back";
        }
        all
    })
    .await;
    let view = split_view(&client, admins[0]).await;
    assert!(rolled_back, "{view}");
    let reason = view["rolled_back"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("over all replicas"), "{reason}");
    for g in [g1, g2, g3] {
        g.shutdown().await;
    }
}

#[tokio::test]
async fn a_gateway_starts_without_redis_and_uses_it_once_it_is_up() {
    if skip() {
        return;
    }
    let port = free_port();
    let backend = Backend::start("b").await;
    let limit = "{ key: client_ip, limit: 1000, per: 1s, scope: cluster }";
    let url = format!("redis://127.0.0.1:{port}/0");
    let (gw, _file) = gateway(&config(&backend, &url, limit, "local")).await;
    let client = Client::new();
    let admin = gw.admin_addr.expect("admin");
    assert_eq!(
        hit(&client, gw.http_addr).await.status,
        200,
        "serves without redis"
    );
    let ready = client.get(admin, "/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "degraded");
    let _redis = Redis::on_port(port);
    wait_until_up(&client, admin).await;
    assert_eq!(client.get(admin, "/readyz").await.json()["status"], "ready");
    gw.shutdown().await;
}

#[tokio::test]
async fn rediss_with_a_private_ca() {
    if skip() {
        return;
    }
    let ca = support::tls::TestCa::new("redis test CA");
    let leaf = ca.leaf(&["localhost"], false);
    let redis = Redis::with_tls(TlsFiles {
        cert: leaf.cert_path(),
        key: leaf.key_path(),
        ca: ca.ca_path(),
    });
    let backend = Backend::start("b").await;
    let limit = "{ key: \"header:x-api-key\", limit: 10, per: 1h, burst: 3, scope: cluster }";
    let yaml = config(&backend, &redis.url(), limit, "deny").replace(
        "key_prefix: \"t:\" }",
        &format!("key_prefix: \"t:\", ca_file: \"{}\" }}", ca.ca_path()),
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    wait_until_up(&client, gw.admin_addr.expect("admin")).await;
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(hit(&client, gw.http_addr).await.status);
        }
        out
    };
    // deny: a 503 would mean Redis was not reached; the budget of 3 is kept there.
    assert_eq!(statuses, [200, 200, 200, 429]);
    assert_eq!(
        redis.cli(&["exists", "t:rl:per-key:v:partner-1"]).trim(),
        "1"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_sentinel_names_the_master_and_a_failover_is_followed() {
    if skip() {
        return;
    }
    let mut sentinel = support::redis_server::RedisSentinel::start();
    let backend = Backend::start("b").await;
    let limit = "{ key: \"header:x-api-key\", limit: 10, per: 1h, burst: 100, scope: cluster }";
    let (gw, _file) = gateway(&config(&backend, &sentinel.url(), limit, "local")).await;
    let client = Client::new();
    let admin = gw.admin_addr.expect("admin");
    wait_until_up(&client, admin).await;
    assert_eq!(hit(&client, gw.http_addr).await.status, 200);
    assert_eq!(
        sentinel
            .master
            .cli(&["exists", "t:rl:per-key:v:partner-1"])
            .trim(),
        "1",
        "the decision was made on the master the sentinel named"
    );

    // The master dies; the sentinel promotes the replica; the gateway follows.
    sentinel.master.kill();
    for _ in 0..10 {
        assert_eq!(
            hit(&client, gw.http_addr).await.status,
            200,
            "fallback while failing over"
        );
    }
    let replica = &sentinel.replica;
    let followed = eventually(Duration::from_secs(30), || async {
        hit(&client, gw.http_addr).await;
        replica
            .cli(&["info", "replication"])
            .contains("role:master")
            && client.get(admin, "/readyz").await.json()["redis"]["up"] == true
    })
    .await;
    assert!(followed, "{}", client.get(admin, "/readyz").await.json());
    let before = metric(
        &gw.metrics(),
        "portico_ratelimit_fallback_total{limit=\"per-key\"}",
    );
    assert_eq!(hit(&client, gw.http_addr).await.status, 200);
    let after = metric(
        &gw.metrics(),
        "portico_ratelimit_fallback_total{limit=\"per-key\"}",
    );
    assert_eq!(
        before, after,
        "decisions are shared again, on the new master"
    );
    gw.shutdown().await;
}
