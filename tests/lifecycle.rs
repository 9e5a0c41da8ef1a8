//! End-to-end tests of the gateway's lifecycle: TLS with SNI, reloads (admin, file watch,
//! broken files, requests in flight), graceful shutdown, and the `portico` binary itself.

mod support;

use std::process::Command;
use std::time::Duration;

use http::Request;
use http_body_util::Full;
use support::binary::{signal, start_binary, wait_with_stdout};
use support::{client, eventually, gateway, Backend, Client};

fn simple_yaml(backend: &Backend, extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\n{extra}\nupstreams:\n  be: {{ targets: [\"{}\"] }}\nroutes:\n  - name: all\n    upstream: be\n",
        backend.address()
    )
}

#[tokio::test]
async fn tls_picks_the_certificate_by_sni_and_speaks_h1_and_h2() {
    let be = Backend::start("be").await;
    let dir = support::tempfile_path::TempPath::new("portico-certs", "d");
    std::fs::create_dir_all(dir.path()).unwrap();
    let mut ders = Vec::new();
    let mut entries = String::new();
    for host in ["a.test", "b.test"] {
        let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
        let cert = dir.path().join(format!("{host}.pem"));
        let key = dir.path().join(format!("{host}-key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        ders.push(ck.cert.der().to_vec());
        entries.push_str(&format!(
            "      - {{ cert: \"{}\", key: \"{}\", hosts: [{host}] }}\n",
            cert.display(),
            key.display()
        ));
    }
    let extra = format!("  tls:\n    listen: 127.0.0.1:0\n    certificates:\n{entries}");
    let (gw, _file) = gateway(&simple_yaml(&be, &extra)).await;
    let https = gw.https_addr.expect("https listener");

    let (reply, leaf) = client::tls_get(https, "b.test", &ders, false, "/x").await;
    assert_eq!(reply.status, 200);
    assert_eq!(leaf, ders[1], "b.test must get its own certificate");
    assert_eq!(reply.echoed("x-forwarded-proto"), vec!["https"]);

    let (reply, leaf) = client::tls_get(https, "a.test", &ders, true, "/y").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(leaf, ders[0]);
    assert_eq!(reply.json()["path"], "/y");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(dir.path());
}

#[tokio::test]
async fn reload_applies_good_files_and_keeps_serving_through_broken_ones() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (gw, file) = gateway(&simple_yaml(&a, "")).await;
    let client = Client::new();
    assert_eq!(client.get(gw.http_addr, "/x").await.json()["backend"], "a");

    let count = |result: &str| {
        support::metric(
            &gw.metrics(),
            &format!("portico_config_reloads_total{{result=\"{result}\"}}"),
        )
    };
    let (ok_before, error_before) = (count("success"), count("error"));
    std::fs::write(file.path(), simple_yaml(&b, "")).unwrap();
    gw.reload().expect("valid config reloads");
    assert_eq!(client.get(gw.http_addr, "/x").await.json()["backend"], "b");
    // The file watcher may reload the same change too: at least one more each.
    assert!(count("success") >= ok_before + 1.0);
    assert_eq!(count("error"), error_before);

    std::fs::write(
        file.path(),
        "server:\n  listen: nope\nroutes:\n  - name: x\n    upstream: ghost\n",
    )
    .unwrap();
    let err = gw.reload().expect_err("broken config is refused");
    let text = err.to_string();
    assert!(text.contains("server.listen"), "{text}");
    assert!(text.contains("routes[0].upstream"), "{text}");
    assert_eq!(client.get(gw.http_addr, "/x").await.json()["backend"], "b");
    assert!(
        count("error") >= error_before + 1.0,
        "the refused reload was not counted"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_changed_file_is_picked_up_by_the_watcher() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (gw, file) = gateway(&simple_yaml(&a, "")).await;
    let client = Client::new();
    assert_eq!(client.get(gw.http_addr, "/x").await.json()["backend"], "a");
    std::fs::write(file.path(), simple_yaml(&b, "")).unwrap();
    let switched = eventually(Duration::from_secs(10), || {
        let client = client.clone();
        let addr = gw.http_addr;
        async move { client.get(addr, "/x").await.json()["backend"] == "b" }
    })
    .await;
    assert!(switched, "the watcher did not reload the changed file");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let (gw, file) = gateway(&simple_yaml(&a, "")).await;
    let client = Client::new();
    let addr = gw.http_addr;
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.get(addr, "/slow/1000").await })
    };
    assert!(eventually(Duration::from_secs(5), || async { a.hits() == 1 }).await);
    std::fs::write(file.path(), simple_yaml(&b, "")).unwrap();
    gw.reload().expect("reload");
    assert_eq!(client.get(addr, "/after").await.json()["backend"], "b");
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["backend"], "a");
    gw.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let be = Backend::start("be").await;
    let (gw, _file) = gateway(&simple_yaml(&be, "  shutdown_grace: 10s")).await;
    let addr = gw.http_addr;
    let client = Client::new();
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.get(addr, "/slow/800").await })
    };
    assert!(eventually(Duration::from_secs(5), || async { be.hits() == 1 }).await);
    gw.shutdown().await;
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200);
    // The listener is closed: new connections are refused.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_binary_drains_and_exits_zero_on_sigterm() {
    let be = Backend::start("be").await;
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: false\nupstreams:\n  be: {{ targets: [\"{}\"] }}\nroutes:\n  - name: all\n    upstream: be\n",
        be.address()
    );
    let file = support::tempfile_path::TempPath::new("portico-bin", "yaml");
    std::fs::write(file.path(), yaml).unwrap();
    let (mut child, addr) = start_binary(file.path(), &[], std::process::Stdio::null());
    let client = Client::new();
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.get(addr, "/slow/800").await })
    };
    assert!(eventually(Duration::from_secs(5), || async { be.hits() == 1 }).await);
    signal(&child, "TERM");
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .expect("wait");
    assert!(status.success(), "exit status {status:?}");
}

