//! Stored responses and the moka cache that holds them, bounded by bytes (body plus
//! headers plus key). A URL whose response varies keeps a small index under its primary
//! key that lists the Vary'd header names and the variants stored (at most
//! `MAX_VARIANTS`, oldest out), so invalidating the URL removes every variant.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use moka::notification::RemovalCause;
use moka::Expiry;

use super::key::Key;
use super::policy::Freshness;

/// Fixed per-entry overhead counted by the weigher (struct, map slots).
const ENTRY_OVERHEAD: usize = 256;
/// Validators keep a stale entry around this long for a cheap 304 revalidation.
const VALIDATOR_GRACE: Duration = Duration::from_secs(600);
/// Vary indexes are small; they live as long as their longest variant might.
const INDEX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Variants kept per URL. Clients choose the values of Vary'd headers (`Accept-Language`,
/// `Origin`, `User-Agent`), so without a cap one URL could hold any number of them; a
/// well-behaved URL has a handful. Storing one more evicts the oldest.
pub const MAX_VARIANTS: usize = 32;

#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// Response headers as stored: no hop-by-hop headers, no `Age`.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored_at: Instant,
    /// Age the response already had when it arrived (its `Age` header).
    pub initial_age: Duration,
    pub freshness: Freshness,
    pub vary: Vec<HeaderName>,
    /// The key it is stored under (the variant key when it varies).
    pub key: Key,
    /// Set while one background `stale-while-revalidate` refresh runs.
    pub refreshing: AtomicBool,
    weight: u32,
}

impl Entry {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        initial_age: Duration,
        freshness: Freshness,
        vary: Vec<HeaderName>,
        key: Key,
    ) -> Entry {
        let header_bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        let weight = body.len() + header_bytes + key.weight() + ENTRY_OVERHEAD;
        Entry {
            status,
            headers,
            body,
            stored_at: Instant::now(),
            initial_age,
            freshness,
            vary,
            key,
            refreshing: AtomicBool::new(false),
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The upstream's `Age` plus the time in the cache. Saturating: the sum must never
    /// panic, whatever `Age` an upstream sent (`policy::age_header` clamps it too).
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age
            .saturating_add(now.saturating_duration_since(self.stored_at))
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        !self.freshness.no_cache && self.age(now) < self.freshness.lifetime
    }

    fn stale_for(&self, now: Instant) -> Duration {
        self.age(now).saturating_sub(self.freshness.lifetime)
    }

    /// May be served stale while one background request revalidates it.
    pub fn within_stale_while_revalidate(&self, now: Instant) -> bool {
        !self.freshness.no_cache
            && !self.freshness.must_revalidate
            && self.stale_for(now) < self.freshness.stale_while_revalidate
    }

    /// May be served stale because the upstream failed.
    pub fn within_stale_if_error(&self, now: Instant) -> bool {
        !self.freshness.must_revalidate && self.stale_for(now) < self.freshness.stale_if_error
    }

    pub fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    pub fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(header::LAST_MODIFIED)
    }

    /// How long moka keeps it: fresh life, then the longest grace that may still use it.
    fn retention(&self) -> Duration {
        let validators = self.etag().is_some() || self.last_modified().is_some();
        let grace = self
            .freshness
            .stale_while_revalidate
            .max(self.freshness.stale_if_error)
            .max(if validators {
                VALIDATOR_GRACE
            } else {
                Duration::ZERO
            });
        self.freshness
            .lifetime
            .saturating_sub(self.initial_age)
            .saturating_add(grace)
            .max(Duration::from_millis(1))
    }
}

/// The variants of one URL whose response varies: their hashes, oldest first. Only a
/// listed variant is served, so one evicted from the list, or left behind by an index
/// that moka dropped, can never answer after the URL was invalidated.
#[derive(Debug)]
pub struct VaryIndex {
    pub names: Vec<HeaderName>,
    variants: Mutex<VecDeque<u64>>,
}

