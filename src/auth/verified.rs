//! Tokens already verified, so a client sending the same token again costs a hash lookup
//! instead of a signature check (RS256 verification is ~30 µs of CPU). An entry is only
//! trusted while the key set that verified it is still the current one (a JWKS refresh
//! or rotation makes every entry re-verify once) and while the token's `exp` (plus
//! leeway) has not passed; entries live at most `TTL` and the cache holds at most
//! `CAPACITY` bytes of tokens and claims, so memory stays bounded whatever clients send.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::keys::KeySet;
use super::Claims;

/// Weighted by token length plus an allowance for the claims.
const CAPACITY: u64 = 8 * 1024 * 1024;
const CLAIMS_ALLOWANCE: u32 = 512;
const TTL: Duration = Duration::from_secs(60);
/// Longer tokens are not cached: they would make the cache's memory bound meaningless.
const MAX_TOKEN: usize = 4096;

#[derive(Clone)]
struct Entry {
    claims: Arc<Claims>,
    keys: Arc<KeySet>,
    expires_at: Option<u64>,
}

pub struct VerifiedTokens {
    cache: moka::sync::Cache<Arc<str>, Entry>,
    leeway: u64,
}

impl VerifiedTokens {
    pub fn new(leeway_secs: u64) -> VerifiedTokens {
        VerifiedTokens {
            cache: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .weigher(|token: &Arc<str>, _: &Entry| {
                    u32::try_from(token.len())
                        .unwrap_or(u32::MAX)
                        .saturating_add(CLAIMS_ALLOWANCE)
                })
                .time_to_live(TTL)
                .build(),
            leeway: leeway_secs,
        }
    }

    /// The claims of `token` when it was verified with `current` keys and is unexpired.
    pub fn get(&self, token: &str, current: &Arc<KeySet>) -> Option<Arc<Claims>> {
        let entry = self.cache.get(token)?;
        if !Arc::ptr_eq(&entry.keys, current) {
            return None;
        }
        if let Some(exp) = entry.expires_at {
            if now() > exp.saturating_add(self.leeway) {
                self.cache.invalidate(token);
                return None;
            }
        }
        Some(entry.claims)
    }

    pub fn insert(&self, token: &str, keys: Arc<KeySet>, claims: Arc<Claims>) {
        if token.len() > MAX_TOKEN {
            return;
        }
        let expires_at = claims.get("exp").and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        });
        self.cache.insert(
            Arc::from(token),
            Entry {
                claims,
                keys,
                expires_at,
            },
        );
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    fn claims(exp: u64) -> Arc<Claims> {
        let mut m = Map::new();
        m.insert("sub".into(), Value::from("u1"));
        m.insert("exp".into(), json!(exp));
        Arc::new(Claims(m))
    }

    #[test]
    fn hits_only_with_the_same_keys_and_before_expiry() {
        let cache = VerifiedTokens::new(0);
        let keys = Arc::new(KeySet { keys: Vec::new() });
        let rotated = Arc::new(KeySet { keys: Vec::new() });
        cache.insert("a.b.c", keys.clone(), claims(now() + 600));
        assert!(cache.get("a.b.c", &keys).is_some());
        assert!(cache.get("a.b.x", &keys).is_none());
        assert!(cache.get("a.b.c", &rotated).is_none(), "new keys re-verify");
        cache.insert("d.e.f", keys.clone(), claims(now() - 5));
        assert!(
            cache.get("d.e.f", &keys).is_none(),
            "expired tokens are not served"
        );
        let huge = "x".repeat(MAX_TOKEN + 1);
        cache.insert(&huge, keys.clone(), claims(now() + 600));
        assert!(cache.get(&huge, &keys).is_none());
    }
}
