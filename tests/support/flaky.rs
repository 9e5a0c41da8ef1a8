//! A backend that fails a fixed share of its requests: of every ten requests it receives,
//! the first `fail_per_ten` get `500`, the rest `200` with `{"backend": name, "path": ...}`.
//! Deterministic, so a test knows exactly when an error-rate threshold is crossed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub struct Flaky {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Flaky {
    pub async fn start(name: &str, fail_per_ten: usize) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind flaky backend");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let task = {
            let hits = hits.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let hits = hits.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let n = hits.fetch_add(1, Ordering::SeqCst);
                            let fail = n % 10 < fail_per_ten;
                            let name = name.clone();
                            async move {
                                let body = serde_json::json!({
                                    "backend": name,
                                    "path": req.uri().path(),
                                    "failed": fail,
                                });
                                let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
                                if fail {
                                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                                }
                                Ok::<_, Infallible>(r)
                            }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Flaky { addr, hits, task }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.task.abort();
    }
}
