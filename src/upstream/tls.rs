//! An upstream's `tls:` section as a client TLS setup, built when the runtime is built
//! and again when a reload keeps the upstream (its files may have been renewed).

use std::sync::Arc;

use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::observe::ResilienceMetrics;
use crate::wire::tls::{ClientTls, ClientTlsSettings};

/// The upstream's TLS setup, or None without `tls:`. `insecure_skip_verify` is loud: a
/// warning each time it is built and a gauge at 1.
pub fn build_tls(
    name: &str,
    config: &UpstreamConfig,
    metrics: &ResilienceMetrics,
) -> Result<Option<Arc<ClientTls>>, String> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let built = ClientTls::build(&ClientTlsSettings {
        ca_file: tls.ca_file.as_deref(),
        client_cert: tls.client_cert.as_deref(),
        client_key: tls.client_key.as_deref(),
        server_name: tls.server_name.as_deref(),
        insecure_skip_verify: tls.insecure_skip_verify,
        alpn: match config.protocol {
            UpstreamProtocol::H2 => &[b"h2"],
            UpstreamProtocol::Auto => &[b"h2", b"http/1.1"],
            _ => &[b"http/1.1"],
        },
    })
    .map_err(|e| format!("tls: {e}"))?;
    let insecure = metrics.tls_insecure.with_label_values(&[name]);
    if built.insecure {
        tracing::warn!(upstream = %name, "tls.insecure_skip_verify is on: certificates of this upstream are NOT verified; anyone on the path can read and change its traffic");
        insecure.set(1);
    } else {
        insecure.set(0);
    }
    Ok(Some(Arc::new(built)))
}
