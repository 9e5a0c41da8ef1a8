//! OTLP protobuf (opentelemetry-proto `collector/trace/v1`, `trace/v1`, `common/v1`,
//! `resource/v1`) written by hand: a span's fields are written into its buffer as the
//! request path learns them (span.rs), and a batch is those buffers under one resource
//! and scope. No message structs, no per-attribute strings. Field numbers are the proto
//! files'; the tests decode what is sent with the opentelemetry-proto crate.

use prost::encoding::encoded_len_varint;

pub const VARINT: u8 = 0;
pub const FIXED64: u8 = 1;
pub const LEN: u8 = 2;

/// A key byte: every field number used here is below 16.
pub fn key(out: &mut Vec<u8>, field: u8, wire: u8) {
    out.push(field << 3 | wire);
}

#[inline]
pub fn varint(out: &mut Vec<u8>, mut value: u64) {
    // Straight into the Vec: most values here (lengths, small ints) take one byte.
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn fixed64(out: &mut Vec<u8>, field: u8, value: u64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

pub fn bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    key(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// An attribute's value: AnyValue { string_value = 1 | bool_value = 2 | int_value = 3 }.
#[derive(Clone, Copy, Debug)]
pub enum Any<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

fn any_len(value: Any<'_>) -> usize {
    1 + match value {
        Any::Str(s) => encoded_len_varint(s.len() as u64) + s.len(),
        Any::Int(i) => encoded_len_varint(i as u64),
        Any::Bool(_) => 1,
    }
}

/// A KeyValue { key = 1; AnyValue value = 2 } as field `field` of its message.
pub fn key_value(out: &mut Vec<u8>, field: u8, k: &str, v: Any<'_>) {
    let any = any_len(v);
    let len =
        1 + encoded_len_varint(k.len() as u64) + k.len() + 1 + encoded_len_varint(any as u64) + any;
    key(out, field, LEN);
    varint(out, len as u64);
    bytes_field(out, 1, k.as_bytes());
    key(out, 2, LEN);
    varint(out, any as u64);
    match v {
        Any::Str(s) => bytes_field(out, 1, s.as_bytes()),
        Any::Bool(b) => {
            key(out, 2, VARINT);
            out.push(u8::from(b));
        }
        Any::Int(i) => {
            key(out, 3, VARINT);
            varint(out, i as u64);
        }
    }
}

/// Writes a length-delimited field whose payload `write` produces (its length is known
/// only afterwards: the payload is written, then moved behind its prefix).
pub fn nested(out: &mut Vec<u8>, field: u8, write: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LEN);
    let at = out.len();
    write(out);
    let len = out.len() - at;
    let mut prefix = Vec::with_capacity(encoded_len_varint(len as u64));
    varint(&mut prefix, len as u64);
    out.splice(at..at, prefix);
}

/// One `ExportTraceServiceRequest`: the spans (each a `Span` message's fields) under one
/// resource (`service.name`, `service.version`) and one scope (`portico`).
pub fn encode(service_name: &str, spans: &[Vec<u8>]) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let size: usize = spans.iter().map(|s| s.len() + 4).sum::<usize>() + 128;
    let mut out = Vec::with_capacity(size);
    nested(&mut out, 1, |rs| {
        nested(rs, 1, |resource| {
            key_value(resource, 1, "service.name", Any::Str(service_name));
            key_value(resource, 1, "service.version", Any::Str(version));
        });
        nested(rs, 2, |scope_spans| {
            nested(scope_spans, 1, |scope| {
                bytes_field(scope, 1, b"portico");
                bytes_field(scope, 2, version.as_bytes());
            });
            for span in spans {
                bytes_field(scope_spans, 2, span);
            }
        });
    });
    out
}
