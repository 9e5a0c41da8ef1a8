//! End-to-end tests of the gateway's own HTTP/1.1 client: connection reuse, request
//! framing, the response framings of RFC 9112, stale pooled connections and malformed
//! answers. The backend (`support::wire`) writes raw bytes, so each case is exact.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::wire::{ok, Answer, WireBackend};
use support::{client, gateway, metric, Client};

fn yaml(backend: &WireBackend) -> String {
    yaml_with(backend, "")
}

/// `extra` goes into the upstream's flow mapping, e.g. `keepalive: { max_idle: 0 }`.
fn yaml_with(backend: &WireBackend, extra: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0, access_log: false }}\nupstreams:\n  svc: {{ targets: [\"{}\"] {extra} }}\nroutes:\n  - name: svc\n    upstream: svc\n",
        backend.address()
    )
}

#[tokio::test]
async fn keep_alive_connections_are_reused_and_counted() {
    let backend = WireBackend::start(|_| Answer::Bytes(ok("hello"))).await;
    let (gw, _cfg) = gateway(&yaml(&backend)).await;
    let client = Client::new();
    for _ in 0..20 {
        let r = client.get(gw.http_addr, "/x").await;
        assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    }
    assert_eq!(
        backend.connections(),
        1,
        "sequential requests share one connection"
    );
    assert_eq!(backend.seen()[19].nth_on_connection, 20);
    let opened = metric(
        &gw.metrics(),
        &format!(
            "portico_upstream_connections_opened_total{{endpoint=\"{}\",upstream=\"svc\"}}",
            backend.address()
        ),
    );
    assert_eq!(opened, 1.0);
}

#[tokio::test]
async fn keepalive_settings_bound_reuse() {
    let backend = WireBackend::start(|_| Answer::Bytes(ok("hi"))).await;
    let (gw, _cfg) = gateway(&yaml_with(&backend, ", keepalive: { max_idle: 0 }")).await;
    let client = Client::new();
    for _ in 0..3 {
        assert_eq!(client.get(gw.http_addr, "/x").await.status, 200);
    }
    assert_eq!(
        backend.connections(),
        3,
        "max_idle 0: a connection per request"
    );
    drop(gw);

    let backend = WireBackend::start(|_| Answer::Bytes(ok("hi"))).await;
    let (gw, _cfg) = gateway(&yaml_with(&backend, ", keepalive: { idle_timeout: 100ms }")).await;
    assert_eq!(client.get(gw.http_addr, "/x").await.status, 200);
    assert_eq!(client.get(gw.http_addr, "/x").await.status, 200);
    assert_eq!(backend.connections(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.get(gw.http_addr, "/x").await.status, 200);
    assert_eq!(
        backend.connections(),
        2,
        "a connection idle past idle_timeout is not reused"
    );
}

#[tokio::test]
async fn chunked_interim_and_close_delimited_responses_stream_through() {
    let backend = WireBackend::start(|seen| {
        match seen.path() {
            "/chunked" => Answer::Bytes(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n".to_vec(),
            ),
            "/interim" => Answer::Bytes(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            ),
            "/until-close" => {
                Answer::BytesThenClose(b"HTTP/1.1 200 OK\r\n\r\nall of it until close".to_vec())
            }
            "/both" => Answer::Bytes(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n".to_vec(),
            ),
            _ => Answer::Bytes(ok("plain")),
        }
    })
    .await;
    let (gw, _cfg) = gateway(&yaml(&backend)).await;
    let client = Client::new();

    let r = client.get(gw.http_addr, "/chunked").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hello, world"[..]));
    assert!(r.header("x-trailer").is_none());
    let r = client.get(gw.http_addr, "/interim").await;
    assert_eq!((r.status, &r.body[..]), (201, &b"ok"[..]));
    assert_eq!(
        backend.connections(),
        1,
        "chunked and interim answers keep the connection"
    );

    let r = client.get(gw.http_addr, "/until-close").await;
    assert_eq!(
        (r.status, &r.body[..]),
        (200, &b"all of it until close"[..])
    );
    let r = client.get(gw.http_addr, "/plain").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        backend.connections(),
        2,
        "a close-delimited body ends its connection"
    );

    // Transfer-Encoding wins over Content-Length, and such a connection is not reused.
    let r = client.get(gw.http_addr, "/both").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"ab"[..]));
    let r = client.get(gw.http_addr, "/plain").await;
    assert_eq!(r.status, 200);
    assert_eq!(backend.connections(), 3);
}

