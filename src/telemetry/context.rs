//! Trace context on the wire: W3C `traceparent` (and `tracestate`, passed on), Zipkin's
//! `b3` single header and `X-B3-*` headers. Parsing is strict: a value that is not
//! exactly right is ignored (a new trace starts) and never echoed.

use http::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static BAGGAGE: HeaderName = HeaderName::from_static("baggage");
pub static B3: HeaderName = HeaderName::from_static("b3");
pub static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// `tracestate` longer than this is dropped (W3C: 32 members of at most 256 bytes may
/// be cut; 512 bytes is what a proxy must at least pass on).
const MAX_TRACESTATE: usize = 512;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// What a client said about its trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    pub tracestate: Option<HeaderValue>,
}

/// The parent from `traceparent` (W3C), else from B3, each when it is read.
pub fn extract(headers: &HeaderMap, read_w3c: bool, read_b3: bool) -> Option<Parent> {
    let w3c = headers.get(&TRACEPARENT).filter(|_| read_w3c);
    if let Some(parent) = w3c.and_then(parse_traceparent) {
        let tracestate = headers
            .get(&TRACESTATE)
            .filter(|v| v.len() <= MAX_TRACESTATE)
            .cloned();
        return Some(Parent {
            tracestate,
            ..parent
        });
    }
    if !read_b3 {
        return None;
    }
    headers
        .get(&B3)
        .and_then(parse_b3_single)
        .or_else(|| parse_b3_multi(headers))
}

/// `version-traceid-parentid-flags`, lower-case hex, ids not all zero. Version `00` has
/// exactly these four fields; a later version may add fields after a `-` (W3C §3.2.4).
pub fn parse_traceparent(value: &HeaderValue) -> Option<Parent> {
    let v = value.as_bytes();
    if v.len() < 55 {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id: TraceId = hex_array(&v[3..35])?;
    let span_id: SpanId = hex_array(&v[36..52])?;
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
        tracestate: None,
    })
}

/// `traceid-spanid[-sampled[-parentspanid]]`; a 64-bit trace id is widened with zeros.
/// `b3: 0` alone (a "do not sample" decision without ids) starts an unsampled trace,
/// which the caller handles by sampling: it is not a parent.
fn parse_b3_single(value: &HeaderValue) -> Option<Parent> {
    let mut parts = value.to_str().ok()?.split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id: SpanId = hex_array(parts.next()?.as_bytes())?;
    let sampled = match parts.next() {
        None => true,
        Some("1" | "d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    (span_id != [0; 8]).then_some(Parent {
        trace_id,
        span_id,
        sampled,
        tracestate: None,
    })
}

fn parse_b3_multi(headers: &HeaderMap) -> Option<Parent> {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let trace_id = b3_trace_id(text(&B3_TRACE_ID)?)?;
    let span_id: SpanId = hex_array(text(&B3_SPAN_ID)?.as_bytes())?;
    let debug = text(&B3_FLAGS) == Some("1");
    let sampled = debug || !matches!(text(&B3_SAMPLED), Some("0" | "false"));
    (span_id != [0; 8]).then_some(Parent {
        trace_id,
        span_id,
        sampled,
        tracestate: None,
    })
}

