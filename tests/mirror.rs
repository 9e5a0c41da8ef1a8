//! End-to-end tests of shadow traffic: a real gateway copying a route's requests to a
//! second backend (real backends on 127.0.0.1:0), comparing the answers, and the split's
//! rollback on the canary's latency. Waits are polling loops with generous deadlines.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;
use support::scripted::serve;
use support::{assert_refused_at, eventually, gateway, metric, Backend, Client};
use tokio::net::TcpListener;

/// The top of every config here: a gateway and its admin listener on ephemeral ports.
const HEAD: &str = "server:
  listen: 127.0.0.1:0
  access_log: false
admin:
  listen: 127.0.0.1:0
";

/// What a recording backend saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    mirror_header: Option<String>,
    identity: Option<String>,
    /// The verified `sub` claim, forwarded as `X-User-Id`.
    user: Option<String>,
    body_len: usize,
}

/// A backend that records every request and answers with `answer(path)` after `delay`.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

type Answer = fn(&str) -> (u16, &'static str, String);

fn echo_path(path: &str) -> (u16, &'static str, String) {
    (200, "application/json", format!(r#"{{"path": "{path}"}}"#))
}

impl Recorder {
    async fn start(delay: Duration, answer: Answer) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(AtomicUsize::new(0));
        let (s, a) = (seen.clone(), arrived.clone());
        let task = serve(listener, move |req: Request<Incoming>| {
            let (seen, arrived) = (s.clone(), a.clone());
            async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let header = |name: &str| {
                    parts
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(String::from)
                };
                tokio::time::sleep(delay).await;
                let path = parts.uri.path().to_string();
                seen.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    path: path.clone(),
                    mirror_header: header("x-portico-mirror"),
                    identity: header("x-forwarded-for"),
                    user: header("x-user-id"),
                    body_len: body.len(),
                });
                let (status, content_type, text) = answer(&path);
                let mut r = Response::new(Full::new(Bytes::from(text)));
                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                r.headers_mut()
                    .insert("content-type", content_type.parse().unwrap());
                r
            }
        });
        Recorder {
            addr,
            seen,
            arrived,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One route `orders` (/api/orders) on `primary`, mirrored to `mirror` with `/api`
/// stripped; `mirror` holds the rest of the mirror block (six spaces in), `extra` more
/// upstream keys of the mirror upstream.
fn config(primary: SocketAddr, mirror: &str, block: &str) -> String {
    format!(
        r#"{HEAD}upstreams:
  monolith: {{ targets: ["{primary}"] }}
  orders: {{ targets: ["{mirror}"], timeouts: {{ request: 10s }} }}
routes:
  - name: orders
    match: {{ path_prefix: /api/orders }}
    upstream: monolith
    mirror:
      upstream: orders
      rewrite: {{ strip_prefix: /api }}
{block}
"#
    )
}

async fn mirrors(client: &Client, admin: SocketAddr) -> Value {
    client.get(admin, "/mirrors/orders").await.json()
}

fn count(view: &Value, key: &str) -> u64 {
    view["counts"][key].as_u64().unwrap_or(0)
}

/// An address nothing listens on.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

#[tokio::test]
async fn a_slow_or_refusing_mirror_changes_nothing_for_the_client() {
    let primary = Backend::start("monolith").await;
    let slow = Recorder::start(Duration::from_secs(2), echo_path).await;
    let refused = closed_port().await;
    let client = Client::new();
    for mirror in [slow.addr.to_string(), refused] {
        let (gw, _file) = gateway(&config(primary.addr, &mirror, "      percent: 100")).await;
        for i in 0..10 {
            let started = Instant::now();
            let r = client.get(gw.http_addr, &format!("/api/orders/{i}")).await;
            let took = started.elapsed();
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["backend"], "monolith");
            assert_eq!(r.json()["path"], format!("/api/orders/{i}"));
            assert!(
                r.header("x-portico-mirror").is_none(),
                "nothing of the copy reaches the client"
            );
            assert!(took < Duration::from_secs(1), "request {i} took {took:?}");
        }
        let admin = gw.admin_addr.unwrap();
        // Every copy went out; the refused ones fail, the slow ones end in time.
        assert!(
            eventually(Duration::from_secs(20), || async {
                let view = mirrors(&client, admin).await;
                count(&view, "mirrored") == 10 && view["in_flight"] == 0
            })
            .await,
            "{}",
            mirrors(&client, admin).await
        );
    }
    assert_eq!(slow.seen().len(), 10);
    assert_eq!(primary.hits(), 20);
}

#[tokio::test]
async fn the_copy_goes_to_the_rewritten_path_with_the_mirror_header() {
    let primary = Backend::start("monolith").await;
    let mirror = Recorder::start(Duration::ZERO, echo_path).await;
    let (gw, _file) = gateway(&config(primary.addr, &mirror.addr.to_string(), "")).await;
    let client = Client::new();
    let r = client.get(gw.http_addr, "/api/orders/7?page=2").await;
    assert_eq!(r.json()["path"], "/api/orders/7");
    assert!(
        eventually(Duration::from_secs(10), || async {
            !mirror.seen().is_empty()
        })
        .await
    );
    let seen = &mirror.seen()[0];
    assert_eq!(seen.path, "/orders/7");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.mirror_header.as_deref(), Some("1"));
    // The forwarding headers the primary gets are on the copy too.
    assert_eq!(seen.identity.as_deref(), Some("127.0.0.1"));
    assert!(
        r.echoed("x-portico-mirror").is_empty(),
        "the primary never gets the mirror header"
    );
}

