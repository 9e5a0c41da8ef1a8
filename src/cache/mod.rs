//! Response caching: a shared HTTP cache in the sense of RFC 9111, in memory, bounded by
//! bytes. One `ResponseCache` is built per `caches:` entry, shared by the routes that name
//! it, and carried over a reload when its definition did not change.
//!
//! - `key`: what identifies a stored response.
//! - `policy`: RFC 9111 storability and freshness, pure functions.
//! - `store`: entries in moka (size-weighted, per-entry expiry), Vary indexes.
//! - `flight`: request coalescing (one upstream request per cold or stale key).
//! - `flow`: the request-path stage that ties them to the upstream.

pub mod flight;
pub mod flow;
pub mod key;
pub mod policy;
pub mod store;

use std::time::Duration;

use prometheus::{IntCounter, IntGauge};

use crate::config::CacheConfig;
use crate::observe::CacheMetrics;

pub use flow::serve;
pub use key::Key;
pub use store::{Entry, Store};

/// Default `max_entry` when the config gives none.
pub const DEFAULT_MAX_ENTRY: u64 = 1024 * 1024;

/// `X-Cache` values, also the `result` label of `portico_cache_lookups_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Stale,
    Bypass,
}

impl CacheStatus {
    pub const ALL: [CacheStatus; 4] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Stale,
        CacheStatus::Bypass,
    ];

    pub fn header(self) -> http::HeaderValue {
        http::HeaderValue::from_static(match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Bypass => "BYPASS",
        })
    }

    fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// One named cache.
pub struct ResponseCache {
    pub name: String,
    pub config: CacheConfig,
    pub max_entry: u64,
    pub default_ttl: Duration,
    pub store: Store,
    pub flights: flight::Flights,
    lookups: [IntCounter; 4],
    variant_evictions: IntCounter,
    entries_gauge: IntGauge,
    bytes_gauge: IntGauge,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResponseCache({})", self.name)
    }
}

impl ResponseCache {
    pub fn build(name: &str, config: &CacheConfig, metrics: &CacheMetrics) -> ResponseCache {
        let max_size = config.max_size.bytes();
        let max_entry = config
            .max_entry
            .map(|s| s.bytes())
            .unwrap_or(DEFAULT_MAX_ENTRY)
            .min(max_size);
        let entries_gauge = metrics.entries.with_label_values(&[name]);
        let bytes_gauge = metrics.bytes.with_label_values(&[name]);
        let variant_evictions = metrics.variant_evictions.with_label_values(&[name]);
        entries_gauge.set(0);
        bytes_gauge.set(0);
        ResponseCache {
            name: name.to_string(),
            config: config.clone(),
            max_entry,
            default_ttl: config
                .default_ttl
                .map(|d| d.get())
                .unwrap_or(Duration::ZERO),
            store: Store::new(max_size),
            flights: flight::Flights::default(),
            lookups: CacheStatus::ALL
                .map(|o| metrics.lookups.with_label_values(&[name, o.label()])),
            variant_evictions,
            entries_gauge,
            bytes_gauge,
        }
    }

    pub fn count(&self, outcome: CacheStatus) {
        self.lookups[outcome as usize].inc();
    }

    /// Refreshes the entries and bytes gauges (after stores and purges).
    pub fn update_gauges(&self) {
        self.entries_gauge
            .set(i64::try_from(self.store.entries()).unwrap_or(i64::MAX));
        self.bytes_gauge
            .set(i64::try_from(self.store.bytes()).unwrap_or(i64::MAX));
    }

    pub async fn insert(&self, primary: &Key, entry: std::sync::Arc<Entry>) {
        let evicted = self.store.insert(primary, entry).await;
        self.variant_evictions
            .inc_by(u64::try_from(evicted).unwrap_or(u64::MAX));
        self.update_gauges();
    }

    pub async fn invalidate(&self, primary: &Key) {
        self.store.invalidate(primary).await;
        self.update_gauges();
    }

    /// Removes the URL under every route and scheme that stored into this cache.
    pub async fn invalidate_url(&self, primary: &Key) {
        self.store.invalidate_url(primary).await;
        self.update_gauges();
    }

    /// Admin purge: everything, or every entry for one upstream path.
    pub async fn purge(&self, path: Option<&str>) -> Result<(), String> {
        match path {
            Some(p) => self.store.purge_path(p).await?,
            None => self.store.purge_all().await,
        }
        self.update_gauges();
        Ok(())
    }
}