impl VaryIndex {
    fn new(names: Vec<HeaderName>) -> VaryIndex {
        VaryIndex {
            names,
            variants: Mutex::new(VecDeque::with_capacity(MAX_VARIANTS + 1)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<u64>> {
        self.variants.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contains(&self, hash: u64) -> bool {
        self.lock().contains(&hash)
    }

    /// Lists `hash` as the newest variant; returns the variants pushed out by the cap.
    fn add(&self, hash: u64) -> Vec<u64> {
        let mut variants = self.lock();
        if let Some(at) = variants.iter().position(|h| *h == hash) {
            variants.remove(at);
        }
        variants.push_back(hash);
        let over = variants.len().saturating_sub(MAX_VARIANTS);
        variants.drain(..over).collect()
    }

    /// Bytes the index may hold, for the weigher: moka weighs a node once, when it is
    /// inserted, so the index is weighed full from the start.
    fn weight(&self, key: &Key) -> usize {
        key.weight()
            + ENTRY_OVERHEAD
            + self
                .names
                .iter()
                .map(|n| n.as_str().len() + 32)
                .sum::<usize>()
            + (MAX_VARIANTS + 1) * std::mem::size_of::<u64>()
    }
}

#[derive(Clone, Debug)]
pub enum Node {
    Response(Arc<Entry>),
    Vary(Arc<VaryIndex>),
}

impl Node {
    fn weight(&self, key: &Key) -> u32 {
        match self {
            Node::Response(e) => e.weight(),
            Node::Vary(v) => u32::try_from(v.weight(key)).unwrap_or(u32::MAX),
        }
    }
}

struct NodeExpiry;

impl Expiry<Key, Node> for NodeExpiry {
    fn expire_after_create(&self, _: &Key, value: &Node, _: Instant) -> Option<Duration> {
        Some(match value {
            Node::Response(e) => e.retention(),
            Node::Vary(_) => INDEX_TTL,
        })
    }

    fn expire_after_update(
        &self,
        key: &Key,
        value: &Node,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, at)
    }
}

pub struct Store {
    cache: moka::future::Cache<Key, Node>,
    /// Every (scheme, route) that stored here, so an unsafe request can invalidate its URL
    /// under each. Route names come from the config, so this stays as small as the route
    /// table (times two schemes), whatever clients send.
    namespaces: Mutex<Vec<(&'static str, Box<str>)>>,
    /// Bytes held, counted from inserts and removal notifications.
    bytes: Arc<AtomicI64>,
}

impl Store {
    pub fn new(max_size: u64) -> Store {
        let bytes = Arc::new(AtomicI64::new(0));
        let counter = bytes.clone();
        let cache = moka::future::Cache::builder()
            .max_capacity(max_size)
            .weigher(|k: &Key, v: &Node| v.weight(k))
            .expire_after(NodeExpiry)
            .support_invalidation_closures()
            .eviction_listener(move |k: Arc<Key>, v: Node, _: RemovalCause| {
                counter.fetch_sub(i64::from(v.weight(&k)), Ordering::Relaxed);
            })
            .build();
        Store {
            cache,
            namespaces: Mutex::new(Vec::new()),
            bytes,
        }
    }

    /// The stored response for this request, following a Vary index when there is one.
    pub async fn lookup(&self, primary: &Key, request: &HeaderMap) -> Option<Arc<Entry>> {
        match self.cache.get(primary).await? {
            Node::Response(entry) if entry.vary.is_empty() => Some(entry),
            Node::Response(_) => None,
            Node::Vary(index) => {
                let variant = primary.variant(&index.names, request);
                if !variant.variant.is_some_and(|h| index.contains(h)) {
                    return None;
                }
                match self.cache.get(&variant).await? {
                    Node::Response(entry) => Some(entry),
                    Node::Vary(_) => None,
                }
            }
        }
    }

    /// Stores `entry` (under its variant key when it varies); returns how many older
    /// variants of the URL the cap pushed out.
    pub async fn insert(&self, primary: &Key, entry: Arc<Entry>) -> usize {
        {
            let mut namespaces = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
            if !namespaces
                .iter()
                .any(|(s, r)| *s == primary.scheme && *r == primary.route)
            {
                namespaces.push((primary.scheme, primary.route.clone()));
            }
        }
        let mut evicted = 0;
        if entry.vary.is_empty() {
            self.put(primary.clone(), Node::Response(entry)).await;
        } else {
            let index = match self.cache.get(primary).await {
                Some(Node::Vary(index)) if index.names == entry.vary => index,
                previous => {
                    // A different Vary (or none before): the old variants are unreachable.
                    if let Some(Node::Vary(old)) = previous {
                        self.drop_variants(primary, &old).await;
                    }
                    let index = Arc::new(VaryIndex::new(entry.vary.clone()));
                    self.put(primary.clone(), Node::Vary(index.clone())).await;
                    index
                }
            };
            if let Some(hash) = entry.key.variant {
                for old in index.add(hash) {
                    self.cache.invalidate(&primary.with_variant(old)).await;
                    evicted += 1;
                }
            }
            self.put(entry.key.clone(), Node::Response(entry)).await;
        }
        // Apply evictions now, so the byte bound holds after every store, not eventually.
        self.cache.run_pending_tasks().await;
        evicted
    }

    async fn put(&self, key: Key, node: Node) {
        self.bytes
            .fetch_add(i64::from(node.weight(&key)), Ordering::Relaxed);
        self.cache.insert(key, node).await;
    }

    async fn drop_variants(&self, primary: &Key, index: &VaryIndex) {
        let variants = std::mem::take(&mut *index.lock());
        for hash in variants {
            self.cache.invalidate(&primary.with_variant(hash)).await;
        }
    }

    /// Removes every stored variant of one URL.
    pub async fn invalidate(&self, primary: &Key) {
        if let Some(Node::Vary(index)) = self.cache.remove(primary).await {
            self.drop_variants(primary, &index).await;
        }
        self.cache.run_pending_tasks().await;
    }

    /// Removes every stored variant of one URL under every route and scheme that stored
    /// into this cache.
    pub async fn invalidate_url(&self, primary: &Key) {
        let keys: Vec<Key> = self
            .namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(scheme, route)| primary.under(scheme, route))
            .collect();
        for key in &keys {
            if let Some(Node::Vary(index)) = self.cache.remove(key).await {
                self.drop_variants(key, &index).await;
            }
        }
        self.cache.run_pending_tasks().await;
    }

    pub async fn purge_all(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks().await;
    }

    /// Removes every entry whose upstream path is `path` (any host, query or variant).
    pub async fn purge_path(&self, path: &str) -> Result<(), String> {
        let path: Box<str> = path.into();
        self.cache
            .invalidate_entries_if(move |k, _| k.path == path)
            .map_err(|e| e.to_string())?;
        self.cache.run_pending_tasks().await;
        Ok(())
    }

    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Bytes held right now (inserted minus removed).
    pub fn bytes(&self) -> u64 {
        u64::try_from(self.bytes.load(Ordering::Relaxed)).unwrap_or(0)
    }

    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varying(primary: &Key, value: &str) -> (HeaderMap, Arc<Entry>) {
        let names = vec![HeaderName::from_static("accept-language")];
        let mut request = HeaderMap::new();
        request.insert(
            "accept-language",
            HeaderValue::from_str(value).expect("test value"),
        );
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, HeaderValue::from_static("accept-language"));
        let freshness = Freshness {
            lifetime: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            no_cache: false,
            must_revalidate: false,
        };
        let key = primary.variant(&names, &request);
        let entry = Entry::new(
            StatusCode::OK,
            headers,
            Bytes::from(value.to_string()),
            Duration::ZERO,
            freshness,
            names,
            key,
        );
        (request, Arc::new(entry))
    }

    #[tokio::test]
    async fn variants_of_one_url_are_capped_oldest_out_and_weighed() {
        let store = Store::new(64 * 1024 * 1024);
        let primary = Key::primary("http", "h", "r", "u", "/v", None);
        let mut evicted = 0;
        let mut requests = Vec::new();
        let mut weights = 0u64;
        for i in 0..100 {
            let (request, entry) = varying(&primary, &format!("l-{i}"));
            weights += u64::from(entry.weight());
            evicted += store.insert(&primary, entry).await;
            requests.push(request);
        }
        assert_eq!(evicted, 100 - MAX_VARIANTS);
        store.run_pending_tasks().await;
        assert_eq!(store.entries(), MAX_VARIANTS as u64 + 1);
        let newest = store.lookup(&primary, &requests[99]).await;
        assert_eq!(newest.map(|e| e.body.clone()), Some(Bytes::from("l-99")));
        assert!(store.lookup(&primary, &requests[0]).await.is_none());
        assert!(store
            .lookup(&primary, &requests[100 - MAX_VARIANTS])
            .await
            .is_some());
        // The index is weighed: bytes are the kept variants plus the index.
        let Some(Node::Vary(index)) = store.cache.get(&primary).await else {
            panic!("no index");
        };
        let kept: u64 = (100 - MAX_VARIANTS..100)
            .map(|i| u64::from(varying(&primary, &format!("l-{i}")).1.weight()))
            .sum();
        assert!(weights > kept);
        assert_eq!(store.bytes(), kept + index.weight(&primary) as u64);
        // Storing a listed variant again makes it the newest, not a second copy.
        let (_, again) = varying(&primary, "l-68");
        assert_eq!(store.insert(&primary, again).await, 0);
        let (_, next) = varying(&primary, "l-new");
        assert_eq!(store.insert(&primary, next).await, 1);
        assert!(store.lookup(&primary, &requests[68]).await.is_some());
        assert!(store.lookup(&primary, &requests[69]).await.is_none());
        // Invalidating the URL removes every listed variant and the index.
        store.invalidate(&primary).await;
        assert_eq!(store.entries(), 0);
        assert_eq!(store.bytes(), 0);
    }

    #[tokio::test]
    async fn an_entry_of_any_age_is_stale_and_never_overflows() {
        let primary = Key::primary("http", "h", "r", "u", "/age", None);
        let freshness = Freshness {
            lifetime: Duration::from_secs(60),
            stale_while_revalidate: Duration::MAX,
            stale_if_error: Duration::MAX,
            no_cache: false,
            must_revalidate: false,
        };
        for initial_age in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::from_secs(crate::cache::policy::MAX_DELTA_SECONDS),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::ETAG, HeaderValue::from_static("\"1\""));
            let entry = Entry::new(
                StatusCode::OK,
                headers,
                Bytes::from_static(b"x"),
                initial_age,
                freshness,
                Vec::new(),
                primary.clone(),
            );
            let later = Instant::now() + Duration::from_secs(3600);
            assert!(entry.age(later) >= initial_age);
            assert!(!entry.is_fresh(later));
            assert!(entry.within_stale_while_revalidate(later));
            assert!(entry.retention() >= Duration::from_millis(1));
            let store = Store::new(1024 * 1024);
            store.insert(&primary, Arc::new(entry)).await;
            let found = store.lookup(&primary, &HeaderMap::new()).await;
            assert!(found.is_some_and(|e| !e.is_fresh(Instant::now())));
        }
    }

    #[tokio::test]
    async fn many_variants_stay_under_max_size() {
        let max = 16 * 1024;
        let store = Store::new(max);
        for url in 0..20 {
            let primary = Key::primary("http", "h", "r", "u", &format!("/v{url}"), None);
            for i in 0..50 {
                let (_, entry) = varying(&primary, &format!("{i}-{}", "x".repeat(200)));
                store.insert(&primary, entry).await;
                assert!(store.bytes() <= max, "{} bytes held", store.bytes());
            }
        }
    }
}
