//! Clients for tests: pooled HTTP/1.1, h2c (prior knowledge), TLS with SNI and ALPN, and
//! raw TCP for malformed or slow requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "body is not JSON (status {}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The header values the echo backend received.
    pub fn echoed(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Clone)]
pub struct Client {
    h1: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    h2c: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        let h1 = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build(HttpConnector::new());
        let h2c = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(HttpConnector::new());
        Client { h1, h2c }
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> Reply {
        self.send(
            Request::get(format!("http://{addr}{path}"))
                .body(Full::default())
                .unwrap(),
        )
        .await
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        let client = if request.version() == Version::HTTP_2 {
            &self.h2c
        } else {
            &self.h1
        };
        let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
            .await
            .expect("response within 30s")
            .expect("request succeeds");
        collect(response).await
    }

    pub async fn try_send(&self, request: Request<Full<Bytes>>) -> Result<Reply, String> {
        match client_request(&self.h1, request).await {
            Ok(r) => Ok(collect(r).await),
            Err(e) => Err(e),
        }
    }
}

async fn client_request(
    client: &hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    client.request(request).await.map_err(|e| e.to_string())
}

/// GET `path` with extra request headers.
pub async fn get(client: &Client, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client
        .send(req.body(Full::<Bytes>::default()).unwrap())
        .await
}

pub async fn collect(response: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    // A body that fails half-way is a failure of the test, not an empty body.
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => panic!("response body failed (status {}): {e}", parts.status),
    };
    Reply {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// Writes raw bytes and reads until the server closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A TLS request with the given SNI name; returns the reply and the server's leaf
/// certificate (DER) so tests can tell which certificate was chosen.
pub async fn tls_get(
    addr: SocketAddr,
    sni: &str,
    roots: &[Vec<u8>],
    h2: bool,
    path: &str,
) -> (Reply, Vec<u8>) {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .expect("add root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("server name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let io = TokioIo::new(tls);
    let uri = format!("https://{sni}{path}");
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        let req = Request::get(uri)
            .version(Version::HTTP_2)
            .body(Full::<Bytes>::default())
            .unwrap();
        sender.send_request(req).await.expect("h2 request")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", sni)
            .body(Full::<Bytes>::default())
            .unwrap();
        sender.send_request(req).await.expect("h1 request")
    };
    (collect(response).await, leaf)
}
