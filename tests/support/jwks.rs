//! A real JWKS server for tests, with keys generated at test time. The served key set can
//! be switched while it runs (key rotation), it counts fetches, and `stop` closes the
//! listener and every open connection (the issuer is down).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// A signing key made for one test, with its public forms.
pub struct TestKey {
    pub alg: Algorithm,
    pub kid: String,
    pub encoding: EncodingKey,
    /// SubjectPublicKeyInfo PEM, for `public_key:` files.
    pub public_pem: String,
    pub jwk: Value,
}

impl TestKey {
    /// Generates a key for RS256, ES256 or EdDSA.
    pub fn generate(alg: Algorithm, kid: &str) -> TestKey {
        let rcgen_alg = match alg {
            Algorithm::RS256 => &rcgen::PKCS_RSA_SHA256,
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            other => panic!("no test key for {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("generate key");
        let private_pem = pair.serialize_pem();
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
            Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
            _ => EncodingKey::from_ed_pem(private_pem.as_bytes()),
        }
        .expect("encoding key");
        let jwk = if alg == Algorithm::EdDSA {
            // jsonwebtoken cannot derive an OKP JWK from a PKCS#8 key: write it out.
            use base64::Engine;
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
            json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"})
        } else {
            let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("jwk");
            jwk.common.key_id = Some(kid.to_string());
            serde_json::to_value(&jwk).expect("jwk json")
        };
        TestKey {
            alg,
            kid: kid.to_string(),
            encoding,
            public_pem: pair.public_key_pem(),
            jwk,
        }
    }

    /// Signs `claims` with this key, its alg and kid.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }

    /// Signs with a kid of our choosing (unknown kids, rotation).
    pub fn sign_with_kid(&self, claims: &Value, kid: &str) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

pub struct JwksServer {
    pub addr: SocketAddr,
    scheme: &'static str,
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl JwksServer {
    /// Serves `{"keys": [...]}` of these keys at `/jwks.json` with `Cache-Control`.
    pub async fn start(keys: &[&TestKey], cache_control: &str) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind jwks");
        JwksServer::serve(listener, keys, cache_control)
    }

    /// Serves on a listener bound earlier (an issuer that comes up late: connections
    /// made before this wait in the listener's queue). Handing the bound listener over,
    /// rather than binding its port again, leaves no window for another test to take it.
    pub fn serve(listener: TcpListener, keys: &[&TestKey], cache_control: &str) -> JwksServer {
        JwksServer::serve_with(listener, None, keys, cache_control)
    }

    /// Serves over TLS (an identity provider with a private CA): `url()` is `https://`.
    pub async fn start_tls(
        acceptor: tokio_rustls::TlsAcceptor,
        keys: &[&TestKey],
        cache_control: &str,
    ) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind jwks");
        JwksServer::serve_with(listener, Some(acceptor), keys, cache_control)
    }

    fn serve_with(
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        keys: &[&TestKey],
        cache_control: &str,
    ) -> JwksServer {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let addr = listener.local_addr().expect("addr");
        let doc = Arc::new(Mutex::new(document(keys)));
        let hits = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let cache_control = cache_control.to_string();
        let accept = {
            let (doc, hits, tasks) = (doc.clone(), hits.clone(), tasks.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (doc, hits, cc) = (doc.clone(), hits.clone(), cache_control.clone());
                    let tls = tls.clone();
                    let conn = tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let body = doc.lock().unwrap().to_string();
                            let cc = cc.clone();
                            if req.uri().path() == "/jwks.json" {
                                hits.fetch_add(1, Ordering::SeqCst);
                            }
                            async move {
                                let mut r = Response::new(Full::new(Bytes::from(body)));
                                r.headers_mut()
                                    .insert("content-type", "application/json".parse().unwrap());
                                r.headers_mut().insert("cache-control", cc.parse().unwrap());
                                Ok::<_, Infallible>(r)
                            }
                        });
                        let builder = auto::Builder::new(TokioExecutor::new());
                        match tls {
                            None => {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                            Some(acceptor) => {
                                let Ok(stream) = acceptor.accept(stream).await else {
                                    return;
                                };
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    });
                    tasks.lock().unwrap().push(conn.abort_handle());
                }
            })
        };
        tasks.lock().unwrap().push(accept.abort_handle());
        JwksServer {
            addr,
            scheme,
            keys: doc,
            hits,
            tasks,
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}/jwks.json", self.scheme, self.addr)
    }

    /// Serves these keys from now on.
    pub fn set_keys(&self, keys: &[&TestKey]) {
        *self.keys.lock().unwrap() = document(keys);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection: the issuer is down.
    pub fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn document(keys: &[&TestKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}
