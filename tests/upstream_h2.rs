//! HTTP/2 to upstreams, end to end: an h2c backend (hyper, prior knowledge) and an h2
//! backend over TLS (ALPN h2, a CA made by rcgen), through the real gateway with HTTP/1.1
//! clients. Concurrent requests share one connection; the backend sees HTTP/2 with the
//! authority in the target; the protocol keys are checked.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::tls::{Leaf, TestCa};
use support::{gateway, metric, Client};
use tokio::net::TcpListener;

/// An HTTP/2-only backend answering `{"version", "authority", "path"}`; counts the
/// connections it accepted.
async fn h2_backend(tls: Option<&Leaf>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acceptor = tls.map(|leaf| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.cert.clone()], leaf.key.clone_key())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    // A little time per request, so concurrent requests overlap.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    let body = serde_json::json!({
                        "version": format!("{:?}", req.version()),
                        "authority": req.uri().authority().map(|a| a.to_string()),
                        "host": req.headers().get("host").map(|h| h.to_str().unwrap_or("").to_string()),
                        "te": req.headers().get("te").map(|h| h.to_str().unwrap_or("").to_string()),
                        "path": req.uri().path(),
                    })
                    .to_string();
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                match acceptor {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    (addr.to_string(), accepted)
}

fn config(target: &str, upstream_extra: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0, access_log: false }}\nupstreams:\n  grpcish:\n    targets: [\"{target}\"]\n{upstream_extra}routes:\n  - name: all\n    upstream: grpcish\n"
    )
}

#[tokio::test]
async fn h2c_upstream_serves_http1_clients_over_one_multiplexed_connection() {
    let (target, accepted) = h2_backend(None).await;
    let (gw, _f) = gateway(&config(&target, "    protocol: h2c\n")).await;
    let client = Client::new();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (client, addr) = (client.clone(), gw.http_addr);
        calls.spawn(async move { client.get(addr, &format!("/item/{i}")).await });
    }
    while let Some(reply) = calls.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["version"], "HTTP/2.0");
        assert!(reply.json()["path"].as_str().unwrap().starts_with("/item/"));
        assert_eq!(
            reply.json()["host"],
            serde_json::Value::Null,
            "Host becomes :authority"
        );
        assert!(reply.json()["authority"].is_string());
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "40 concurrent requests, one connection"
    );
    // `TE: trailers` (what gRPC clients send) reaches an HTTP/2 upstream; other TE values
    // are hop-by-hop and do not.
    let with_te = support::client::get(&client, gw.http_addr, "/te", &[("te", "trailers")]).await;
    assert_eq!(with_te.json()["te"], "trailers");
    let other_te = support::client::get(&client, gw.http_addr, "/te", &[("te", "gzip")]).await;
    assert_eq!(other_te.json()["te"], serde_json::Value::Null);
    assert_eq!(
        metric(
            &gw.metrics(),
            &format!("portico_upstream_connections_opened_total{{endpoint=\"{target}\",upstream=\"grpcish\"}}")
        ),
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn h2_over_tls_negotiates_h2_with_alpn() {
    let ca = TestCa::new("h2 CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], false);
    let (target, accepted) = h2_backend(Some(&leaf)).await;
    let extra = format!(
        "    protocol: h2\n    tls: {{ ca_file: {} }}\n",
        ca.ca_path()
    );
    let (gw, _f) = gateway(&config(&target, &extra)).await;
    let client = Client::new();
    for _ in 0..3 {
        let reply = client.get(gw.http_addr, "/x").await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["version"], "HTTP/2.0");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn auto_speaks_what_each_endpoint_chooses_in_alpn() {
    let ca = TestCa::new("auto CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], false);
    let extra = format!(
        "    protocol: auto\n    tls: {{ ca_file: {} }}\n",
        ca.ca_path()
    );
    // An HTTP/2 server: a concurrent burst learns h2 on the first connection and shares it.
    let (target, accepted) = h2_backend(Some(&leaf)).await;
    let (gw, _f) = gateway(&config(&target, &extra)).await;
    let client = Client::new();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (client, addr) = (client.clone(), gw.http_addr);
        calls.spawn(async move { client.get(addr, &format!("/burst/{i}")).await });
    }
    while let Some(reply) = calls.join_next().await {
        let reply = reply.unwrap();
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["version"], "HTTP/2.0");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for the burst"
    );
    gw.shutdown().await;

    // An HTTP/1.1-only server (ALPN http/1.1): the same config speaks HTTP/1.1 to it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h1_target = listener.local_addr().unwrap().to_string();
    let task = support::tls::serve_tls(
        listener,
        support::tls::acceptor(&leaf, None),
        |req: Request<Incoming>| async move {
            let body = serde_json::json!({ "version": format!("{:?}", req.version()) });
            Response::new(Full::new(Bytes::from(body.to_string())))
        },
    );
    let (gw, _f) = gateway(&config(&h1_target, &extra)).await;
    for _ in 0..3 {
        let reply = client.get(gw.http_addr, "/x").await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["version"], "HTTP/1.1");
    }
    gw.shutdown().await;
    task.abort();
}

#[test]
fn protocol_keys_are_checked() {
    for (extra, message) in [
        ("    protocol: h2\n", "h2 needs tls"),
        (
            "    protocol: h2c\n    tls: {}\n",
            "h2c is HTTP/2 without TLS",
        ),
        ("    protocol: auto\n", "auto chooses by ALPN"),
    ] {
        let err = portico::check::parse(&config("127.0.0.1:9", extra))
            .expect_err(extra)
            .to_string();
        assert!(err.contains("upstreams.grpcish.protocol"), "{err}");
        assert!(err.contains(message), "{err}");
    }
    assert!(portico::check::parse(&config("127.0.0.1:9", "    protocol: http1\n")).is_ok());
}

/// An h2c backend that sends GOAWAY (a graceful close) after every `per_connection`
/// requests on a connection, as servers do on restart or at a request cap.
async fn goaway_backend(per_connection: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let served = Arc::new(AtomicUsize::new(0));
                let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
                let service = {
                    let served = served.clone();
                    service_fn(move |_req: Request<Incoming>| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        let tx = tx.clone();
                        async move {
                            if n == per_connection {
                                let _ = tx.try_send(());
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"{\"ok\":true}"),
                            )))
                        }
                    })
                };
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = rx.recv() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    (addr.to_string(), accepted)
}

