//! Cache keys. The primary key names a resource as the client and the upstream see it,
//! through one route: scheme, host, route, upstream, path and normalised query (GET and
//! HEAD share it: a HEAD is answered from a stored GET). A response with `Vary` is stored
//! under a secondary key that adds a hash of the values of the request headers it names.

use std::hash::BuildHasher;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// `http` or `https`, how the client reached the gateway: an upstream may answer the
    /// two differently (it sees `X-Forwarded-Proto`), so they never share an entry.
    pub scheme: &'static str,
    /// Host as the client sent it, lower-cased.
    pub host: Box<str>,
    /// The route's name: a stored body is already edited by the storing route's JSON
    /// transform, so another route on the same cache, upstream and path must not get it.
    pub route: Box<str>,
    /// The upstream's name: two routes sharing a cache never mix their upstreams.
    pub upstream: Box<str>,
    /// The path sent upstream (normalised, after rewrites).
    pub path: Box<str>,
    /// The query with its parameters sorted, so `?a=1&b=2` and `?b=2&a=1` share an entry.
    pub query: Box<str>,
    /// `None` for the primary key; otherwise a hash of the Vary'd headers' values, so a
    /// variant key (and a URL's index of them) has a fixed size however long the values
    /// a client sends. The hash is SipHash with a key drawn once per process, so clients
    /// cannot aim for collisions.
    pub variant: Option<u64>,
}

impl Key {
    pub fn primary(
        scheme: &'static str,
        host: &str,
        route: &str,
        upstream: &str,
        path: &str,
        query: Option<&str>,
    ) -> Key {
        Key {
            scheme,
            host: host.to_ascii_lowercase().into_boxed_str(),
            route: route.into(),
            upstream: upstream.into(),
            path: path.into(),
            query: normalise_query(query.unwrap_or("")).into_boxed_str(),
            variant: None,
        }
    }

    /// The secondary key for the request `headers` under the response's Vary `names`.
    pub fn variant(&self, names: &[HeaderName], headers: &HeaderMap) -> Key {
        static HASHER: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        let hasher = HASHER.get_or_init(Default::default);
        self.with_variant(hasher.hash_one(variant_text(names, headers)))
    }

    /// The secondary key with this variant hash (from a URL's index).
    pub fn with_variant(&self, hash: u64) -> Key {
        Key {
            variant: Some(hash),
            ..self.clone()
        }
    }

    /// The same resource through another route or scheme, as a primary key: an unsafe
    /// request invalidates the URL under every route and scheme that stored it.
    pub fn under(&self, scheme: &'static str, route: &str) -> Key {
        Key {
            scheme,
            route: route.into(),
            variant: None,
            ..self.clone()
        }
    }

    /// Approximate bytes held by the key, for the size weigher.
    pub fn weight(&self) -> usize {
        self.scheme.len()
            + self.host.len()
            + self.route.len()
            + self.upstream.len()
            + self.path.len()
            + self.query.len()
            + std::mem::size_of::<Option<u64>>()
    }
}

pub fn normalise_query(query: &str) -> String {
    if !query.contains('&') {
        return query.to_string();
    }
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    // A stable sort keeps repeated keys (`a=1&a=2`) in their order, which can matter.
    params.sort_by(|a, b| param_name(a).cmp(param_name(b)));
    params.join("&")
}

fn param_name(param: &str) -> &str {
    param.split_once('=').map_or(param, |(k, _)| k)
}

/// `name=value\n` per Vary'd header (values of repeated fields joined with `, `; an
/// absent header is distinct from an empty one).
fn variant_text(names: &[HeaderName], headers: &HeaderMap) -> String {
    let mut out = String::from("\u{1}");
    for name in names {
        out.push_str(name.as_str());
        let mut values = headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            out.push('\u{0}');
        } else {
            out.push('=');
            let mut first = true;
            for v in values {
                if !first {
                    out.push_str(", ");
                }
                first = false;
                // Hostile bytes stay distinct but cannot break the framing of the key.
                out.push_str(&String::from_utf8_lossy(v.as_bytes()).replace('\n', "\\n"));
            }
        }
        out.push('\n');
    }
    out
}

/// The header names a response's `Vary` lists, lower-cased, sorted and deduplicated.
pub fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|t| t.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn query_order_does_not_matter_but_repeats_keep_theirs() {
        assert_eq!(normalise_query("b=2&a=1"), "a=1&b=2");
        assert_eq!(normalise_query("a=2&c&a=1"), "a=2&a=1&c");
        let up = "p";
        assert_eq!(
            Key::primary("http", "Shop.Local", "r", up, "/x", Some("b=2&a=1")),
            Key::primary("http", "shop.local", "r", up, "/x", Some("a=1&b=2"))
        );
    }

    #[test]
    fn scheme_and_route_are_part_of_the_key() {
        let key = Key::primary("http", "h", "a", "u", "/x", None);
        assert_ne!(key, Key::primary("https", "h", "a", "u", "/x", None));
        assert_ne!(key, Key::primary("http", "h", "b", "u", "/x", None));
        assert_eq!(
            key.under("https", "b"),
            Key::primary("https", "h", "b", "u", "/x", None)
        );
    }

    #[test]
    fn variants_separate_values_and_absence() {
        let up = "p";
        let key = Key::primary("http", "h", "r", up, "/x", None);
        let names = vary_names(&{
            let mut h = HeaderMap::new();
            h.insert(
                "vary",
                HeaderValue::from_static("Accept-Language, accept-encoding"),
            );
            h
        });
        assert_eq!(names.len(), 2);
        let mut a = HeaderMap::new();
        a.insert("accept-language", HeaderValue::from_static("de"));
        let mut b = HeaderMap::new();
        b.insert("accept-language", HeaderValue::from_static("fr"));
        let mut empty = HeaderMap::new();
        empty.insert("accept-language", HeaderValue::from_static(""));
        let none = HeaderMap::new();
        let keys = [&a, &b, &empty, &none].map(|h| key.variant(&names, h));
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j]);
            }
        }
        assert_ne!(keys[0], key);
        // The same values give the same key; a long value does not make a longer key.
        assert_eq!(key.variant(&names, &a), keys[0]);
        let mut long = HeaderMap::new();
        long.insert(
            "accept-language",
            HeaderValue::from_str(&"x".repeat(4096)).unwrap(),
        );
        assert_eq!(key.variant(&names, &long).weight(), keys[0].weight());
    }
}
