//! OTLP `ExportTraceServiceRequest` (opentelemetry-proto `collector/trace/v1`, with
//! `trace/v1`, `common/v1` and `resource/v1`) written straight from the span records as
//! protobuf: the body of `POST /v1/traces` with `content-type: application/x-protobuf`.
//! No message structs are built: each length is computed from the records first, then
//! the bytes are written once, so a batch costs one buffer. Field numbers are the proto
//! files'; the tests decode what is sent with the opentelemetry-proto crate.

use prost::encoding::{encode_varint, encoded_len_varint};

use super::span::{SpanEvent, SpanRecord, Value};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

/// A key byte: every field number used here is below 16.
fn key(out: &mut Vec<u8>, field: u8, wire: u8) {
    out.push(field << 3 | wire);
}

/// The size of a length-delimited field's payload with its length prefix.
fn ld(n: usize) -> usize {
    encoded_len_varint(n as u64) + n
}

fn bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    key(out, field, LEN);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn any_len(value: &Value) -> usize {
    1 + match value {
        Value::Str(s) => ld(s.len()),
        Value::Int(i) => encoded_len_varint(*i as u64),
        Value::Bool(_) => 1,
    }
}

fn write_any(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Str(s) => bytes_field(out, 1, s.as_bytes()),
        Value::Bool(b) => {
            key(out, 2, VARINT);
            out.push(u8::from(*b));
        }
        Value::Int(i) => {
            key(out, 3, VARINT);
            encode_varint(*i as u64, out);
        }
    }
}

/// KeyValue { key = 1; AnyValue value = 2 }.
fn key_value_len(k: &str, v: &Value) -> usize {
    1 + ld(k.len()) + 1 + ld(any_len(v))
}

fn write_key_value(out: &mut Vec<u8>, field: u8, k: &str, v: &Value) {
    key(out, field, LEN);
    encode_varint(key_value_len(k, v) as u64, out);
    bytes_field(out, 1, k.as_bytes());
    key(out, 2, LEN);
    encode_varint(any_len(v) as u64, out);
    write_any(out, v);
}

fn attributes_len(attributes: &[(&str, Value)]) -> usize {
    attributes
        .iter()
        .map(|(k, v)| 1 + ld(key_value_len(k, v)))
        .sum()
}

/// Event { fixed64 time_unix_nano = 1; name = 2; repeated KeyValue attributes = 3 }.
fn event_len(e: &SpanEvent) -> usize {
    1 + 8 + 1 + ld(e.name.len()) + attributes_len(&e.attributes)
}

fn write_event(out: &mut Vec<u8>, e: &SpanEvent) {
    key(out, 11, LEN);
    encode_varint(event_len(e) as u64, out);
    key(out, 1, FIXED64);
    out.extend_from_slice(&e.unix_nano.to_le_bytes());
    bytes_field(out, 2, e.name.as_bytes());
    for (k, v) in &e.attributes {
        write_key_value(out, 3, k, v);
    }
}

/// Status { message = 2; code = 3 (2: error) }.
fn status_len(message: &str) -> usize {
    1 + ld(message.len()) + 2
}

fn span_len(r: &SpanRecord) -> usize {
    let mut n = 1 + ld(16) + 1 + ld(8);
    if let Some(state) = &r.trace_state {
        n += 1 + ld(state.len());
    }
    if r.parent.is_some() {
        n += 1 + ld(8);
    }
    n += 1 + ld(r.name.len());
    n += 1 + encoded_len_varint(r.kind as u64);
    n += 2 * (1 + 8);
    n += attributes_len(&r.attributes);
    n += r.events.iter().map(|e| 1 + ld(event_len(e))).sum::<usize>();
    if let Some(message) = &r.error {
        n += 1 + ld(status_len(message));
    }
    n
}

