//! End-to-end tests of health checks, outlier ejection, the circuit breaker, retries and
//! connection limits, through the real gateway with scripted backends on 127.0.0.1:0.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::scripted::Scripted;
use support::{eventually, gateway, metric, spread, Backend, Client, Reply};

fn yaml(upstream: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0, access_log: false }}\nadmin: {{ listen: 127.0.0.1:0 }}\nupstreams:\n  svc:\n{upstream}\nroutes:\n  - name: svc\n    upstream: svc\n"
    )
}

fn targets(backends: &[&Scripted]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.address()))
        .collect();
    format!("    targets: [{}]\n", list.join(", "))
}

async fn endpoint_json(client: &Client, admin: SocketAddr, address: &str) -> serde_json::Value {
    let ups = client.get(admin, "/upstreams").await.json();
    ups["upstreams"]["svc"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == address)
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_failing_health_check_takes_an_endpoint_out_and_passing_ones_bring_it_back() {
    let a = Scripted::start("a").await;
    let b = Scripted::start("b").await;
    let config = yaml(&format!(
        "{}    health_check: {{ path: /health, interval: 100ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 2 }}\n",
        targets(&[&a, &b])
    ));
    let (gw, _file) = gateway(&config).await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();
    assert_eq!(spread(&client, gw.http_addr, 4).await.len(), 2);

    b.set_health(503);
    assert!(
        eventually(Duration::from_secs(5), || async {
            endpoint_json(&client, admin, &b.address()).await["health"] == "failing"
        })
        .await
    );
    assert_eq!(
        spread(&client, gw.http_addr, 10).await,
        BTreeMap::from([("a".into(), 10)])
    );
    let e = endpoint_json(&client, admin, &b.address()).await;
    assert_eq!(e["state"], "unhealthy");
    assert_eq!(e["source"], "static");
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "portico_upstream_endpoints{state=\"unhealthy\",upstream=\"svc\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "portico_upstream_endpoints{state=\"healthy\",upstream=\"svc\"}"
        ),
        1.0
    );
    // Still ready: the endpoint is listed, only out of service.
    assert_eq!(client.get(admin, "/readyz").await.status, 200);

    b.set_health(200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            spread(&client, gw.http_addr, 4).await.contains_key("b")
        })
        .await,
        "b is back after healthy_threshold passing checks"
    );
    assert_eq!(
        endpoint_json(&client, admin, &b.address()).await["health"],
        "passing"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_killed_backend_is_ejected_and_clients_see_at_most_consecutive_errors_failures() {
    let a = Scripted::start("a").await;
    let b = Scripted::start("b").await;
    let config = yaml(&format!(
        "{}    outlier_detection: {{ consecutive_errors: 3, interval: 10s, base_ejection: 3s, max_ejection_percent: 50 }}\n",
        targets(&[&a, &b])
    ));
    let (gw, _file) = gateway(&config).await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();
    assert_eq!(spread(&client, gw.http_addr, 4).await.len(), 2);

    b.kill();
    let seen = spread(&client, gw.http_addr, 30).await;
    let failures: usize = seen.iter().filter(|(k, _)| *k != "a").map(|(_, n)| n).sum();
    assert!(failures <= 3, "clients saw {failures} failures: {seen:?}");
    assert!(failures >= 1, "b was tried before being ejected: {seen:?}");
    let e = endpoint_json(&client, admin, &b.address()).await;
    assert_eq!(e["ejected"], true, "{e}");
    assert_eq!(e["state"], "ejected");
    assert!(
        metric(
            &gw.metrics(),
            "portico_upstream_ejections_total{upstream=\"svc\"}"
        ) >= 1.0
    );

    // max_ejection_percent 50: a, now failing too, is not ejected (it would be 100%).
    a.set_status(500);
    let _ = spread(&client, gw.http_addr, 5).await;
    assert_eq!(
        endpoint_json(&client, admin, &a.address()).await["ejected"],
        false
    );
    a.set_status(200);

    b.revive().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            spread(&client, gw.http_addr, 4).await.contains_key("b")
        })
        .await,
        "b returns after its ejection time"
    );
    gw.shutdown().await;
}

