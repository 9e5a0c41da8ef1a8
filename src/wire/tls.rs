//! TLS to what the gateway calls (upstreams, JWKS issuers, Consul): rustls client
//! configurations, built once when the runtime is built (never per request), and the
//! PEM reading the listener's certificates share.
//!
//! Trust: a `ca_file` when given (only those roots), else the system store, else (an
//! empty store, as in a minimal container) the Mozilla roots built in. SNI and the name
//! verified are the configured `server_name`, else the target's host, never the client's
//! `Host`. Session resumption is rustls' default (an in-memory cache of tickets), so a
//! new connection to a known endpoint skips the full handshake.

use std::fs::File;
use std::io::BufReader;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no certificate found in the PEM file")]
    NoCertificate { path: String },
    #[error("{path}: no private key found in the PEM file")]
    NoKey { path: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{path}: not a usable CA certificate: {reason}")]
    BadCa { path: String, reason: String },
    #[error("client_cert and client_key: {0}")]
    ClientCert(String),
    #[error("client_cert and client_key go together")]
    HalfClientCert,
    #[error("server_name {0:?} is not a DNS name or IP address")]
    BadServerName(String),
    #[error("no trusted roots: the system store and the built-in roots are both empty")]
    NoRoots,
}

fn open(path: &str) -> Result<BufReader<File>, PemError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| PemError::Read {
            path: path.to_string(),
            source,
        })
}

/// Every certificate in a PEM file; at least one.
pub fn read_certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<_, _>>()
        .map_err(|source| PemError::Read {
            path: path.to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_string(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_private_key(path: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|source| PemError::Read {
            path: path.to_string(),
            source,
        })?
        .ok_or_else(|| PemError::NoKey {
            path: path.to_string(),
        })
}

/// What a TLS client is configured with (plain values: this layer knows no config types).
#[derive(Clone, Debug, Default)]
pub struct ClientTlsSettings<'a> {
    pub ca_file: Option<&'a str>,
    pub client_cert: Option<&'a str>,
    pub client_key: Option<&'a str>,
    pub server_name: Option<&'a str>,
    pub insecure_skip_verify: bool,
    /// ALPN protocols offered, in order of preference (empty: none offered).
    pub alpn: &'a [&'a [u8]],
}

/// A client TLS setup, built once: the rustls configuration and the name to verify.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    /// The configured `server_name`; None means the target's host.
    pub server_name: Option<ServerName<'static>>,
    pub insecure: bool,
}

impl ClientTls {
    pub fn build(settings: &ClientTlsSettings<'_>) -> Result<ClientTls, ClientTlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientTlsError::ClientCert(e.to_string()))?;
        let builder = if settings.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        } else {
            builder.with_root_certificates(roots(settings.ca_file)?)
        };
        let mut config = match (settings.client_cert, settings.client_key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certificates(cert)?, read_private_key(key)?)
                .map_err(|e| ClientTlsError::ClientCert(e.to_string()))?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(ClientTlsError::HalfClientCert),
        };
        config.alpn_protocols = settings.alpn.iter().map(|p| p.to_vec()).collect();
        let server_name = settings
            .server_name
            .map(|name| {
                ServerName::try_from(name.to_string())
                    .map_err(|_| ClientTlsError::BadServerName(name.to_string()))
            })
            .transpose()?;
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
            insecure: settings.insecure_skip_verify,
        })
    }

    /// The name sent as SNI and verified: `server_name`, else the target's host.
    pub fn name_for(&self, host: &str) -> Option<ServerName<'static>> {
        if let Some(name) = &self.server_name {
            return Some(name.clone());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).ok()
    }
}

fn roots(ca_file: Option<&str>) -> Result<Arc<RootCertStore>, ClientTlsError> {
    let Some(path) = ca_file else {
        return system_roots();
    };
    let mut store = RootCertStore::empty();
    for cert in read_certificates(path)? {
        store.add(cert).map_err(|e| ClientTlsError::BadCa {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

/// The system store, read once per process; the built-in roots when it is empty.
fn system_roots() -> Result<Arc<RootCertStore>, ClientTlsError> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let mut store = RootCertStore::empty();
        let (added, _) =
            store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if added == 0 {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        Arc::new(store)
    });
    if roots.is_empty() {
        return Err(ClientTlsError::NoRoots);
    }
    Ok(roots.clone())
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake signatures are
/// still checked, so the session is at least with whoever holds the presented key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