fn write_span(out: &mut Vec<u8>, r: &SpanRecord) {
    key(out, 2, LEN);
    encode_varint(span_len(r) as u64, out);
    bytes_field(out, 1, &r.trace_id);
    bytes_field(out, 2, &r.span_id);
    if let Some(state) = &r.trace_state {
        bytes_field(out, 3, state.as_bytes());
    }
    if let Some(parent) = &r.parent {
        bytes_field(out, 4, parent);
    }
    bytes_field(out, 5, r.name.as_bytes());
    key(out, 6, VARINT);
    encode_varint(r.kind as u64, out);
    key(out, 7, FIXED64);
    out.extend_from_slice(&r.start_unix_nano.to_le_bytes());
    key(out, 8, FIXED64);
    out.extend_from_slice(&r.end_unix_nano.to_le_bytes());
    for (k, v) in &r.attributes {
        write_key_value(out, 9, k, v);
    }
    for e in &r.events {
        write_event(out, e);
    }
    if let Some(message) = &r.error {
        key(out, 15, LEN);
        encode_varint(status_len(message) as u64, out);
        bytes_field(out, 2, message.as_bytes());
        key(out, 3, VARINT);
        out.push(2);
    }
}

/// One export request: the batch under one resource (`service.name`, `service.version`)
/// and one instrumentation scope (`portico`).
pub fn encode(service_name: &str, batch: &[SpanRecord]) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let resource_attrs = [
        ("service.name", Value::Str(service_name.to_string().into())),
        ("service.version", Value::Str(version.into())),
    ];
    let resource_len = attributes_len(&resource_attrs);
    let scope_len = 1 + ld("portico".len()) + 1 + ld(version.len());
    let spans_len: usize = batch.iter().map(|s| 1 + ld(span_len(s))).sum();
    let scope_spans_len = 1 + ld(scope_len) + spans_len;
    let resource_spans_len = 1 + ld(resource_len) + 1 + ld(scope_spans_len);

    let mut out = Vec::with_capacity(1 + ld(resource_spans_len));
    // ExportTraceServiceRequest.resource_spans = 1
    key(&mut out, 1, LEN);
    encode_varint(resource_spans_len as u64, &mut out);
    // ResourceSpans.resource = 1: Resource.attributes = 1
    key(&mut out, 1, LEN);
    encode_varint(resource_len as u64, &mut out);
    for (k, v) in &resource_attrs {
        write_key_value(&mut out, 1, k, v);
    }
    // ResourceSpans.scope_spans = 2: ScopeSpans.scope = 1, ScopeSpans.spans = 2
    key(&mut out, 2, LEN);
    encode_varint(scope_spans_len as u64, &mut out);
    key(&mut out, 1, LEN);
    encode_varint(scope_len as u64, &mut out);
    bytes_field(&mut out, 1, b"portico");
    bytes_field(&mut out, 2, version.as_bytes());
    for span in batch {
        write_span(&mut out, span);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::span::Kind;
    use super::*;

    /// The buffer is exactly as long as the lengths said (a wrong length prefix shows
    /// as a size mismatch here; the end-to-end tests decode with opentelemetry-proto).
    #[test]
    fn lengths_match_what_is_written() {
        let record = SpanRecord {
            trace_id: [7; 16],
            span_id: [9; 8],
            parent: Some([3; 8]),
            trace_state: Some("congo=t61rcWkgMzE".into()),
            name: "GET orders".into(),
            kind: Kind::Server,
            start_unix_nano: 1,
            end_unix_nano: u64::MAX,
            attributes: vec![
                ("http.response.status_code", Value::Int(200)),
                ("negative", Value::Int(-1)),
                ("portico.rate_limited", Value::Bool(false)),
                ("url.path", Value::Str("/x".repeat(100).into())),
            ],
            events: vec![SpanEvent {
                unix_nano: 5,
                name: "jwt rejected",
                attributes: vec![("portico.reason", "expired".into())],
            }],
            error: Some("upstream answered 503".into()),
        };
        let one = encode("portico", std::slice::from_ref(&record));
        let two = encode("portico", &[record.clone(), record.clone()]);
        let span = 1 + ld(span_len(&record));
        assert_eq!(two.len() - one.len(), span);
        let mut written = Vec::new();
        write_span(&mut written, &record);
        assert_eq!(written.len(), span);
    }
}
