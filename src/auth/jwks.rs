//! JWKS: fetching a verifier's keys from `jwks_url` and keeping them fresh.
//!
//! Lifecycle: `Jwks::start` spawns one refresh task and returns at once, so the gateway
//! starts (and serves its other routes) even when the JWKS server is down; until the first
//! keys arrive the verifier answers `KeysUnavailable` (503). The task fetches at start,
//! then again after the response's `Cache-Control: max-age` (clamped to
//! `MIN_REFRESH..MAX_REFRESH`, `DEFAULT_REFRESH` without one), retrying failures with
//! backoff. A failed or unusable fetch never replaces the last good keys.
//!
//! A token with an unknown `kid` may mean the issuer rotated its keys: `refetch` wakes the
//! task early, but at most once per `ON_DEMAND_INTERVAL`, so a flood of made-up `kid`s
//! cannot turn the gateway into a JWKS amplifier. The task holds only a `Weak` reference
//! to the shared state and is aborted when the `Jwks` is dropped (on reload, when the
//! verifier's definition changed).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::Algorithm;
use tokio::sync::{watch, Notify};

use super::keys::KeySet;
use crate::wire::body::Body;
use crate::wire::client::HttpClient;
use crate::wire::tls::{ClientTls, ClientTlsSettings};

pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
pub const MIN_REFRESH: Duration = Duration::from_secs(30);
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// At most one refetch per this interval is triggered by unknown `kid`s.
pub const ON_DEMAND_INTERVAL: Duration = Duration::from_secs(5);
/// How long a request waits for a refetch it triggered (or found running).
const ON_DEMAND_WAIT: Duration = Duration::from_secs(3);
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DOCUMENT: usize = 512 * 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Checks a `jwks_url`: an absolute `http://` or `https://` URL.
pub fn parse_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text.parse().map_err(|_| format!("invalid URL {text:?}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!(
            "invalid URL {text:?} (expected https://host/path or http://host:port/path)"
        )),
    }
}

/// The TLS setup of a `jwks_url` with a `ca_file` (only its roots are trusted); None
/// means the system store.
pub fn tls_for(uri: &Uri, ca_file: Option<&str>) -> Result<Option<ClientTls>, String> {
    let Some(ca_file) = ca_file else {
        return Ok(None);
    };
    if uri.scheme_str() != Some("https") {
        return Err("needs an https jwks_url".into());
    }
    ClientTls::build(&ClientTlsSettings {
        ca_file: Some(ca_file),
        ..ClientTlsSettings::default()
    })
    .map(Some)
    .map_err(|e| e.to_string())
}

struct Shared {
    name: String,
    url: Uri,
    client: HttpClient,
    algorithms: Vec<Algorithm>,
    keys: ArcSwapOption<KeySet>,
    /// Bumped after every completed fetch attempt, successful or not.
    fetched: watch::Sender<u64>,
    in_flight: AtomicBool,
    last_on_demand: Mutex<Option<Instant>>,
}

pub struct Jwks {
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Jwks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Jwks {
    pub fn start(
        name: &str,
        url: Uri,
        algorithms: Vec<Algorithm>,
        client: HttpClient,
    ) -> Result<Jwks, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "jwks_url needs a running Tokio runtime".to_string())?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            url,
            client,
            algorithms,
            keys: ArcSwapOption::empty(),
            fetched: watch::channel(0).0,
            in_flight: AtomicBool::new(true),
            last_on_demand: Mutex::new(None),
        });
        let wake = Arc::new(Notify::new());
        let task = runtime.spawn(refresh_loop(Arc::downgrade(&shared), wake.clone()));
        Ok(Jwks { shared, wake, task })
    }

    /// The current keys, or `None` before the first successful fetch.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.shared.keys.load_full()
    }

    /// Whether the refresh task is still running.
    pub fn running(&self) -> bool {
        !self.task.is_finished()
    }

    /// A handle that tells whether the refresh task still runs, usable after the `Jwks`
    /// is gone (for tests of its lifecycle).
    pub fn task_probe(&self) -> tokio::task::AbortHandle {
        self.task.abort_handle()
    }

    /// Asks for a fetch now (unless one ran on demand within `ON_DEMAND_INTERVAL`) or
    /// joins the one in flight, and waits for it briefly. True when a fetch completed.
    pub async fn refetch(&self) -> bool {
        let mut done = self.shared.fetched.subscribe();
        if !self.shared.in_flight.load(Ordering::Acquire) {
            {
                let mut last = self
                    .shared
                    .last_on_demand
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if last.is_some_and(|t| t.elapsed() < ON_DEMAND_INTERVAL) {
                    return false;
                }
                *last = Some(Instant::now());
            }
            tracing::debug!(jwt = %self.shared.name, "unknown kid: refetching the JWKS");
            self.wake.notify_one();
        }
        matches!(
            tokio::time::timeout(ON_DEMAND_WAIT, done.changed()).await,
            Ok(Ok(()))
        )
    }
}