fn retries_config(backends: &[&Scripted], extra: &str) -> String {
    yaml(&format!(
        "{}    retries: {{ attempts: 3, per_try_timeout: 2s, on: [connect_failure, \"502\", \"503\", \"504\"]{extra} }}\n",
        targets(backends)
    ))
}

async fn send(client: &Client, addr: SocketAddr, method: &str, body: Vec<u8>) -> Reply {
    client
        .send(
            Request::builder()
                .method(method)
                .uri(format!("http://{addr}/x"))
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await
}

#[tokio::test]
async fn a_503_then_200_is_retried_and_the_client_sees_200() {
    let a = Scripted::start("a").await;
    let (gw, _file) = gateway(&retries_config(&[&a], "")).await;
    let client = Client::new();
    a.script(&[503]);
    let r = client.get(gw.http_addr, "/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(a.hits(), 2);
    // A small body is kept and replayed whole.
    a.script(&[503]);
    let r = send(&client, gw.http_addr, "PUT", vec![b'x'; 1000]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 1000);
    assert_eq!(a.hits(), 4);
    assert_eq!(
        metric(
            &gw.metrics(),
            "portico_upstream_retries_total{result=\"retried\",upstream=\"svc\"}"
        ),
        2.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_post_and_a_large_body_are_not_retried() {
    let a = Scripted::start("a").await;
    let (gw, _file) = gateway(&retries_config(&[&a], "")).await;
    let client = Client::new();
    a.script(&[503]);
    assert_eq!(
        send(&client, gw.http_addr, "POST", b"{}".to_vec())
            .await
            .status,
        503
    );
    assert_eq!(a.hits(), 1);
    a.script(&[503]);
    let r = send(&client, gw.http_addr, "PUT", vec![b'x'; 100 * 1024]).await;
    assert_eq!(
        r.status, 503,
        "a body over 64KiB is streamed, not kept, so not retried"
    );
    assert_eq!(a.hits(), 2);
    gw.shutdown().await;

    // Listed explicitly, POST is retried.
    let (gw, _file) = gateway(&retries_config(&[&a], ", methods: [POST]")).await;
    a.script(&[503]);
    assert_eq!(
        send(&client, gw.http_addr, "POST", b"{}".to_vec())
            .await
            .status,
        200
    );
    assert_eq!(a.hits(), 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_retry_goes_to_another_endpoint_when_the_first_refuses_connections() {
    let a = Backend::start("a").await;
    let dead = Scripted::start("dead").await;
    dead.kill();
    let config = yaml(&format!(
        "    targets: [\"{}\", \"{}\"]\n    retries: {{ attempts: 2 }}\n",
        a.address(),
        dead.address()
    ));
    let (gw, _file) = gateway(&config).await;
    let client = Client::new();
    assert_eq!(
        spread(&client, gw.http_addr, 10).await,
        BTreeMap::from([("a".into(), 10)])
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_breaker_opens_serves_the_fallback_half_opens_and_closes() {
    let a = Scripted::start("a").await;
    let config = yaml(&format!(
        "{}    circuit_breaker:\n      error_percent: 50\n      min_requests: 5\n      window: 10s\n      open_for: 2s\n      fallback: {{ status: 503, body: '{{\"error\":\"svc temporarily unavailable\"}}' }}\n",
        targets(&[&a])
    ));
    let (gw, _file) = gateway(&config).await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();
    a.set_status(500);
    for _ in 0..5 {
        assert_eq!(client.get(gw.http_addr, "/x").await.status, 500);
    }
    let fallback = client.get(gw.http_addr, "/x").await;
    assert_eq!(fallback.status, 503);
    assert_eq!(fallback.json()["error"], "svc temporarily unavailable");
    assert_eq!(fallback.header("content-type"), Some("application/json"));
    assert!(fallback.header("x-request-id").is_some());
    assert_eq!(a.hits(), 5, "an open breaker does not touch the upstream");
    let ups = client.get(admin, "/upstreams").await.json();
    assert_eq!(ups["upstreams"]["svc"]["breaker"], "open");
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "portico_circuit_breaker_state{state=\"open\",upstream=\"svc\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &m,
            "portico_circuit_breaker_rejected_total{upstream=\"svc\"}"
        ) >= 1.0
    );

    // Still failing when half-open: the probe reopens it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        client.get(gw.http_addr, "/x").await.status,
        500,
        "a probe went through"
    );
    assert_eq!(
        client.get(gw.http_addr, "/x").await.json()["error"],
        "svc temporarily unavailable"
    );

    a.set_status(200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            client.get(gw.http_addr, "/x").await.status == 200
        })
        .await,
        "a successful probe closes the breaker"
    );
    assert_eq!(
        spread(&client, gw.http_addr, 5).await,
        BTreeMap::from([("a".into(), 5)])
    );
    assert_eq!(
        client.get(admin, "/upstreams").await.json()["upstreams"]["svc"]["breaker"],
        "closed"
    );
    assert_eq!(
        metric(
            &gw.metrics(),
            "portico_circuit_breaker_state{state=\"closed\",upstream=\"svc\"}"
        ),
        1.0
    );
    gw.shutdown().await;

    // Without a fallback, an open breaker answers 503 in the JSON shape.
    let config = yaml(&format!(
        "{}    circuit_breaker: {{ error_percent: 50, min_requests: 2, window: 10s, open_for: 30s }}\n",
        targets(&[&a])
    ));
    let (gw, _file) = gateway(&config).await;
    a.set_status(502);
    let _ = client.get(gw.http_addr, "/x").await;
    let _ = client.get(gw.http_addr, "/x").await;
    let r = client.get(gw.http_addr, "/x").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], 503);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("circuit breaker"));
    gw.shutdown().await;
}

