//! The binary with one runtime per core (`--threads N`, the default scheduler): every
//! runtime accepts and serves connections of its own, upstream connections stay with the
//! runtime that opened them, a SIGTERM drains all of them, and a port already in use is
//! refused as it is with one runtime.

mod support;

use std::time::Duration;

use support::binary::{http_addr, signal, start_binary_logged, terminate, wait_with_stdout};
use support::{eventually, Backend, Client};

const TWO_RUNTIMES: &[&str] = &["--threads", "2", "--watch-interval", "0"];

fn yaml(backend: &Backend, access_log: bool) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  access_log: {access_log}\nadmin:\n  listen: 127.0.0.1:0\nupstreams:\n  be: {{ targets: [\"{}\"] }}\nroutes:\n  - name: all\n    upstream: be\n",
        backend.address()
    )
}

/// `admin_addr` is logged as `Some(ADDR)`.
fn admin_addr(fields: &serde_json::Value) -> std::net::SocketAddr {
    let text = fields["admin_addr"].as_str().expect("an admin_addr field");
    text.trim_start_matches("Some(")
        .trim_end_matches(')')
        .parse()
        .expect("an admin address")
}

/// The `portico_connections_accepted_total` series, by worker.
fn accepted_by_worker(metrics: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("portico_connections_accepted_total{worker=\""))
        .filter_map(|rest| {
            let (worker, value) = rest.split_once("\"} ")?;
            Some((worker.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

async fn metrics_text(admin: std::net::SocketAddr) -> String {
    let reply = Client::new().get(admin, "/metrics").await;
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The sum of a counter's series.
fn total(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn every_runtime_serves_connections_and_all_of_them_drain_on_sigterm() {
    let be = Backend::start("be").await;
    let file = support::tempfile_path::TempPath::new("portico-workers", "yaml");
    std::fs::write(file.path(), yaml(&be, true)).unwrap();
    let (child, fields) =
        start_binary_logged(file.path(), TWO_RUNTIMES, std::process::Stdio::piped());
    let addr = http_addr(&fields);
    let admin = admin_addr(&fields);

    // Forty connections, one request each: the kernel spreads them over both sockets.
    for _ in 0..40 {
        assert_eq!(Client::new().get(addr, "/x").await.status, 200);
    }
    let metrics = metrics_text(admin).await;
    let accepted = accepted_by_worker(&metrics);
    assert_eq!(accepted.len(), 2, "one series per runtime:\n{metrics}");
    assert_eq!(accepted.iter().map(|(_, n)| n).sum::<u64>(), 40);
    assert!(
        accepted.iter().all(|(_, n)| *n > 0),
        "both runtimes accepted connections: {accepted:?}"
    );

    // Slow requests on fresh connections are in flight on both runtimes at the SIGTERM.
    let in_flight: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { Client::new().get(addr, "/slow/800").await }))
        .collect();
    assert!(eventually(Duration::from_secs(10), || async { be.hits() == 60 }).await);
    signal(&child, "TERM");
    for request in in_flight {
        assert_eq!(request.await.unwrap().status, 200);
    }
    let (status, text) = wait_with_stdout(child).await;
    assert!(status.expect("wait").success());
    let slow_lines = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["path"] == "/slow/800" && v["status"] == 200)
        .count();
    assert_eq!(slow_lines, 20, "access log:\n{text}");
}

#[tokio::test]
async fn upstream_connections_are_reused_within_each_runtime() {
    let be = Backend::start("be").await;
    let file = support::tempfile_path::TempPath::new("portico-workers-pool", "yaml");
    std::fs::write(file.path(), yaml(&be, false)).unwrap();
    let (child, fields) =
        start_binary_logged(file.path(), TWO_RUNTIMES, std::process::Stdio::null());
    let addr = http_addr(&fields);
    // One client connection after another: each runtime opens upstream connections of
    // its own once, and reuses them for every later request it serves.
    for _ in 0..60 {
        assert_eq!(Client::new().get(addr, "/x").await.status, 200);
    }
    let metrics = metrics_text(admin_addr(&fields)).await;
    let opened = total(&metrics, "portico_upstream_connections_opened_total");
    assert!(
        (1..=2).contains(&opened),
        "sequential requests over two runtimes opened {opened} upstream connections"
    );
    assert!(terminate(child).await.success());
}

/// A second gateway with several runtimes on the port of a first one (whose sockets
/// allow port sharing) must not join it and take half its connections.
#[tokio::test]
async fn a_port_in_use_is_refused_with_several_runtimes_too() {
    let be = Backend::start("be").await;
    let first_file = support::tempfile_path::TempPath::new("portico-workers-first", "yaml");
    std::fs::write(first_file.path(), yaml(&be, false)).unwrap();
    let (first, fields) =
        start_binary_logged(first_file.path(), TWO_RUNTIMES, std::process::Stdio::null());
    let addr = http_addr(&fields).to_string();
    let file = support::tempfile_path::TempPath::new("portico-workers-taken", "yaml");
    std::fs::write(
        file.path(),
        format!(
            "server:\n  listen: {addr}\n  access_log: false\nupstreams:\n  be: {{ targets: [\"127.0.0.1:9\"] }}\nroutes:\n  - name: all\n    upstream: be\n"
        ),
    )
    .unwrap();
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["run", "--threads", "2", "--watch-interval", "0", "-c"])
        .arg(file.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run portico");
    let out = tokio::task::spawn_blocking(move || {
        let mut second = second;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while second.try_wait().expect("try_wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = second.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        second.wait_with_output().expect("wait")
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "a second gateway started on {addr}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr),
        "the error names the address: {stderr}"
    );
    assert!(terminate(first).await.success());
}

/// `--scheduler work-stealing`: one multi-thread runtime with one accept loop, which
/// serves and drains like the per-core one.
#[tokio::test]
async fn the_work_stealing_scheduler_serves_from_one_accept_loop() {
    let be = Backend::start("be").await;
    let file = support::tempfile_path::TempPath::new("portico-workers-stealing", "yaml");
    std::fs::write(file.path(), yaml(&be, false)).unwrap();
    let (child, fields) = start_binary_logged(
        file.path(),
        &[
            "--threads",
            "2",
            "--scheduler",
            "work-stealing",
            "--watch-interval",
            "0",
        ],
        std::process::Stdio::null(),
    );
    let addr = http_addr(&fields);
    for _ in 0..10 {
        assert_eq!(Client::new().get(addr, "/x").await.status, 200);
    }
    let metrics = metrics_text(admin_addr(&fields)).await;
    assert_eq!(
        accepted_by_worker(&metrics),
        vec![("0".to_string(), 10)],
        "{metrics}"
    );
    assert!(terminate(child).await.success());
}
