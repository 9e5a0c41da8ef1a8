//! Where a split finds a request's sticky key, how a key becomes a bucket, and the
//! force rules that send testers to one side. Everything is parsed when the Runtime is
//! built; the request path only compares bytes.

use std::net::IpAddr;

use http::header::{HeaderName, COOKIE};
use http::{HeaderMap, HeaderValue};

use crate::auth::claim_text;
use crate::config::ForceConfig;

/// Buckets are 0..BUCKETS; a request is canary when its bucket is below `percent × 100`.
pub const BUCKETS: u32 = 10_000;

/// `sticky:` — where the key is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StickyKey {
    Claim(String),
    Header(HeaderName),
    Cookie(String),
    ClientIp,
}

impl StickyKey {
    pub fn parse(text: &str) -> Result<StickyKey, String> {
        let text = text.trim();
        if text == "client_ip" {
            return Ok(StickyKey::ClientIp);
        }
        let bad = || {
            format!("invalid sticky key {text:?} (use claim:NAME, header:NAME, cookie:NAME or client_ip)")
        };
        let (kind, name) = text.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad());
        }
        match kind.trim() {
            "claim" => Ok(StickyKey::Claim(name.to_string())),
            "header" => HeaderName::from_bytes(name.as_bytes())
                .map(StickyKey::Header)
                .map_err(|_| format!("invalid header name {name:?} in sticky key")),
            "cookie" if valid_cookie_name(name) => Ok(StickyKey::Cookie(name.to_string())),
            "cookie" => Err(format!("invalid cookie name {name:?} in sticky key")),
            _ => Err(bad()),
        }
    }

    /// The bucket of this request's key, or `None` when the request has no key.
    pub fn bucket(
        &self,
        headers: &HeaderMap,
        client_ip: IpAddr,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Option<u32> {
        match self {
            StickyKey::ClientIp => Some(match client_ip {
                IpAddr::V4(ip) => bucket_of(&ip.octets()),
                IpAddr::V6(ip) => bucket_of(&ip.octets()),
            }),
            StickyKey::Header(name) => headers
                .get(name)
                .map(HeaderValue::as_bytes)
                .filter(|v| !v.is_empty())
                .map(bucket_of),
            StickyKey::Cookie(name) => cookie(headers, name)
                .filter(|v| !v.is_empty())
                .map(bucket_of),
            StickyKey::Claim(name) => claim_text(claims?.get(name)?)
                .filter(|t| !t.is_empty())
                .map(|t| bucket_of(t.as_bytes())),
        }
    }
}

fn valid_cookie_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// The value of cookie `name` in the request's `Cookie` header(s).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            if &pair[..eq] == name.as_bytes() {
                let v = pair[eq + 1..].trim_ascii();
                // Cookie values may be quoted (RFC 6265 §4.1.1).
                let v = v
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v);
                return Some(v);
            }
        }
    }
    None
}

/// FNV-1a 64 followed by a murmur3 finaliser (FNV alone mixes short keys' low bits
/// poorly). Fixed constants, so a key lands in the same bucket on every run, every
/// instance and every version of Portico.
pub fn bucket_of(key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % u64::from(BUCKETS)) as u32
}

/// `force_canary` / `force_stable`: any listed header or cookie with its exact value.
#[derive(Clone, Debug, Default)]
pub struct Force {
    headers: Vec<(HeaderName, Vec<u8>)>,
    cookies: Vec<(String, Vec<u8>)>,
}