#[tokio::test]
async fn max_pending_overflow_gives_503_fast() {
    let a = Scripted::start("a").await;
    a.set_delay(Duration::from_millis(1500));
    let config = yaml(&format!(
        "{}    max_connections: 1\n    max_pending: 1\n    timeouts: {{ connect: 1s, request: 10s }}\n",
        targets(&[&a])
    ));
    let (gw, _file) = gateway(&config).await;
    let client = Client::new();
    let addr = gw.http_addr;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = client.get(addr, "/x").await;
                (r.status, started.elapsed())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(
        ok, 2,
        "one in flight and one queued are served: {results:?}"
    );
    assert_eq!(refused.len(), 2, "{results:?}");
    assert!(
        refused
            .iter()
            .all(|(_, took)| *took < Duration::from_millis(1000)),
        "overflow is refused at once: {results:?}"
    );
    assert_eq!(
        metric(
            &gw.metrics(),
            "portico_upstream_overflow_total{upstream=\"svc\"}"
        ),
        2.0
    );
    gw.shutdown().await;
}

#[test]
fn check_names_the_path_of_every_bad_resilience_key() {
    let text = r#"
server: { listen: 127.0.0.1:0 }
upstreams:
  a:
    discovery: { consul: { service: orders } }
    retries: { attempts: 0, on: [sometimes] }
    health_check: { path: health, interval: 0s, timeout: 1s, healthy_threshold: 0, unhealthy_threshold: 1 }
    circuit_breaker: { error_percent: 50, min_requests: 0, window: 10s, open_for: 1s }
    max_connections: 0
    keepalive: { idle_timeout: 0s }
routes:
  - name: a
    upstream: a
"#;
    let err = portico::check::parse(text).unwrap_err().to_string();
    for path in [
        "upstreams.a.discovery: discovery needs the consul: section",
        "upstreams.a.retries.attempts",
        "upstreams.a.retries.on: unknown retry condition \"sometimes\"",
        "upstreams.a.health_check.path",
        "upstreams.a.health_check.interval",
        "upstreams.a.health_check.healthy_threshold",
        "upstreams.a.circuit_breaker.min_requests",
        "upstreams.a.max_connections",
        "upstreams.a.keepalive.idle_timeout",
    ] {
        assert!(err.contains(path), "missing {path:?} in:\n{err}");
    }
    assert!(!err.contains("not supported yet"), "{err}");
    let bad_consul =
        "server: { listen: 127.0.0.1:0 }\nconsul: { address: \"consul:8501\", wait: 20m }\n";
    let err = portico::check::parse(bad_consul).unwrap_err().to_string();
    assert!(err.contains("consul.address"), "{err}");
    assert!(err.contains("consul.wait"), "{err}");
}

