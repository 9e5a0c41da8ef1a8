//! HTTPS: rustls with ALPN h2 and http/1.1 and a certificate chosen by SNI. The
//! certificate store sits behind `ArcSwap`, so a reload can change certificates without
//! closing the listener.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::{CertificateConfig, TlsConfig};
use crate::wire::tls::{read_certificates, read_private_key, PemError};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{path}: unsupported private key: {reason}")]
    BadKey { path: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// Loads one certificate chain and its key.
pub fn load_certificate(config: &CertificateConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certificates(&config.cert)?;
    let key = read_private_key(&config.key)?;
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| {
        TlsError::BadKey {
            path: config.key.clone(),
            reason: e.to_string(),
        }
    })?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// A `hosts` entry of a certificate: a DNS name, or `*.` and a DNS name, which matches
/// exactly one more label (`*.example.com` matches `a.example.com`, not `example.com`
/// nor `a.b.example.com`, as RFC 6125 §6.4.3 has clients match).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The parent domain: `example.com` for `*.example.com`.
    AnyLabelOf(String),
}

/// Parses a `hosts` entry (lower-cased).
pub fn host_pattern(text: &str) -> Result<HostPattern, String> {
    let text = text.to_ascii_lowercase();
    let bad = || {
        format!("invalid host {text:?} (expected a DNS name such as shop.example.com, or *.example.com)")
    };
    let (wildcard, name) = match text.strip_prefix("*.") {
        Some(parent) => (true, parent),
        None => (false, text.as_str()),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(bad());
    }
    Ok(if wildcard {
        HostPattern::AnyLabelOf(name.to_string())
    } else {
        HostPattern::Exact(name.to_string())
    })
}

/// Certificates by host name; the first configured one answers unknown or missing SNI.
#[derive(Debug)]
pub struct CertStore {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn build(config: &TlsConfig) -> Result<CertStore, TlsError> {
        let mut default = None;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in &config.certificates {
            let key = load_certificate(cert)?;
            default.get_or_insert_with(|| key.clone());
            for host in &cert.hosts {
                let table = match host_pattern(host).map_err(TlsError::Setup)? {
                    HostPattern::Exact(name) => exact.entry(name),
                    HostPattern::AnyLabelOf(parent) => wildcard.entry(parent),
                };
                table.or_insert_with(|| key.clone());
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
        name.split_once('.')
            .filter(|(label, _)| !label.is_empty())
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .cloned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_are_a_name_or_one_wildcard_label() {
        assert_eq!(
            host_pattern("Shop.Example.com"),
            Ok(HostPattern::Exact("shop.example.com".into()))
        );
        assert_eq!(
            host_pattern("*.example.com"),
            Ok(HostPattern::AnyLabelOf("example.com".into()))
        );
        for bad in [
            "*foo.com", "*", "*.", "a.*.com", "**.a.com", "a..com", "-a.com", "a b.com", "",
        ] {
            assert!(host_pattern(bad).is_err(), "{bad:?} accepted");
        }
    }
}
