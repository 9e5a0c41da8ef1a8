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

/// The fixed entries; `Proxy-*` headers are hop-by-hop by prefix.
pub static OWNED: [(&HeaderName, Owned); 9] = [
    (&header::CONNECTION, Owned::HopByHop),
    (&KEEP_ALIVE, Owned::HopByHop),
    (&header::TE, Owned::HopByHop),
    (&header::TRAILER, Owned::HopByHop),
    (&header::TRANSFER_ENCODING, Owned::HopByHop),
    (&header::UPGRADE, Owned::HopByHop),
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
        assert_eq!(hop_by_hop_names().count(), 6);
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