#[tokio::test]
async fn the_retry_budget_stops_retries_from_multiplying_an_outage() {
    // Every answer is a slow 503: each of 20 requests wants two retries. A 0% budget with
    // a minimum of 2 lets exactly 2 retries be at the upstream at once; the rest wait at
    // most one try's time for a place, then the client gets the 503 it already has.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let arrivals = Arc::new(AtomicUsize::new(0));
    let retries_at_upstream = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    const REQUESTS: usize = 20;
    let _server = {
        let (arrivals, retries_at_upstream, peak) =
            (arrivals.clone(), retries_at_upstream.clone(), peak.clone());
        support::scripted::serve(listener, move |_req| {
            let (arrivals, retries_at_upstream, peak) =
                (arrivals.clone(), retries_at_upstream.clone(), peak.clone());
            async move {
                // The first REQUESTS arrivals are the first tries: no retry starts before
                // a first try has its answer, and every first try is sent at once.
                let retry = arrivals.fetch_add(1, Ordering::SeqCst) >= REQUESTS;
                if retry {
                    let now = retries_at_upstream.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                if retry {
                    retries_at_upstream.fetch_sub(1, Ordering::SeqCst);
                }
                let mut r = http::Response::new(Full::new(Bytes::from_static(b"down")));
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                r
            }
        })
    };
    let config = yaml(&format!(
        "    targets: [\"{addr}\"]\n    retries: {{ attempts: 3, per_try_timeout: 1s, budget: 0%, min_concurrency: 2 }}\n    timeouts: {{ request: 20s }}\n"
    ));
    let (gw, _file) = gateway(&config).await;
    let client = Client::new();
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..REQUESTS {
        let (client, http) = (client.clone(), gw.http_addr);
        calls.spawn(async move { client.get(http, "/x").await.status });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.unwrap(), 503, "the upstream's own answer");
    }
    assert_eq!(
        peak.load(Ordering::SeqCst),
        2,
        "retries at the upstream at once"
    );
    let m = gw.metrics();
    let retried = metric(
        &m,
        "portico_upstream_retries_total{result=\"retried\",upstream=\"svc\"}",
    );
    let refused = metric(
        &m,
        "portico_upstream_retries_total{result=\"budget_exhausted\",upstream=\"svc\"}",
    );
    assert_eq!(
        arrivals.load(Ordering::SeqCst),
        REQUESTS + retried as usize,
        "every retry counted reached the upstream"
    );
    assert!(
        refused >= 1.0,
        "waits longer than a try gave up ({refused})"
    );
    // 40 retries of 300 ms, 2 at a time, cannot all fit in the 1 s waits.
    assert!(retried < 40.0, "{retried} retries");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "no request waited past its bound"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_backend_killed_under_load_costs_no_client_an_error() {
    // 50 clients in a loop over two endpoints; one endpoint dies mid-run. Requests it held
    // break (reset) and new ones to it are refused until outlier detection ejects it: with
    // retries on those failures, every client still gets 200.
    let a = Scripted::start("a").await;
    let b = Scripted::start("b").await;
    a.set_delay(Duration::from_millis(5));
    b.set_delay(Duration::from_millis(5));
    let config = yaml(&format!(
        "{}    retries: {{ attempts: 3, per_try_timeout: 2s, on: [connect_failure, reset, \"502\", \"503\", \"504\"] }}\n    outlier_detection: {{ consecutive_errors: 3, interval: 10s, base_ejection: 30s, max_ejection_percent: 50 }}\n",
        targets(&[&a, &b])
    ));
    let (gw, _file) = gateway(&config).await;
    let client = Client::new();
    assert_eq!(spread(&client, gw.http_addr, 4).await.len(), 2);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (client, http, stop) = (client.clone(), gw.http_addr, stop.clone());
        clients.spawn(async move {
            let mut seen = BTreeMap::<u16, usize>::new();
            while !stop.load(Ordering::SeqCst) {
                *seen.entry(client.get(http, "/x").await.status).or_default() += 1;
            }
            seen
        });
    }
    // Until both endpoints have served traffic under load.
    assert!(
        eventually(Duration::from_secs(20), || async {
            a.hits() > 100 && b.hits() > 100
        })
        .await
    );
    b.kill();
    let hits_at_kill = a.hits();
    assert!(
        eventually(Duration::from_secs(20), || async {
            a.hits() > hits_at_kill + 500
        })
        .await,
        "the load goes on against a"
    );
    stop.store(true, Ordering::SeqCst);
    let mut seen = BTreeMap::<u16, usize>::new();
    while let Some(one) = clients.join_next().await {
        for (status, n) in one.unwrap() {
            *seen.entry(status).or_default() += n;
        }
    }
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "{seen:?}"
    );
    let m = gw.metrics();
    assert!(
        metric(
            &m,
            "portico_upstream_retries_total{result=\"retried\",upstream=\"svc\"}"
        ) >= 1.0,
        "the failures at b were retried"
    );
    assert_eq!(
        metric(
            &m,
            "portico_upstream_retries_total{result=\"budget_exhausted\",upstream=\"svc\"}"
        ),
        0.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_try_is_cut_by_per_try_timeout_and_retried_elsewhere() {
    let slow = Scripted::start("slow").await;
    let fast = Scripted::start("fast").await;
    slow.set_delay(Duration::from_secs(3));
    let config = yaml(&format!(
        "{}    timeouts: {{ connect: 1s, request: 10s }}\n    retries: {{ attempts: 2, per_try_timeout: 300ms, on: [timeout] }}\n",
        targets(&[&slow, &fast])
    ));
    let (gw, _file) = gateway(&config).await;
    let client = Client::new();
    for _ in 0..4 {
        let started = Instant::now();
        let r = client.get(gw.http_addr, "/x").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["backend"], "fast");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the slow try was cut short"
        );
    }
    gw.shutdown().await;
}

