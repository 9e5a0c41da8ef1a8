//! The authority a request names (`Host`, or the request target's authority): checked
//! against RFC 3986 `uri-host [ ":" port ]` before anything routes on it. A value that
//! is not one is refused with 400 (RFC 9112 §3.2): it would otherwise reach routing,
//! logs and the upstream as something each of them reads differently.

use std::net::Ipv6Addr;

/// A checked authority: the host (IPv6 literals keep their brackets) and the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authority<'a> {
    pub host: &'a str,
    pub port: Option<u16>,
}

/// Why a value is not `uri-host [ ":" port ]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHost {
    #[error("empty host")]
    Empty,
    #[error("invalid character in host")]
    Character,
    #[error("invalid IPv6 literal in host")]
    Ipv6,
    #[error("invalid port in host")]
    Port,
}

/// Parses `uri-host [ ":" port ]`. Userinfo (`@`), paths (`/`), spaces and every other
/// byte outside a reg-name, an IPv4 address or a bracketed IPv6 literal are refused; a
/// port is 1 to 5 digits up to 65535 (`host:` with an empty port is allowed, as RFC 3986
/// allows it).
pub fn parse(value: &[u8]) -> Result<Authority<'_>, InvalidHost> {
    if value.is_empty() {
        return Err(InvalidHost::Empty);
    }
    let text = std::str::from_utf8(value).map_err(|_| InvalidHost::Character)?;
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let close = rest.find(']').ok_or(InvalidHost::Ipv6)?;
        rest[..close]
            .parse::<Ipv6Addr>()
            .map_err(|_| InvalidHost::Ipv6)?;
        // `close` is a byte index into `rest`, which starts one byte into `text`.
        let (host, after) = text.split_at(close + 2);
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(InvalidHost::Character)?),
        };
        (host, port)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(InvalidHost::Empty);
    }
    if !host.starts_with('[') && !is_reg_name(host.as_bytes()) {
        return Err(InvalidHost::Character);
    }
    let port = match port {
        None | Some("") => None,
        Some(digits) => Some(parse_port(digits)?),
    };
    Ok(Authority { host, port })
}

/// A request's authority value that `parse` accepted, with where its host part ends:
/// routing reads the host without parsing the value again.
#[derive(Clone, Debug)]
pub struct CheckedHost {
    value: http::HeaderValue,
    host_len: usize,
}

impl CheckedHost {
    pub fn check(value: http::HeaderValue) -> Result<CheckedHost, InvalidHost> {
        let host_len = parse(value.as_bytes())?.host.len();
        Ok(CheckedHost { value, host_len })
    }

    /// The host without the port: `shop.local:8080` -> `shop.local`, `[::1]:80` -> `[::1]`.
    pub fn host(&self) -> &str {
        // `parse` accepted only ASCII in the host part.
        std::str::from_utf8(&self.value.as_bytes()[..self.host_len]).unwrap_or("")
    }

    pub fn value(&self) -> &http::HeaderValue {
        &self.value
    }

    pub fn into_value(self) -> http::HeaderValue {
        self.value
    }
}

fn parse_port(digits: &str) -> Result<u16, InvalidHost> {
    if digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InvalidHost::Port);
    }
    digits.parse::<u16>().map_err(|_| InvalidHost::Port)
}

/// RFC 3986 reg-name (which covers IPv4 addresses): unreserved, sub-delims and valid
/// percent-escapes.
fn is_reg_name(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        if !allowed {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn valid_authorities() {
        let ok = |v: &str, host: &str, port: Option<u16>| {
            assert_eq!(parse(v.as_bytes()), Ok(Authority { host, port }), "{v}");
        };
        ok("shop.local", "shop.local", None);
        ok("shop.local:8080", "shop.local", Some(8080));
        ok("127.0.0.1:80", "127.0.0.1", Some(80));
        ok("[::1]", "[::1]", None);
        ok("[::1]:8443", "[::1]", Some(8443));
        ok("xn--caf-dma.example", "xn--caf-dma.example", None);
        ok("host:", "host", None);
        ok("a:65535", "a", Some(65535));
    }

    #[test]
    fn a_checked_host_keeps_its_host_part() {
        let checked = |v: &'static str| CheckedHost::check(http::HeaderValue::from_static(v));
        assert_eq!(checked("shop.local:8080").unwrap().host(), "shop.local");
        assert_eq!(checked("[::1]:80").unwrap().host(), "[::1]");
        assert_eq!(checked("a").unwrap().value(), "a");
        assert!(checked("[").is_err());
    }

    #[test]
    fn invalid_authorities() {
        for v in [
            "",
            "[",
            "[::1",
            "[::1]x",
            "[nope]",
            "a b",
            "a/b",
            "user@host",
            "host:x",
            "host:-1",
            "host:65536",
            "host:123456",
            ":80",
            "a:b:c",
            "%zz",
            "ho\tst",
            "é.example",
        ] {
            assert!(parse(v.as_bytes()).is_err(), "{v:?} accepted");
        }
    }

    /// A fuzz pass over arbitrary bytes and over strings built from the characters that
    /// matter to the parser: nothing panics, and what is accepted round-trips.
    #[test]
    fn no_input_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let alphabet = b"[]:%@/ .-_0123456789abcdefABCDEF\x00\xff\xc3\xa9v";
        for _ in 0..200_000 {
            let len = rng.random_range(0..12);
            let bytes: Vec<u8> = if rng.random_bool(0.5) {
                (0..len).map(|_| rng.random()).collect()
            } else {
                (0..len)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect()
            };
            if let Ok(a) = parse(&bytes) {
                let text = std::str::from_utf8(&bytes).unwrap_or_default();
                assert!(text.starts_with(a.host), "{text:?} -> {a:?}");
            }
        }
    }
}
