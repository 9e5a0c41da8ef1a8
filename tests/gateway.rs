//! End-to-end tests of the core gateway: routing, rewriting, header hygiene, errors and
//! limits, protocols. Every test starts a real gateway and real backends on 127.0.0.1:0.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use support::{client, eventually, gateway, Backend, Client};

fn yaml_with(extra_server: &str, upstreams: &str, routes: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\n{extra_server}\nupstreams:\n{upstreams}\nroutes:\n{routes}"
    )
}

#[tokio::test]
async fn routes_match_in_file_order_by_prefix_pattern_host_method_and_header() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let yaml = yaml_with(
        "",
        &format!(
            "  a: {{ targets: [\"{}\"] }}\n  b: {{ targets: [\"{}\"] }}\n  c: {{ targets: [\"{}\"] }}\n",
            a.address(),
            b.address(),
            c.address()
        ),
        r#"  - name: beta
    match: { path_prefix: /api/users, headers: { x-beta: "1" } }
    upstream: c
  - name: legacy
    match: { host: "*.legacy.local", path: "/api/legacy/{id}" }
    upstream: c
  - name: users-write
    match: { path_prefix: /api/users, methods: [POST] }
    upstream: b
  - name: users
    match: { path_prefix: /api/users }
    upstream: a
  - name: exact-host
    match: { host: shop.local }
    upstream: b
"#,
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    let addr = gw.http_addr;
    let send = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        client.send(req.body(Full::default()).unwrap())
    };
    let backend = |r: &support::Reply| r.json()["backend"].as_str().unwrap_or("").to_string();

    assert_eq!(backend(&send("GET", "/api/users", &[]).await), "a");
    assert_eq!(backend(&send("GET", "/api/users/7", &[]).await), "a");
    assert_eq!(send("GET", "/api/usersX", &[]).await.status, 404);
    assert_eq!(backend(&send("POST", "/api/users", &[]).await), "b");
    assert_eq!(
        backend(&send("GET", "/api/users/7", &[("x-beta", "1")]).await),
        "c"
    );
    assert_eq!(
        backend(&send("GET", "/api/users/7", &[("x-beta", "2")]).await),
        "a"
    );
    assert_eq!(
        backend(&send("GET", "/api/legacy/42", &[("host", "old.legacy.local")]).await),
        "c"
    );
    assert_eq!(
        send("GET", "/api/legacy/42/x", &[("host", "old.legacy.local")])
            .await
            .status,
        404
    );
    assert_eq!(
        backend(&send("GET", "/anything", &[("host", "SHOP.local:8080")]).await),
        "b"
    );

    let miss = send("GET", "/nowhere", &[]).await;
    assert_eq!(miss.status, 404);
    let body = miss.json();
    assert_eq!(body["status"], 404);
    assert_eq!(body["request_id"].as_str(), miss.header("x-request-id"));
    assert!(body["error"].as_str().unwrap().contains("no route"));
    gw.shutdown().await;
}

#[tokio::test]
async fn paths_are_normalised_before_matching_and_forwarded_as_matched() {
    let public = Backend::start("public").await;
    let admin = Backend::start("admin").await;
    let yaml = yaml_with(
        "",
        &format!(
            "  public: {{ targets: [\"{}\"] }}\n  admin: {{ targets: [\"{}\"] }}\n",
            public.address(),
            admin.address()
        ),
        "  - name: public\n    match: { path_prefix: /api/public }\n    upstream: public\n  - name: admin\n    match: { path_prefix: /api/admin }\n    upstream: admin\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    let r = client.get(gw.http_addr, "/api/public/../admin/users").await;
    assert_eq!(r.json()["backend"], "admin");
    assert_eq!(r.json()["path"], "/api/admin/users");
    let r = client
        .get(gw.http_addr, "/api//public/./%7Eitems?q=1")
        .await;
    assert_eq!(r.json()["backend"], "public");
    assert_eq!(r.json()["path"], "/api/public/~items");
    assert_eq!(r.json()["query"], "q=1");
    let r = client.get(gw.http_addr, "/api/public/a%2Fb").await;
    assert_eq!(r.json()["path"], "/api/public/a%2Fb");
    let r = client.get(gw.http_addr, "/api/../../etc/passwd").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["status"], 400);
    gw.shutdown().await;
}