async fn refresh_loop(shared: Weak<Shared>, wake: Arc<Notify>) {
    let mut failures: u32 = 0;
    loop {
        let Some(state) = shared.upgrade() else {
            return;
        };
        state.in_flight.store(true, Ordering::Release);
        let delay = match fetch(&state).await {
            Ok((keys, max_age)) => {
                if failures > 0 || state.keys.load().is_none() {
                    tracing::info!(jwt = %state.name, keys = keys.keys.len(), "JWKS loaded");
                }
                failures = 0;
                state.keys.store(Some(Arc::new(keys)));
                max_age
                    .unwrap_or(DEFAULT_REFRESH)
                    .clamp(MIN_REFRESH, MAX_REFRESH)
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let kept = if state.keys.load().is_some() {
                    "keeping the last good keys"
                } else {
                    "no keys yet"
                };
                tracing::warn!(jwt = %state.name, url = %state.url, "JWKS fetch failed ({kept}): {e}");
                Duration::from_secs(1u64 << failures.min(5)).min(MAX_BACKOFF)
            }
        };
        state.in_flight.store(false, Ordering::Release);
        state.fetched.send_modify(|n| *n = n.wrapping_add(1));
        drop(state);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = wake.notified() => {}
        }
    }
}

async fn fetch(state: &Shared) -> Result<(KeySet, Option<Duration>), String> {
    let request = Request::get(state.url.clone())
        .header(header::ACCEPT, "application/jwk-set+json, application/json")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let work = async {
        let response = state
            .client
            .request(request)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("status {}", response.status()));
        }
        let max_age = response
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok((body, max_age))
    };
    let (body, max_age) = tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| "timed out".to_string())??;
    let keys = KeySet::from_jwks(&body, &state.algorithms)?;
    Ok((keys, max_age))
}

/// `max-age` of a Cache-Control value; `no-cache`/`no-store` count as 0 (then clamped up
/// to the minimum refresh interval).
fn max_age(value: &str) -> Option<Duration> {
    let mut out = None;
    for directive in value.split(',') {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-cache") || directive.eq_ignore_ascii_case("no-store")
        {
            return Some(Duration::ZERO);
        }
        if let Some((name, v)) = directive.split_once('=') {
            if name.trim().eq_ignore_ascii_case("max-age") {
                out = v
                    .trim()
                    .trim_matches('"')
                    .parse::<u64>()
                    .ok()
                    .map(Duration::from_secs);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_cache_control() {
        assert!(parse_url("http://127.0.0.1:3005/.well-known/jwks.json").is_ok());
        assert!(parse_url("https://issuer.example/jwks").is_ok());
        assert!(parse_url("ftp://issuer.example/jwks").is_err());
        assert!(parse_url("/jwks.json").is_err());
        assert!(parse_url("not a url").is_err());
        assert_eq!(max_age("public, max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=bogus"), None);
    }

    #[tokio::test]
    async fn the_refresh_task_stops_when_the_jwks_is_dropped() {
        // Nothing listens on port 9 of loopback: fetches fail, the task keeps retrying.
        let url = parse_url("http://127.0.0.1:9/jwks.json").unwrap();
        let client = crate::wire::client::build_client(FETCH_TIMEOUT, None).unwrap();
        let jwks = Jwks::start("t", url, vec![Algorithm::RS256], client).unwrap();
        assert!(jwks.running());
        let probe = jwks.task_probe();
        let weak = Arc::downgrade(&jwks.shared);
        assert!(jwks.keys().is_none());
        drop(jwks);
        for _ in 0..200 {
            if probe.is_finished() && weak.upgrade().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the JWKS refresh task outlived its verifier");
    }
}
