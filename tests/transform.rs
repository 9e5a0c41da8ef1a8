//! End-to-end tests of request and response transforms: every header operation and
//! template, query edits, JSON body edits and the cases that pass through unchanged.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{gateway, CacheBackend, Client, Reply, Script};

fn yaml(backend: &CacheBackend, transform: &str, extra_route: &str) -> String {
    format!(
        r#"server: {{ listen: 127.0.0.1:0, access_log: false }}
caches:
  c: {{ max_size: 4MiB }}
upstreams:
  legacy: {{ targets: ["{}"] }}
routes:
{extra_route}  - name: legacy
    match: {{ path_prefix: /api/legacy }}
    rewrite: {{ strip_prefix: /api }}
    transform:
{transform}
    upstream: legacy
"#,
        backend.address()
    )
}

async fn send(
    client: &Client,
    method: &str,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client
        .send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
}

#[tokio::test]
async fn request_headers_every_operation_and_template() {
    let backend = CacheBackend::start().await;
    let t = r#"      request:
        set_headers:
          X-API-Version: "2.0"
          X-Tenant: "t-${header.X-Tenant-Raw}"
          X-Meta: "${route}|${upstream}|${client_ip}|${request_id}"
          X-User: "${claim.sub}"
          X-Missing: "${header.X-Nowhere}"
        add_headers: { X-Trace: "gw" }
        remove_headers: [X-Debug]
        rename_headers: { X-Old: X-New }
"#;
    let (gw, _f) = gateway(&yaml(&backend, t, "")).await;
    let client = Client::new();
    let r = send(
        &client,
        "GET",
        gw.http_addr,
        "/api/legacy/1",
        &[
            ("x-tenant-raw", "acme"),
            ("x-request-id", "rid-42"),
            ("x-user", "forged"),
            ("x-missing", "client-copy"),
            ("x-trace", "client"),
            ("x-debug", "1"),
            ("x-old", "moved"),
            ("x-api-version", "1.0"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    assert_eq!(h["x-api-version"], "2.0");
    assert_eq!(h["x-tenant"], "t-acme");
    assert_eq!(h["x-meta"], "legacy|legacy|127.0.0.1|rid-42");
    // No claims on this branch's requests: the header is left out, the forged copy too.
    assert!(h.get("x-user").is_none(), "{h}");
    assert!(h.get("x-missing").is_none(), "{h}");
    assert!(h.get("x-debug").is_none());
    assert!(h.get("x-old").is_none());
    assert_eq!(h["x-new"], "moved");
    // add_headers appends: the echo backend keeps the first value, so check via a
    // second request without the client's copy.
    let r = send(&client, "GET", gw.http_addr, "/api/legacy/1", &[], "").await;
    assert_eq!(r.json()["headers"]["x-trace"], "gw");
    assert!(!r.body.windows(2).any(|w| w == b"${"));
}

#[tokio::test]
async fn query_set_and_remove() {
    let backend = CacheBackend::start().await;
    let t = r#"      request:
        set_query: { source: gateway, who: "${header.X-Who}" }
        remove_query: [debug]
"#;
    let (gw, _f) = gateway(&yaml(&backend, t, "")).await;
    let client = Client::new();
    let r = send(
        &client,
        "GET",
        gw.http_addr,
        "/api/legacy/q?debug=1&keep=yes&source=client",
        &[("x-who", "a b&c")],
        "",
    )
    .await;
    assert_eq!(r.json()["query"], "keep=yes&source=gateway&who=a%20b%26c");
    let r = send(
        &client,
        "GET",
        gw.http_addr,
        "/api/legacy/q?debug=1",
        &[],
        "",
    )
    .await;
    assert_eq!(r.json()["query"], "source=gateway");
}

#[tokio::test]
async fn request_json_body_edits_and_content_length() {
    let backend = CacheBackend::start().await;
    let t = r#"      request:
        json_body:
          set: { "meta.via": gateway }
          remove: [internal_note]
          rename: { userId: user_id }
          max_size: 1KiB
"#;
    let (gw, _f) = gateway(&yaml(&backend, t, "")).await;
    let client = Client::new();
    let json = [("content-type", "application/json")];
    let r = send(
        &client,
        "POST",
        gw.http_addr,
        "/api/legacy/1",
        &json,
        r#"{"userId":7,"internal_note":"x","meta":{"a":1}}"#,
    )
    .await;
    let echo = r.json();
    let sent: serde_json::Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"user_id": 7, "meta": {"a": 1, "via": "gateway"}})
    );
    assert_eq!(
        echo["headers"]["content-length"],
        sent.to_string().len().to_string()
    );

    // Invalid JSON from a client: 400 in the gateway's JSON error shape.
    let bad = send(
        &client,
        "POST",
        gw.http_addr,
        "/api/legacy/1",
        &json,
        "{not json",
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["status"], 400);
    assert!(bad.json()["request_id"].is_string());

    // Not JSON, or larger than max_size: passed through unchanged.
    let text = send(
        &client,
        "POST",
        gw.http_addr,
        "/api/legacy/1",
        &[("content-type", "text/plain")],
        "{not json",
    )
    .await;
    assert_eq!(text.json()["body"], "{not json");
    let large = format!(r#"{{"userId":1,"pad":"{}"}}"#, "x".repeat(2000));
    let r = send(
        &client,
        "POST",
        gw.http_addr,
        "/api/legacy/1",
        &json,
        &large,
    )
    .await;
    assert_eq!(r.json()["body"], large.as_str());
    let metrics = gw.metrics();
    assert!(metrics.contains(r#"portico_transform_body_skipped_total{direction="request",reason="too_large",route="legacy"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"portico_transform_body_skipped_total{direction="request",reason="not_json",route="legacy"} 1"#));
}

#[tokio::test]
async fn response_headers_and_json_body() {
    let backend = CacheBackend::start().await;
    backend.script(
        "/legacy/user",
        Script {
            body: Some(Bytes::from_static(
                br#"{"id":1,"password_hash":"h","name":"a"}"#,
            )),
            ..Script::ok(&[
                ("content-type", "application/json"),
                ("server", "legacy/1.0"),
                ("x-powered-by", "php"),
                ("x-internal", "1"),
            ])
        },
    );
    backend.script(
        "/legacy/broken",
        Script {
            body: Some(Bytes::from_static(b"{broken")),
            ..Script::ok(&[("content-type", "application/json")])
        },
    );
    backend.script(
        "/legacy/gzip",
        Script {
            body: Some(Bytes::from_static(b"\x1f\x8b compressed")),
            ..Script::ok(&[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ])
        },
    );
    let t = r#"      response:
        set_headers: { X-Custom-Header: Gateway, X-Served-For: "${request_id}" }
        remove_headers: [Server, X-Powered-By]
        rename_headers: { X-Internal: X-Upstream-Internal }
        json_body: { remove: [password_hash], set: { gateway: true } }
"#;
    let (gw, _f) = gateway(&yaml(&backend, t, "")).await;
    let client = Client::new();
    let r = send(
        &client,
        "GET",
        gw.http_addr,
        "/api/legacy/user",
        &[("x-request-id", "r-1")],
        "",
    )
    .await;
    assert_eq!(r.header("x-custom-header"), Some("Gateway"));
    assert_eq!(r.header("x-served-for"), Some("r-1"));
    assert!(r.header("server").is_none());
    assert!(r.header("x-powered-by").is_none());
    assert_eq!(r.header("x-upstream-internal"), Some("1"));
    assert_eq!(
        r.json(),
        serde_json::json!({"id": 1, "name": "a", "gateway": true})
    );
    assert_eq!(
        r.header("content-length").unwrap(),
        r.body.len().to_string()
    );
    // Invalid JSON and compressed bodies from the upstream pass through unchanged.
    let broken = send(&client, "GET", gw.http_addr, "/api/legacy/broken", &[], "").await;
    assert_eq!(broken.status, 200);
    assert_eq!(&broken.body[..], b"{broken");
    let gz = send(&client, "GET", gw.http_addr, "/api/legacy/gzip", &[], "").await;
    assert_eq!(&gz.body[..], b"\x1f\x8b compressed");
    let metrics = gw.metrics();
    assert!(
        metrics.contains(r#"reason="invalid_json",route="legacy"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"reason="compressed",route="legacy"} 1"#));
}

#[tokio::test]
async fn cached_bodies_are_edited_once_and_headers_per_request() {
    let backend = CacheBackend::start().await;
    backend.script(
        "/legacy/p",
        Script {
            body: Some(Bytes::from_static(
                br#"{"products":[{"id":1,"priceCents":5},{"id":2,"priceCents":6}]}"#,
            )),
            ..Script::ok(&[
                ("content-type", "application/json"),
                ("cache-control", "max-age=60"),
            ])
        },
    );
    let t = r#"      response:
        set_headers: { X-Served-For: "${request_id}" }
        json_body: { remove: ["products.*.priceCents"] }
"#;
    let text = yaml(&backend, t, "").replace(
        "    upstream: legacy\n",
        "    cache: c\n    upstream: legacy\n",
    );
    let (gw, _f) = gateway(&text).await;
    let client = Client::new();
    let a = send(
        &client,
        "GET",
        gw.http_addr,
        "/api/legacy/p",
        &[("x-request-id", "a")],
        "",
    )
    .await;
    let b = send(
        &client,
        "GET",
        gw.http_addr,
        "/api/legacy/p",
        &[("x-request-id", "b")],
        "",
    )
    .await;
    assert_eq!(b.header("x-cache"), Some("HIT"));
    assert_eq!(a.header("x-served-for"), Some("a"));
    assert_eq!(b.header("x-served-for"), Some("b"));
    assert_eq!(
        b.json(),
        serde_json::json!({"products": [{"id": 1}, {"id": 2}]})
    );
    assert_eq!(backend.hits("/legacy/p"), 1);
}

#[tokio::test]
async fn check_refuses_transforms_that_break_framing() {
    let base = "server: { listen: 127.0.0.1:0 }\nupstreams:\n  u: { targets: [\"127.0.0.1:1\"] }\nroutes:\n  - name: r\n    upstream: u\n    transform:\n";
    let cases = [
        (
            "      request: { set_headers: { Content-Length: \"5\" } }\n",
            "routes[0].transform.request.set_headers.Content-Length",
        ),
        (
            "      request: { remove_headers: [Transfer-Encoding] }\n",
            "routes[0].transform.request.remove_headers[0]",
        ),
        (
            "      response: { add_headers: { Connection: close } }\n",
            "routes[0].transform.response.add_headers.Connection",
        ),
        (
            "      request: { remove_headers: [Host] }\n",
            "routes[0].transform.request.remove_headers[0]",
        ),
        (
            "      request: { rename_headers: { X-A: Host } }\n",
            "routes[0].transform.request.rename_headers.X-A",
        ),
        (
            "      request: { set_headers: { X-A: \"${bogus.x}\" } }\n",
            "routes[0].transform.request.set_headers.X-A",
        ),
        (
            "      response: { set_query: { a: b } }\n",
            "routes[0].transform.response.set_query",
        ),
        (
            "      request: { json_body: { remove: [\"a..b\"] } }\n",
            "routes[0].transform.request.json_body",
        ),
    ];
    for (t, path) in cases {
        let err = portico::check::parse(&format!("{base}{t}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(path), "{path}: {err}");
    }
    // Host may be set explicitly.
    portico::check::parse(&format!(
        "{base}      request: {{ set_headers: {{ Host: example.com }} }}\n"
    ))
    .unwrap();
}

/// `add_headers` appends: the upstream gets the client's value and the added one, as two
/// field lines (read off the wire, where nothing merges or drops them).
#[tokio::test]
async fn add_headers_appends_to_the_clients_values() {
    use support::wire::{ok, Answer, WireBackend};
    let backend = WireBackend::start(|_| Answer::Bytes(ok("ok"))).await;
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\nupstreams:\n  b: {{ targets: [\"{}\"] }}\nroutes:\n  - name: all\n    upstream: b\n    transform:\n      request: {{ add_headers: {{ X-Trace: gw }} }}\n",
        backend.address()
    );
    let (gw, _f) = gateway(&yaml).await;
    let answer = support::client::raw(
        gw.http_addr,
        b"GET /x HTTP/1.1\r\nHost: a.local\r\nX-Trace: client\r\nConnection: close\r\n\r\n",
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let head = backend.seen()[0].head.clone();
    let values: Vec<&str> = head
        .lines()
        .filter_map(|l| l.strip_prefix("x-trace:"))
        .map(str::trim)
        .collect();
    assert_eq!(values, ["client", "gw"], "{head}");
}
