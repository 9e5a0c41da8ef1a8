//! Stored responses and the moka cache that holds them, bounded by bytes (body plus
//! headers plus key). A URL whose response varies keeps a small index under its primary
//! key that lists the Vary'd header names and the variants stored, so invalidating the
//! URL removes every variant.

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
/// Vary indexes are tiny; they live as long as their longest variant might.
const INDEX_TTL: Duration = Duration::from_secs(24 * 3600);

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

    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
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

/// The variants of one URL whose response varies.
#[derive(Debug)]
pub struct VaryIndex {
    pub names: Vec<HeaderName>,
    variants: Mutex<Vec<Key>>,
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
            Node::Vary(v) => (key.weight() + ENTRY_OVERHEAD + v.names.len() * 32) as u32,
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
                match self.cache.get(&variant).await? {
                    Node::Response(entry) => Some(entry),
                    Node::Vary(_) => None,
                }
            }
        }
    }

    pub async fn insert(&self, primary: &Key, entry: Arc<Entry>) {
        {
            let mut namespaces = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
            if !namespaces
                .iter()
                .any(|(s, r)| *s == primary.scheme && *r == primary.route)
            {
                namespaces.push((primary.scheme, primary.route.clone()));
            }
        }
        if entry.vary.is_empty() {
            self.put(primary.clone(), Node::Response(entry)).await;
        } else {
            let index = match self.cache.get(primary).await {
                Some(Node::Vary(index)) if index.names == entry.vary => index,
                previous => {
                    // A different Vary (or none before): the old variants are unreachable.
                    if let Some(Node::Vary(old)) = previous {
                        self.drop_variants(&old).await;
                    }
                    let index = Arc::new(VaryIndex {
                        names: entry.vary.clone(),
                        variants: Mutex::new(Vec::new()),
                    });
                    self.put(primary.clone(), Node::Vary(index.clone())).await;
                    index
                }
            };
            {
                let mut variants = index.variants.lock().unwrap_or_else(|p| p.into_inner());
                if !variants.contains(&entry.key) {
                    variants.push(entry.key.clone());
                }
            }
            self.put(entry.key.clone(), Node::Response(entry)).await;
        }
        // Apply evictions now, so the byte bound holds after every store, not eventually.
        self.cache.run_pending_tasks().await;
    }

    async fn put(&self, key: Key, node: Node) {
        self.bytes
            .fetch_add(i64::from(node.weight(&key)), Ordering::Relaxed);
        self.cache.insert(key, node).await;
    }

    async fn drop_variants(&self, index: &VaryIndex) {
        let variants =
            std::mem::take(&mut *index.variants.lock().unwrap_or_else(|p| p.into_inner()));
        for key in variants {
            self.cache.invalidate(&key).await;
        }
    }

    /// Removes every stored variant of one URL.
    pub async fn invalidate(&self, primary: &Key) {
        if let Some(Node::Vary(index)) = self.cache.remove(primary).await {
            self.drop_variants(&index).await;
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
            .map(|(scheme, route)| primary.under(*scheme, route))
            .collect();
        for key in &keys {
            if let Some(Node::Vary(index)) = self.cache.remove(key).await {
                self.drop_variants(&index).await;
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