#[tokio::test]
async fn goaway_mid_run_loses_no_idempotent_request() {
    let (target, accepted) = goaway_backend(5).await;
    let (gw, _f) = gateway(&config(&target, "    protocol: h2c\n")).await;
    let client = Client::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for round in 0..10 {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..4 {
            let (client, addr) = (client.clone(), gw.http_addr);
            calls.spawn(async move { client.get(addr, &format!("/r{round}/{i}")).await.status });
        }
        while let Some(status) = calls.join_next().await {
            *statuses.entry(status.unwrap()).or_default() += 1;
        }
    }
    assert_eq!(statuses, std::collections::BTreeMap::from([(200, 40)]));
    assert!(
        accepted.load(Ordering::SeqCst) >= 2,
        "the backend closed connections with GOAWAY and new ones were opened"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn health_checks_speak_http2_to_an_h2c_upstream() {
    let (target, _accepted) = h2_backend(None).await;
    let extra = "    protocol: h2c\n    health_check: { path: /health, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1 }\n";
    let yaml = config(&target, extra).replace("routes:", "admin: { listen: 127.0.0.1:0 }\nroutes:");
    let (gw, _f) = gateway(&yaml).await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();
    assert!(
        support::eventually(std::time::Duration::from_secs(10), || async {
            let upstreams = client.get(admin, "/upstreams").await.json();
            upstreams["upstreams"]["grpcish"]["endpoints"][0]["health"] == "passing"
        })
        .await,
        "the health check passes over HTTP/2 (the backend speaks nothing else)"
    );
    gw.shutdown().await;
}