#[tokio::test]
async fn percent_is_honoured_within_three_points() {
    let primary = Backend::start("monolith").await;
    let mirror = Recorder::start(Duration::ZERO, echo_path).await;
    let (gw, _file) = gateway(&config(
        primary.addr,
        &mirror.addr.to_string(),
        "      percent: 20",
    ))
    .await;
    let client = Client::new();
    let statuses = fire(&client, gw.http_addr, 8, 250, &Arc::default()).await;
    assert!(statuses.iter().all(|s| *s == 200));
    let admin = gw.admin_addr.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            let view = mirrors(&client, admin).await;
            view["in_flight"] == 0 && mirror.seen().len() as u64 == count(&view, "mirrored")
        })
        .await
    );
    let copied = mirror.seen().len();
    assert!(
        (340..=460).contains(&copied),
        "{copied} of 2000 copied (want 20% ± 3%)"
    );
    assert_eq!(primary.hits(), 2000);
}

#[tokio::test]
async fn max_in_flight_drops_copies_beyond_it_against_a_stuck_mirror() {
    let primary = Backend::start("monolith").await;
    let stuck = Recorder::start(Duration::from_secs(8), echo_path).await;
    let (gw, _file) = gateway(&config(
        primary.addr,
        &stuck.addr.to_string(),
        "      max_in_flight: 3",
    ))
    .await;
    let client = Client::new();
    for i in 0..10 {
        let started = Instant::now();
        let r = client.get(gw.http_addr, &format!("/api/orders/{i}")).await;
        assert_eq!(r.status, 200);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let admin = gw.admin_addr.unwrap();
    let view = mirrors(&client, admin).await;
    assert_eq!(view["in_flight"], 3, "{view}");
    assert_eq!(count(&view, "mirrored"), 3, "{view}");
    assert_eq!(count(&view, "dropped"), 7, "{view}");
    assert_eq!(view["counts"]["dropped_by_reason"]["in_flight"], 7);
    assert!(stuck.arrived.load(Ordering::SeqCst) <= 3);
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"portico_mirror_requests_total{result="dropped",route="orders"}"#
        ),
        7.0
    );
}

#[tokio::test]
async fn unsafe_methods_are_copied_only_when_listed() {
    let primary = Backend::start("monolith").await;
    let mirror = Recorder::start(Duration::ZERO, echo_path).await;
    let client = Client::new();
    let post = |addr: SocketAddr, body: &'static str| {
        Request::post(format!("http://{addr}/api/orders"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };

    // Default: safe methods only.
    let (gw, _file) = gateway(&config(primary.addr, &mirror.addr.to_string(), "")).await;
    assert_eq!(
        client.send(post(gw.http_addr, r#"{"n": 1}"#)).await.status,
        200
    );
    client.get(gw.http_addr, "/api/orders/after-post").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            !mirror.seen().is_empty()
        })
        .await
    );
    let seen = mirror.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "GET");
    drop(gw);

    // Listed: a POST is copied with its body; one above max_body is not.
    let block = "      methods: [GET, POST]\n      max_body: 16B";
    let (gw, _file) = gateway(&config(primary.addr, &mirror.addr.to_string(), block)).await;
    assert_eq!(
        client.send(post(gw.http_addr, r#"{"n": 1}"#)).await.status,
        200
    );
    let big = r#"{"n": 1, "padding": "more than sixteen bytes"}"#;
    let r = client.send(post(gw.http_addr, big)).await;
    assert_eq!(
        r.json()["body_len"],
        big.len(),
        "the primary gets all of it"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            mirror.seen().len() == 2
        })
        .await
    );
    let copy = &mirror.seen()[1];
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.body_len, r#"{"n": 1}"#.len());
    let view = mirrors(&client, gw.admin_addr.unwrap()).await;
    assert_eq!(view["counts"]["dropped_by_reason"]["body"], 1, "{view}");
    assert_eq!(mirror.seen().len(), 2);
}

