//! A faithful test Consul: real HTTP on 127.0.0.1:0 serving the part of Consul's API the
//! gateway uses, `GET /v1/health/service/{service}`, with
//! - `passing`: an instance with any non-passing check (its own or its node's) is left out;
//! - `filter`: `Service.Tags contains "x"` and `"x" in Service.Tags` (other expressions
//!   get 400, as Consul refuses what it cannot parse);
//! - `dc`: the one datacenter is `dc1`; another gets 500 "No path to datacenter";
//! - blocking queries: `index` + `wait` block until the index moves past `index` or `wait`
//!   (plus up to wait/16 of jitter, as Consul adds) expires; an `index` ahead of the
//!   server's answers at once (as after a snapshot restore); `X-Consul-Index` on every
//!   answer. One global index advances on every change to any service, so a watcher also
//!   wakes up for changes that are not its own (a response is not a change);
//! - knobs: index reset, index 0 on every answer, a status for every answer (500, 429),
//!   stalling (accept the query, never answer), stop and restart on the same port;
//! - counters: queries received, tokens seen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const DATACENTER: &str = "dc1";

#[derive(Clone, Debug)]
pub struct Registration {
    pub id: String,
    pub service: String,
    /// `Service.Address`; empty means "use the node's address".
    pub address: String,
    pub node_address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub weight: Option<u32>,
    /// The service check's status: passing | warning | critical.
    pub check: String,
}

impl Registration {
    pub fn new(id: &str, service: &str, addr: SocketAddr) -> Registration {
        Registration {
            id: id.into(),
            service: service.into(),
            address: addr.ip().to_string(),
            node_address: "127.0.0.1".into(),
            port: addr.port(),
            tags: Vec::new(),
            weight: None,
            check: "passing".into(),
        }
    }

    pub fn tags(mut self, tags: &[&str]) -> Registration {
        self.tags = tags.iter().map(|t| t.to_string()).collect();
        self
    }
}

#[derive(Default)]
struct Knobs {
    fail: Option<u16>,
    index_zero: bool,
    stall: bool,
}

struct State {
    index: Mutex<u64>,
    instances: Mutex<BTreeMap<String, Registration>>,
    changed: watch::Sender<u64>,
    knobs: Mutex<Knobs>,
    queries: AtomicUsize,
    tokens: Mutex<Vec<String>>,
}

pub struct TestConsul {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: Mutex<Option<JoinHandle<()>>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl TestConsul {
    pub async fn start() -> TestConsul {
        TestConsul::start_with(None).await
    }

    /// A Consul agent serving HTTPS (`url()` is `https://`).
    pub async fn start_tls(acceptor: tokio_rustls::TlsAcceptor) -> TestConsul {
        TestConsul::start_with(Some(acceptor)).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> TestConsul {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test consul");
        let addr = listener.local_addr().expect("local addr");
        let consul = TestConsul {
            addr,
            state: Arc::new(State {
                index: Mutex::new(1),
                instances: Mutex::new(BTreeMap::new()),
                changed: watch::channel(1).0,
                knobs: Mutex::new(Knobs::default()),
                queries: AtomicUsize::new(0),
                tokens: Mutex::new(Vec::new()),
            }),
            task: Mutex::new(None),
            tls,
        };
        consul.listen(listener);
        consul
    }

    fn listen(&self, listener: TcpListener) {
        let state = self.state.clone();
        let handler = move |req| answer(state.clone(), req);
        let task = match &self.tls {
            None => super::scripted::serve(listener, handler),
            Some(acceptor) => super::tls::serve_tls(listener, acceptor.clone(), handler),
        };
        *self.task.lock().unwrap() = Some(task);
    }

    /// `http://127.0.0.1:PORT` (`https://` for `start_tls`)
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn queries(&self) -> usize {
        self.state.queries.load(Ordering::SeqCst)
    }

    pub fn tokens_seen(&self) -> Vec<String> {
        self.state.tokens.lock().unwrap().clone()
    }

    pub fn index(&self) -> u64 {
        *self.state.index.lock().unwrap()
    }

    /// Advances the index and wakes blocked queries.
    fn bump(&self) {
        let mut index = self.state.index.lock().unwrap();
        *index += 1;
        self.state.changed.send_replace(*index);
    }

    pub fn register(&self, r: Registration) {
        self.state.instances.lock().unwrap().insert(r.id.clone(), r);
        self.bump();
    }

    pub fn deregister(&self, id: &str) {
        self.state.instances.lock().unwrap().remove(id);
        self.bump();
    }

    pub fn set_check(&self, id: &str, status: &str) {
        if let Some(r) = self.state.instances.lock().unwrap().get_mut(id) {
            r.check = status.to_string();
        }
        self.bump();
    }

    /// Sets the index back (as a restored snapshot does) and wakes blocked queries.
    pub fn reset_index(&self, to: u64) {
        let mut index = self.state.index.lock().unwrap();
        *index = to;
        self.state.changed.send_replace(to);
    }

    /// Every answer carries `X-Consul-Index: 0` and comes at once.
    pub fn index_zero(&self, on: bool) {
        self.state.knobs.lock().unwrap().index_zero = on;
    }

    /// Every query gets this status (500, 429...), or normal answers with None.
    pub fn fail_with(&self, status: Option<u16>) {
        self.state.knobs.lock().unwrap().fail = status;
    }

    /// Queries are accepted and never answered.
    pub fn stall(&self, on: bool) {
        self.state.knobs.lock().unwrap().stall = on;
    }

    /// Wakes blocked queries without a change to any instance (a change elsewhere).
    pub fn touch(&self) {
        self.bump();
    }

    /// Closes the listener and every connection (Consul is down).
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same port, with the same catalog.
    pub async fn restart(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind test consul: {e}"),
            }
        };
        self.listen(listener);
    }
}

