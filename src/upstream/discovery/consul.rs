//! A thin Consul client (on the gateway's own hyper client) and the blocking-query watch
//! loop, one per discovered upstream.
//!
//! The loop follows HashiCorp's rules for blocking queries
//! (<https://developer.hashicorp.com/consul/api-docs/features/blocking>):
//! - send the last `X-Consul-Index` back as `index` with `wait`; the read timeout is
//!   `wait × 17/16` (Consul adds up to wait/16 of jitter) plus a margin;
//! - an index that goes backwards resets to 0; an index below 1 is treated as 1, and 0 is
//!   never sent twice in a row, so the loop cannot spin;
//! - a response is not a change: the endpoint set is compared and swapped only when it
//!   changed (`discovery::apply`);
//! - queries are rate-limited (a burst of 2, then one per `QUERY_FLOOR`), so an index
//!   that churns or misbehaves cannot turn the loop into a busy loop;
//! - errors, 429 and 5xx keep the last known endpoints and back off with jitter, capped;
//!   the log says when Consul starts failing and when it answers again, not every retry.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::Rng;
use serde::Deserialize;
use tokio::time::Instant;

use super::Instance;
use crate::config::ConsulConfig;
use crate::upstream::Upstream;
use crate::wire::body::Body;
use crate::wire::client::{build_client, HttpClient};
use crate::wire::tls::{ClientTls, ClientTlsSettings};

/// Between two queries once the burst is used up.
pub const QUERY_FLOOR: Duration = Duration::from_millis(500);
const BURST: f64 = 2.0;
/// Added to `wait × 17/16` for the read timeout.
pub const READ_MARGIN: Duration = Duration::from_secs(2);
const BACKOFF_BASE: Duration = Duration::from_millis(250);
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Largest answer accepted (a service with thousands of instances is well below).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Characters escaped in a query value or path segment.
const ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    #[error("consul unreachable: {0}")]
    Unreachable(String),
    #[error("consul answered {0}")]
    Status(u16),
    #[error("consul did not answer in time")]
    Timeout,
    #[error("invalid answer from consul: {0}")]
    Invalid(String),
}

/// A successful answer: the index and the passing instances.
#[derive(Debug)]
pub struct Answer {
    pub index: u64,
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone)]
pub struct ConsulClient {
    client: HttpClient,
    scheme: http::uri::Scheme,
    authority: Authority,
    token: Option<HeaderValue>,
    datacenter: Option<String>,
    pub wait: Duration,
}

/// Checks `consul.address` (`http://host:port` or `https://host:port`) and returns
/// its scheme and authority.
pub fn parse_address(address: &str) -> Result<(http::uri::Scheme, Authority), String> {
    let bad = || {
        format!(
            "invalid consul address {address:?} (expected http://host:port or https://host:port)"
        )
    };
    let (scheme, rest) = if let Some(rest) = address.strip_prefix("http://") {
        (http::uri::Scheme::HTTP, rest)
    } else if let Some(rest) = address.strip_prefix("https://") {
        (http::uri::Scheme::HTTPS, rest)
    } else {
        return Err(bad());
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(bad());
    }
    let authority = rest.parse::<Authority>().map_err(|_| bad())?;
    Ok((scheme, authority))
}

impl ConsulClient {
    pub fn new(c: &ConsulConfig) -> Result<ConsulClient, String> {
        let token = match c.token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => {
                Some(HeaderValue::from_str(t).map_err(|_| "invalid consul token".to_string())?)
            }
            None => None,
        };
        let (scheme, authority) = parse_address(&c.address)?;
        let tls_files = c.ca_file.is_some() || c.client_cert.is_some() || c.client_key.is_some();
        if tls_files && scheme != http::uri::Scheme::HTTPS {
            return Err("ca_file, client_cert and client_key need an https consul address".into());
        }
        let tls = ClientTls::build(&ClientTlsSettings {
            ca_file: c.ca_file.as_deref(),
            client_cert: c.client_cert.as_deref(),
            client_key: c.client_key.as_deref(),
            ..ClientTlsSettings::default()
        })
        .map_err(|e| format!("consul: {e}"))?;
        Ok(ConsulClient {
            client: build_client(Duration::from_secs(2), Some(&tls))
                .map_err(|e| format!("consul: {e}"))?,
            scheme,
            authority,
            token,
            datacenter: c.datacenter.clone().filter(|d| !d.is_empty()),
            wait: c.wait.0,
        })
    }

    /// `wait × 17/16` plus a margin for the network.
    pub fn read_timeout(&self) -> Duration {
        self.wait + self.wait / 16 + READ_MARGIN
    }

    pub fn query_uri(&self, service: &str, tag: Option<&str>, index: u64) -> Result<Uri, String> {
        let mut pq = format!(
            "/v1/health/service/{}?passing",
            utf8_percent_encode(service, ESCAPE)
        );
        if index > 0 {
            pq.push_str(&format!("&index={index}&wait={}ms", self.wait.as_millis()));
        }
        if let Some(dc) = &self.datacenter {
            pq.push_str("&dc=");
            pq.extend(utf8_percent_encode(dc, ESCAPE));
        }
        if let Some(tag) = tag {
            let expr = format!("Service.Tags contains {}", quote(tag));
            pq.push_str("&filter=");
            pq.extend(utf8_percent_encode(&expr, ESCAPE));
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| e.to_string())
    }

    /// One query of `/v1/health/service/{service}`.
    pub async fn health_service(
        &self,
        service: &str,
        tag: Option<&str>,
        index: u64,
    ) -> Result<Answer, ConsulError> {
        let uri = self
            .query_uri(service, tag, index)
            .map_err(ConsulError::Invalid)?;
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = uri;
        if let Some(token) = &self.token {
            request
                .headers_mut()
                .insert("x-consul-token", token.clone());
        }
        request
            .headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| ConsulError::Unreachable(e.to_string()))?;
            let status = response.status();
            let index = response
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| ConsulError::Unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ConsulError>((status, index, body))
        };
        let (status, index, body) = tokio::time::timeout(self.read_timeout(), exchange)
            .await
            .map_err(|_| ConsulError::Timeout)??;
        if status != StatusCode::OK {
            return Err(ConsulError::Status(status.as_u16()));
        }
        let index = index.ok_or_else(|| ConsulError::Invalid("no X-Consul-Index header".into()))?;
        Ok(Answer {
            index,
            instances: parse_entries(&body).map_err(ConsulError::Invalid)?,
        })
    }
}

