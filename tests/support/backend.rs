//! A real HTTP backend for tests. It answers every request with JSON describing what it
//! received (so tests can see exactly what the gateway forwarded) and counts requests.
//! Special paths: `/status/{code}`, `/slow/{ms}`, `/big/{bytes}`, `/ws` (WebSocket echo).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        Backend::serve(name, listener)
    }

    fn serve(name: &str, listener: TcpListener) -> Backend {
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
                        let service = service_fn(move |req| {
                            hits.fetch_add(1, Ordering::SeqCst);
                            answer(name.clone(), req)
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Backend {
            addr,
            name: name.to_string(),
            hits,
            task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Stops accepting (open connections stay until dropped by their tasks).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    name: String,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let mut segments = path.trim_start_matches('/').split('/');
    match (segments.next(), segments.next()) {
        (Some("status"), Some(code)) => {
            let status = code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok());
            let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
            *r.status_mut() = status.unwrap_or(StatusCode::BAD_REQUEST);
            return Ok(r);
        }
        (Some("slow"), Some(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(100))).await;
        }
        (Some("big"), Some(n)) => {
            let n: usize = n.parse().unwrap_or(0);
            return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; n]))));
        }
        (Some("ws"), _) => return Ok(websocket(&mut req)),
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_insert_with(Vec::new)
            .push(v.to_str().unwrap_or("<binary>").to_string());
    }
    let echo = serde_json::json!({
        "backend": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    let mut response = Response::new(Full::new(Bytes::from(echo.to_string())));
    response.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    // Hop-by-hop headers the gateway must strip on the way back.
    response.headers_mut().insert(
        "connection",
        http::HeaderValue::from_static("x-backend-private"),
    );
    response.headers_mut().insert(
        "x-backend-private",
        http::HeaderValue::from_static("secret"),
    );
    response
        .headers_mut()
        .insert("x-backend", http::HeaderValue::from_str(&name).unwrap());
    Ok(response)
}

fn websocket(req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec())
        .unwrap_or_default();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_text() || msg.is_binary() {
                if tx.send(msg).await.is_err() {
                    return;
                }
            } else if msg.is_close() {
                return;
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", http::HeaderValue::from_static("upgrade"));
    h.insert("upgrade", http::HeaderValue::from_static("websocket"));
    h.insert(
        "sec-websocket-accept",
        http::HeaderValue::from_str(&accept).unwrap(),
    );
    r
}
