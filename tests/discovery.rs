//! End-to-end tests of Consul discovery: the real gateway, real backends and the test
//! Consul (tests/support/consul.rs), all on 127.0.0.1:0.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::consul::{Registration, TestConsul};
use support::{eventually, gateway, metric, spread, Backend, Client};

fn yaml(consul: &TestConsul, wait: &str, discovery: &str) -> String {
    format!(
        r#"server: {{ listen: 127.0.0.1:0, access_log: false }}
admin: {{ listen: 127.0.0.1:0 }}
consul: {{ address: "{}", wait: {wait}, token: secret-token }}
upstreams:
  orders:
    discovery: {{ consul: {discovery} }}
    timeouts: {{ connect: 1s, request: 5s }}
routes:
  - name: orders
    upstream: orders
"#,
        consul.url()
    )
}

async fn ready(client: &Client, admin: std::net::SocketAddr) -> bool {
    eventually(Duration::from_secs(10), || async {
        client.get(admin, "/readyz").await.status == 200
    })
    .await
}

#[tokio::test]
async fn registered_instance_gets_traffic_within_a_second_and_a_critical_one_stops() {
    let consul = TestConsul::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    consul.register(Registration::new("a-1", "orders", a.addr));
    let (gw, _file) = gateway(&yaml(&consul, "5s", "{ service: orders }")).await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();
    assert!(ready(&client, admin).await);
    assert_eq!(
        spread(&client, gw.http_addr, 4).await,
        BTreeMap::from([("a".into(), 4)])
    );

    consul.register(Registration::new("b-1", "orders", b.addr));
    let registered = Instant::now();
    let reached = eventually(Duration::from_secs(1), || async {
        client.get(gw.http_addr, "/x").await.json()["backend"] == "b"
    })
    .await;
    assert!(
        reached,
        "b got no traffic within a second ({:?})",
        registered.elapsed()
    );

    let ups = client.get(admin, "/upstreams").await.json();
    let endpoints = ups["upstreams"]["orders"]["endpoints"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(endpoints.len(), 2);
    assert!(gw.metrics().contains(&format!("endpoint=\"{}\"", b.addr)));
    assert!(endpoints.iter().all(|e| e["source"] == "consul"));
    assert_eq!(ups["upstreams"]["orders"]["discovery"]["synced"], true);

    consul.set_check("b-1", "critical");
    assert!(
        eventually(Duration::from_secs(5), || async {
            spread(&client, gw.http_addr, 10).await == BTreeMap::from([("a".into(), 10)])
        })
        .await,
        "b still gets traffic after its check turned critical"
    );
    // The endpoint that left takes its metric series along (addresses change on every
    // deploy: /metrics must not grow with each).
    let b_label = format!("endpoint=\"{}\"", b.addr);
    let forgotten = eventually(Duration::from_secs(5), || async {
        !gw.metrics().contains(&b_label)
    })
    .await;
    assert!(
        forgotten,
        "series of a gone endpoint remain:\n{}",
        gw.metrics()
    );
    assert!(gw.metrics().contains(&format!("endpoint=\"{}\"", a.addr)));
    // A change elsewhere wakes the watch but is not a change of this set.
    let hits = b.hits();
    consul.touch();
    assert_eq!(
        spread(&client, gw.http_addr, 6).await,
        BTreeMap::from([("a".into(), 6)])
    );
    assert_eq!(b.hits(), hits);
    assert!(consul.tokens_seen().iter().all(|t| t == "secret-token"));
    assert!(!consul.tokens_seen().is_empty());
    gw.shutdown().await;
}

#[tokio::test]
async fn consul_down_keeps_the_last_known_set_and_changes_are_followed_when_it_returns() {
    let consul = TestConsul::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    consul.register(Registration::new("a-1", "orders", a.addr));
    consul.register(Registration::new("b-1", "orders", b.addr));
    let (gw, _file) = gateway(&yaml(&consul, "5s", "{ service: orders }")).await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();
    assert!(ready(&client, admin).await);

    consul.stop();
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(
                &gw.metrics(),
                "portico_discovery_errors_total{upstream=\"orders\"}",
            ) >= 1.0
        })
        .await,
        "errors are counted while consul is down"
    );
    let seen = spread(&client, gw.http_addr, 10).await;
    assert_eq!(seen.get("a"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&5), "{seen:?}");
    assert_eq!(
        client.get(admin, "/readyz").await.status,
        200,
        "stays ready on the last known set"
    );
    assert_eq!(
        client.get(admin, "/upstreams").await.json()["upstreams"]["orders"]["discovery"]["failing"],
        true
    );
    let synced_before = metric(
        &gw.metrics(),
        "portico_discovery_last_sync_timestamp_seconds{upstream=\"orders\"}",
    );
    assert!(synced_before > 1.0e9);

    consul.restart().await;
    consul.deregister("b-1");
    assert!(
        eventually(Duration::from_secs(15), || async {
            spread(&client, gw.http_addr, 6).await == BTreeMap::from([("a".into(), 6)])
        })
        .await,
        "the change made after consul returned is followed"
    );
    assert_eq!(
        client.get(admin, "/upstreams").await.json()["upstreams"]["orders"]["discovery"]["failing"],
        false
    );
    gw.shutdown().await;
}