/// The primary's answers in the comparison test, by path.
fn primary_answer(path: &str) -> (u16, &'static str, String) {
    let body = match path {
        "/api/orders/same" => r#"{"a": 1, "b": [1, 2], "c": {"d": "x"}}"#,
        "/api/orders/changed" => r#"{"order": {"total": 10, "items": [1, 2]}}"#,
        "/api/orders/ignored" => r#"{"id": 1, "meta": {"generated_at": "t1"}, "x": 1}"#,
        _ => r#"{"ok": true}"#,
    };
    (200, "application/json", body.to_string())
}

/// The new service's answers, as the mirror gets them (`/api` stripped).
fn mirror_answer(path: &str) -> (u16, &'static str, String) {
    let body = match path {
        "/orders/same" => r#"{"c": {"d": "x"}, "b": [1.0, 2], "a": 1.0}"#,
        "/orders/changed" => r#"{"order": {"items": [1, 2], "total": 12}}"#,
        "/orders/ignored" => r#"{"x": 1, "meta": {"generated_at": "t2"}, "id": 2}"#,
        _ => return (404, "application/json", r#"{"ok": true}"#.to_string()),
    };
    (200, "application/json", body.to_string())
}

#[tokio::test]
async fn answers_are_compared_structurally_and_mismatches_sampled() {
    let primary = Recorder::start(Duration::ZERO, primary_answer).await;
    let mirror = Recorder::start(Duration::ZERO, mirror_answer).await;
    let block = "      compare:
        status: true
        json_ignore: [meta.generated_at, id]
        headers: [Content-Type]
        sample: 20";
    let (gw, _file) = gateway(&config(primary.addr, &mirror.addr.to_string(), block)).await;
    let client = Client::new();
    for path in ["same", "changed", "ignored", "gone"] {
        let r = client
            .get(gw.http_addr, &format!("/api/orders/{path}?token=secret"))
            .await;
        assert_eq!(r.status, 200, "the client gets the primary's answer");
    }
    let admin = gw.admin_addr.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&mirrors(&client, admin).await, "compared") == 4
        })
        .await,
        "{}",
        mirrors(&client, admin).await
    );
    let view = mirrors(&client, admin).await;
    assert_eq!(count(&view, "matched"), 2, "{view}");
    assert_eq!(count(&view, "mismatched"), 2, "{view}");
    assert_eq!(view["counts"]["mismatched_by_kind"]["body"], 1);
    assert_eq!(view["counts"]["mismatched_by_kind"]["status"], 1);
    let samples = view["mismatches"].as_array().unwrap();
    let body = samples.iter().find(|s| s["kind"] == "body").unwrap();
    assert_eq!(body["path"], "/api/orders/changed");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["json_path"], "order.total");
    assert_eq!(body["primary"], "10");
    assert_eq!(body["mirror"], "12");
    assert_eq!(body["primary_status"], 200);
    let status = samples.iter().find(|s| s["kind"] == "status").unwrap();
    assert_eq!(status["mirror_status"], 404);
    assert!(status["at"].as_str().unwrap().ends_with('Z'));
    assert!(!view.to_string().contains("secret"), "{view}");
    let metrics = gw.metrics();
    for (result, n) in [
        ("compared", 4.0),
        ("matched", 2.0),
        ("mismatched", 2.0),
        ("failed", 0.0),
    ] {
        let series =
            format!(r#"portico_mirror_requests_total{{result="{result}",route="orders"}}"#);
        assert_eq!(metric(&metrics, &series), n, "{series}");
    }
    // A route without a mirror, or none at all: 404.
    assert_eq!(client.get(admin, "/mirrors/nope").await.status, 404);
    let all = client.get(admin, "/mirrors").await.json();
    assert_eq!(all["mirrors"]["orders"]["upstream"], "orders");
    let routes = client.get(admin, "/routes").await.json();
    assert_eq!(routes["routes"][0]["mirror"]["compare"]["sample"], 20);
}

/// A split route, half its traffic to `canary`; rollback on p99 only, judged once the
/// window holds `min_requests` answers.
fn split_config(stable: SocketAddr, canary: SocketAddr, min_requests: u32) -> String {
    format!(
        r#"{HEAD}upstreams:
  monolith: {{ targets: ["{stable}"] }}
  orders: {{ targets: ["{canary}"] }}
routes:
  - name: orders
    match: {{ path_prefix: /api/orders }}
    split:
      stable: {{ upstream: monolith }}
      canary: {{ upstream: orders }}
      percent: 50
      rollback: {{ max_p99: 200ms, window: 60s, min_requests: {min_requests} }}
"#
    )
}