/// A string literal for Consul's filter language.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: Node,
    service: Service,
    #[serde(default)]
    checks: Vec<Check>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node {
    #[serde(default)]
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Service {
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    #[serde(default)]
    passing: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Check {
    #[serde(default)]
    status: String,
}

/// Turns a `/v1/health/service` answer into instances: address = `Service.Address` or
/// `Node.Address` when empty, port = `Service.Port`, weight = `Service.Weights.Passing`
/// (1 when absent or 0). An entry with any non-passing check is left out, even though
/// `?passing` already asked Consul to do that.
pub fn parse_entries(body: &Bytes) -> Result<Vec<Instance>, String> {
    let entries: Vec<Entry> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        if e.checks.iter().any(|c| c.status != "passing") || e.service.port == 0 {
            continue;
        }
        let host = if e.service.address.is_empty() {
            e.node.address
        } else {
            e.service.address
        };
        if host.is_empty() {
            continue;
        }
        let address = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", e.service.port)
        } else {
            format!("{host}:{}", e.service.port)
        };
        let weight = e.service.weights.map_or(1, |w| w.passing.max(1));
        out.push(Instance { address, weight });
    }
    Ok(out)
}

/// The index to send next, from the one sent and the one received.
pub fn next_index(sent: u64, received: u64) -> u64 {
    if received < sent {
        0 // went backwards (Consul restored a snapshot, or another server answered): start over
    } else {
        received.max(1)
    }
}

/// Token bucket: `BURST` queries at once, then one per `floor`.
#[derive(Debug)]
pub struct RateLimit {
    tokens: f64,
    last: Instant,
    floor: Duration,
}

impl RateLimit {
    pub fn new(floor: Duration, now: Instant) -> RateLimit {
        RateLimit {
            tokens: BURST,
            last: now,
            floor,
        }
    }

    /// Takes a token, sleeping until one is there.
    pub async fn acquire(&mut self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes a token at `now` and says how long to wait before using it. The clock is
    /// a parameter so the arithmetic is tested on exact instants, not on sleeps.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let refill = now.saturating_duration_since(self.last).as_secs_f64()
            / self.floor.as_secs_f64().max(1e-3);
        self.tokens = (self.tokens + refill).min(BURST);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = self.floor.mul_f64(1.0 - self.tokens);
            // The token is spent when the wait ends.
            self.last = now + wait;
            self.tokens = 0.0;
            wait
        } else {
            self.tokens -= 1.0;
            Duration::ZERO
        }
    }
}

