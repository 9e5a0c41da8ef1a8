//! What the gateway refuses or repairs at the edge (docs/security.md), driven with raw
//! bytes on a socket so nothing between the test and the gateway tidies the request.
//! The backend is the hand-written HTTP/1.1 server of `support::wire`, which records
//! exactly what reached it.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::wire::{ok, Answer, WireBackend};
use support::{client, gateway, metric};

const WAIT: Duration = Duration::from_secs(10);

async fn backend() -> WireBackend {
    WireBackend::start(|_| Answer::Bytes(ok("from-backend"))).await
}

fn config(server_extra: &str, backend: &WireBackend, top_extra: &str, routes: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\n{server_extra}\nadmin:\n  listen: 127.0.0.1:0\nupstreams:\n  b: {{ targets: [\"{}\"] }}\n{top_extra}\nroutes:\n{routes}",
        backend.address()
    )
}

const ALL: &str = "  - name: all\n    match: { path_prefix: / }\n    upstream: b\n";

/// Sends `head` (a request head without its final blank line) and returns the status.
async fn status_of(addr: SocketAddr, head: &str) -> u16 {
    let answer = client::raw(addr, format!("{head}\r\n\r\n").as_bytes(), WAIT).await;
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

async fn metrics(admin: SocketAddr) -> String {
    let reply = support::Client::new().get(admin, "/metrics").await;
    String::from_utf8_lossy(&reply.body).into_owned()
}

#[tokio::test]
async fn host_must_be_one_valid_authority_and_never_panics() {
    let b = backend().await;
    let (gw, _f) = gateway(&config("", &b, "", ALL)).await;
    let addr = gw.http_addr;
    let refused = [
        "GET / HTTP/1.1\r\nConnection: close",
        "GET / HTTP/1.1\r\nHost: a.local\r\nHost: b.local\r\nConnection: close",
        "GET / HTTP/1.1\r\nHost: [\r\nConnection: close",
        "GET / HTTP/1.1\r\nHost: [::1\r\nConnection: close",
        "GET / HTTP/1.1\r\nHost: a b\r\nConnection: close",
        "GET / HTTP/1.1\r\nHost: a/b\r\nConnection: close",
        "GET / HTTP/1.1\r\nHost: user@a.local\r\nConnection: close",
        "GET / HTTP/1.1\r\nHost: a.local:http\r\nConnection: close",
        "GET / HTTP/1.1\r\nHost: a.local:65536\r\nConnection: close",
        "GET / HTTP/1.1\r\nHost: \r\nConnection: close",
    ];
    for head in refused {
        assert_eq!(status_of(addr, head).await, 400, "{head:?}");
    }
    assert!(b.seen().is_empty(), "a refused request reached the backend");
    // The gateway still serves after every one of them.
    assert_eq!(
        status_of(addr, "GET / HTTP/1.1\r\nHost: a.local\r\nConnection: close").await,
        200
    );
    // HTTP/1.0 needs no Host.
    assert_eq!(status_of(addr, "GET / HTTP/1.0").await, 200);
    assert_eq!(b.seen().len(), 2);
}

#[tokio::test]
async fn the_request_target_authority_wins_over_host() {
    let shop = backend().await;
    let other = backend().await;
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\nupstreams:\n  shop: {{ targets: [\"{}\"] }}\n  other: {{ targets: [\"{}\"] }}\nroutes:\n  - name: shop\n    match: {{ host: shop.local }}\n    upstream: shop\n  - name: other\n    match: {{ path_prefix: / }}\n    upstream: other\n",
        shop.address(),
        other.address()
    );
    let (gw, _f) = gateway(&yaml).await;
    let head = "GET http://shop.local/items?x=1 HTTP/1.1\r\nHost: other.local\r\nConnection: close";
    assert_eq!(status_of(gw.http_addr, head).await, 200);
    assert!(other.seen().is_empty(), "routed on the Host header");
    let seen = shop.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].path(),
        "/items?x=1",
        "not origin form: {}",
        seen[0].head
    );
    assert_eq!(seen[0].header("host").as_deref(), Some("shop.local"));
}

#[tokio::test]
async fn an_h2c_upgrade_is_answered_as_plain_http1_and_never_forwarded() {
    let b = backend().await;
    let (gw, _f) = gateway(&config("", &b, "", ALL)).await;
    let head = "GET /x HTTP/1.1\r\nHost: a.local\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nX-Keep: 1";
    let answer = client::raw(
        gw.http_addr,
        format!("{head}\r\n\r\n").as_bytes(),
        Duration::from_secs(2),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("from-backend"), "{answer}");
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    for name in ["upgrade", "http2-settings"] {
        assert_eq!(
            seen[0].header(name),
            None,
            "{name} forwarded: {}",
            seen[0].head
        );
    }
    assert_ne!(seen[0].header("connection").as_deref(), Some("Upgrade"));
    assert_eq!(seen[0].header("x-keep").as_deref(), Some("1"));
}

#[tokio::test]
async fn a_websocket_upgrade_goes_upstream_in_origin_form() {
    let b = WireBackend::start(|_| {
        Answer::BytesThenClose(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n".to_vec())
    })
    .await;
    let (gw, _f) = gateway(&config("", &b, "", ALL)).await;
    let head = "GET /ws/chat?room=1 HTTP/1.1\r\nHost: a.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    let answers =
        statuses_on_one_connection(gw.http_addr, &[format!("{head}\r\n\r\n").into_bytes()]).await;
    assert_eq!(answers, ["HTTP/1.1 403 Forbidden"]);
    let seen = b.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path(), "/ws/chat?room=1", "{}", seen[0].head);
    assert_eq!(seen[0].header("host").as_deref(), Some("a.local"));
    assert_eq!(seen[0].header("upgrade").as_deref(), Some("websocket"));
}

#[tokio::test]
async fn real_ip_and_forwarded_come_only_from_trusted_proxies() {
    let b = backend().await;
    let (gw, _f) = gateway(&config("", &b, "", ALL)).await;
    let head = "GET / HTTP/1.1\r\nHost: a.local\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\nConnection: close";
    assert_eq!(status_of(gw.http_addr, head).await, 200);
    let seen = &b.seen()[0];
    assert_eq!(seen.header("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(seen.header("forwarded"), None);

    let trusting = backend().await;
    let yaml = config("  trusted_proxies: [127.0.0.1/32]", &trusting, "", ALL);
    let (gw, _f) = gateway(&yaml).await;
    let head = "GET / HTTP/1.1\r\nHost: a.local\r\nX-Forwarded-For: 5.5.5.5\r\nForwarded: for=5.5.5.5\r\nConnection: close";
    assert_eq!(status_of(gw.http_addr, head).await, 200);
    let seen = &trusting.seen()[0];
    assert_eq!(seen.header("forwarded").as_deref(), Some("for=5.5.5.5"));
    // No X-Real-IP from the proxy: the client address the gateway decided on.
    assert_eq!(seen.header("x-real-ip").as_deref(), Some("5.5.5.5"));
}

const CLAIMS: &str = "jwt:\n  idp:\n    algorithms: [HS256]\n    secret: \"0123456789abcdef0123456789abcdef\"\n    forward_claims: { sub: X-User-Id }\n";

#[tokio::test]
async fn underscore_header_names_are_dropped_counted_rejected_or_never_shadow_a_claim() {
    let b = backend().await;
    let (gw, _f) = gateway(&config("", &b, "", ALL)).await;
    let admin = gw.admin_addr.expect("admin");
    let before = metric(
        &metrics(admin).await,
        "portico_underscore_headers_total{action=\"dropped\"}",
    );
    let head = "GET / HTTP/1.1\r\nHost: a.local\r\nX_User_Id: admin\r\nX_Other: 1\r\nX-Fine: 1\r\nConnection: close";
    assert_eq!(status_of(gw.http_addr, head).await, 200);
    let seen = &b.seen()[0];
    assert_eq!(seen.header("x_user_id"), None, "{}", seen.head);
    assert_eq!(seen.header("x_other"), None);
    assert_eq!(seen.header("x-fine").as_deref(), Some("1"));
    let after = metric(
        &metrics(admin).await,
        "portico_underscore_headers_total{action=\"dropped\"}",
    );
    assert_eq!(after - before, 2.0);

    let strict = backend().await;
    let yaml = config("  limits: { underscore_headers: reject }", &strict, "", ALL);
    let (gw, _f) = gateway(&yaml).await;
    assert_eq!(status_of(gw.http_addr, head).await, 400);
    assert!(strict.seen().is_empty());

    let lenient = backend().await;
    let yaml = config(
        "  limits: { underscore_headers: allow }",
        &lenient,
        CLAIMS,
        ALL,
    );
    let (gw, _f) = gateway(&yaml).await;
    let head = "GET / HTTP/1.1\r\nHost: a.local\r\nX_User_Id: admin\r\nX-User-Id: admin\r\nX_Other: 1\r\nConnection: close";
    assert_eq!(status_of(gw.http_addr, head).await, 200);
    let seen = &lenient.seen()[0];
    assert_eq!(
        seen.header("x_user_id"),
        None,
        "a claim header was shadowed: {}",
        seen.head
    );
    assert_eq!(
        seen.header("x-user-id"),
        None,
        "a forged claim header was forwarded"
    );
    assert_eq!(seen.header("x_other").as_deref(), Some("1"));
}

#[tokio::test]
async fn forged_claim_headers_are_gone_before_routing() {
    let admin_backend = backend().await;
    let b = backend().await;
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\nupstreams:\n  admin: {{ targets: [\"{}\"] }}\n  b: {{ targets: [\"{}\"] }}\n{CLAIMS}routes:\n  - name: admins\n    match: {{ path_prefix: /, headers: {{ x-user-id: admin }} }}\n    upstream: admin\n{ALL}",
        admin_backend.address(),
        b.address()
    );
    let (gw, _f) = gateway(&yaml).await;
    let head = "GET / HTTP/1.1\r\nHost: a.local\r\nX-User-Id: admin\r\nConnection: close";
    assert_eq!(status_of(gw.http_addr, head).await, 200);
    assert!(
        admin_backend.seen().is_empty(),
        "routed on a forged claim header"
    );
    assert_eq!(b.seen()[0].header("x-user-id"), None);
}

#[tokio::test]
async fn trace_is_refused_unless_allowed() {
    let b = backend().await;
    let (gw, _f) = gateway(&config("", &b, "", ALL)).await;
    let head = "TRACE / HTTP/1.1\r\nHost: a.local\r\nCookie: session=secret\r\nConnection: close";
    assert_eq!(status_of(gw.http_addr, head).await, 405);
    assert!(b.seen().is_empty());

    let open = backend().await;
    let (gw, _f) = gateway(&config("  allow_trace: true", &open, "", ALL)).await;
    assert_eq!(status_of(gw.http_addr, head).await, 200);
    assert_eq!(open.seen().len(), 1);
}

#[tokio::test]
async fn query_edits_compare_decoded_names() {
    let b = backend().await;
    let routes = "  - name: all\n    match: { path_prefix: / }\n    upstream: b\n    transform:\n      request: { set_query: { uid: gw }, remove_query: [debug] }\n";
    let (gw, _f) = gateway(&config("", &b, "", routes)).await;
    let head = "GET /q?%75id=victim&%64ebug=1&debu%67=2&de+bug=3&keep=1 HTTP/1.1\r\nHost: a.local\r\nConnection: close";
    assert_eq!(status_of(gw.http_addr, head).await, 200);
    let path = b.seen()[0].path().to_string();
    assert!(!path.contains("victim"), "{path}");
    assert!(
        !path.contains("ebug=1") && !path.contains("debu%67"),
        "{path}"
    );
    assert!(
        path.contains("de+bug=3"),
        "a different name went too: {path}"
    );
    assert!(path.contains("keep=1") && path.contains("uid=gw"), "{path}");
}

#[test]
fn certificate_host_patterns_are_checked() {
    let yaml = "server:\n  listen: 127.0.0.1:0\n  tls:\n    listen: 127.0.0.1:0\n    certificates:\n      - { cert: /nonexistent.pem, key: /nonexistent-key.pem, hosts: [\"*foo.com\"] }\nupstreams:\n  b: { targets: [\"127.0.0.1:9\"] }\nroutes:\n  - name: all\n    match: { path_prefix: / }\n    upstream: b\n";
    support::assert_refused_at(yaml, "server.tls.certificates[0].hosts[0]");
}

#[test]
fn check_reports_an_unknown_key_and_the_bad_value_beside_it() {
    let yaml = "server:\n  listen: 127.0.0.1:0\n  trusted_proxie: [10.0.0.0/8]\n  trusted_proxies: [10.0.0.0/33]\n  limits: { max_conections: 5, max_connections: 0 }\nupstreams:\n  b: { targets: [\"127.0.0.1:9\"] }\nroutes:\n  - name: all\n    match: { path_prefix: / }\n    upstream: b\n";
    let err = portico::check::parse(yaml).expect_err("refused");
    let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
    for expected in [
        "server.trusted_proxie",
        "server.trusted_proxies[0]",
        "server.limits.max_conections",
        "server.limits.max_connections",
    ] {
        assert!(paths.contains(&expected), "missing {expected} in {err}");
    }
}

#[tokio::test]
async fn path_forms_backends_resolve_differently_never_escape_their_route() {
    let api = backend().await;
    let admin = backend().await;
    let routes = "  - name: admin\n    match: { path_prefix: /admin }\n    upstream: admin\n  - name: api\n    match: { path_prefix: /api }\n    upstream: api\n";
    let yaml = |server: &str| {
        format!(
            "server:\n  listen: 127.0.0.1:0\n  access_log: false\n{server}\nupstreams:\n  api: {{ targets: [\"{}\"] }}\n  admin: {{ targets: [\"{}\"] }}\nroutes:\n{routes}",
            api.address(),
            admin.address()
        )
    };
    let (gw, _f) = gateway(&yaml("")).await;
    let hostile = [
        "/api/users/..;/admin",
        "/api/users/.;/admin",
        "/api\\..\\admin",
        "/api/%5C../admin",
        "/api/%5c..%5cadmin",
        "/api/..%2Fadmin",
        "/api/x%2F..%2F..%2Fadmin",
        "/api/%2e%2e%2fadmin",
        "/api/a%00/../admin",
        "/api/%252e%252e/admin",
        "/api/%C0%AE%C0%AE/admin",
    ];
    for path in hostile {
        let head = format!("GET {path} HTTP/1.1\r\nHost: a.local\r\nConnection: close");
        assert_eq!(status_of(gw.http_addr, &head).await, 400, "{path}");
    }
    assert!(
        admin.seen().is_empty(),
        "an /api path reached the admin route"
    );
    assert!(api.seen().is_empty(), "a refused path was forwarded");

    // Non-ASCII bytes stay UTF-8 when the path is normalised.
    let head = "GET /api//caf\u{e9} HTTP/1.1\r\nHost: a.local\r\nConnection: close";
    assert_eq!(status_of(gw.http_addr, head).await, 200);
    assert_eq!(api.seen()[0].path(), "/api/caf\u{e9}");

    // An encoded slash: kept by default, refused or decoded by choice.
    let head = "GET /api/a%2Fb HTTP/1.1\r\nHost: a.local\r\nConnection: close";
    assert_eq!(status_of(gw.http_addr, head).await, 200);
    assert_eq!(api.seen()[1].path(), "/api/a%2Fb");
    let (strict, _f) = gateway(&yaml("  path: { encoded_slash: reject }")).await;
    assert_eq!(status_of(strict.http_addr, head).await, 400);
    let (decoding, _f) = gateway(&yaml("  path: { encoded_slash: decode }")).await;
    assert_eq!(status_of(decoding.http_addr, head).await, 200);
    assert_eq!(api.seen()[2].path(), "/api/a/b");
}

#[tokio::test]
async fn an_overlong_method_is_refused() {
    let b = backend().await;
    let (gw, _f) = gateway(&config("", &b, "", ALL)).await;
    let method = "X".repeat(4096);
    let head = format!("{method} / HTTP/1.1\r\nHost: a.local\r\nConnection: close");
    assert_eq!(status_of(gw.http_addr, &head).await, 400);
    let head = format!(
        "{} / HTTP/1.1\r\nHost: a.local\r\nConnection: close",
        "X".repeat(32)
    );
    assert_eq!(status_of(gw.http_addr, &head).await, 200);
    assert_eq!(b.seen().len(), 1);
}

fn admin_config(backend: &WireBackend, admin: &str, server_extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\n{server_extra}\nadmin:\n  listen: 127.0.0.1:0\n{admin}\nupstreams:\n  b: {{ targets: [\"{}\"] }}\nroutes:\n  - name: all\n    match: {{ path_prefix: /, headers: {{ x-internal-key: hunter2 }} }}\n    upstream: b\n    transform:\n      request: {{ set_headers: {{ X-Api-Key: upstream-secret }} }}\n  - name: split\n    match: {{ path_prefix: /s }}\n    split:\n      stable: {{ upstream: b }}\n      canary: {{ upstream: b }}\n      force_canary: {{ cookie: {{ tester: let-me-in }} }}\n",
        backend.address()
    )
}

#[tokio::test]
async fn with_a_token_the_admin_api_opens_only_probes_and_metrics_and_hides_secrets() {
    let b = backend().await;
    let (gw, _f) = gateway(&admin_config(&b, "  token: s3cret", "")).await;
    let admin = gw.admin_addr.expect("admin");
    let get = |path: &'static str, token: bool| async move {
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close");
        if token {
            head.push_str("\r\nAuthorization: Bearer s3cret");
        }
        client::raw(admin, format!("{head}\r\n\r\n").as_bytes(), WAIT).await
    };
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert!(get(open, false).await.starts_with("HTTP/1.1 200"), "{open}");
    }
    for closed in ["/config", "/routes", "/upstreams", "/splits"] {
        assert!(
            get(closed, false).await.starts_with("HTTP/1.1 401"),
            "{closed}"
        );
    }
    let config = get("/config", true).await;
    assert!(config.starts_with("HTTP/1.1 200"), "{config}");
    for secret in ["s3cret", "hunter2", "upstream-secret", "let-me-in"] {
        assert!(!config.contains(secret), "{secret} in /config: {config}");
    }
    assert!(config.contains("x-internal-key") && config.contains("tester"));
}

#[tokio::test]
async fn admin_writes_must_not_be_simple_cross_origin_requests() {
    let b = backend().await;
    let (gw, _f) = gateway(&admin_config(&b, "", "")).await;
    let admin = gw.admin_addr.expect("admin");
    // What a form or a no-cors fetch from a page on the same host can send.
    for simple in [
        "POST /reload HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0",
        "POST /reload HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 0",
        "POST /reload HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0",
    ] {
        assert_eq!(status_of(admin, simple).await, 403, "{simple}");
    }
    let json = "POST /reload HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 0";
    assert_eq!(status_of(admin, json).await, 200);
}

#[test]
fn a_public_admin_listener_needs_a_token() {
    let yaml = "server:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 0.0.0.0:9901\nupstreams:\n  b: { targets: [\"127.0.0.1:9\"] }\nroutes:\n  - name: all\n    match: { path_prefix: / }\n    upstream: b\n";
    support::assert_refused_at(yaml, "admin.token");
    let with_token = yaml.replace(
        "  listen: 0.0.0.0:9901\n",
        "  listen: 0.0.0.0:9901\n  token: s3cret\n",
    );
    assert!(portico::check::parse(&with_token).is_ok());
}

#[tokio::test]
async fn the_admin_listener_cuts_slow_clients_and_caps_connections() {
    let b = backend().await;
    let yaml = admin_config(&b, "", "  limits: { header_read_timeout: 500ms }");
    let (gw, _f) = gateway(&yaml).await;
    let admin = gw.admin_addr.expect("admin");
    // A head that never ends is cut off after the header-read timeout, not held open.
    let started = std::time::Instant::now();
    let answer = client::raw(admin, b"GET /healthz HTTP/1.1\r\nHost: a", WAIT).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "closed after {took:?}: {answer:?}"
    );
    // Past the cap, a new connection is closed at once.
    let mut held = Vec::new();
    for _ in 0..portico::server::ADMIN_MAX_CONNECTIONS {
        held.push(
            tokio::net::TcpStream::connect(admin)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = client::raw(
        admin,
        b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(refused.is_empty(), "served past the cap: {refused}");
    drop(held);
}

/// Sends a request head, then its body one byte every `every`, and returns the status
/// and how long the answer took.
async fn trickle(addr: SocketAddr, head: &str, body: &[u8], every: Duration) -> (u16, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("{head}\r\n\r\n").as_bytes())
        .await
        .expect("write head");
    let (mut read, mut write) = stream.into_split();
    let body = body.to_vec();
    let writer = tokio::spawn(async move {
        for b in body {
            tokio::time::sleep(every).await;
            if write.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, read.read(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap_or(0);
    writer.abort();
    let text = String::from_utf8_lossy(&answer[..n]).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, started.elapsed())
}

#[tokio::test]
async fn bodies_read_into_memory_have_a_deadline() {
    let b = backend().await;
    let routes = "  - name: json\n    match: { path_prefix: /json }\n    upstream: b\n    transform:\n      request: { json_body: { set: { edited: true } } }\n  - name: replay\n    match: { path_prefix: /replay }\n    upstream: r\n";
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\n  limits: {{ idle_timeout: 1s }}\nupstreams:\n  b: {{ targets: [\"{0}\"] }}\n  r: {{ targets: [\"{0}\"], timeouts: {{ request: 1s }}, retries: {{ attempts: 2 }} }}\nroutes:\n{routes}",
        b.address()
    );
    let (gw, _f) = gateway(&yaml).await;
    let body = br#"{"a": "a slow client sends this one byte at a time"}"#;
    for path in ["/json", "/replay"] {
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: a.local\r\nContent-Type: application/json\r\nContent-Length: {}",
            body.len()
        );
        let (status, took) = trickle(gw.http_addr, &head, body, Duration::from_millis(200)).await;
        assert_eq!(status, 408, "{path}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{path}: answered after {took:?}"
        );
    }
    assert!(
        b.seen().is_empty(),
        "a body that never arrived was forwarded"
    );
}

#[tokio::test]
async fn a_cache_fill_from_an_upstream_that_stalls_ends_at_its_deadline() {
    // Half a body, then nothing: the connection stays open.
    let stalled = WireBackend::start(|_| {
        Answer::Bytes(
            b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 100\r\n\r\nhalf"
                .to_vec(),
        )
    })
    .await;
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\nupstreams:\n  s: {{ targets: [\"{}\"], timeouts: {{ request: 1s }} }}\ncaches:\n  c: {{ max_size: 1MiB }}\nroutes:\n  - name: cached\n    match: {{ path_prefix: / }}\n    upstream: s\n    cache: c\n",
        stalled.address()
    );
    let (gw, _f) = gateway(&yaml).await;
    let started = std::time::Instant::now();
    let status = status_of(
        gw.http_addr,
        "GET /x HTTP/1.1\r\nHost: a.local\r\nConnection: close",
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 504);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn an_http2_client_that_never_finishes_a_request_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = backend().await;
    let yaml = config(
        "  limits: { header_read_timeout: 500ms, idle_timeout: 1s }",
        &b,
        "",
        ALL,
    );
    let (gw, _f) = gateway(&yaml).await;
    let started = std::time::Instant::now();
    let stream = tokio::net::TcpStream::connect(gw.http_addr)
        .await
        .expect("connect");
    let (mut read, mut write) = stream.into_split();
    // h2c prior knowledge: the preface and an empty SETTINGS frame, then the 9-byte head
    // of a HEADERS frame, one byte every 100 ms, and its payload never.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    write.write_all(&hello).await.expect("preface");
    let trickler = tokio::spawn(async move {
        for byte in [0u8, 0, 40, 1, 4, 0, 0, 0, 1].into_iter().cycle().take(200) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    });
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(WAIT, read.read_to_end(&mut sink)).await;
    let took = started.elapsed();
    trickler.abort();
    assert!(closed.is_ok(), "still open after {took:?}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    assert!(b.seen().is_empty());
}

#[tokio::test]
async fn every_response_of_a_caching_route_says_what_the_cache_did() {
    let b = backend().await;
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\nupstreams:\n  b: {{ targets: [\"{}\"] }}\n  down: {{ targets: [\"127.0.0.1:9\"] }}\ncaches:\n  c: {{ max_size: 1MiB }}\nrate_limits:\n  one: {{ key: client_ip, limit: 1, per: 1m }}\nroutes:\n  - name: limited\n    match: {{ path_prefix: /limited }}\n    upstream: b\n    cache: c\n    rate_limit: one\n  - name: down\n    match: {{ path_prefix: /down }}\n    upstream: down\n    cache: c\n",
        b.address()
    );
    let (gw, _f) = gateway(&yaml).await;
    let get = |path: &'static str| async move {
        let head = format!("GET {path} HTTP/1.1\r\nHost: a.local\r\nConnection: close\r\n\r\n");
        client::raw(gw.http_addr, head.as_bytes(), WAIT)
            .await
            .to_ascii_lowercase()
    };
    let first = get("/limited").await;
    assert!(
        first.starts_with("http/1.1 200") && first.contains("x-cache: miss"),
        "{first}"
    );
    let refused = get("/limited").await;
    assert!(refused.starts_with("http/1.1 429"), "{refused}");
    assert!(refused.contains("x-cache: bypass"), "{refused}");
    let failed = get("/down").await;
    assert!(failed.starts_with("http/1.1 503"), "{failed}");
    assert!(failed.contains("x-cache: bypass"), "{failed}");
}

/// Writes each request on one connection, reading its answer (up to the end of its JSON
/// or text body) before the next; returns the status lines.
async fn statuses_on_one_connection(addr: SocketAddr, requests: &[Vec<u8>]) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut statuses = Vec::new();
    for request in requests {
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // An answer is complete once its head and Content-Length bytes are in.
        let complete = |a: &[u8]| {
            let text = String::from_utf8_lossy(a);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                return false;
            };
            let length = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            body.len() >= length
        };
        while !complete(&answer) {
            let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("an answer in time")
                .unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&answer);
        statuses.push(text.lines().next().unwrap_or("").to_string());
    }
    statuses
}

#[tokio::test]
async fn a_request_line_over_the_limit_gets_414_and_higher_minor_versions_read_as_1_1() {
    let b = backend().await;
    let (gw, _f) = gateway(&config("  limits: { max_request_line: 1KiB }", &b, "", ALL)).await;
    let long = format!("/{}", "a".repeat(2000));
    let head = format!("GET {long} HTTP/1.1\r\nHost: a.local");
    assert_eq!(status_of(gw.http_addr, &head).await, 414);
    // A header over max_request_headers is still 431: the line is not the problem.
    let head = format!(
        "GET / HTTP/1.1\r\nHost: a.local\r\nX-Big: {}",
        "b".repeat(20_000)
    );
    assert_eq!(status_of(gw.http_addr, &head).await, 431);
    assert!(b.seen().is_empty(), "nothing refused was forwarded");

    // On one keep-alive connection: HTTP/1.2, a POST with a body that looks like a request
    // line, HTTP/1.9, then a line over the limit.
    let requests = vec![
        b"GET /one HTTP/1.2\r\nHost: a.local\r\n\r\n".to_vec(),
        b"POST /two HTTP/1.1\r\nHost: a.local\r\nContent-Length: 18\r\n\r\nGET / HTTP/1.2\r\n\r\n"
            .to_vec(),
        b"GET /three HTTP/1.9\r\nHost: a.local\r\n\r\n".to_vec(),
        format!("GET {long} HTTP/1.1\r\nHost: a.local\r\n\r\n").into_bytes(),
    ];
    let statuses = statuses_on_one_connection(gw.http_addr, &requests).await;
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 414 URI Too Long"
        ]
    );
    let seen = b.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path()).collect();
    assert_eq!(paths, ["/one", "/two", "/three"]);
    assert_eq!(
        seen[1].body, b"GET / HTTP/1.2\r\n\r\n",
        "a body is never edited"
    );

    // The admin listener reads request lines the same way.
    let admin = gw.admin_addr.unwrap();
    let head = format!("GET /{} HTTP/1.1\r\nHost: a.local", "m".repeat(2000));
    assert_eq!(status_of(admin, &head).await, 414);
    assert_eq!(
        status_of(
            admin,
            "GET /healthz HTTP/1.2\r\nHost: a.local\r\nConnection: close"
        )
        .await,
        200
    );
}

/// A client that only sends HTTP/2 PINGs after its last request is idle: answering its
/// PINGs is not serving it, and the connection is closed after `idle_timeout`.
#[tokio::test]
async fn an_http2_client_that_only_pings_is_closed_when_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = backend().await;
    let yaml = config("  limits: { idle_timeout: 1s }", &b, "", ALL);
    let (gw, _f) = gateway(&yaml).await;
    let stream = tokio::net::TcpStream::connect(gw.http_addr)
        .await
        .expect("connect");
    let (mut read, mut write) = stream.into_split();
    // h2c prior knowledge, an empty SETTINGS, and GET / for a.local on stream 1 (HPACK:
    // :method GET, :scheme http, :path /, :authority "a.local").
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let block = [&[0x82u8, 0x86, 0x84, 0x41, 7][..], b"a.local"].concat();
    hello.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x5, 0, 0, 0, 1]);
    hello.extend_from_slice(&block);
    write.write_all(&hello).await.expect("request");
    // The answer comes (the backend's body), then the client acknowledges the server's
    // SETTINGS and pings every 200 ms, for up to 20 s.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(12).any(|w| w == b"from-backend") {
        let n = tokio::time::timeout(WAIT, read.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed before answering");
        seen.extend_from_slice(&buf[..n]);
    }
    let answered = std::time::Instant::now();
    write
        .write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0])
        .await
        .expect("settings ack");
    let pinger = tokio::spawn(async move {
        for i in 0..100u8 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, i, 0, 0, 0, 0, 0, 0, 0];
            if write.write_all(&ping).await.is_err() {
                return;
            }
        }
    });
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // PING acknowledgements
            }
        }
    })
    .await;
    let took = answered.elapsed();
    pinger.abort();
    assert!(
        closed.is_ok(),
        "still open {took:?} after the answer, pinging"
    );
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(8),
        "closed after {took:?} (idle_timeout 1s)"
    );
}
