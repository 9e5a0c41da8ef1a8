//! A scripted HTTP backend for cache and transform tests. Each path can be given a
//! `Script` (status, headers, body, delay, ETag); without one the backend answers 200
//! with JSON describing the request, including the body it received and a per-path
//! counter `n`, so a test can tell a cached answer from a fresh one. Counts requests per
//! path and the 304s it sent. `set_down(true)` makes it drop every request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Clone, Debug, Default)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body; when `None`, the JSON description of the request.
    pub body: Option<Bytes>,
    /// A generated body of this many bytes (`x`), sent in 64 KiB chunks.
    pub size: Option<usize>,
    /// Send the generated body without Content-Length (chunked).
    pub chunked: bool,
    pub delay: Option<Duration>,
    /// Answer 304 when the request's If-None-Match carries this tag.
    pub etag: Option<String>,
}

impl Script {
    pub fn ok(headers: &[(&str, &str)]) -> Script {
        Script {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Script::default()
        }
    }
}

#[derive(Default)]
struct State {
    scripts: Mutex<HashMap<String, Script>>,
    hits: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
    not_modified: AtomicUsize,
    down: AtomicBool,
}

pub struct CacheBackend {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

type Out = BoxBody<Bytes, Infallible>;

impl CacheBackend {
    pub async fn start() -> CacheBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    if state.down.load(Ordering::SeqCst) {
                        drop(stream);
                        continue;
                    }
                    let state = state.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| answer(state.clone(), req));
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        CacheBackend { addr, state, task }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn script(&self, path: &str, script: Script) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .insert(path.to_string(), script);
    }

    pub fn hits(&self, path: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.state.total.load(Ordering::SeqCst)
    }

    pub fn not_modified(&self) -> usize {
        self.state.not_modified.load(Ordering::SeqCst)
    }

    /// While down, every request fails (connection closed without an answer).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }
}

impl Drop for CacheBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct Down;
impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("backend down")
    }
}
impl std::error::Error for Down {}

async fn answer(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Out>, Down> {
    if state.down.load(Ordering::SeqCst) {
        return Err(Down);
    }
    let path = req.uri().path().to_string();
    state.total.fetch_add(1, Ordering::SeqCst);
    let n = {
        let mut hits = state.hits.lock().unwrap();
        let n = hits.entry(path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let script = state.scripts.lock().unwrap().get(&path).cloned();
    let script = script.unwrap_or(Script {
        status: 200,
        headers: vec![("cache-control".into(), "max-age=60".into())],
        ..Script::default()
    });
    if let Some(delay) = script.delay {
        tokio::time::sleep(delay).await;
    }
    if let (Some(tag), Some(inm)) = (&script.etag, req.headers().get("if-none-match")) {
        if inm
            .to_str()
            .map(|v| v.contains(tag.as_str()))
            .unwrap_or(false)
        {
            state.not_modified.fetch_add(1, Ordering::SeqCst);
            let mut r = Response::new(Full::new(Bytes::new()).boxed());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r.headers_mut()
                .insert("etag", HeaderValue::from_str(tag).unwrap());
            for (k, v) in &script.headers {
                r.headers_mut().append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            return Ok(r);
        }
    }
    let (parts, body) = req.into_parts();
    let received = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Out = if let Some(size) = script.size {
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..size)
            .step_by(64 * 1024)
            .map(|start| {
                Ok(Frame::data(Bytes::from(vec![
                    b'x';
                    (size - start).min(64 * 1024)
                ])))
            })
            .collect();
        if script.chunked {
            StreamBody::new(futures_util::stream::iter(chunks)).boxed()
        } else {
            Full::new(Bytes::from(vec![b'x'; size])).boxed()
        }
    } else if let Some(b) = &script.body {
        Full::new(b.clone()).boxed()
    } else {
        let mut headers = serde_json::Map::new();
        for (k, v) in &parts.headers {
            headers.insert(
                k.as_str().to_string(),
                v.to_str().unwrap_or("<binary>").into(),
            );
        }
        let echo = serde_json::json!({
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "method": parts.method.as_str(),
            "n": n,
            "headers": headers,
            "body": String::from_utf8_lossy(&received),
        });
        Full::new(Bytes::from(echo.to_string())).boxed()
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(script.status).unwrap_or(StatusCode::OK);
    let h = response.headers_mut();
    if script.body.is_none() && script.size.is_none() {
        h.insert("content-type", HeaderValue::from_static("application/json"));
    }
    if let Some(tag) = &script.etag {
        h.insert("etag", HeaderValue::from_str(tag).unwrap());
    }
    for (k, v) in &script.headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    Ok(response)
}
