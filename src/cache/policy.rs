//! RFC 9111 rules, as plain functions over headers: parsing `Cache-Control`, deciding
//! whether a response may be stored by a shared cache, and for how long it is fresh.
//! Everything here is pure so it can be unit-tested without a network.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, StatusCode};

/// The largest delta-seconds value used (RFC 9111 §1.2.2): a larger `Age`, `max-age`,
/// `s-maxage`, grace or `Expires` lifetime counts as 2^31 seconds (68 years), so no sum
/// of ages and lifetimes can overflow.
pub const MAX_DELTA_SECONDS: u64 = 1 << 31;
const MAX_DELTA: Duration = Duration::from_secs(MAX_DELTA_SECONDS);

/// A delta-seconds value (digits only), clamped to `MAX_DELTA_SECONDS`; `None` when it
/// is not one.
pub fn delta_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits that overflow a u64 are a very large number, not an invalid one.
    Some(
        text.parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)),
    )
}

/// The directives Portico understands. Unknown directives are ignored, as RFC 9111 asks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

/// Parses every `Cache-Control` field line. A directive with an unparsable delta-seconds
/// value counts as 0 (stale), which is the safe reading; one too large counts as
/// `MAX_DELTA_SECONDS` (RFC 9111 §1.2.2).
pub fn cache_control(headers: &HeaderMap) -> CacheControl {
    let mut cc = CacheControl::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else {
            // Unreadable directives: be conservative.
            cc.no_store = true;
            continue;
        };
        for directive in split_directives(text) {
            let (name, arg) = match directive.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            let seconds = || arg.and_then(delta_seconds).unwrap_or(0);
            match name.to_ascii_lowercase().as_str() {
                "no-store" => cc.no_store = true,
                // `no-cache="field"` and `private="field"` are read as their unqualified
                // forms: stricter than needed, never less safe.
                "no-cache" => cc.no_cache = true,
                "private" => cc.private = true,
                "public" => cc.public = true,
                "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                "max-age" => cc.max_age = Some(seconds()),
                "s-maxage" => cc.s_maxage = Some(seconds()),
                "stale-while-revalidate" => cc.stale_while_revalidate = Some(seconds()),
                "stale-if-error" => cc.stale_if_error = Some(seconds()),
                _ => {}
            }
        }
    }
    cc
}

/// Splits on commas that are not inside a quoted string.
fn split_directives(text: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty())
}

/// A request's own directives (plus `Pragma: no-cache` when it sends no Cache-Control).
pub fn request_cache_control(headers: &HeaderMap) -> CacheControl {
    let mut cc = cache_control(headers);
    if !headers.contains_key(header::CACHE_CONTROL) {
        cc.no_cache |= headers.get_all(header::PRAGMA).iter().any(|v| {
            v.to_str()
                .is_ok_and(|t| t.to_ascii_lowercase().contains("no-cache"))
        });
    }
    cc
}

/// Status codes that may be stored without explicit freshness (RFC 9110 §15.1), minus
/// 206 (range requests bypass the cache).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// How long a stored response may be used, and the grace periods around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Freshness {
    pub lifetime: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// `no-cache`: store, but revalidate before every use.
    pub no_cache: bool,
    /// `must-revalidate`: never served stale, not even on upstream errors.
    pub must_revalidate: bool,
}

/// Why a response was not stored; only used for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStorable {
    RequestNoStore,
    NoStore,
    Private,
    SetCookie,
    VaryStar,
    /// A response to an authenticated request that does not say it may be shared.
    Authenticated,
    Status,
    NoFreshness,
}