#[tokio::test]
async fn rewrites_strip_replace_and_regex() {
    let be = Backend::start("be").await;
    let yaml = yaml_with(
        "",
        &format!("  be: {{ targets: [\"{}\"] }}\n", be.address()),
        r#"  - name: strip
    match: { path_prefix: /api/users }
    rewrite: { strip_prefix: /api }
    upstream: be
  - name: replace
    match: { path_prefix: /api/products }
    rewrite: { replace_prefix: { from: /api/products, to: /catalog/items } }
    upstream: be
  - name: regex
    match: { path: "/api/legacy/{id}" }
    rewrite: { regex: { pattern: "^/api/legacy/(.*)$", replacement: "/v1/$1" } }
    upstream: be
"#,
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    assert_eq!(
        client.get(gw.http_addr, "/api/users/7").await.json()["path"],
        "/users/7"
    );
    assert_eq!(
        client.get(gw.http_addr, "/api/users").await.json()["path"],
        "/users"
    );
    assert_eq!(
        client.get(gw.http_addr, "/api/products/3?x=1").await.json()["path"],
        "/catalog/items/3"
    );
    assert_eq!(
        client.get(gw.http_addr, "/api/legacy/42").await.json()["path"],
        "/v1/42"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_and_forwarded_headers_cannot_be_forged() {
    let be = Backend::start("be").await;
    let yaml = yaml_with(
        "",
        &format!("  be: {{ targets: [\"{}\"] }}\n", be.address()),
        "  - name: all\n    upstream: be\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    let req = Request::get(format!("http://{}/x", gw.http_addr))
        .header("connection", "x-private-hop")
        .header("x-private-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic abc")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "trace-me-42")
        .header("host", "shop.example")
        .body(Full::default())
        .unwrap();
    let r = client.send(req).await;
    assert_eq!(r.status, 200);
    let headers = r.json()["headers"].clone();
    for gone in ["x-private-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(headers.get(gone).is_none(), "{gone} reached the backend");
    }
    assert_eq!(r.echoed("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(r.echoed("x-forwarded-proto"), vec!["http"]);
    assert_eq!(r.echoed("x-forwarded-host"), vec!["shop.example"]);
    assert_eq!(r.echoed("host"), vec!["shop.example"]);
    assert_eq!(r.echoed("x-request-id"), vec!["trace-me-42"]);
    assert_eq!(r.header("x-request-id"), Some("trace-me-42"));
    // The backend's own hop-by-hop header does not reach the client.
    assert!(r.header("x-backend-private").is_none());
    assert_eq!(r.header("x-backend"), Some("be"));

    // Without a client id, one is generated, sent upstream and returned.
    let r = client.get(gw.http_addr, "/y").await;
    let id = r.header("x-request-id").expect("request id").to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(r.echoed("x-request-id"), vec![id]);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_trusted_proxy_may_extend_x_forwarded_for() {
    let be = Backend::start("be").await;
    let yaml = yaml_with(
        "  trusted_proxies: [127.0.0.1/32]",
        &format!("  be: {{ targets: [\"{}\"] }}\n", be.address()),
        "  - name: all\n    upstream: be\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let r = Client::new()
        .send(
            Request::get(format!("http://{}/x", gw.http_addr))
                .header("x-forwarded-for", "203.0.113.9")
                .header("x-forwarded-proto", "https")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.echoed("x-forwarded-for"), vec!["203.0.113.9, 127.0.0.1"]);
    assert_eq!(r.echoed("x-forwarded-proto"), vec!["https"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_failures_map_to_502_503_504_in_the_json_shape() {
    let slow = Backend::start("slow").await;
    // A port bound but never listened on: connections are refused, and holding the
    // socket keeps another test from taking the port.
    let held = tokio::net::TcpSocket::new_v4().unwrap();
    held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = held.local_addr().unwrap();
    // A server that answers garbage.
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = garbage.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"this is not HTTP\r\n\r\n").await;
        }
    });
    let yaml = yaml_with(
        "",
        &format!(
            "  slow: {{ targets: [\"{}\"], timeouts: {{ request: 300ms }} }}\n  down: {{ targets: [\"{closed}\"] }}\n  garbage: {{ targets: [\"{garbage_addr}\"] }}\n",
            slow.address()
        ),
        "  - name: slow\n    match: { path_prefix: /slow }\n    upstream: slow\n  - name: down\n    match: { path_prefix: /down }\n    upstream: down\n  - name: garbage\n    match: { path_prefix: /garbage }\n    upstream: garbage\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    for (path, status) in [("/slow/3000", 504), ("/down", 503), ("/garbage", 502)] {
        let r = client.get(gw.http_addr, path).await;
        assert_eq!(r.status, status, "{path}");
        let body = r.json();
        assert_eq!(body["status"], status);
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert_eq!(body["request_id"].as_str(), r.header("x-request-id"));
    }
    let metrics = gw.metrics();
    assert!(metrics.contains(r#"portico_requests_total{route="slow",status="504"} 1"#));
    // Each failure is counted under its own outcome, once, on its own endpoint.
    for (upstream, endpoint, outcome) in [
        ("slow", slow.address(), "timeout"),
        ("down", closed.to_string(), "connect_failure"),
        ("garbage", garbage_addr.to_string(), "invalid_response"),
    ] {
        let series = format!(
            "portico_upstream_requests_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\",upstream=\"{upstream}\"}}"
        );
        assert_eq!(
            support::metric(&metrics, &series),
            1.0,
            "{series} in\n{metrics}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn body_and_header_limits() {
    let be = Backend::start("be").await;
    let yaml = yaml_with(
        "  limits: { max_request_body: 1KiB, max_request_headers: 8KiB }",
        &format!("  be: {{ targets: [\"{}\"] }}\n", be.address()),
        "  - name: all\n    upstream: be\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    let post = |len: usize| {
        Request::post(format!("http://{}/upload", gw.http_addr))
            .body(Full::new(Bytes::from(vec![b'a'; len])))
            .unwrap()
    };
    assert_eq!(client.send(post(1000)).await.json()["body_len"], 1000);
    let r = client.send(post(5000)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["status"], 413);

    // A chunked body has no length up front: it is cut off once it grows past the limit.
    let mut chunked =
        b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'b'; 0x200]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = client::raw(gw.http_addr, &chunked, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let big_header = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "h".repeat(12 * 1024)
    );
    let answer = client::raw(gw.http_addr, big_header.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_header_client_is_cut_off_while_others_are_served() {
    let be = Backend::start("be").await;
    let yaml = yaml_with(
        "  limits: { header_read_timeout: 500ms }",
        &format!("  be: {{ targets: [\"{}\"] }}\n", be.address()),
        "  - name: all\n    upstream: be\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let addr = gw.http_addr;
    let slow = tokio::spawn(async move {
        let started = std::time::Instant::now();
        // Headers never finish: no blank line.
        let answer = client::raw(
            addr,
            b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n",
            Duration::from_secs(20),
        )
        .await;
        (started.elapsed(), answer)
    });
    let client = Client::new();
    for _ in 0..5 {
        assert_eq!(client.get(addr, "/ok").await.status, 200);
    }
    let (elapsed, answer) = slow.await.unwrap();
    // Not before the timeout, and not long after it (a slow CI machine gets slack).
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(5),
        "slow client cut off after {elapsed:?} (header_read_timeout 500ms)"
    );
    assert!(!answer.contains("200 OK"), "{answer}");
    gw.shutdown().await;
}

#[tokio::test]
async fn large_route_tables_keep_file_order() {
    // 40 routes: past the size where the gateway searches an index instead of scanning.
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut routes = String::from("  - { name: api, match: { path_prefix: /api }, upstream: a }\n");
    for i in 0..37 {
        routes.push_str(&format!(
            "  - {{ name: svc-{i}, match: {{ path_prefix: /svc-{i} }}, upstream: a }}\n"
        ));
    }
    routes.push_str("  - { name: shadowed, match: { path: /api/special }, upstream: b }\n");
    routes.push_str("  - { name: item, match: { path: \"/items/{id}\" }, upstream: b }\n");
    routes.push_str("  - { name: by-host, match: { host: b.local }, upstream: b }\n");
    let yaml = yaml_with(
        "",
        &format!(
            "  a: {{ targets: [\"{}\"] }}\n  b: {{ targets: [\"{}\"] }}\n",
            a.address(),
            b.address()
        ),
        &routes,
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    let backend = |r: &support::Reply| r.json()["backend"].as_str().unwrap_or("").to_string();
    let r = client.get(gw.http_addr, "/api/special").await;
    assert_eq!(backend(&r), "a", "the earlier /api prefix wins");
    assert_eq!(backend(&client.get(gw.http_addr, "/svc-36/x").await), "a");
    assert_eq!(backend(&client.get(gw.http_addr, "/items/7").await), "b");
    assert_eq!(client.get(gw.http_addr, "/items/7/x").await.status, 404);
    let by_host = client
        .send(
            Request::get(format!("http://{}/anything", gw.http_addr))
                .header("host", "b.local")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(backend(&by_host), "b");
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let be = Backend::start("be").await;
    let yaml = yaml_with(
        "  limits: { idle_timeout: 300ms }",
        &format!("  be: {{ targets: [\"{}\"] }}\n", be.address()),
        "  - name: all\n    upstream: be\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let started = std::time::Instant::now();
    let answer = client::raw(
        gw.http_addr,
        b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(20),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Closed between 1 and 1.25 idle timeouts after the last byte (plus scheduling slack).
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(280) && elapsed < Duration::from_secs(3),
        "idle connection closed after {elapsed:?} (idle_timeout 300ms)"
    );

    // A connection whose request is in flight longer than the idle timeout survives it.
    let started = std::time::Instant::now();
    let answer = client::raw(
        gw.http_addr,
        b"GET /slow/900 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "cut off mid-request: {answer:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    gw.shutdown().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let be = Backend::start("be").await;
    let yaml = yaml_with(
        "",
        &format!("  be: {{ targets: [\"{}\"] }}\n", be.address()),
        "  - name: all\n    upstream: be\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let r = Client::new()
        .send(
            Request::get(format!("http://{}/h2", gw.http_addr))
                .version(Version::HTTP_2)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.json()["path"], "/h2");
    assert_eq!(r.json()["version"], "HTTP/1.1");
    gw.shutdown().await;
}

#[tokio::test]
async fn websocket_passes_through() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let be = Backend::start("ws").await;
    let yaml = yaml_with(
        "",
        &format!("  be: {{ targets: [\"{}\"] }}\n", be.address()),
        "  - name: ws\n    match: { path_prefix: /chat }\n    rewrite: { replace_prefix: { from: /chat, to: /ws } }\n    upstream: be\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat", gw.http_addr))
            .await
            .expect("websocket handshake through the gateway");
    assert_eq!(response.status(), 101);
    for text in ["hello", "portico"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("no error");
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.ok();
    drop(ws);
    gw.shutdown().await;
}

#[tokio::test]
async fn weighted_round_robin_spreads_exactly() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let targets: Vec<String> = backends
        .iter()
        .map(|b| format!("\"{}\"", b.address()))
        .collect();
    let weighted = format!(
        "[{{ address: \"{}\", weight: 3 }}, {{ address: \"{}\", weight: 1 }}]",
        backends[0].address(),
        backends[1].address()
    );
    let yaml = yaml_with(
        "",
        &format!(
            "  even: {{ targets: [{}] }}\n  weighted: {{ balance: round_robin, targets: {weighted} }}\n",
            targets.join(", ")
        ),
        "  - name: even\n    match: { path_prefix: /even }\n    upstream: even\n  - name: weighted\n    match: { path_prefix: /weighted }\n    upstream: weighted\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    for _ in 0..300 {
        assert_eq!(client.get(gw.http_addr, "/even").await.status, 200);
    }
    for b in &backends {
        let hits = b.hits();
        assert!((99..=101).contains(&hits), "{} got {hits} of 300", b.name);
    }
    let before: Vec<usize> = backends.iter().map(|b| b.hits()).collect();
    for _ in 0..400 {
        client.get(gw.http_addr, "/weighted").await;
    }
    assert_eq!(backends[0].hits() - before[0], 300);
    assert_eq!(backends[1].hits() - before[1], 100);
    assert_eq!(backends[2].hits(), before[2]);
    gw.shutdown().await;
}

#[tokio::test]
async fn random_and_least_request_balancers_use_every_endpoint() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let yaml = yaml_with(
        "",
        &format!(
            "  random: {{ balance: random, targets: [\"{0}\", \"{1}\"] }}\n  least: {{ balance: least_request, targets: [\"{0}\", \"{1}\"] }}\n",
            a.address(),
            b.address()
        ),
        "  - name: random\n    match: { path_prefix: /random }\n    upstream: random\n  - name: least\n    match: { path_prefix: /least }\n    upstream: least\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    for path in ["/random", "/least"] {
        let (a0, b0) = (a.hits(), b.hits());
        for _ in 0..200 {
            client.get(gw.http_addr, path).await;
        }
        let (da, db) = (a.hits() - a0, b.hits() - b0);
        assert_eq!(da + db, 200);
        assert!(da > 20 && db > 20, "{path}: a={da} b={db}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints_and_token() {
    let be = Backend::start("be").await;
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\nadmin:\n  listen: 127.0.0.1:0\n  token: s3cret\nupstreams:\n  be: {{ targets: [\"{}\"] }}\nroutes:\n  - name: all\n    upstream: be\n",
        be.address()
    );
    let (gw, _file) = gateway(&yaml).await;
    let admin = gw.admin_addr.expect("admin listener");
    let client = Client::new();
    client.get(gw.http_addr, "/warm").await;
    assert_eq!(client.get(admin, "/healthz").await.status, 200);
    assert_eq!(client.get(admin, "/readyz").await.status, 200);
    let metrics = String::from_utf8(client.get(admin, "/metrics").await.body.to_vec()).unwrap();
    assert!(metrics.contains(r#"portico_requests_total{route="all",status="200"} 1"#));
    assert!(metrics.contains("portico_request_duration_seconds_bucket{route=\"all\""));
    assert!(metrics.contains("portico_upstream_requests_total{endpoint="));
    assert!(metrics.contains(r#"portico_upstream_endpoints{state="healthy",upstream="be"} 1"#));
    // Process and build series, with values that describe this process.
    assert_eq!(
        support::metric(
            &metrics,
            &format!(
                "portico_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        1.0
    );
    let rss = support::metric(&metrics, "process_resident_memory_bytes");
    assert!(rss > 1_000_000.0, "resident memory {rss}");
    assert!(support::metric(&metrics, "process_open_fds") >= 3.0);
    let started = support::metric(&metrics, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started > now - 3600.0 && started <= now + 1.0,
        "start time {started}"
    );
    // Everything but probes and metrics needs the token.
    assert_eq!(client.get(admin, "/config").await.status, 401);
    let authorized = |path: &str| {
        client.send(
            Request::get(format!("http://{admin}{path}"))
                .header("authorization", "Bearer s3cret")
                .body(Full::default())
                .unwrap(),
        )
    };
    let config = authorized("/config").await.json();
    assert_eq!(config["admin"]["token"], "<redacted>");
    let routes = authorized("/routes").await.json();
    assert_eq!(routes["routes"][0]["name"], "all");
    let ups = authorized("/upstreams").await.json();
    assert_eq!(
        ups["upstreams"]["be"]["endpoints"][0]["address"],
        be.address()
    );
    let reload = |token: Option<&str>| {
        let mut req = Request::post(format!("http://{admin}/reload"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        client.send(req.body(Full::default()).unwrap())
    };
    assert_eq!(reload(None).await.status, 401);
    assert_eq!(reload(Some("wrong")).await.status, 401);
    assert_eq!(reload(Some("s3cret")).await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.metrics()
                .contains(r#"portico_config_reloads_total{result="success"} 1"#)
        })
        .await
    );
    gw.shutdown().await;
}

/// An upgraded tunnel keeps its connection's `max_connections` slot while it is open, and
/// is closed like any connection once nothing has moved for `idle_timeout`.
#[tokio::test]
async fn websocket_tunnels_count_as_connections_and_are_cut_when_idle() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let be = Backend::start("ws").await;
    let yaml = yaml_with(
        "  limits: { idle_timeout: 500ms, max_connections: 1 }",
        &format!("  be: {{ targets: [\"{}\"] }}\n", be.address()),
        "  - name: ws\n    match: { path_prefix: /ws }\n    upstream: be\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http_addr))
        .await
        .expect("websocket handshake through the gateway");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("ping")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo in time");
    assert!(matches!(echoed, Some(Ok(_))), "{echoed:?}");
    // The open tunnel holds the only slot: another connection is closed at once.
    let refused = client::raw(
        gw.http_addr,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(refused.is_empty(), "served past max_connections: {refused}");
    // Quiet for longer than idle_timeout: the gateway closes the tunnel.
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return other.map(|r| r.is_ok()),
            }
        }
    })
    .await
    .expect("the idle tunnel was not closed");
    let took = started.elapsed();
    assert_ne!(end, Some(true), "a message instead of the close");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "closed after {took:?} (idle_timeout 500ms)"
    );
    // Its slot is free again.
    assert!(
        eventually(Duration::from_secs(5), || async {
            client::raw(
                gw.http_addr,
                b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                Duration::from_secs(2),
            )
            .await
            .starts_with("HTTP/1.1")
        })
        .await,
        "the tunnel's slot was not given back"
    );
}

/// A graceful stop waits for open tunnels (they hold connection slots), within
/// `shutdown_grace`: a WebSocket still carries messages while the gateway drains.
#[tokio::test]
async fn shutdown_waits_for_an_open_websocket_within_the_grace() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let be = Backend::start("ws").await;
    let yaml = yaml_with(
        "  shutdown_grace: 30s",
        &format!("  be: {{ targets: [\"{}\"] }}\n", be.address()),
        "  - name: ws\n    match: { path_prefix: /ws }\n    upstream: be\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http_addr))
        .await
        .expect("websocket handshake through the gateway");
    let mut stopping = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "returned with a tunnel open");
    ws.send(Message::text("during the drain")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo in time");
    assert!(matches!(echoed, Some(Ok(Message::Text(_)))), "{echoed:?}");
    assert!(!stopping.is_finished());
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(10), &mut stopping)
        .await
        .expect("the stop ends once the tunnel has closed")
        .unwrap();
}
