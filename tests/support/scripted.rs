//! A backend whose behaviour tests script: the status it answers (or a queue of statuses
//! for the next requests), a delay, what `/health` answers, and `kill()` that closes the
//! listener and every open connection (as a crashed process would), `revive()` that
//! listens again on the same address. Answers are JSON: `{"backend", "status", "method",
//! "path", "body_len"}`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Serves HTTP/1.1 on `listener` until the returned task is aborted; aborting it also
/// closes every connection it accepted.
pub fn serve<F, Fut>(listener: TcpListener, handler: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let handler = handler.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| {
                            let handler = handler.clone();
                            async move { Ok::<_, Infallible>(handler(req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

struct State {
    name: String,
    status: AtomicU16,
    health: AtomicU16,
    delay_ms: AtomicU64,
    script: Mutex<VecDeque<u16>>,
    hits: AtomicUsize,
}

pub struct Scripted {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Scripted {
    pub async fn start(name: &str) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind scripted backend");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            name: name.to_string(),
            status: AtomicU16::new(200),
            health: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            script: Mutex::new(VecDeque::new()),
            hits: AtomicUsize::new(0),
        });
        let flaky = Scripted {
            addr,
            state,
            task: Mutex::new(None),
        };
        flaky.listen(listener);
        flaky
    }

    fn listen(&self, listener: TcpListener) {
        let state = self.state.clone();
        let task = serve(listener, move |req| answer(state.clone(), req));
        *self.task.lock().unwrap() = Some(task);
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// The status of every answer from now on.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Statuses for the next requests, then back to `set_status`.
    pub fn script(&self, statuses: &[u16]) {
        self.state.script.lock().unwrap().extend(statuses);
    }

    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Closes the listener and every connection.
    pub fn kill(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same address.
    pub async fn revive(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.listen(listener);
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn answer(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/health" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
        *r.status_mut() = StatusCode::from_u16(state.health.load(Ordering::SeqCst)).unwrap();
        return r;
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    let scripted = state.script.lock().unwrap().pop_front();
    let status = scripted.unwrap_or_else(|| state.status.load(Ordering::SeqCst));
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let echo = serde_json::json!({
        "backend": state.name,
        "status": status,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "body_len": body.len(),
    });
    let mut r = Response::new(Full::new(Bytes::from(echo.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}
