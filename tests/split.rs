//! End-to-end tests of migration routing: a real gateway splitting a route between a
//! "monolith" and a new "orders" service (real backends on 127.0.0.1:0), the ramp, the
//! automatic rollback, reloads and the `/splits` admin API.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use support::flaky::Flaky;
use support::{eventually, gateway, Backend, Client, Reply};

/// A gateway config with one split route `orders` (/api/orders): stable = `monolith`
/// unchanged, canary = `orders` with `/api` stripped; `split` is the rest of the split
/// block (indented by the caller with six spaces), `admin` extra admin keys.
fn config(monolith: &str, orders: &str, split: &str, admin: &str) -> String {
    format!(
        r#"server:
  listen: 127.0.0.1:0
  access_log: false
admin:
  listen: 127.0.0.1:0
{admin}
upstreams:
  monolith: {{ targets: ["{monolith}"] }}
  orders: {{ targets: ["{orders}"] }}
routes:
  - name: orders
    match: {{ path_prefix: /api/orders }}
    split:
      stable: {{ upstream: monolith }}
      canary: {{ upstream: orders, rewrite: {{ strip_prefix: /api }} }}
{split}
  - name: users
    match: {{ path_prefix: /api/users }}
    upstream: monolith
"#
    )
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::default()).unwrap()
}

/// `count` keyless GETs over a few keep-alive connections; returns every status.
async fn fire(client: &Client, addr: SocketAddr, count: usize) -> Vec<u16> {
    const LANES: usize = 8;
    let mut lanes = Vec::new();
    for lane in 0..LANES {
        let client = client.clone();
        let n = count / LANES + usize::from(lane < count % LANES);
        lanes.push(tokio::spawn(async move {
            let mut statuses = Vec::with_capacity(n);
            for i in 0..n {
                let r = client
                    .send(get(addr, &format!("/api/orders/{i}"), &[]))
                    .await;
                statuses.push(r.status);
            }
            statuses
        }));
    }
    let mut all = Vec::with_capacity(count);
    for lane in lanes {
        all.extend(lane.await.unwrap());
    }
    all
}

/// `GET /splits` (with the token the tests that set one use; ignored where none is set).
async fn splits(client: &Client, admin: SocketAddr) -> Value {
    let request = Request::get(format!("http://{admin}/splits"))
        .header("authorization", "Bearer s3cret")
        .body(Full::default())
        .unwrap();
    client.send(request).await.json()["splits"]["orders"].clone()
}

