//! Test support: real HTTP backends and a real gateway on ephemeral loopback ports, and
//! small clients (HTTP/1.1, h2c, TLS, raw TCP) to drive them.
#![allow(dead_code, unused_imports)]

pub mod backend;
pub mod binary;
pub mod cache_backend;
pub mod client;
pub mod consul;
pub mod flaky;
pub mod otlp;
pub mod redis_server;
pub mod scripted;
pub mod tls;
pub mod wire;

use std::time::Duration;

use portico::{config, Gateway, GatewayHandle, Options};

pub use backend::Backend;
pub use cache_backend::{CacheBackend, Script};
pub use client::{Client, Reply};

/// Starts a gateway from YAML text. The text is written to a temporary file, so reloads
/// from the file work; the access log is off unless the YAML turns it on.
pub async fn gateway(yaml: &str) -> (GatewayHandle, tempfile_path::TempPath) {
    let file = tempfile_path::TempPath::new("portico", "yaml");
    std::fs::write(file.path(), yaml).expect("write config");
    let config = portico::check::load_file(file.path()).unwrap_or_else(|e| panic!("config:\n{e}"));
    let handle = Gateway::start(Options {
        config,
        config_path: Some(file.path().to_path_buf()),
        watch_interval: Some(Duration::from_millis(200)),
    })
    .await
    .expect("gateway starts");
    (handle, file)
}

/// Which backend answered each of `n` GET /x requests (errors count as "<status>").
pub async fn spread(
    client: &Client,
    addr: std::net::SocketAddr,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r: Reply = client.get(addr, "/x").await;
        let key = if r.status == 200 {
            r.json()["backend"].as_str().unwrap_or("?").to_string()
        } else {
            r.status.to_string()
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// The value of the first metric line starting with `prefix` (0 when absent).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Asserts that the config `yaml` is refused with an issue at `path` (`jwt.a.secret`).
pub fn assert_refused_at(yaml: &str, path: &str) {
    let err = portico::check::parse(yaml).expect_err(path);
    assert!(
        err.issues.iter().any(|i| i.path == path),
        "expected {path}, got {err}"
    );
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub mod tempfile_path {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    static NEXT: AtomicUsize = AtomicUsize::new(0);

    /// A path in the temp dir for a file or a directory, removed on drop.
    pub struct TempPath(PathBuf);

    impl TempPath {
        pub fn new(prefix: &str, ext: &str) -> TempPath {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("{prefix}-{}-{n}.{ext}", std::process::id());
            TempPath(std::env::temp_dir().join(name))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            // A directory made at this path goes too.
            let _ = std::fs::remove_file(&self.0);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