#[tokio::test]
async fn bodiless_responses_do_not_wait_for_a_body() {
    let backend = WireBackend::start(|seen| {
        if seen.head.starts_with("HEAD") {
            // The length of the GET answer, and no body.
            Answer::Bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec())
        } else if seen.head.contains("/204") {
            Answer::Bytes(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec())
        } else if seen.head.contains("/304") {
            Answer::Bytes(b"HTTP/1.1 304 Not Modified\r\netag: \"a\"\r\n\r\n".to_vec())
        } else {
            Answer::Bytes(ok("hello"))
        }
    })
    .await;
    let (gw, _cfg) = gateway(&yaml(&backend)).await;
    let client = Client::new();
    let head = client
        .send(
            Request::head(format!("http://{}/x", gw.http_addr))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), Some("5"));
    assert_eq!(client.get(gw.http_addr, "/204").await.status, 204);
    assert_eq!(client.get(gw.http_addr, "/304").await.status, 304);
    let r = client.get(gw.http_addr, "/x").await;
    assert_eq!(&r.body[..], b"hello");
    assert_eq!(backend.connections(), 1);
}

#[tokio::test]
async fn request_bodies_are_framed_by_the_gateway() {
    let backend = WireBackend::start(|seen| Answer::Bytes(ok(&seen.body.len().to_string()))).await;
    let (gw, _cfg) = gateway(&yaml(&backend)).await;
    let client = Client::new();

    let r = client.get(gw.http_addr, "/get").await;
    assert_eq!(r.status, 200);
    let r = client
        .send(
            Request::post(format!("http://{}/post", gw.http_addr))
                .body(Full::new(Bytes::from(vec![b'a'; 3000])))
                .unwrap(),
        )
        .await;
    assert_eq!(&r.body[..], b"3000");
    let r = client
        .send(
            Request::post(format!("http://{}/empty-post", gw.http_addr))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(&r.body[..], b"0");
    // A chunked request body (no length) goes upstream chunked.
    let raw = client::raw(
        gw.http_addr,
        b"POST /chunked HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with("\r\n\r\n7"), "{raw}");

    // A body larger than what is gathered behind the head streams.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let r = client
        .send(
            Request::put(format!("http://{}/big", gw.http_addr))
                .body(Full::new(Bytes::from(big.clone())))
                .unwrap(),
        )
        .await;
    assert_eq!(&r.body[..], b"100000");

    let seen = backend.seen();
    assert_eq!(seen[4].header("content-length").as_deref(), Some("100000"));
    assert_eq!(seen[4].body, big);
    assert_eq!(backend.connections(), 1, "every answer kept the connection");
    let get = &seen[0];
    assert!(get.head.starts_with("GET /get HTTP/1.1"));
    assert_eq!(get.header("content-length"), None);
    assert_eq!(get.header("transfer-encoding"), None);
    assert_eq!(seen[1].header("content-length").as_deref(), Some("3000"));
    assert_eq!(seen[1].body, vec![b'a'; 3000]);
    assert_eq!(seen[2].header("content-length").as_deref(), Some("0"));
    assert_eq!(
        seen[3].header("transfer-encoding").as_deref(),
        Some("chunked")
    );
    assert_eq!(seen[3].header("content-length"), None);
    assert_eq!(seen[3].body, b"abcdefg");
    assert_eq!(seen[3].header("host").as_deref(), Some("shop"));
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced() {
    // The upstream answers, then closes without saying so (as keep-alive timeouts do).
    let closes_after_answer = WireBackend::start(|_| Answer::BytesThenClose(ok("fresh"))).await;
    let (gw, _cfg) = gateway(&yaml(&closes_after_answer)).await;
    let client = Client::new();
    for _ in 0..5 {
        let r = client.get(gw.http_addr, "/x").await;
        assert_eq!((r.status, &r.body[..]), (200, &b"fresh"[..]));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = client
        .send(
            Request::post(format!("http://{}/x", gw.http_addr))
                .body(Full::new(Bytes::from_static(b"order")))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(closes_after_answer.connections(), 6);

    // The upstream reads the second request on a connection and closes without an
    // answer: a GET goes again on a new connection, a POST is not repeated.
    let drops_second = WireBackend::start(|seen| {
        if seen.nth_on_connection == 2 {
            Answer::Close
        } else {
            Answer::Bytes(ok("first"))
        }
    })
    .await;
    let (gw, _cfg2) = gateway(&yaml(&drops_second)).await;
    assert_eq!(client.get(gw.http_addr, "/a").await.status, 200);
    let r = client.get(gw.http_addr, "/b").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"first"[..]));
    assert_eq!(drops_second.connections(), 2);
    let r = client
        .send(
            Request::post(format!("http://{}/pay", gw.http_addr))
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap(),
        )
        .await;
    assert_eq!(
        r.status, 502,
        "a POST the upstream may have acted on is not sent twice"
    );
    let posts = drops_second
        .seen()
        .iter()
        .filter(|s| s.head.starts_with("POST"))
        .count();
    assert_eq!(posts, 1);
}

#[tokio::test]
async fn malformed_answers_are_bad_gateway() {
    let backend = WireBackend::start(|seen| {
        match seen.path() {
            "/garbage" => Answer::BytesThenClose(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()),
            "/two-lengths" => Answer::Bytes(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc".to_vec(),
            ),
            "/huge-head" => {
                let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
                for i in 0..2000 {
                    head.extend_from_slice(
                        format!("x-filler-{i}: {}\r\n", "v".repeat(40)).as_bytes(),
                    );
                }
                head.extend_from_slice(b"content-length: 0\r\n\r\n");
                Answer::Bytes(head)
            }
            "/switch" => Answer::Bytes(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n".to_vec(),
            ),
            "/cut-head" => Answer::BytesThenClose(b"HTTP/1.1 200 OK\r\ncontent-le".to_vec()),
            "/bad-chunk" => Answer::BytesThenClose(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n".to_vec(),
            ),
            "/cut-body" => Answer::BytesThenClose(
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b".to_vec(),
            ),
            _ => Answer::Bytes(ok("fine")),
        }
    })
    .await;
    let (gw, _cfg) = gateway(&yaml(&backend)).await;
    let client = Client::new();
    for path in [
        "/garbage",
        "/two-lengths",
        "/huge-head",
        "/switch",
        "/cut-head",
    ] {
        let r = client.get(gw.http_addr, path).await;
        assert_eq!(r.status, 502, "{path}");
        assert_eq!(r.json()["status"], 502, "{path}");
    }
    // A body that breaks after the head: the client's connection is cut, so the client
    // cannot take a partial body for a whole one.
    for path in ["/bad-chunk", "/cut-body"] {
        let raw = client::raw(
            gw.http_addr,
            format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        // Either nothing (the head was not flushed yet) or a head and part of the body.
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let complete = body.len() >= 100 || body.ends_with("0\r\n\r\n");
        assert!(!complete, "{path}: {raw}");
    }
    let r = client.get(gw.http_addr, "/fine").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"fine"[..]));
    let metrics = gw.metrics();
    let invalid = metric(
        &metrics,
        &format!(
            "portico_upstream_requests_total{{endpoint=\"{}\",outcome=\"invalid_response\",upstream=\"svc\"}}",
            backend.address()
        ),
    );
    assert_eq!(invalid, 5.0, "{metrics}");
}