/// The most queries the watch's limiter lets through in `elapsed` (a burst of 2, then one
/// per floor, plus the one that may be in flight at each end). Measured time, not the
/// planned sleep, so a slow machine cannot make the bound wrong.
fn limiter_allows(elapsed: Duration) -> usize {
    let floor = portico::upstream::discovery::consul::QUERY_FLOOR;
    2 + (elapsed.as_secs_f64() / floor.as_secs_f64()).ceil() as usize + 1
}

#[tokio::test]
async fn index_reset_and_index_zero_do_not_cause_a_busy_loop() {
    let consul = TestConsul::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    consul.register(Registration::new("a-1", "orders", a.addr));
    let (gw, _file) = gateway(&yaml(&consul, "1s", "{ service: orders }")).await;
    let client = Client::new();
    assert!(ready(&client, gw.admin_addr.unwrap()).await);

    // Index 0 on every answer, at once: only the rate limit stands between the loop and
    // thousands of queries a second.
    consul.index_zero(true);
    consul.touch();
    let (before, start) = (consul.queries(), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = consul.queries() - before;
    let allowed = limiter_allows(start.elapsed());
    assert!(
        during <= allowed,
        "{during} queries with index 0, the limiter allows {allowed}"
    );
    assert!(during >= 2, "the loop keeps asking ({during})");
    consul.index_zero(false);
    assert_eq!(client.get(gw.http_addr, "/x").await.status, 200);

    // The index goes backwards: the watch starts over, then blocks again.
    for _ in 0..5 {
        consul.touch();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (before, start) = (consul.queries(), Instant::now());
    consul.reset_index(1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = consul.queries() - before;
    let allowed = limiter_allows(start.elapsed());
    assert!(
        during <= allowed,
        "{during} queries after an index reset, the limiter allows {allowed}"
    );

    consul.register(Registration::new("b-1", "orders", b.addr));
    assert!(
        eventually(Duration::from_secs(5), || async {
            client.get(gw.http_addr, "/x").await.json()["backend"] == "b"
        })
        .await,
        "changes are followed after the reset"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn errors_429_500_and_a_stalled_consul_keep_the_endpoints_and_are_counted() {
    let consul = TestConsul::start().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    consul.register(Registration::new("a-1", "orders", a.addr));
    let (gw, _file) = gateway(&yaml(&consul, "1s", "{ service: orders }")).await;
    let client = Client::new();
    assert!(ready(&client, gw.admin_addr.unwrap()).await);
    let errors = || {
        metric(
            &gw.metrics(),
            "portico_discovery_errors_total{upstream=\"orders\"}",
        )
    };

    for status in [500, 429] {
        let before = errors();
        consul.fail_with(Some(status));
        consul.touch();
        assert!(
            eventually(Duration::from_secs(10), || async { errors() > before }).await,
            "{status} counted as an error"
        );
        assert_eq!(
            spread(&client, gw.http_addr, 3).await,
            BTreeMap::from([("a".into(), 3)])
        );
        consul.fail_with(None);
    }

    let before = errors();
    consul.stall(true);
    consul.touch();
    // wait 1s: the read timeout is 1s × 17/16 + 2s.
    assert!(
        eventually(Duration::from_secs(15), || async { errors() > before }).await,
        "a stalled query times out and counts as an error"
    );
    assert_eq!(
        spread(&client, gw.http_addr, 3).await,
        BTreeMap::from([("a".into(), 3)])
    );
    consul.stall(false);
    consul.register(Registration::new("b-1", "orders", b.addr));
    assert!(
        eventually(Duration::from_secs(15), || async {
            client.get(gw.http_addr, "/x").await.json()["backend"] == "b"
        })
        .await,
        "changes are followed once consul answers again"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn readyz_waits_for_the_first_answer_and_an_upstream_without_endpoints_answers_503() {
    let consul = TestConsul::start().await;
    let a = Backend::start("a").await;
    let s = Backend::start("static").await;
    consul.fail_with(Some(500));
    let config = format!(
        r#"server: {{ listen: 127.0.0.1:0, access_log: false }}
admin: {{ listen: 127.0.0.1:0 }}
consul: {{ address: "{}", wait: 1s }}
upstreams:
  orders: {{ discovery: {{ consul: {{ service: orders }} }} }}
  fixed: {{ targets: ["{}"] }}
routes:
  - name: fixed
    match: {{ path_prefix: /fixed }}
    upstream: fixed
  - name: orders
    upstream: orders
"#,
        consul.url(),
        s.address()
    );
    let (gw, _file) = gateway(&config).await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();
    let not_ready = client.get(admin, "/readyz").await;
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.json()["upstreams_without_endpoints"][0], "orders");
    // Routes whose upstreams are ready serve at once.
    assert_eq!(
        client.get(gw.http_addr, "/fixed").await.json()["backend"],
        "static"
    );
    let empty = client.get(gw.http_addr, "/orders").await;
    assert_eq!(empty.status, 503);
    let body = empty.json();
    assert_eq!(body["status"], 503);
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));

    consul.fail_with(None);
    assert!(
        ready(&client, admin).await,
        "ready after the first answer, even an empty one"
    );
    assert_eq!(client.get(gw.http_addr, "/orders").await.status, 503);
    consul.register(Registration::new("a-1", "orders", a.addr));
    assert!(
        eventually(Duration::from_secs(5), || async {
            client.get(gw.http_addr, "/orders").await.status == 200
        })
        .await
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn tag_filter_datacenter_node_address_and_weights() {
    let consul = TestConsul::start().await;
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    let heavy = Backend::start("heavy").await;
    consul.register(Registration::new("v1", "orders", v1.addr).tags(&["v1"]));
    let mut node_only = Registration::new("v2", "orders", v2.addr).tags(&["v2", "canary"]);
    node_only.address = String::new(); // Service.Address empty: Node.Address is used
    consul.register(node_only);
    let mut weighted = Registration::new("heavy", "orders", heavy.addr).tags(&["v2"]);
    weighted.weight = Some(3);
    consul.register(weighted);
    let config = yaml(&consul, "5s", "{ service: orders, tag: v2 }").replace(
        "token: secret-token",
        "token: secret-token, datacenter: dc1",
    );
    let (gw, _file) = gateway(&config).await;
    let client = Client::new();
    assert!(ready(&client, gw.admin_addr.unwrap()).await);
    let seen = spread(&client, gw.http_addr, 8).await;
    assert_eq!(
        seen,
        BTreeMap::from([("heavy".into(), 6), ("v2".into(), 2)])
    );
    gw.shutdown().await;

    // An unknown datacenter is an error: never ready, nothing served.
    let config = yaml(&consul, "5s", "{ service: orders }")
        .replace("token: secret-token", "datacenter: dc9");
    let (gw, _file) = gateway(&config).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(
                &gw.metrics(),
                "portico_discovery_errors_total{upstream=\"orders\"}",
            ) >= 1.0
        })
        .await
    );
    assert_eq!(
        client.get(gw.admin_addr.unwrap(), "/readyz").await.status,
        503
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_discovered_upstream_and_drops_a_changed_one() {
    let consul = TestConsul::start().await;
    let a = Backend::start("a").await;
    consul.register(Registration::new("a-1", "orders", a.addr));
    let text = yaml(&consul, "5s", "{ service: orders }");
    let (gw, _file) = gateway(&text).await;
    let client = Client::new();
    assert!(ready(&client, gw.admin_addr.unwrap()).await);
    let before = gw.runtime().upstreams["orders"].clone();

    let more_routes = format!(
        "{text}  - name: extra\n    match: {{ path_prefix: /extra }}\n    upstream: orders\n"
    );
    gw.apply(portico::check::parse(&more_routes).unwrap())
        .unwrap();
    assert!(
        Arc::ptr_eq(&before, &gw.runtime().upstreams["orders"]),
        "unchanged upstream kept"
    );
    assert!(before.ready(), "and its discovery state");

    let weak = Arc::downgrade(&before);
    drop(before);
    // Consul is down during the reload: the rebuilt upstream starts from the endpoints the
    // old one knew, so it stays ready and keeps serving.
    consul.stop();
    let changed = text.replace("wait: 5s", "wait: 4s");
    gw.apply(portico::check::parse(&changed).unwrap()).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            weak.upgrade().is_none()
        })
        .await,
        "the replaced upstream is dropped: its background tasks do not keep it alive"
    );
    assert_eq!(
        client.get(gw.admin_addr.unwrap(), "/readyz").await.status,
        200
    );
    assert_eq!(client.get(gw.http_addr, "/x").await.json()["backend"], "a");
    gw.shutdown().await;
}

#[tokio::test]
async fn consul_over_https_with_a_private_ca_and_a_token() {
    let ca = support::tls::TestCa::new("consul CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], false);
    let consul = TestConsul::start_tls(support::tls::acceptor(&leaf, None)).await;
    assert!(consul.url().starts_with("https://"));
    let a = Backend::start("a").await;
    consul.register(Registration::new("a-1", "orders", a.addr));
    let with_ca = yaml(&consul, "1s", "{ service: orders }").replace(
        "token: secret-token }",
        &format!("token: secret-token, ca_file: {} }}", ca.ca_path()),
    );
    let (gw, _file) = gateway(&with_ca).await;
    let client = Client::new();
    assert!(ready(&client, gw.admin_addr.unwrap()).await);
    assert_eq!(
        spread(&client, gw.http_addr, 4).await,
        BTreeMap::from([("a".into(), 4)])
    );
    assert!(!consul.tokens_seen().is_empty());
    assert!(consul.tokens_seen().iter().all(|t| t == "secret-token"));
    gw.shutdown().await;

    // Trusting another CA: no answer is accepted, the errors are counted.
    let other = support::tls::TestCa::new("other");
    let untrusted = yaml(&consul, "1s", "{ service: orders }").replace(
        "token: secret-token }",
        &format!("token: secret-token, ca_file: {} }}", other.ca_path()),
    );
    let (gw, _file) = gateway(&untrusted).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(
                &gw.metrics(),
                "portico_discovery_errors_total{upstream=\"orders\"}",
            ) >= 1.0
        })
        .await
    );
    assert_eq!(client.get(gw.http_addr, "/x").await.status, 503);
    gw.shutdown().await;
    // TLS files with an http address are a config error.
    let plain = with_ca.replace("https://", "http://");
    let err = portico::check::parse(&plain).unwrap_err().to_string();
    assert!(err.contains("consul.address"), "{err}");
}