impl Drop for TestConsul {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reply(status: StatusCode, index: Option<u64>, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(i) = index {
        h.insert("x-consul-index", http::HeaderValue::from(i));
        h.insert(
            "x-consul-knownleader",
            http::HeaderValue::from_static("true"),
        );
        h.insert("x-consul-lastcontact", http::HeaderValue::from_static("0"));
    }
    r
}

/// Consul's duration syntax as used for `wait`: `10s`, `500ms`, `5m`, or bare seconds.
fn parse_wait(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..split].parse().ok()?;
    match &text[split..] {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

/// The tag asked for by a filter expression, or Err for what this model cannot parse.
fn parse_filter(expr: &str) -> Result<String, String> {
    let expr = expr.trim();
    let unquote = |s: &str| {
        let s = s.trim();
        s.strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .map(|s| s.replace("\\\"", "\"").replace("\\\\", "\\"))
    };
    if let Some(rest) = expr.strip_prefix("Service.Tags contains ") {
        return unquote(rest).ok_or_else(|| expr.to_string());
    }
    if let Some(lit) = expr.strip_suffix(" in Service.Tags") {
        return unquote(lit).ok_or_else(|| expr.to_string());
    }
    Err(expr.to_string())
}

fn query_params(req: &Request<Incoming>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(v)
            .decode_utf8_lossy()
            .into_owned();
        out.insert(k.to_string(), v);
    }
    out
}

async fn answer(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    state.queries.fetch_add(1, Ordering::SeqCst);
    if let Some(token) = req
        .headers()
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
    {
        state.tokens.lock().unwrap().push(token.to_string());
    }
    let Some(service) = req.uri().path().strip_prefix("/v1/health/service/") else {
        return reply(StatusCode::NOT_FOUND, None, "not modelled".into());
    };
    let service = percent_encoding::percent_decode_str(service)
        .decode_utf8_lossy()
        .into_owned();
    let params = query_params(&req);
    let (fail, index_zero, stall) = {
        let k = state.knobs.lock().unwrap();
        (k.fail, k.index_zero, k.stall)
    };
    if stall {
        std::future::pending::<()>().await;
    }
    if let Some(status) = fail {
        let status = StatusCode::from_u16(status).unwrap();
        return reply(status, None, "rpc error: injected failure".into());
    }
    if params.get("dc").is_some_and(|dc| dc != DATACENTER) {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            "No path to datacenter".into(),
        );
    }
    let tag = match params.get("filter").map(|f| parse_filter(f)) {
        None => None,
        Some(Ok(tag)) => Some(tag),
        Some(Err(e)) => {
            return reply(
                StatusCode::BAD_REQUEST,
                None,
                format!("Failed to create boolexpr evaluator: {e}"),
            )
        }
    };
    let passing = params.contains_key("passing");
    let wanted: u64 = params
        .get("index")
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    let wait = params
        .get("wait")
        .and_then(|w| parse_wait(w))
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(600));
    if !index_zero && wanted > 0 {
        let mut changed = state.changed.subscribe();
        let jitter = wait.mul_f64(rand::random::<f64>() / 16.0);
        let _ = tokio::time::timeout(wait + jitter, async {
            // Blocks while the index is exactly the one asked for; an index ahead of ours
            // (we were reset) or behind it answers at once.
            while *changed.borrow_and_update() == wanted {
                if changed.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
    let index = if index_zero {
        0
    } else {
        *state.index.lock().unwrap()
    };
    let entries: Vec<serde_json::Value> = state
        .instances
        .lock()
        .unwrap()
        .values()
        .filter(|r| r.service == service)
        .filter(|r| !passing || r.check == "passing")
        .filter(|r| tag.as_ref().is_none_or(|t| r.tags.contains(t)))
        .map(|r| {
            serde_json::json!({
                "Node": {
                    "ID": "node-1", "Node": "node-1", "Address": r.node_address,
                    "Datacenter": DATACENTER,
                },
                "Service": {
                    "ID": r.id, "Service": r.service, "Tags": r.tags,
                    "Address": r.address, "Port": r.port,
                    "Weights": { "Passing": r.weight.unwrap_or(1), "Warning": 1 },
                },
                "Checks": [
                    { "Node": "node-1", "CheckID": "serfHealth", "Name": "Serf Health Status",
                      "Status": "passing", "ServiceID": "", "ServiceName": "" },
                    { "Node": "node-1", "CheckID": format!("service:{}", r.id),
                      "Name": format!("Service '{}' check", r.service), "Status": r.check,
                      "ServiceID": r.id, "ServiceName": r.service },
                ],
            })
        })
        .collect();
    reply(
        StatusCode::OK,
        Some(index),
        serde_json::Value::Array(entries).to_string(),
    )
}
