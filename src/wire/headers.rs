//! The headers the gateway keeps to itself, in one table with the reason for each, and
//! the one parser of `Content-Length`. Every rule that asks "may this header be
//! forwarded, edited, or written from a claim?" reads this table:
//! - hop-by-hop headers are removed in both directions (`forward::strip_hop_by_hop`);
//! - a transform may not touch a hop-by-hop or framing header (`transform::headers`);
//! - a JWT claim may not be forwarded into any header listed here (`auth`).

use http::header::{self, HeaderMap, HeaderName};

/// Why the gateway keeps a header to itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owned {
    /// Describes one connection only (RFC 9110 §7.6.1), never forwarded: the fixed
    /// list, every `Proxy-*` header, and whatever `Connection` names.
    HopByHop,
    /// Frames the body (RFC 9112 §6): written by the gateway for the message it sends.
    Framing,
    /// Names the target: only the gateway, or an explicit `set_headers`, writes it.
    Target,
    /// The client's own credentials.
    Credentials,
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// The settings of an `h2c` upgrade (RFC 7540 §3.2.1): meaningless past this connection.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The fixed entries; `Proxy-*` headers are hop-by-hop by prefix.
pub static OWNED: [(&HeaderName, Owned); 10] = [
    (&header::CONNECTION, Owned::HopByHop),
    (&KEEP_ALIVE, Owned::HopByHop),
    (&header::TE, Owned::HopByHop),
    (&header::TRAILER, Owned::HopByHop),
    (&header::TRANSFER_ENCODING, Owned::HopByHop),
    (&header::UPGRADE, Owned::HopByHop),
    (&HTTP2_SETTINGS, Owned::HopByHop),
    (&header::CONTENT_LENGTH, Owned::Framing),
    (&header::HOST, Owned::Target),
    (&header::AUTHORIZATION, Owned::Credentials),
];

/// Why the gateway owns `name`, or None when anyone may set it.
pub fn owned(name: &HeaderName) -> Option<Owned> {
    if name.as_str().starts_with("proxy-") {
        return Some(Owned::HopByHop);
    }
    OWNED
        .iter()
        .find(|(owned, _)| *owned == name)
        .map(|(_, why)| *why)
}

pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    owned(name) == Some(Owned::HopByHop)
}

/// The fixed hop-by-hop names (without the `Proxy-*` prefix rule).
pub fn hop_by_hop_names() -> impl Iterator<Item = &'static HeaderName> {
    OWNED
        .iter()
        .filter(|(_, why)| *why == Owned::HopByHop)
        .map(|(name, _)| *name)
}

/// Whether any field name contains `_`.
pub fn has_underscored(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| name.as_str().contains('_'))
}

/// Removes the fields whose name contains `_` and that `remove` selects; returns how
/// many fields went.
pub fn remove_underscored(headers: &mut HeaderMap, remove: impl Fn(&HeaderName) -> bool) -> usize {
    if !has_underscored(headers) {
        return 0;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_') && remove(name))
        .cloned()
        .collect();
    let mut removed = 0;
    for name in names {
        removed += headers.get_all(&name).iter().count();
        headers.remove(&name);
    }
    removed
}

/// `name` read the CGI way (`_` as `-`) is `other`: `x_user_id` shadows `x-user-id`.
pub fn shadows(name: &HeaderName, other: &HeaderName) -> bool {
    let (a, b) = (name.as_str().as_bytes(), other.as_str().as_bytes());
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x == y || (*x == b'_' && *y == b'-'))
}

/// A `Content-Length` value: 1 to 19 ASCII digits, nothing else (RFC 9110 §8.6). No
/// sign, no spaces, no list.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The message's `Content-Length`, when it has exactly one valid value.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_content_length(first.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_answers_each_use() {
        assert_eq!(owned(&header::CONNECTION), Some(Owned::HopByHop));
        assert_eq!(
            owned(&HeaderName::from_static("proxy-connection")),
            Some(Owned::HopByHop)
        );
        assert_eq!(owned(&header::CONTENT_LENGTH), Some(Owned::Framing));
        assert_eq!(owned(&header::AUTHORIZATION), Some(Owned::Credentials));
        assert_eq!(owned(&HeaderName::from_static("x-user-id")), None);
        assert_eq!(hop_by_hop_names().count(), 7);
    }

    #[test]
    fn underscored_names() {
        let mut h = HeaderMap::new();
        h.append("x_user_id", "admin".parse().unwrap());
        h.append("x_user_id", "root".parse().unwrap());
        h.append("x-user-id", "alice".parse().unwrap());
        h.append("x_other", "1".parse().unwrap());
        assert!(has_underscored(&h));
        let claim = HeaderName::from_static("x-user-id");
        assert!(shadows(&HeaderName::from_static("x_user_id"), &claim));
        assert!(!shadows(&HeaderName::from_static("x_other"), &claim));
        assert_eq!(remove_underscored(&mut h, |n| shadows(n, &claim)), 2);
        assert!(h.contains_key("x_other") && h.contains_key("x-user-id"));
        assert_eq!(remove_underscored(&mut h, |_| true), 1);
        assert!(!has_underscored(&h));
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_content_length(b"42"), Some(42));
        assert_eq!(parse_content_length(b"+42"), None);
        assert_eq!(parse_content_length(b" 42"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, "5".parse().unwrap());
        assert_eq!(content_length(&h), Some(5));
        h.append(header::CONTENT_LENGTH, "5".parse().unwrap());
        assert_eq!(content_length(&h), None);
    }
}
