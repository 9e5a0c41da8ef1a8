//! Upstreams: a named set of endpoints, a balancer over them and a pooled client.
//! The endpoint set lives behind `ArcSwap` so discovery can replace it whole while
//! requests keep picking from the previous one.

mod balancer;
pub mod proxy;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use balancer::Balancer;

use crate::body::Body;
use crate::config::UpstreamConfig;
use crate::observe::{EndpointMetrics, Metrics};

pub type HttpClient = Client<HttpConnector, Body>;

/// Checks a target address (`host:port`) and returns it as a URI authority.
pub fn parse_target(address: &str) -> Result<Authority, String> {
    let bad = || format!("invalid target {address:?} (expected host:port such as 127.0.0.1:3001)");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) || address.contains('/') {
        return Err(bad());
    }
    address.parse::<Authority>().map_err(|_| bad())
}

#[derive(Debug)]
pub struct Endpoint {
    pub address: String,
    pub authority: Authority,
    pub weight: u32,
    in_flight: AtomicUsize,
    pub metrics: EndpointMetrics,
}

impl Endpoint {
    pub fn new(upstream: &str, address: &str, weight: u32, metrics: &Metrics) -> Result<Endpoint, String> {
        Ok(Endpoint {
            address: address.to_string(),
            authority: parse_target(address)?,
            weight,
            in_flight: AtomicUsize::new(0),
            metrics: metrics.endpoint(upstream, address),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Balancer,
}

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub config: UpstreamConfig,
    endpoints: ArcSwap<EndpointSet>,
    pub client: HttpClient,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Upstream {
    pub fn build(name: &str, config: &UpstreamConfig, metrics: &Metrics) -> Result<Upstream, String> {
        let mut endpoints = Vec::with_capacity(config.targets.len());
        for target in &config.targets {
            endpoints.push(Arc::new(Endpoint::new(
                name,
                target.address(),
                target.weight(),
                metrics,
            )?));
        }
        let set = EndpointSet {
            balancer: Balancer::new(config.balance, &endpoints),
            endpoints,
        };
        metrics
            .upstream_endpoints
            .with_label_values(&[name, "healthy"])
            .set(set.endpoints.len() as i64);
        Ok(Upstream {
            name: name.to_string(),
            config: config.clone(),
            endpoints: ArcSwap::from_pointee(set),
            client: build_client(config.timeouts.connect.0),
            request_timeout: config.timeouts.request.0,
            connect_timeout: config.timeouts.connect.0,
        })
    }

    pub fn pick(&self) -> Option<Arc<Endpoint>> {
        let set = self.endpoints.load();
        set.balancer
            .pick(&set.endpoints)
            .and_then(|i| set.endpoints.get(i).cloned())
    }

    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    /// Replaces the endpoint set (discovery); requests in flight keep their endpoint.
    pub fn set_endpoints(&self, endpoints: Vec<Arc<Endpoint>>) {
        let set = EndpointSet {
            balancer: Balancer::new(self.config.balance, &endpoints),
            endpoints,
        };
        self.endpoints.store(Arc::new(set));
    }
}

/// A pooled HTTP/1.1 client tuned for proxying: Nagle off, idle connections kept for
/// reuse but not forever, a bounded connect time.
pub fn build_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(parse_target("127.0.0.1:3001").is_ok());
        assert!(parse_target("users.internal:80").is_ok());
        assert!(parse_target("127.0.0.1").is_err());
        assert!(parse_target(":80").is_err());
        assert!(parse_target("http://x:80").is_err());
        assert!(parse_target("x:0").is_err());
        assert!(parse_target("x:99999").is_err());
    }
}
