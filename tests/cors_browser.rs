//! CORS in a real browser: headless Chromium loads a storefront page from one loopback
//! origin, and the page calls the API on Portico's origin with
//! `fetch(..., {credentials: "include"})`. The page reports what it saw to the server that
//! served it; the test asserts on that report, which is what a user's page would get.
//!
//! Skipped, with the reason printed, where no Chromium is installed (`.ci/run` installs
//! Debian's `chromium`).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::tempfile_path::TempPath;
use support::{gateway, metric, Backend, Client};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The page: a GET with credentials, then a PUT with a custom header (which needs a
/// preflight), each recorded as what the page could read, then reported. The API's
/// origin comes in the page's query (`?api=http://127.0.0.1:PORT`).
const PAGE: &str = r#"<!doctype html><html><body><script>
const api = new URLSearchParams(location.search).get("api");
async function attempt(init, path) {
  try {
    const r = await fetch(api + path, init);
    const body = await r.json();
    return { status: r.status, backend: body.backend, method: body.method,
             tag: (body.headers["x-trace-tag"] || [])[0] || null,
             requestId: r.headers.get("x-request-id") };
  } catch (e) {
    return { error: String(e) };
  }
}
(async () => {
  document.cookie = "session=abc; path=/";
  const out = {};
  out.get = await attempt({ credentials: "include" }, "/api/store/items");
  out.put = await attempt({ method: "PUT", credentials: "include",
    headers: { "Content-Type": "application/json", "X-Trace-Tag": "t-1" },
    body: "{}" }, "/api/store/items/1");
  await fetch("/report", { method: "POST", body: JSON.stringify(out) });
})();
</script></body></html>"#;

/// A page server on its own origin: `/` serves the page, `POST /report` hands the
/// page's report to the test.
async fn page_server(html: String) -> (SocketAddr, mpsc::Receiver<Value>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind page server");
    let addr = listener.local_addr().expect("page server address");
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let html = html.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let html = html.clone();
                    let tx = tx.clone();
                    async move {
                        let report = req.uri().path() == "/report";
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        if report {
                            if let Ok(v) =
                                serde_json::from_slice::<Value>(&body.unwrap_or_default())
                            {
                                let _ = tx.send(v).await;
                            }
                            return Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())));
                        }
                        let mut r = Response::new(Full::new(Bytes::from(html)));
                        r.headers_mut()
                            .insert("content-type", "text/html".parse().expect("header"));
                        Ok(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// Headless Chromium with the flags this kind of machine needs (no sandbox as root, no
/// background connections to the closed network), on a fresh profile.
struct Browser {
    child: Child,
    _profile: TempPath,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = TempPath::new("portico-chromium", "profile");
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        Browser {
            child,
            _profile: profile,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether headless Chromium can render a blank page at all on this machine (a browser
/// that cannot start says nothing about CORS).
fn browser_runs() -> Result<(), String> {
    let profile = TempPath::new("portico-chromium-probe", "profile");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("it exited with {status}")),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("it did not render about:blank within 30 s".into());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn report_of(page: SocketAddr, api: &str, rx: &mut mpsc::Receiver<Value>) -> Value {
    let _browser = Browser::open(&format!("http://{page}/?api={api}"));
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("the page reported within 60 s")
        .expect("a report")
}

#[tokio::test]
async fn a_browser_reads_the_api_only_from_an_allowed_origin() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("skipped: {CHROMIUM} is not installed (Debian package chromium)");
        return;
    }
    if let Err(reason) = browser_runs() {
        eprintln!("skipped: {CHROMIUM} is installed but cannot render a page here: {reason}");
        return;
    }
    let backend = Backend::start("store").await;
    let (allowed, mut allowed_reports) = page_server(PAGE.to_string()).await;
    let (blocked, mut blocked_reports) = page_server(PAGE.to_string()).await;
    let yaml = format!(
        r#"
server: {{ listen: 127.0.0.1:0, access_log: false }}
admin: {{ listen: 127.0.0.1:0 }}
upstreams:
  b: {{ targets: ["{}"] }}
cors:
  storefront:
    origins: ["http://{allowed}"]
    methods: [GET, PUT]
    headers: [Content-Type, X-Trace-Tag]
    expose: [X-Request-Id]
    credentials: true
    max_age: 10m
routes:
  - name: store
    match: {{ path_prefix: /api/store }}
    cors: storefront
    upstream: b
"#,
        backend.address()
    );
    let (gw, _file) = gateway(&yaml).await;
    let api = format!("http://{}", gw.http_addr);

    // The allowed origin reads both answers, the exposed header included; the PUT went
    // through its preflight with the custom header.
    let seen = report_of(allowed, &api, &mut allowed_reports).await;
    assert_eq!(seen["get"]["status"], 200, "{seen}");
    assert_eq!(seen["get"]["backend"], "store", "{seen}");
    assert!(
        seen["get"]["requestId"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{seen}"
    );
    assert_eq!(seen["put"]["status"], 200, "{seen}");
    assert_eq!(seen["put"]["method"], "PUT", "{seen}");
    assert_eq!(seen["put"]["tag"], "t-1", "{seen}");
    let hits_after_allowed = backend.hits();
    assert_eq!(hits_after_allowed, 2, "the preflight reached the upstream");

    // Another origin: the browser blocks the reads (the page sees a network error), and
    // the PUT never leaves the browser because its preflight is refused.
    let seen = report_of(blocked, &api, &mut blocked_reports).await;
    let failed = |v: &Value| {
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("Failed to fetch"))
    };
    assert!(failed(&seen["get"]), "{seen}");
    assert!(failed(&seen["put"]), "{seen}");
    assert_eq!(
        backend.hits(),
        hits_after_allowed + 1,
        "only the simple GET reached the upstream"
    );

    let client = Client::new();
    let text = String::from_utf8_lossy(
        &client
            .get(gw.admin_addr.expect("admin"), "/metrics")
            .await
            .body,
    )
    .to_string();
    assert_eq!(
        metric(
            &text,
            "portico_cors_preflights_total{result=\"allowed\",route=\"store\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "portico_cors_preflights_total{result=\"rejected\",route=\"store\"}"
        ),
        1.0
    );
    gw.shutdown().await;
}