/// Exponential backoff with jitter (50–100% of the step), capped.
pub fn backoff(failures: u32) -> Duration {
    let step = BACKOFF_BASE
        .saturating_mul(1u32 << failures.min(16))
        .min(BACKOFF_CAP);
    step.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// The watch loop of one upstream. Ends when the upstream is dropped.
pub async fn watch(
    upstream: Weak<Upstream>,
    client: ConsulClient,
    service: String,
    tag: Option<String>,
) {
    let mut limit = RateLimit::new(QUERY_FLOOR, Instant::now());
    let mut index = 0u64;
    let mut last_sent = None;
    let mut failures = 0u32;
    loop {
        limit.acquire().await;
        let send = if index == 0 && last_sent == Some(0) {
            1
        } else {
            index
        };
        last_sent = Some(send);
        let result = client.health_service(&service, tag.as_deref(), send).await;
        let Some(up) = upstream.upgrade() else { return };
        match result {
            Ok(answer) => {
                failures = 0;
                index = next_index(send, answer.index);
                if answer.index < send {
                    tracing::info!(upstream = %up.name, sent = send, received = answer.index, "consul index went backwards; starting over");
                }
                super::apply(&up, answer.instances);
            }
            Err(e) => {
                let Some(status) = &up.discovery else { return };
                if status.error() {
                    tracing::warn!(upstream = %up.name, service = %service, error = %e, "consul query failing; keeping the last known endpoints");
                } else {
                    tracing::debug!(upstream = %up.name, error = %e, "consul query failed again");
                }
                drop(up);
                tokio::time::sleep(backoff(failures)).await;
                failures = failures.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration as ConfigDuration;

    fn client(dc: Option<&str>) -> ConsulClient {
        ConsulClient::new(&ConsulConfig {
            address: "http://127.0.0.1:8500".into(),
            datacenter: dc.map(String::from),
            token: Some("t0k".into()),
            wait: ConfigDuration::from_secs(300),
            ca_file: None,
            client_cert: None,
            client_key: None,
        })
        .unwrap()
    }

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 7), 7);
        assert_eq!(next_index(7, 7), 7);
        assert_eq!(next_index(7, 9), 9);
        assert_eq!(next_index(7, 3), 0, "backwards resets");
        assert_eq!(next_index(0, 0), 1, "never below 1");
        assert_eq!(next_index(1, 0), 0);
    }

    #[test]
    fn query_uri_has_blocking_params_filter_and_dc() {
        let c = client(Some("dc2"));
        let first = c.query_uri("order service", None, 0).unwrap().to_string();
        assert_eq!(
            first,
            "http://127.0.0.1:8500/v1/health/service/order%20service?passing&dc=dc2"
        );
        let next = c.query_uri("orders", Some("v2"), 42).unwrap().to_string();
        assert!(next.contains("index=42&wait=300000ms"), "{next}");
        assert!(
            next.contains("filter=Service.Tags%20contains%20%22v2%22"),
            "{next}"
        );
        assert_eq!(c.read_timeout(), Duration::from_millis(320_750));
    }

    #[test]
    fn addresses() {
        assert!(parse_address("http://127.0.0.1:8500").is_ok());
        assert!(parse_address("http://consul:8500/").is_ok());
        assert!(parse_address("https://consul:8501").is_ok());
        assert!(parse_address("ftp://consul:8501").is_err());
        assert!(parse_address("127.0.0.1:8500").is_err());
        assert!(parse_address("http://x/v1").is_err());
    }

    #[test]
    fn entries_use_service_then_node_address_and_weights() {
        let body = Bytes::from_static(
            br#"[
            {"Node":{"Address":"10.0.0.1"},"Service":{"Address":"","Port":80,"Weights":{"Passing":3,"Warning":1}},"Checks":[{"Status":"passing"}]},
            {"Node":{"Address":"10.0.0.2"},"Service":{"Address":"10.1.1.1","Port":81},"Checks":[]},
            {"Node":{"Address":"10.0.0.3"},"Service":{"Address":"::1","Port":82,"Weights":{"Passing":0}},"Checks":[]},
            {"Node":{"Address":"10.0.0.4"},"Service":{"Address":"","Port":83},"Checks":[{"Status":"passing"},{"Status":"critical"}]}
        ]"#,
        );
        let got = parse_entries(&body).unwrap();
        assert_eq!(
            got,
            vec![
                Instance {
                    address: "10.0.0.1:80".into(),
                    weight: 3
                },
                Instance {
                    address: "10.1.1.1:81".into(),
                    weight: 1
                },
                Instance {
                    address: "[::1]:82".into(),
                    weight: 1
                },
            ]
        );
        assert!(parse_entries(&Bytes::from_static(b"{}")).is_err());
    }

    #[test]
    fn rate_limit_allows_a_burst_of_two_then_a_floor() {
        let floor = Duration::from_millis(50);
        let t0 = Instant::now();
        let mut limit = RateLimit::new(floor, t0);
        assert_eq!(limit.reserve(t0), Duration::ZERO, "the burst is immediate");
        assert_eq!(limit.reserve(t0), Duration::ZERO);
        // Back to back: each further query waits one floor after the one before.
        let mut at = t0;
        for _ in 0..4 {
            let wait = limit.reserve(at);
            assert_eq!(wait, floor);
            at += wait;
        }
        assert_eq!(at - t0, floor * 4);
        // Half a floor of quiet buys half a token: the next query waits the other half.
        at += floor / 2;
        let wait = limit.reserve(at);
        assert!(
            wait.abs_diff(floor / 2) < Duration::from_micros(1),
            "{wait:?}"
        );
        // A long quiet refills the burst, never more.
        at += wait + floor * 100;
        assert_eq!(limit.reserve(at), Duration::ZERO);
        assert_eq!(limit.reserve(at), Duration::ZERO);
        assert_eq!(limit.reserve(at), floor);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        for n in 0..40 {
            let d = backoff(n);
            assert!(d <= BACKOFF_CAP);
            assert!(d >= BACKOFF_BASE / 2);
        }
    }
}
