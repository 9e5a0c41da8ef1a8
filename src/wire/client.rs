//! The pooled hyper client the gateway uses for its own calls (JWKS, Consul): `http://`
//! or `https://` through the same rustls client setup as upstreams (`wire::tls`).
//! Proxied requests and health checks go through `h1` and the endpoints' pools instead.

use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::Body;
use super::tls::{ClientTls, ClientTlsError, ClientTlsSettings};

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Nagle off, idle connections kept for reuse but not forever, a bounded connect time;
/// `https` verified with `tls` (the system store when None).
pub fn build_client(
    connect_timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<HttpClient, ClientTlsError> {
    let tls = match tls {
        Some(tls) => tls.clone(),
        None => ClientTls::build(&ClientTlsSettings::default())?,
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config((*tls.config).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}