/// Decides whether a response to a GET may be stored by a shared cache (RFC 9111 §3),
/// and its freshness (§4.2.1): `s-maxage`, then `max-age`, then `Expires`, then the
/// cache's default TTL for heuristically cacheable statuses.
///
/// `authenticated` is about who asked (the route has `jwt:` or the client sent
/// `Authorization`), not about the request as forwarded. Such a response is stored only
/// with `public` or `s-maxage` (RFC 9111 §3.5). §3.5 also lists `must-revalidate`; it
/// is not enough here, because origins send it on per-user answers (`max-age=0,
/// must-revalidate`) and it says when to revalidate, not who may share the answer.
pub fn storable(
    request_cc: &CacheControl,
    authenticated: bool,
    status: StatusCode,
    response: &HeaderMap,
    default_ttl: Duration,
) -> Result<Freshness, NotStorable> {
    let cc = cache_control(response);
    if request_cc.no_store {
        return Err(NotStorable::RequestNoStore);
    }
    if cc.no_store {
        return Err(NotStorable::NoStore);
    }
    if cc.private {
        return Err(NotStorable::Private);
    }
    if response.contains_key(header::SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    if vary_star(response) {
        return Err(NotStorable::VaryStar);
    }
    if authenticated && !(cc.public || cc.s_maxage.is_some()) {
        return Err(NotStorable::Authenticated);
    }
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStorable::Status);
    }
    let explicit = cc
        .s_maxage
        .or(cc.max_age)
        .map(Duration::from_secs)
        .or_else(|| expires_lifetime(response));
    let lifetime = match explicit {
        Some(d) => d,
        None if heuristically_cacheable(status) && !default_ttl.is_zero() => default_ttl,
        None if cc.no_cache && heuristically_cacheable(status) => Duration::ZERO,
        None => return Err(NotStorable::NoFreshness),
    };
    let freshness = Freshness {
        lifetime,
        stale_while_revalidate: Duration::from_secs(cc.stale_while_revalidate.unwrap_or(0)),
        stale_if_error: Duration::from_secs(cc.stale_if_error.unwrap_or(0)),
        no_cache: cc.no_cache,
        must_revalidate: cc.must_revalidate,
    };
    let useful = !lifetime.is_zero()
        || has_validators(response)
        || !freshness.stale_while_revalidate.is_zero()
        || !freshness.stale_if_error.is_zero();
    if useful {
        Ok(freshness)
    } else {
        Err(NotStorable::NoFreshness)
    }
}

pub fn vary_star(headers: &HeaderMap) -> bool {
    headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .map_or(true, |t| t.split(',').any(|n| n.trim() == "*"))
    })
}