fn b3_trace_id(text: &str) -> Option<TraceId> {
    let id: TraceId = match text.len() {
        32 => hex_array(text.as_bytes())?,
        16 => {
            let low: [u8; 8] = hex_array(text.as_bytes())?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    (id != [0; 16]).then_some(id)
}

/// Removes the client's trace headers of the formats the gateway writes, so only its own
/// reach the upstream (`baggage` too, unless it is propagated). What every try sets in
/// the map anyway (`b3`, the `X-B3-*` ids) is replaced then, not removed here: each
/// removal is a lookup on every request.
pub fn strip(headers: &mut HeaderMap, keep_tracestate: bool, b3: bool, keep_baggage: bool) {
    if !keep_tracestate {
        headers.remove(&TRACESTATE);
    }
    // Each try writes its own `traceparent` beside the map (or none without
    // `tracecontext`): the client's goes either way.
    headers.remove(&TRACEPARENT);
    if b3 {
        headers.remove(&B3_FLAGS);
    }
    if !keep_baggage {
        headers.remove(&BAGGAGE);
    }
}

/// `00-{trace}-{span}-{flags}`.
pub fn traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> HeaderValue {
    let out = traceparent_bytes(trace_id, span_id, sampled);
    // Hex digits and dashes only: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The same, as bytes on the stack (the HTTP/1.1 client writes them as they are).
pub fn traceparent_bytes(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> [u8; 55] {
    let mut out = [0u8; 55];
    out[0..3].copy_from_slice(b"00-");
    write_hex(&mut out[3..35], trace_id);
    out[35] = b'-';
    write_hex(&mut out[36..52], span_id);
    out[52] = b'-';
    out[53..55].copy_from_slice(if sampled { b"01" } else { b"00" });
    out
}

/// The same context as B3 headers: one `b3`, or the `X-B3-*` set.
pub fn inject_b3(
    headers: &mut HeaderMap,
    single: bool,
    trace_id: &TraceId,
    span_id: &SpanId,
    parent: &SpanId,
    sampled: bool,
) {
    let trace = hex(trace_id);
    let span = hex(span_id);
    let flag = if sampled { "1" } else { "0" };
    let value = |s: String| HeaderValue::from_str(&s).ok();
    if single {
        if let Some(v) = value(format!("{trace}-{span}-{flag}-{}", hex(parent))) {
            headers.insert(B3.clone(), v);
        }
        return;
    }
    for (name, text) in [
        (&B3_TRACE_ID, trace),
        (&B3_SPAN_ID, span),
        (&B3_PARENT_SPAN_ID, hex(parent)),
        (&B3_SAMPLED, flag.to_string()),
    ] {
        if let Some(v) = value(text) {
            headers.insert(name.clone(), v);
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(hex_digit(two[0])? << 4 | hex_digit(two[1])?)
}

fn hex_array<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = hex_byte(pair)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let p = parse_traceparent(&value(GOOD)).unwrap();
        assert!(p.sampled);
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(traceparent(&p.trace_id, &p.span_id, true), GOOD);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!parse_traceparent(&value(&unsampled)).unwrap().sampled);
    }

    #[test]
    fn bad_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(&value(bad)).is_none(), "{bad:?}");
        }
        // A later version may carry more fields after a dash.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future";
        assert!(parse_traceparent(&value(v1)).is_some());
    }

    #[test]
    fn b3_single_and_multi() {
        let mut h = HeaderMap::new();
        h.insert(
            &B3,
            value("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"),
        );
        let p = extract(&h, true, true).unwrap();
        assert_eq!(hex(&p.span_id), "e457b5a2e4d86bd1");
        assert!(p.sampled);
        assert!(
            extract(&h, true, false).is_none(),
            "b3 is read only when propagated"
        );
        let mut m = HeaderMap::new();
        m.insert(&B3_TRACE_ID, value("64fe8b2a57d3eff7"));
        m.insert(&B3_SPAN_ID, value("e457b5a2e4d86bd1"));
        m.insert(&B3_SAMPLED, value("0"));
        let p = extract(&m, true, true).unwrap();
        assert_eq!(hex(&p.trace_id), "000000000000000064fe8b2a57d3eff7");
        assert!(!p.sampled);
    }

    #[test]
    fn traceparent_wins_and_carries_tracestate() {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, value(GOOD));
        h.insert(&TRACESTATE, value("congo=t61rcWkgMzE"));
        h.insert(
            &B3,
            value("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        let p = extract(&h, true, true).unwrap();
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert_eq!(p.tracestate.unwrap(), "congo=t61rcWkgMzE");
    }
}
