//! HTTPS: rustls with ALPN h2 and http/1.1 and a certificate chosen by SNI. The
//! certificate store sits behind `ArcSwap`, so a reload can change certificates without
//! closing the listener.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::{CertificateConfig, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no certificate found in the PEM file")]
    NoCertificate { path: String },
    #[error("{path}: no private key found in the PEM file")]
    NoKey { path: String },
    #[error("{path}: unsupported private key: {reason}")]
    BadKey { path: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// Loads one certificate chain and its key.
pub fn load_certificate(config: &CertificateConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let open = |path: &str| {
        File::open(path)
            .map(BufReader::new)
            .map_err(|source| TlsError::Read {
                path: path.to_string(),
                source,
            })
    };
    let chain: Vec<_> = rustls_pemfile::certs(&mut open(&config.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: config.cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: config.cert.clone(),
        });
    }
    let key = rustls_pemfile::private_key(&mut open(&config.key)?)
        .map_err(|source| TlsError::Read {
            path: config.key.clone(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: config.key.clone(),
        })?;
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| {
        TlsError::BadKey {
            path: config.key.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// Certificates by host name; the first configured one answers unknown or missing SNI.
#[derive(Debug)]
pub struct CertStore {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `.example.com`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
}

impl CertStore {
    pub fn build(config: &TlsConfig) -> Result<CertStore, TlsError> {
        let mut default = None;
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        for cert in &config.certificates {
            let key = load_certificate(cert)?;
            default.get_or_insert_with(|| key.clone());
            for host in &cert.hosts {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => wildcard.push((suffix.to_string(), key.clone())),
                    None => {
                        exact.entry(host).or_insert_with(|| key.clone());
                    }
                }
            }
        }
        let default = default.ok_or_else(|| TlsError::Setup("no certificates".into()))?;
        Ok(CertStore {
            default,
            exact,
            wildcard,
        })
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| name.ends_with(suffix.as_str()) && name.len() > suffix.len())
            .map(|(_, key)| key.clone())
            .unwrap_or_else(|| self.default.clone())
    }
}

#[derive(Debug)]
struct SniResolver(Arc<ArcSwap<CertStore>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().pick(hello.server_name()))
    }
}

pub fn acceptor(store: Arc<ArcSwap<CertStore>>) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(store)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