pub fn has_validators(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// `Expires - Date` (or `Expires - now` without a Date). An invalid Expires means
/// "already expired" (RFC 9111 §5.3).
fn expires_lifetime(headers: &HeaderMap) -> Option<Duration> {
    let expires = headers.get(header::EXPIRES)?;
    let Some(expires) = http_date(expires) else {
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(header::DATE)
        .and_then(http_date)
        .unwrap_or_else(SystemTime::now);
    Some(
        expires
            .duration_since(date)
            .unwrap_or(Duration::ZERO)
            .min(MAX_DELTA),
    )
}

pub fn http_date(value: &http::HeaderValue) -> Option<SystemTime> {
    value
        .to_str()
        .ok()
        .and_then(|t| httpdate::parse_http_date(t).ok())
}

/// The `Age` an upstream reported (already spent elsewhere), at most
/// `MAX_DELTA_SECONDS`; an invalid one is ignored.
pub fn age_header(headers: &HeaderMap) -> Duration {
    headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(delta_seconds)
        .map(Duration::from_secs)
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn store(
        req: &[(&'static str, &'static str)],
        auth: bool,
        status: u16,
        resp: &[(&'static str, &'static str)],
    ) -> Result<Freshness, NotStorable> {
        storable(
            &request_cache_control(&headers(req)),
            auth,
            StatusCode::from_u16(status).unwrap(),
            &headers(resp),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn parses_directives_with_quotes_and_case() {
        let cc = cache_control(&headers(&[
            ("cache-control", "Public, MAX-AGE=30, no-cache=\"a, b\""),
            ("cache-control", "s-maxage=x, stale-if-error=5"),
        ]));
        assert!(cc.public && cc.no_cache);
        assert_eq!(cc.max_age, Some(30));
        assert_eq!(cc.s_maxage, Some(0));
        assert_eq!(cc.stale_if_error, Some(5));
    }

    #[test]
    fn freshness_order_is_s_maxage_max_age_expires_default() {
        let f = store(
            &[],
            false,
            200,
            &[("cache-control", "max-age=10, s-maxage=20")],
        )
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(20));
        let f = store(&[], false, 200, &[("cache-control", "max-age=10")]).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(10));
        let f = store(
            &[],
            false,
            200,
            &[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
            ],
        )
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(60));
        let f = store(&[], false, 200, &[]).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(60));
        // Not cacheable by default without explicit freshness.
        assert_eq!(store(&[], false, 500, &[]), Err(NotStorable::NoFreshness));
        assert!(store(&[], false, 500, &[("cache-control", "max-age=5")]).is_ok());
    }

    #[test]
    fn refuses_what_a_shared_cache_must_not_store() {
        assert_eq!(
            store(&[("cache-control", "no-store")], false, 200, &[]),
            Err(NotStorable::RequestNoStore)
        );
        assert_eq!(
            store(&[], false, 200, &[("cache-control", "no-store")]),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            store(&[], false, 200, &[("cache-control", "private, max-age=9")]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            store(&[], false, 200, &[("set-cookie", "a=b")]),
            Err(NotStorable::SetCookie)
        );
        assert_eq!(
            store(&[], false, 200, &[("vary", "accept, *")]),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(
            store(&[], true, 200, &[("cache-control", "max-age=9")]),
            Err(NotStorable::Authenticated)
        );
        assert_eq!(
            store(
                &[],
                true,
                200,
                &[("cache-control", "max-age=9, must-revalidate")]
            ),
            Err(NotStorable::Authenticated)
        );
        assert!(store(&[], true, 200, &[("cache-control", "public, max-age=9")]).is_ok());
        assert!(store(&[], true, 200, &[("cache-control", "s-maxage=9")]).is_ok());
        assert_eq!(
            store(&[], false, 206, &[("cache-control", "max-age=9")]),
            Err(NotStorable::Status)
        );
    }

    #[test]
    fn huge_delta_seconds_are_clamped_to_two_to_the_31() {
        let max = Duration::from_secs(MAX_DELTA_SECONDS);
        assert_eq!(delta_seconds("18446744073709551615"), Some(1 << 31));
        assert_eq!(delta_seconds("99999999999999999999999"), Some(1 << 31));
        assert_eq!(delta_seconds(" 30 "), Some(30));
        assert_eq!(delta_seconds("-1"), None);
        assert_eq!(delta_seconds("1e9"), None);
        assert_eq!(
            age_header(&headers(&[("age", "18446744073709551615")])),
            max
        );
        assert_eq!(age_header(&headers(&[("age", "soon")])), Duration::ZERO);
        let f = store(
            &[],
            false,
            200,
            &[(
                "cache-control",
                "max-age=99999999999999999999, stale-if-error=18446744073709551615",
            )],
        )
        .unwrap();
        assert_eq!((f.lifetime, f.stale_if_error), (max, max));
        let f = store(
            &[],
            false,
            200,
            &[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
            ],
        )
        .unwrap();
        assert_eq!(f.lifetime, max);
        // Not a delta-seconds value: stale, the safe reading.
        let f = store(
            &[],
            false,
            200,
            &[("cache-control", "max-age=soon"), ("etag", "\"1\"")],
        );
        assert_eq!(f.map(|f| f.lifetime), Ok(Duration::ZERO));
    }

    #[test]
    fn no_cache_is_stored_only_with_validators() {
        let f = store(
            &[],
            false,
            200,
            &[("cache-control", "no-cache"), ("etag", "\"1\"")],
        )
        .unwrap();
        assert!(f.no_cache);
        assert_eq!(
            storable(
                &CacheControl::default(),
                false,
                StatusCode::OK,
                &headers(&[("cache-control", "no-cache")]),
                Duration::ZERO
            ),
            Err(NotStorable::NoFreshness)
        );
    }
}
