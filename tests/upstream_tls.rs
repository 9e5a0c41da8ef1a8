//! HTTPS to upstreams, end to end: a rustls backend with a test CA (rcgen) on loopback,
//! through the real gateway. Verified, refused for each reason a certificate can be
//! wrong, mTLS, keep-alive over TLS, health checks over TLS, and the config errors.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use support::tls::{acceptor, serve_tls, Leaf, TestCa};
use support::{eventually, gateway, metric, Client};
use tokio::net::TcpListener;

/// A TLS backend answering `{"backend": name, "path": ...}`; returns its address.
async fn tls_backend(
    name: &'static str,
    leaf: &Leaf,
    client_ca: Option<&TestCa>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = serve_tls(listener, acceptor(leaf, client_ca), move |req| async move {
        let body = serde_json::json!({"backend": name, "path": req.uri().path()}).to_string();
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    });
    (addr.to_string(), task)
}

fn config(target: &str, tls: &str, extra: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0, access_log: false }}\nadmin: {{ listen: 127.0.0.1:0 }}\nupstreams:\n  secure:\n    targets: [\"{target}\"]\n    tls: {{ {tls} }}\n{extra}routes:\n  - name: secure\n    upstream: secure\n"
    )
}

#[tokio::test]
async fn an_https_upstream_is_verified_and_its_connections_are_kept_alive() {
    let ca = TestCa::new("portico test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], false);
    let (target, _server) = tls_backend("secure", &leaf, None).await;
    // The name verified is the target's host (an IP address here) unless server_name says.
    for tls in [
        format!("ca_file: {}", ca.ca_path()),
        format!("ca_file: {}, server_name: localhost", ca.ca_path()),
    ] {
        let (gw, _f) = gateway(&config(&target, &tls, "")).await;
        let client = Client::new();
        for _ in 0..5 {
            let r = client.get(gw.http_addr, "/orders").await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["backend"], "secure");
        }
        let opened = metric(
            &gw.metrics(),
            &format!("portico_upstream_connections_opened_total{{endpoint=\"{target}\",upstream=\"secure\"}}"),
        );
        assert_eq!(
            opened, 1.0,
            "five sequential requests share one TLS connection"
        );
        assert_eq!(
            metric(
                &gw.metrics(),
                "portico_upstream_tls_handshakes_total{result=\"ok\",upstream=\"secure\"}"
            ),
            1.0
        );
        assert_eq!(
            metric(
                &gw.metrics(),
                "portico_upstream_tls_insecure{upstream=\"secure\"}"
            ),
            0.0
        );
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn a_certificate_that_cannot_be_trusted_gives_502_and_is_counted() {
    let ca = TestCa::new("portico test CA");
    let other_ca = TestCa::new("someone else's CA");
    let good = ca.leaf(&["localhost", "127.0.0.1"], false);
    let expired = ca.leaf(&["localhost", "127.0.0.1"], true);
    let (good_target, _a) = tls_backend("good", &good, None).await;
    let (expired_target, _b) = tls_backend("expired", &expired, None).await;
    let cases = [
        (
            "wrong CA",
            good_target.clone(),
            format!("ca_file: {}", other_ca.ca_path()),
        ),
        (
            "wrong name",
            good_target.clone(),
            format!("ca_file: {}, server_name: payments.internal", ca.ca_path()),
        ),
        (
            "expired",
            expired_target,
            format!("ca_file: {}", ca.ca_path()),
        ),
    ];
    for (case, target, tls) in cases {
        let (gw, _f) = gateway(&config(&target, &tls, "")).await;
        let r = Client::new().get(gw.http_addr, "/x").await;
        assert_eq!(r.status, 502, "{case}");
        assert_eq!(r.json()["status"], 502, "{case}");
        let message = r.json()["error"].as_str().unwrap_or("").to_string();
        assert!(message.contains("TLS handshake"), "{case}: {message}");
        assert_eq!(
            metric(
                &gw.metrics(),
                "portico_upstream_tls_handshakes_total{result=\"failed\",upstream=\"secure\"}"
            ),
            1.0,
            "{case}"
        );
        gw.shutdown().await;
    }
    // insecure_skip_verify accepts the untrusted certificate, and says so in metrics.
    let (gw, _f) = gateway(&config(&good_target, "insecure_skip_verify: true", "")).await;
    assert_eq!(Client::new().get(gw.http_addr, "/x").await.status, 200);
    assert_eq!(
        metric(
            &gw.metrics(),
            "portico_upstream_tls_insecure{upstream=\"secure\"}"
        ),
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_mtls_backend_serves_the_gateway_only_with_its_client_certificate() {
    let ca = TestCa::new("portico test CA");
    let clients_ca = TestCa::new("client CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], false);
    let gateway_cert = clients_ca.leaf(&["portico-gateway"], false);
    let (target, _server) = tls_backend("mtls", &leaf, Some(&clients_ca)).await;
    let with = format!(
        "ca_file: {}, client_cert: {}, client_key: {}",
        ca.ca_path(),
        gateway_cert.cert_path(),
        gateway_cert.key_path()
    );
    let (gw, _f) = gateway(&config(&target, &with, "")).await;
    let r = Client::new().get(gw.http_addr, "/x").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    gw.shutdown().await;
    let without = format!("ca_file: {}", ca.ca_path());
    let (gw, _f) = gateway(&config(&target, &without, "")).await;
    assert_eq!(Client::new().get(gw.http_addr, "/x").await.status, 502);
    gw.shutdown().await;
}

#[tokio::test]
async fn health_checks_go_over_tls_too() {
    let ca = TestCa::new("portico test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], false);
    let (target, _server) = tls_backend("secure", &leaf, None).await;
    let health = "    health_check: { path: /health, interval: 100ms, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 1 }\n";
    let (gw, _f) = gateway(&config(
        &target,
        &format!("ca_file: {}", ca.ca_path()),
        health,
    ))
    .await;
    let client = Client::new();
    let admin = gw.admin_addr.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            let upstreams = client.get(admin, "/upstreams").await.json();
            upstreams["upstreams"]["secure"]["endpoints"][0]["health"] == "passing"
        })
        .await,
        "the TLS health check passes"
    );
    gw.shutdown().await;
    // With a CA that does not sign the backend, the check fails.
    let other = TestCa::new("other");
    let (gw, _f) = gateway(&config(
        &target,
        &format!("ca_file: {}", other.ca_path()),
        health,
    ))
    .await;
    let admin = gw.admin_addr.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            let upstreams = client.get(admin, "/upstreams").await.json();
            upstreams["upstreams"]["secure"]["endpoints"][0]["health"] == "failing"
        })
        .await,
        "an untrusted certificate fails the check"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_tls_files_are_config_errors_and_a_reload_with_them_keeps_the_old_config() {
    let ca = TestCa::new("portico test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], false);
    let other = ca.leaf(&["other"], false);
    let not_pem = support::tempfile_path::TempPath::new("not-pem", "pem");
    std::fs::write(not_pem.path(), "hello").unwrap();
    let cases = [
        (
            "ca_file: /nonexistent/ca.pem".to_string(),
            "upstreams.secure.tls.ca_file",
        ),
        (
            format!("ca_file: {}", not_pem.path().display()),
            "upstreams.secure.tls.ca_file",
        ),
        (
            format!(
                "client_cert: {}, client_key: {}",
                leaf.cert_path(),
                other.key_path()
            ),
            "upstreams.secure.tls.client_key",
        ),
        (
            format!("client_cert: {}", leaf.cert_path()),
            "upstreams.secure.tls.client_key",
        ),
        (
            "server_name: \"not a name\"".to_string(),
            "upstreams.secure.tls.server_name",
        ),
    ];
    for (tls, path) in cases {
        let err = portico::check::parse(&config("127.0.0.1:9", &tls, ""))
            .expect_err(&tls)
            .to_string();
        assert!(err.contains(path), "{tls}: {err}");
    }
    let insecure =
        portico::check::parse(&config("127.0.0.1:9", "insecure_skip_verify: true", "")).unwrap();
    let warnings = portico::check::warnings(&insecure);
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("upstreams.secure.tls.insecure_skip_verify"));

    // A running gateway refuses a reload whose CA file is gone, and keeps serving.
    let (target, _server) = tls_backend("secure", &leaf, None).await;
    let (gw, file) = gateway(&config(&target, &format!("ca_file: {}", ca.ca_path()), "")).await;
    assert_eq!(Client::new().get(gw.http_addr, "/x").await.status, 200);
    std::fs::write(
        file.path(),
        config(&target, "ca_file: /nonexistent/ca.pem", ""),
    )
    .unwrap();
    assert!(gw.reload().is_err());
    assert_eq!(Client::new().get(gw.http_addr, "/x").await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_rereads_a_renewed_ca_file_under_the_same_path() {
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let leaf = new_ca.leaf(&["localhost", "127.0.0.1"], false);
    let (target, _server) = tls_backend("secure", &leaf, None).await;
    // The configured CA file holds the old CA: the backend's certificate is not trusted.
    let ca_file = support::tempfile_path::TempPath::new("renewed-ca", "pem");
    std::fs::copy(old_ca.ca_file.path(), ca_file.path()).unwrap();
    let yaml = config(
        &target,
        &format!("ca_file: {}", ca_file.path().display()),
        "",
    );
    let (gw, _f) = gateway(&yaml).await;
    assert_eq!(Client::new().get(gw.http_addr, "/x").await.status, 502);
    // Same config, renewed file: the reload keeps the upstream and reads the file again.
    std::fs::copy(new_ca.ca_file.path(), ca_file.path()).unwrap();
    gw.reload().unwrap();
    assert_eq!(Client::new().get(gw.http_addr, "/x").await.status, 200);
    gw.shutdown().await;
}
