//! The backend the harness measures against: a minimal hyper server with fixed bodies,
//! run in its own process (the harness re-executes itself with --backend-port).

use std::convert::Infallible;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

pub const SMALL: usize = 100;
pub const JSON: usize = 2048;
pub const POST: usize = 1024;

fn json_body() -> Bytes {
    let mut s = String::from("{\"items\":[");
    let mut i = 0;
    while s.len() < JSON - 40 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{{\"id\":{i},\"name\":\"item-{i}\"}}"));
        i += 1;
    }
    s.push_str("],\"pad\":\"");
    while s.len() < JSON - 2 {
        s.push('x');
    }
    s.push_str("\"}");
    Bytes::from(s)
}

/// Serves plain HTTP on `port` and, with `tls`, HTTPS on its port with the certificate
/// and key PEM files given (the HTTPS-upstream scenarios).
pub fn run(port: u16, tls: Option<(u16, PathBuf, PathBuf)>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("backend runtime");
    runtime.block_on(async move {
        let small = Bytes::from(vec![b'a'; SMALL]);
        let json = json_body();
        if let Some((tls_port, cert, key)) = tls {
            let acceptor = acceptor(&cert, &key);
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", tls_port))
                .await
                .expect("backend tls bind");
            let (small, json) = (small.clone(), json.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (small, json, acceptor) = (small.clone(), json.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve(TokioIo::new(stream), small, json).await;
                        }
                    });
                }
            });
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("backend bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (small, json) = (small.clone(), json.clone());
            tokio::spawn(serve(TokioIo::new(stream), small, json));
        }
    });
}

fn acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    let cert = std::fs::read(cert).expect("backend cert");
    let key = std::fs::read(key).expect("backend key");
    let chain: Vec<_> = rustls_pemfile::certs(&mut &cert[..])
        .collect::<Result<_, _>>()
        .expect("backend cert pem");
    let key = rustls_pemfile::private_key(&mut &key[..])
        .expect("backend key pem")
        .expect("a backend key");
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("backend certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

async fn serve<IO>(io: IO, small: Bytes, json: Bytes)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let (small, json) = (small.clone(), json.clone());
        async move {
            let is_json = req.uri().path().ends_with("/2k");
            if req.method() == http::Method::POST {
                let _ = req.into_body().collect().await;
            }
            let mut r = Response::new(Full::new(if is_json { json } else { small }));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(if is_json {
                    "application/json"
                } else {
                    "text/plain"
                }),
            );
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            Ok::<_, Infallible>(r)
        }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}