async fn put(
    client: &Client,
    admin: SocketAddr,
    route: &str,
    body: &str,
    token: Option<&str>,
) -> Reply {
    let mut req = Request::put(format!("http://{admin}/splits/{route}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    client
        .send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

fn backend(reply: &Reply) -> String {
    reply.json()["backend"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn keyless_requests_split_by_percentage_with_each_sides_rewrite() {
    let monolith = Backend::start("monolith").await;
    let orders = Backend::start("orders").await;
    let (gw, _file) = gateway(&config(
        &monolith.address(),
        &orders.address(),
        "      percent: 10",
        "",
    ))
    .await;
    let client = Client::new();

    let statuses = fire(&client, gw.http_addr, 5000).await;
    assert!(statuses.iter().all(|s| *s == 200));
    let canary = orders.hits();
    assert_eq!(canary + monolith.hits(), 5000);
    assert!(
        (400..=600).contains(&canary),
        "canary got {canary} of 5000 (want 10% ± 2%)"
    );

    // Each side gets its own rewrite: the monolith keeps /api, the new service does not.
    let mut seen = HashMap::new();
    for _ in 0..200 {
        let r = client.get(gw.http_addr, "/api/orders/7?x=1").await;
        seen.insert(backend(&r), r.json()["path"].as_str().unwrap().to_string());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen["monolith"], "/api/orders/7");
    assert_eq!(seen["orders"], "/orders/7");
    // Routes without a split are untouched.
    assert_eq!(
        backend(&client.get(gw.http_addr, "/api/users/1").await),
        "monolith"
    );

    let admin = gw.admin_addr.unwrap();
    let view = splits(&client, admin).await;
    assert_eq!(view["percent"], 10.0);
    assert_eq!(view["state"], "steady");
    let total =
        view["canary"]["requests"].as_u64().unwrap() + view["stable"]["requests"].as_u64().unwrap();
    assert_eq!(total as usize, monolith.hits() + orders.hits() - 1);
    let metrics = gw.metrics();
    let canary_metric = metric(
        &metrics,
        r#"portico_split_requests_total{route="orders",side="canary"}"#,
    )
    .unwrap();
    assert_eq!(
        canary_metric as u64,
        view["canary"]["requests"].as_u64().unwrap()
    );
    assert_eq!(
        metric(&metrics, r#"portico_split_percent{route="orders"}"#),
        Some(10.0)
    );
}

#[tokio::test]
async fn sticky_users_never_see_both_sides_and_raising_only_moves_users_to_canary() {
    let monolith = Backend::start("monolith").await;
    let orders = Backend::start("orders").await;
    let split = "      percent: 10\n      sticky: header:X-User-Id";
    let (gw, _file) = gateway(&config(&monolith.address(), &orders.address(), split, "")).await;
    let client = Client::new();
    let addr = gw.http_addr;

    // user -> every backend that answered them, over `rounds` requests each.
    async fn sides(
        client: &Client,
        addr: SocketAddr,
        rounds: usize,
    ) -> HashMap<usize, Vec<String>> {
        let mut lanes = Vec::new();
        for lane in 0..8 {
            let client = client.clone();
            lanes.push(tokio::spawn(async move {
                let mut seen: HashMap<usize, Vec<String>> = HashMap::new();
                for user in (lane..1000).step_by(8) {
                    for _ in 0..rounds {
                        let id = format!("user-{user}");
                        let r = client
                            .send(get(addr, "/api/orders", &[("x-user-id", &id)]))
                            .await;
                        seen.entry(user).or_default().push(backend(&r));
                    }
                }
                seen
            }));
        }
        let mut all = HashMap::new();
        for lane in lanes {
            all.extend(lane.await.unwrap());
        }
        all
    }
    let canary_users = |seen: &HashMap<usize, Vec<String>>| -> Vec<usize> {
        for (user, backends) in seen {
            assert!(
                backends.iter().all(|b| b == &backends[0]),
                "user-{user} saw both sides: {backends:?}"
            );
        }
        let mut users: Vec<usize> = seen
            .iter()
            .filter(|(_, b)| b[0] == "orders")
            .map(|(u, _)| *u)
            .collect();
        users.sort_unstable();
        users
    };

    let before = canary_users(&sides(&client, addr, 3).await);
    assert!(
        (60..=140).contains(&before.len()),
        "{} of 1000 users on canary at 10%",
        before.len()
    );

    let admin = gw.admin_addr.unwrap();
    assert_eq!(
        put(&client, admin, "orders", r#"{"percent": 50}"#, None)
            .await
            .status,
        200
    );
    let after = canary_users(&sides(&client, addr, 2).await);
    assert!(
        (420..=580).contains(&after.len()),
        "{} of 1000 users on canary at 50%",
        after.len()
    );
    let moved_back: Vec<_> = before.iter().filter(|u| !after.contains(u)).collect();
    assert!(
        moved_back.is_empty(),
        "users moved from canary back to stable: {moved_back:?}"
    );

    // Requests without the key fall back to a random draw: both sides get some.
    let mut keyless = HashMap::new();
    for _ in 0..200 {
        *keyless
            .entry(backend(&client.get(addr, "/api/orders").await))
            .or_insert(0) += 1;
    }
    assert_eq!(keyless.len(), 2, "{keyless:?}");
}

#[tokio::test]
async fn force_rules_route_testers_regardless_of_the_percentage() {
    let monolith = Backend::start("monolith").await;
    let orders = Backend::start("orders").await;
    let split = r#"      percent: 0
      side_header: true
      force_canary: { header: { x-beta: "1" }, cookie: { canary: "yes" } }
      force_stable: { header: { x-stable: "1" } }"#;
    let (gw, file) = gateway(&config(&monolith.address(), &orders.address(), split, "")).await;
    let client = Client::new();
    let addr = gw.http_addr;
    let side = |r: &Reply| {
        (
            backend(r),
            r.header("x-portico-split").unwrap_or("").to_string(),
        )
    };

    for _ in 0..20 {
        let r = client.send(get(addr, "/api/orders", &[])).await;
        assert_eq!(side(&r), ("monolith".into(), "stable".into()));
    }
    let r = client
        .send(get(addr, "/api/orders/3", &[("x-beta", "1")]))
        .await;
    assert_eq!(side(&r), ("orders".into(), "canary".into()));
    assert_eq!(r.json()["path"], "/orders/3");
    let r = client
        .send(get(addr, "/api/orders", &[("cookie", "a=b; canary=yes")]))
        .await;
    assert_eq!(side(&r), ("orders".into(), "canary".into()));
    let r = client
        .send(get(addr, "/api/orders", &[("x-beta", "2")]))
        .await;
    assert_eq!(side(&r).0, "monolith");
    // force_stable wins over force_canary.
    let r = client
        .send(get(
            addr,
            "/api/orders",
            &[("x-beta", "1"), ("x-stable", "1")],
        ))
        .await;
    assert_eq!(side(&r).0, "monolith");
    // No side header on routes without a split.
    assert_eq!(
        client
            .get(addr, "/api/users")
            .await
            .header("x-portico-split"),
        None
    );

    // At 100% force_stable still keeps testers on the monolith.
    let at_100 = config(
        &monolith.address(),
        &orders.address(),
        &split.replace("percent: 0", "percent: 100"),
        "",
    );
    std::fs::write(file.path(), at_100).unwrap();
    gw.reload().unwrap();
    let admin = gw.admin_addr.unwrap();
    // The file's percentage was only the starting point: the reload kept 0.
    assert_eq!(splits(&client, admin).await["percent"], 0.0);
    assert_eq!(
        put(&client, admin, "orders", r#"{"percent": 100}"#, None)
            .await
            .status,
        200
    );
    assert_eq!(side(&client.get(addr, "/api/orders").await).0, "orders");
    let r = client
        .send(get(addr, "/api/orders", &[("x-stable", "1")]))
        .await;
    assert_eq!(side(&r), ("monolith".into(), "stable".into()));
}

#[tokio::test]
async fn ramp_climbs_through_its_steps_and_holds_while_paused() {
    let monolith = Backend::start("monolith").await;
    let orders = Backend::start("orders").await;
    let split = "      ramp: { steps: [10, 40, 70, 100], every: 200ms }";
    let (gw, _file) = gateway(&config(&monolith.address(), &orders.address(), split, "")).await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();

    let reached_top = eventually(Duration::from_secs(15), || async {
        splits(&client, admin).await["percent"] == 100.0
    })
    .await;
    assert!(
        reached_top,
        "ramp did not reach 100: {}",
        splits(&client, admin).await
    );
    let view = splits(&client, admin).await;
    assert_eq!(view["state"], "steady");
    let steps: Vec<f64> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["cause"] == "ramp")
        .map(|c| c["percent"].as_f64().unwrap())
        .collect();
    assert_eq!(steps, vec![40.0, 70.0, 100.0]);
    assert_eq!(
        metric(&gw.metrics(), r#"portico_split_percent{route="orders"}"#),
        Some(100.0)
    );
    // At 100% everything goes to the new service.
    assert_eq!(
        backend(&client.get(gw.http_addr, "/api/orders").await),
        "orders"
    );

    // Reset to the start and pause in one request: the ramp holds.
    let r = put(
        &client,
        admin,
        "orders",
        r#"{"reset": true, "paused": true}"#,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["percent"], 10.0);
    assert_eq!(r.json()["state"], "paused");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        splits(&client, admin).await["percent"],
        10.0,
        "ramp moved while paused"
    );

    assert_eq!(
        put(&client, admin, "orders", r#"{"paused": false}"#, None)
            .await
            .status,
        200
    );
    let resumed = eventually(Duration::from_secs(15), || async {
        splits(&client, admin).await["percent"] == 100.0
    })
    .await;
    assert!(
        resumed,
        "ramp did not resume: {}",
        splits(&client, admin).await
    );
}

#[tokio::test]
async fn failing_canary_is_rolled_back_gets_no_more_traffic_and_reloads_keep_it_out() {
    let monolith = Backend::start("monolith").await;
    let orders = Flaky::start("orders", 3).await; // 30% of its answers are 500
    let split = "      percent: 50
      ramp: { steps: [50, 75, 100], every: 300ms }
      rollback: { max_error_rate: 10%, window: 60s, min_requests: 20 }";
    let yaml = config(&monolith.address(), &orders.address(), split, "");
    let (gw, file) = gateway(&yaml).await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();

    // One request at a time: the rollback trips on the 20th canary answer exactly.
    let mut sent = 0;
    while sent < 2000 && orders.hits() < 20 {
        client.get(gw.http_addr, "/api/orders").await;
        sent += 1;
    }
    let view = splits(&client, admin).await;
    assert_eq!(view["state"], "rolled_back", "{view}");
    assert_eq!(view["percent"], 0.0);
    assert_eq!(view["ramp"]["next_step"], Value::Null);
    let reason = view["rolled_back"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("30.0%") && reason.contains("6 of 20"),
        "{reason}"
    );
    assert!(view["rolled_back"]["at"].as_str().unwrap().ends_with('Z'));
    let metrics = gw.metrics();
    assert_eq!(
        metric(&metrics, r#"portico_split_percent{route="orders"}"#),
        Some(0.0)
    );
    assert_eq!(
        metric(&metrics, r#"portico_split_rollbacks_total{route="orders"}"#),
        Some(1.0)
    );

    // No further request reaches the canary, and the ramp does not start it again.
    let canary_hits = orders.hits();
    assert_eq!(canary_hits, 20);
    let statuses = fire(&client, gw.http_addr, 400).await;
    assert!(statuses.iter().all(|s| *s == 200));
    tokio::time::sleep(Duration::from_millis(900)).await;
    fire(&client, gw.http_addr, 100).await;
    assert_eq!(orders.hits(), canary_hits);
    assert_eq!(splits(&client, admin).await["percent"], 0.0);

    // A reload (even of a file that now says 60%) never undoes a rollback.
    std::fs::write(file.path(), yaml.replace("percent: 50", "percent: 60")).unwrap();
    gw.reload().unwrap();
    let r = client
        .send(
            Request::post(format!("http://{admin}/reload"))
                .header("content-type", "application/json")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    let view = splits(&client, admin).await;
    assert_eq!(view["state"], "rolled_back");
    assert_eq!(view["percent"], 0.0);
    assert_eq!(view["start_percent"], 60.0);
    fire(&client, gw.http_addr, 100).await;
    assert_eq!(orders.hits(), canary_hits);

    // Only an operator brings the canary back.
    let r = put(&client, admin, "orders", r#"{"percent": 100}"#, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "steady");
    assert_eq!(r.json()["rolled_back"], Value::Null);
    assert_eq!(r.json()["window"]["requests"], 0);
    client.get(gw.http_addr, "/api/orders").await;
    assert_eq!(orders.hits(), canary_hits + 1);
}

#[tokio::test]
async fn admin_put_changes_the_split_at_once_and_survives_reloads() {
    let monolith = Backend::start("monolith").await;
    let orders = Backend::start("orders").await;
    let yaml = config(
        &monolith.address(),
        &orders.address(),
        "      percent: 10",
        "  token: s3cret",
    );
    let (gw, file) = gateway(&yaml).await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();

    assert_eq!(
        put(&client, admin, "orders", r#"{"percent": 100}"#, None)
            .await
            .status,
        401
    );
    assert_eq!(
        put(
            &client,
            admin,
            "orders",
            r#"{"percent": 100}"#,
            Some("nope")
        )
        .await
        .status,
        401
    );
    let r = put(
        &client,
        admin,
        "orders",
        r#"{"percent": 100}"#,
        Some("s3cret"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["percent"], 100.0);
    for _ in 0..20 {
        assert_eq!(
            backend(&client.get(gw.http_addr, "/api/orders").await),
            "orders"
        );
    }
    let r = put(
        &client,
        admin,
        "orders",
        r#"{"percent": 35}"#,
        Some("s3cret"),
    )
    .await;
    assert_eq!(r.json()["percent"], 35.0);

    // Two reloads, the second from a changed file: the admin's 35% stays.
    gw.reload().unwrap();
    assert_eq!(splits(&client, admin).await["percent"], 35.0);
    std::fs::write(file.path(), yaml.replace("percent: 10", "percent: 5")).unwrap();
    gw.reload().unwrap();
    let view = splits(&client, admin).await;
    assert_eq!(view["percent"], 35.0);
    assert_eq!(view["start_percent"], 5.0);
    assert_eq!(
        metric(&gw.metrics(), r#"portico_split_percent{route="orders"}"#),
        Some(35.0)
    );
    let causes: Vec<&str> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["cause"].as_str())
        .collect();
    assert_eq!(causes, vec!["config", "admin", "admin"]);

    // `reset` goes back to the file's (current) starting point.
    let r = put(
        &client,
        admin,
        "orders",
        r#"{"reset": true}"#,
        Some("s3cret"),
    )
    .await;
    assert_eq!(r.json()["percent"], 5.0);

    // Mistakes get a clear error.
    let bad = |body: &'static str, route: &'static str| {
        let client = client.clone();
        async move { put(&client, admin, route, body, Some("s3cret")).await }
    };
    let r = bad("{nope", "orders").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("invalid JSON"));
    assert_eq!(bad(r#"{"percent": 101}"#, "orders").await.status, 400);
    assert_eq!(bad(r#"{"percnt": 5}"#, "orders").await.status, 400);
    assert_eq!(bad("{}", "orders").await.status, 400);
    let r = bad(r#"{"percent": 5}"#, "nope").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("nope"));
    assert_eq!(bad(r#"{"percent": 5}"#, "users").await.status, 404);
    assert_eq!(splits(&client, admin).await["percent"], 5.0);
}

#[test]
fn split_config_problems_are_reported_with_their_path() {
    let yaml = r#"
server: { listen: 127.0.0.1:0 }
upstreams:
  monolith: { targets: ["127.0.0.1:3000"] }
routes:
  - name: orders
    match: { path_prefix: /api/orders }
    rewrite: { strip_prefix: /api }
    split:
      stable: { upstream: monolith }
      canary: { upstream: ordrs }
      sticky: session
      force_canary: { header: { "bad header": "1" } }
      ramp: { steps: [50, 25], every: 10m }
      rollback: { max_error_rate: 0%, window: 60s, min_requests: 0 }
  - name: users
    split:
      stable: { upstream: monolith }
      canary: { upstream: monolith }
      sticky: claim:sub
"#;
    let problems: Vec<String> = match portico::check::parse(yaml) {
        Ok(_) => panic!("config accepted"),
        Err(e) => e.issues.iter().map(|i| i.to_string()).collect(),
    };
    let text = problems.join("\n");
    for expected in [
        "routes[0].split.canary.upstream",
        "routes[0].split.sticky",
        "routes[0].split.force_canary.header.bad header",
        "routes[0].split.ramp.steps",
        "routes[0].split.rollback.max_error_rate",
        "routes[0].split.rollback.min_requests",
        "routes[0].rewrite",
        "routes[1].split.sticky: a claim: key needs a jwt verifier",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    assert!(!text.contains("not supported yet"), "{text}");
}