impl Force {
    /// Errors name the field below the force key (`header.x-beta`).
    pub fn build(config: &ForceConfig) -> Result<Force, (String, String)> {
        let mut force = Force::default();
        for (name, value) in &config.header {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                (
                    format!("header.{name}"),
                    format!("invalid header name {name:?}"),
                )
            })?;
            force.headers.push((header, value.as_bytes().to_vec()));
        }
        for (name, value) in &config.cookie {
            if !valid_cookie_name(name) {
                return Err((
                    format!("cookie.{name}"),
                    format!("invalid cookie name {name:?}"),
                ));
            }
            force
                .cookies
                .push((name.clone(), value.as_bytes().to_vec()));
        }
        if force.headers.is_empty() && force.cookies.is_empty() {
            return Err((String::new(), "list at least one header or cookie".into()));
        }
        Ok(force)
    }

    pub fn matches(&self, headers: &HeaderMap) -> bool {
        self.headers.iter().any(|(name, want)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == want.as_slice())
        }) || self
            .cookies
            .iter()
            .any(|(name, want)| cookie(headers, name) == Some(want.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn parses_every_kind_and_refuses_the_rest() {
        assert_eq!(StickyKey::parse("client_ip"), Ok(StickyKey::ClientIp));
        assert_eq!(
            StickyKey::parse("claim:sub"),
            Ok(StickyKey::Claim("sub".into()))
        );
        assert!(
            matches!(StickyKey::parse("header:X-User-Id"), Ok(StickyKey::Header(h)) if h == "x-user-id")
        );
        assert_eq!(
            StickyKey::parse("cookie:uid"),
            Ok(StickyKey::Cookie("uid".into()))
        );
        for bad in [
            "",
            "sub",
            "claim:",
            "header:bad name",
            "cookie:a;b",
            "query:x",
        ] {
            assert!(StickyKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // Pinned values: changing the hash would move users between sides on upgrade.
        assert_eq!(bucket_of(b"user-1"), bucket_of(b"user-1"));
        let pinned = [bucket_of(b"user-1"), bucket_of(b"alice"), bucket_of(b"")];
        assert_eq!(pinned, PINNED);
        let below_10pct = (0..10_000)
            .filter(|i| bucket_of(format!("user-{i}").as_bytes()) < 1000)
            .count();
        assert!((850..=1150).contains(&below_10pct), "{below_10pct}");
    }

    /// Computed independently (FNV-1a 64 + murmur3 fmix64, mod 10000).
    const PINNED: [u32; 3] = [5477, 7236, 4342];

    #[test]
    fn keys_from_headers_cookies_claims_and_ip() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let h = headers(&[("x-user-id", "42"), ("cookie", "a=1; uid=\"u-9\"; b=2")]);
        let by_header = StickyKey::parse("header:x-user-id").unwrap();
        assert_eq!(by_header.bucket(&h, ip, None), Some(bucket_of(b"42")));
        assert_eq!(by_header.bucket(&HeaderMap::new(), ip, None), None);
        let by_cookie = StickyKey::parse("cookie:uid").unwrap();
        assert_eq!(by_cookie.bucket(&h, ip, None), Some(bucket_of(b"u-9")));
        assert_eq!(
            StickyKey::parse("cookie:zz").unwrap().bucket(&h, ip, None),
            None
        );
        let by_ip = StickyKey::ClientIp;
        assert_eq!(by_ip.bucket(&h, ip, None), Some(bucket_of(&[10, 0, 0, 7])));
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "alice".into());
        claims.insert("n".into(), 7.into());
        claims.insert("o".into(), serde_json::json!({}));
        let claim = |n: &str| StickyKey::Claim(n.into()).bucket(&h, ip, Some(&claims));
        assert_eq!(claim("sub"), Some(bucket_of(b"alice")));
        assert_eq!(claim("n"), Some(bucket_of(b"7")));
        assert_eq!(claim("o"), None);
        assert_eq!(claim("missing"), None);
        assert_eq!(StickyKey::Claim("sub".into()).bucket(&h, ip, None), None);
    }

    #[test]
    fn force_matches_any_listed_header_or_cookie() {
        let mut config = ForceConfig::default();
        config.header.insert("x-beta".into(), "1".into());
        config.cookie.insert("canary".into(), "yes".into());
        let force = Force::build(&config).unwrap();
        assert!(force.matches(&headers(&[("x-beta", "1")])));
        assert!(force.matches(&headers(&[("x-beta", "0"), ("x-beta", "1")])));
        assert!(!force.matches(&headers(&[("x-beta", "2")])));
        assert!(force.matches(&headers(&[("cookie", "canary=yes")])));
        assert!(!force.matches(&headers(&[("cookie", "canary=no; x=canary=yes")])));
        assert!(Force::build(&ForceConfig::default()).is_err());
    }
}
