//! Header hygiene between client and upstream: hop-by-hop headers removed in both
//! directions, X-Forwarded-* set from what the gateway saw (a client's own values kept
//! only when the peer is a trusted proxy), the client address resolved the same way.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use super::headers::{hop_by_hop_names, is_hop_by_hop};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes hop-by-hop headers: the fixed list, every `Proxy-*` header and every header
/// the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names decides, without a lookup per
    // listed name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        if let Ok(text) = value.to_str() {
            for token in text.split(',') {
                if let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) {
                    named.push(name);
                }
            }
        }
    }
    for name in headers.keys() {
        if name.as_str().starts_with("proxy-") {
            named.push(name.clone());
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in hop_by_hop_names() {
        headers.remove(name);
    }
}

/// The protocol a client asks to upgrade to (`Connection: upgrade` + `Upgrade: X`), when
/// it is one the gateway forwards: WebSocket only. Any other (`h2c` above all, which
/// would open an HTTP/2 tunnel past every route check) is not an upgrade: the request is
/// answered as plain HTTP/1.1 and the hop-by-hop `Upgrade` is removed like the others.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|t| {
                t.split(',')
                    .any(|tok| tok.trim().eq_ignore_ascii_case("upgrade"))
            })
            .unwrap_or(false)
    });
    if !asks {
        return None;
    }
    let offers_websocket = headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str().is_ok_and(|t| {
            t.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
    });
    offers_websocket.then(|| HeaderValue::from_static("websocket"))
}

/// A trusted proxy entry: a CIDR range or a single address.
pub fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// A query without the parameters named `name` (an API key the gateway consumed); None
/// when nothing is left.
pub fn without_query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let named = |pair: &&str| pair.split_once('=').map_or(*pair, |(k, _)| k) == name;
    if !query.split('&').any(|p| named(&p)) {
        return Some(Cow::Borrowed(query));
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !named(p)).collect();
    (!kept.is_empty()).then(|| Cow::Owned(kept.join("&")))
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the
/// right-most X-Forwarded-For entry that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for value in values.iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for entry in text.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                return client;
            };
            client = canonical(ip);
            if !is_trusted(client, trusted) {
                return client;
            }
        }
    }
    client
}

/// The peer address as an `X-Forwarded-For` entry (IPv4-mapped IPv6 shown as IPv4).
pub fn peer_header(peer: IpAddr) -> HeaderValue {
    // An IP address is always a valid header value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(canonical(peer).to_string()))
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// Sets X-Forwarded-For/-Proto/-Host on a request going upstream. `peer` is the
/// connection's `peer_header`, formatted once per connection.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    peer_trusted: bool,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let previous = if peer_trusted {
        joined(headers, &X_FORWARDED_FOR)
    } else {
        None
    };
    let xff = match previous {
        Some(previous) => {
            HeaderValue::from_str(&format!("{previous}, {}", peer.to_str().unwrap_or("")))
                .unwrap_or_else(|_| peer.clone())
        }
        _ => peer.clone(),
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(h) => {
                headers.insert(&X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// `X-Real-IP` and `Forwarded` (RFC 7239) as the upstream sees them. From an untrusted
/// peer both are the client's word: `Forwarded` is removed and `X-Real-IP` set to the
/// client address the gateway decided on (`client_ip`). From a trusted proxy both are
/// kept, and `X-Real-IP` is added when the proxy sent none.
pub fn set_real_ip(
    headers: &mut HeaderMap,
    peer_trusted: bool,
    client_ip: IpAddr,
    peer: &HeaderValue,
) {
    if peer_trusted {
        if !headers.contains_key(&X_REAL_IP) {
            headers.insert(&X_REAL_IP, peer_header(client_ip));
        }
        return;
    }
    headers.remove(&FORWARDED);
    // From an untrusted peer the client address is the peer's, formatted once per
    // connection.
    headers.insert(&X_REAL_IP, peer.clone());
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let text = v.to_str().ok()?;
        match out.as_mut() {
            Some(o) => {
                o.push_str(", ");
                o.push_str(text);
            }
            None => out = Some(text.to_string()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn client_ip_believes_only_trusted_peers() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("1.1.1.1, 2.2.2.2, 10.0.0.9"),
        );
        let untrusted: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(client_ip(untrusted, &h, &trusted), untrusted);
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn forwarded_for_is_replaced_for_untrusted_peers() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        set_forwarded(
            &mut h,
            &peer_header("9.9.9.9".parse().unwrap()),
            false,
            "http",
            None,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "9.9.9.9");
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        set_forwarded(
            &mut h,
            &peer_header("10.0.0.1".parse().unwrap()),
            true,
            "https",
            None,
        );
        assert_eq!(h[&X_FORWARDED_FOR], "6.6.6.6, 10.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
    }
}