async fn split_view(client: &Client, admin: SocketAddr) -> Value {
    client.get(admin, "/splits").await.json()["splits"]["orders"].clone()
}

/// `per_lane` GETs on each of `lanes` keep-alive connections, stopping early once `stop`
/// is set; returns every status.
async fn fire(
    client: &Client,
    addr: SocketAddr,
    lanes: usize,
    per_lane: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<u16> {
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let (client, stop) = (client.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..per_lane {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let r = client.get(addr, &format!("/api/orders/{lane}-{i}")).await;
                statuses.push(r.status);
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

#[tokio::test]
async fn a_slow_canary_is_rolled_back_on_latency() {
    let stable = Backend::start("monolith").await;
    let canary = Recorder::start(Duration::from_secs(1), echo_path).await;
    let (gw, _file) = gateway(&split_config(stable.addr, canary.addr, 5)).await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (client, done) = (client.clone(), done.clone());
        let addr = gw.http_addr;
        async move { fire(&client, addr, 8, 300, &done).await }
    });
    let rolled_back = eventually(Duration::from_secs(30), || async {
        split_view(&client, admin).await["state"] == "rolled_back"
    })
    .await;
    done.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let view = split_view(&client, admin).await;
    assert!(rolled_back, "{view}");
    assert_eq!(view["rolled_back"]["rule"], "latency", "{view}");
    let reason = view["rolled_back"]["reason"].as_str().unwrap();
    assert!(reason.contains("max_p99 200ms"), "{reason}");
    assert!(view["window"]["p99_ms"].as_f64().unwrap() > 200.0, "{view}");
    assert_eq!(view["percent"], 0.0);
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"portico_split_rollbacks_by_reason_total{reason="latency",route="orders"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&metrics, r#"portico_split_rollbacks_total{route="orders"}"#),
        1.0
    );
    assert!(metrics
        .contains(r#"portico_split_request_duration_seconds_count{route="orders",side="canary"}"#));
}

#[tokio::test]
async fn a_fast_canary_is_not_rolled_back() {
    let stable = Backend::start("monolith").await;
    let canary = Backend::start("orders").await;
    // Judged from 150 answers on: the p99 then leaves out the two slowest, so one stall
    // of a loaded test machine does not decide.
    let (gw, _file) = gateway(&split_config(stable.addr, canary.addr, 150)).await;
    let client = Client::new();
    // About 200 canary answers.
    let statuses = tokio::time::timeout(
        Duration::from_secs(60),
        fire(&client, gw.http_addr, 4, 100, &Arc::default()),
    )
    .await
    .unwrap();
    assert!(statuses.iter().all(|s| *s == 200));
    let view = split_view(&client, gw.admin_addr.unwrap()).await;
    assert_eq!(view["state"], "steady", "{view}");
    assert!(view["window"]["answers"].as_u64().unwrap() >= 150, "{view}");
    assert!(view["window"]["p99_ms"].as_f64().unwrap() < 200.0, "{view}");
    assert_eq!(view["rollback"]["max_p99_ms"], 200.0);
}

#[test]
fn bad_mirror_and_rollback_settings_are_refused_with_their_path() {
    let base = |route: &str| {
        format!(
            r#"
server: {{ listen: 127.0.0.1:0 }}
upstreams:
  monolith: {{ targets: ["127.0.0.1:3000"] }}
  orders: {{ targets: ["127.0.0.1:3001"] }}
routes:
  - name: orders
    match: {{ path_prefix: /api/orders }}
{route}
"#
        )
    };
    let mirrored = |block: &str| base(&format!("    upstream: monolith\n    mirror:\n{block}"));
    assert_refused_at(
        &mirrored("      upstream: ordrs"),
        "routes[0].mirror.upstream",
    );
    assert_refused_at(
        &mirrored("      upstream: orders\n      percent: 150"),
        "routes[0].mirror.percent",
    );
    assert_refused_at(
        &mirrored("      upstream: orders\n      max_in_flight: 0"),
        "routes[0].mirror.max_in_flight",
    );
    assert_refused_at(
        &mirrored("      upstream: orders\n      methods: [GET, \"BAD METHOD\"]"),
        "routes[0].mirror.methods[1]",
    );
    assert_refused_at(
        &mirrored("      upstream: orders\n      compare: { sample: 0 }"),
        "routes[0].mirror.compare.sample",
    );
    assert_refused_at(
        &mirrored("      upstream: orders\n      compare: { json_ignore: [\"a..b\"] }"),
        "routes[0].mirror.compare.json_ignore[0]",
    );
    let split = |rollback: &str| {
        base(&format!(
            "    split:\n      stable: {{ upstream: monolith }}\n      canary: {{ upstream: orders }}\n      rollback: {rollback}"
        ))
    };
    assert_refused_at(
        &split("{ max_p99: fast, window: 60s, min_requests: 50 }"),
        "routes[0].split.rollback.max_p99",
    );
    assert_refused_at(
        &split("{ window: 60s, min_requests: 50 }"),
        "routes[0].split.rollback",
    );
    // Either limit alone, or both, is a valid rule.
    for ok in [
        "{ max_p99: 800ms, window: 60s, min_requests: 50 }",
        "{ max_error_rate: 5%, max_p99: 800ms, window: 60s, min_requests: 50 }",
        "{ max_error_rate: 5%, window: 60s, min_requests: 50 }",
    ] {
        portico::check::parse(&split(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    portico::check::parse(&mirrored(
        "      upstream: orders\n      percent: 20\n      methods: [GET]\n      max_body: 64KiB\n      max_in_flight: 100\n      compare: { status: true, json_ignore: [meta.generated_at, id], headers: [Content-Type], sample: 20 }",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn on_a_sticky_split_the_same_users_are_mirrored_every_time() {
    let monolith = Backend::start("monolith").await;
    let canary = Backend::start("orders").await;
    let mirror = Recorder::start(Duration::ZERO, echo_path).await;
    let yaml = format!(
        r#"{HEAD}upstreams:
  monolith: {{ targets: ["{monolith}"] }}
  orders: {{ targets: ["{canary}"] }}
  shadow: {{ targets: ["{mirror}"] }}
routes:
  - name: orders
    match: {{ path_prefix: /api/orders }}
    split:
      stable: {{ upstream: monolith }}
      canary: {{ upstream: orders }}
      percent: 10
      sticky: header:X-User-Id
    mirror:
      upstream: shadow
      percent: 30
"#,
        monolith = monolith.addr,
        canary = canary.addr,
        mirror = mirror.addr,
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    for round in 0..3 {
        for user in 0..100 {
            let r = support::client::get(
                &client,
                gw.http_addr,
                &format!("/api/orders/{user}/{round}"),
                &[("x-user-id", &format!("user-{user}"))],
            )
            .await;
            assert_eq!(r.status, 200);
        }
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            let view = mirrors(&client, gw.admin_addr.unwrap()).await;
            view["in_flight"] == 0 && mirror.seen().len() as u64 == count(&view, "mirrored")
        })
        .await
    );
    let mut copies = std::collections::BTreeMap::<String, usize>::new();
    for seen in mirror.seen() {
        let user = seen.path.split('/').nth(3).unwrap_or_default().to_string();
        *copies.entry(user).or_default() += 1;
    }
    assert!(
        copies.values().all(|n| *n == 3),
        "a user was mirrored in some rounds only: {copies:?}"
    );
    // About 30 of the 100 users (their bucket is below 30%).
    assert!((15..=45).contains(&copies.len()), "{} users", copies.len());
}

#[tokio::test]
async fn the_copy_carries_the_verified_identity_and_never_a_forged_one() {
    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
    let primary = Backend::start("monolith").await;
    let mirror = Recorder::start(Duration::ZERO, echo_path).await;
    let yaml = format!(
        r#"{HEAD}jwt:
  users:
    algorithms: [HS256]
    secret: {SECRET}
    forward_claims: {{ sub: X-User-Id }}
upstreams:
  monolith: {{ targets: ["{primary}"] }}
  orders: {{ targets: ["{mirror}"] }}
routes:
  - name: orders
    match: {{ path_prefix: /api/orders }}
    jwt: users
    upstream: monolith
    mirror: {{ upstream: orders }}
"#,
        primary = primary.addr,
        mirror = mirror.addr,
    );
    let (gw, _file) = gateway(&yaml).await;
    let claims =
        serde_json::json!({ "sub": "alice", "exp": jsonwebtoken::get_current_timestamp() + 300 });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let client = Client::new();
    let bearer = format!("Bearer {token}");
    let r = support::client::get(
        &client,
        gw.http_addr,
        "/api/orders",
        &[("authorization", &bearer), ("x-user-id", "mallory")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-user-id"), ["alice"]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            !mirror.seen().is_empty()
        })
        .await
    );
    assert_eq!(mirror.seen()[0].user.as_deref(), Some("alice"));
}