/// Every request answered across a SIGTERM has its access log line: the writer is
/// drained and flushed before the process exits.
#[tokio::test]
async fn every_request_answered_across_sigterm_is_logged() {
    let be = Backend::start("be").await;
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: true\nupstreams:\n  be: {{ targets: [\"{}\"] }}\nroutes:\n  - name: all\n    upstream: be\n",
        be.address()
    );
    let file = support::tempfile_path::TempPath::new("portico-log", "yaml");
    std::fs::write(file.path(), yaml).unwrap();
    let (child, addr) = start_binary(file.path(), &[], std::process::Stdio::piped());
    let client = Client::new();
    let in_flight: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get(addr, "/slow/800").await })
        })
        .collect();
    assert!(eventually(Duration::from_secs(10), || async { be.hits() == 20 }).await);
    signal(&child, "TERM");
    for request in in_flight {
        assert_eq!(request.await.unwrap().status, 200);
    }
    let (status, text) = wait_with_stdout(child).await;
    assert!(status.expect("wait").success());
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["route"] == "all")
        .collect();
    assert_eq!(lines.len(), 20, "access log:\n{text}");
    assert!(lines.iter().all(|l| l["status"] == 200));
}

#[test]
fn check_accepts_every_shipped_config() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    // config/shop.yaml trusts the demo's test CA, which `shop all --tls-dir config/certs`
    // (scripts/demo) makes when it is missing; `check` reads it.
    shop_backends::tls::ensure_certs(&dir.join("certs")).expect("demo certificates");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        // config/container.yaml takes its admin token from the environment.
        let out = Command::new(env!("CARGO_BIN_EXE_portico"))
            .args(["check", "-c"])
            .arg(&path)
            .env("PORTICO_ADMIN_TOKEN", "a-token-for-check")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} failed:\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 1);
}