/// least_request, observed: while one endpoint holds slow requests, new ones go to the
/// other (random balancing would send about half of them to the slow one).
#[tokio::test]
async fn least_request_sends_new_requests_away_from_an_endpoint_holding_slow_ones() {
    let slow = Scripted::start("slow").await;
    let fast = Scripted::start("fast").await;
    slow.set_delay(Duration::from_secs(3));
    let config = yaml(&format!(
        "    balance: least_request\n{}",
        targets(&[&slow, &fast])
    ));
    let (gw, _file) = gateway(&config).await;
    let client = Client::new();
    // Bursts of concurrent requests until the slow endpoint holds at least two (an idle
    // pair ties, and a tie may go either way).
    let mut held = Vec::new();
    for _ in 0..10 {
        if slow.hits() >= 2 {
            break;
        }
        for _ in 0..8 {
            let client = client.clone();
            let addr = gw.http_addr;
            held.push(tokio::spawn(async move { client.get(addr, "/x").await }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(slow.hits() >= 2, "the slow endpoint was never picked");
    let before = slow.hits();
    let seen = spread(&client, gw.http_addr, 20).await;
    assert_eq!(seen.get("fast"), Some(&20), "{seen:?}");
    assert_eq!(slow.hits(), before);
    for request in held {
        assert_eq!(request.await.unwrap().status, 200);
    }
    gw.shutdown().await;
}