#[test]
fn check_lists_every_problem_with_its_path_and_position() {
    let broken = "server:\n  listen: 127.0.0.1:8080\n  limits: { max_request_body: lots }\nupstreams:\n  users:\n    targets: [\"127.0.0.1\"]\n  orders:\n    targets: [{ address: \"127.0.0.1:3003\", weight: 0 }]\n    colour: blue\nroutes:\n  - name: users\n    match: { path_prefix: /api/users }\n    upstream: users\n  - name: orders\n    match: { path_prefix: /api/orders }\n    upstream: ordrs\n  - name: users\n    match: { path: \"/x/{id\" }\n    upstream: users\n    rewrite: { strip_prefix: api }\n";
    let file = support::tempfile_path::TempPath::new("portico-broken", "yaml");
    std::fs::write(file.path(), broken).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "-c"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "server.limits.max_request_body: invalid size",
        "upstreams.users.targets[0]: invalid target \"127.0.0.1\"",
        "upstreams.orders.colour: unknown field",
        "routes[1].upstream: unknown upstream \"ordrs\" (line 16, column 15)",
        "routes[2].name: duplicate route name",
        "routes[2].match.path",
        "routes[2].rewrite",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn check_reports_unset_environment_variables() {
    let file = support::tempfile_path::TempPath::new("portico-env", "yaml");
    std::fs::write(
        file.path(),
        "server:\n  listen: ${PORTICO_TEST_SURELY_UNSET_VAR}\n# ${ALSO_UNSET} in a comment is fine\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "-c"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("PORTICO_TEST_SURELY_UNSET_VAR"), "{text}");
    assert!(text.contains("line 2"), "{text}");
    assert!(!text.contains("ALSO_UNSET"), "{text}");
    let ok = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["check", "-c"])
        .arg(file.path())
        .env("PORTICO_TEST_SURELY_UNSET_VAR", "127.0.0.1:8080")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_not_queued() {
    let be = Backend::start("be").await;
    let (gw, _file) = gateway(&simple_yaml(&be, "  limits: { max_connections: 2 }")).await;
    let addr = gw.http_addr;
    // Two connections hold their slots with requests in flight.
    let c1 = tokio::spawn(client::raw(
        addr,
        b"GET /slow/1500 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(10),
    ));
    let c2 = tokio::spawn(client::raw(
        addr,
        b"GET /slow/1500 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(10),
    ));
    assert!(eventually(Duration::from_secs(5), || async { be.hits() == 2 }).await);
    let third = client::raw(
        addr,
        b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(third.is_empty(), "third connection was served: {third}");
    assert!(c1.await.unwrap().starts_with("HTTP/1.1 200"));
    assert!(c2.await.unwrap().starts_with("HTTP/1.1 200"));
    assert!(gw.metrics().contains("portico_connections_refused_total 1"));
    // Slots are free again.
    let r = Client::new()
        .send(
            Request::get(format!("http://{addr}/again"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_request_and_sighup_reloads() {
    use std::io::BufRead;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let yaml = |be: &Backend| {
        format!(
            "server:\n  listen: 127.0.0.1:0\nupstreams:\n  be: {{ targets: [\"{}\"] }}\nroutes:\n  - name: all\n    upstream: be\n",
            be.address()
        )
    };
    let file = support::tempfile_path::TempPath::new("portico-log", "yaml");
    std::fs::write(file.path(), yaml(&a)).unwrap();
    let (mut child, addr) = start_binary(
        file.path(),
        &["--watch-interval", "0"],
        std::process::Stdio::piped(),
    );
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    assert!(
        eventually(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    );
    let client = Client::new();
    let reply = client
        .send(
            Request::get(format!("http://{addr}/logged/path?secret=1"))
                .header("x-request-id", "log-me-1")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, 200);
    let line = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let line = rx.recv().await.expect("stdout open");
            if line.contains("log-me-1") {
                return line;
            }
        }
    })
    .await
    .expect("an access log line");
    let record: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(record["request_id"], "log-me-1");
    assert_eq!(record["method"], "GET");
    assert_eq!(record["path"], "/logged/path");
    assert_eq!(record["route"], "all");
    assert_eq!(record["upstream"], "be");
    assert_eq!(record["endpoint"], a.address());
    assert_eq!(record["status"], 200);
    assert_eq!(record["client_ip"], "127.0.0.1");
    assert!(record["duration_ms"].as_f64().is_some());
    assert!(record["bytes_out"].as_u64().is_some_and(|n| n > 0));
    assert!(record["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(
        !line.contains("secret=1"),
        "query strings stay out of the log"
    );

    // SIGHUP reloads the file.
    std::fs::write(file.path(), yaml(&b)).unwrap();
    signal(&child, "HUP");
    let switched = eventually(Duration::from_secs(10), || {
        let client = client.clone();
        async move { client.get(addr, "/x").await.json()["backend"] == "b" }
    })
    .await;
    assert!(switched, "SIGHUP did not reload");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
