//! A span being recorded: the fields of its OTLP `Span` message written into one buffer
//! as the request path learns them (protobuf lets fields come in any order), so a
//! recorded span costs one allocation and no attribute strings. Only sampled requests
//! make one.

use std::time::SystemTime;

use super::context::{SpanId, TraceId};
use super::otlp::{self, Any, VARINT};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Server = 2,
    Client = 3,
}

/// Span fields: trace_id 1, span_id 2, trace_state 3, parent_span_id 4, name 5, kind 6,
/// start 7, end 8, attributes 9, events 11, status 15.
#[derive(Debug)]
pub struct SpanBuf {
    out: Vec<u8>,
}

pub struct Ids<'a> {
    pub trace_id: &'a TraceId,
    pub span_id: &'a SpanId,
    pub parent: Option<&'a SpanId>,
    pub trace_state: Option<&'a str>,
}

impl SpanBuf {
    pub fn start(ids: Ids<'_>, name: &str, kind: Kind, start: SystemTime) -> SpanBuf {
        let mut out = Vec::with_capacity(640);
        otlp::bytes_field(&mut out, 1, ids.trace_id);
        otlp::bytes_field(&mut out, 2, ids.span_id);
        if let Some(state) = ids.trace_state {
            otlp::bytes_field(&mut out, 3, state.as_bytes());
        }
        if let Some(parent) = ids.parent {
            otlp::bytes_field(&mut out, 4, parent);
        }
        otlp::bytes_field(&mut out, 5, name.as_bytes());
        otlp::key(&mut out, 6, VARINT);
        out.push(kind as u8);
        otlp::fixed64(&mut out, 7, unix_nanos(start));
        SpanBuf { out }
    }

    pub fn str(&mut self, key: &str, value: &str) {
        otlp::key_value(&mut self.out, 9, key, Any::Str(value));
    }

    pub fn int(&mut self, key: &str, value: i64) {
        otlp::key_value(&mut self.out, 9, key, Any::Int(value));
    }

    pub fn bool(&mut self, key: &str, value: bool) {
        otlp::key_value(&mut self.out, 9, key, Any::Bool(value));
    }

    /// An event now, with one attribute.
    pub fn event(&mut self, name: &str, key: &str, value: Any<'_>) {
        otlp::nested(&mut self.out, 11, |e| {
            otlp::fixed64(e, 1, unix_nanos(SystemTime::now()));
            otlp::bytes_field(e, 2, name.as_bytes());
            otlp::key_value(e, 3, key, value);
        });
    }

    /// Ends the span now; `error` sets its status to error with that message.
    pub fn finish(mut self, error: Option<&str>) -> Vec<u8> {
        otlp::fixed64(&mut self.out, 8, unix_nanos(SystemTime::now()));
        if let Some(message) = error {
            otlp::nested(&mut self.out, 15, |status| {
                otlp::bytes_field(status, 2, message.as_bytes());
                otlp::key(status, 3, VARINT);
                status.push(2);
            });
        }
        self.out
    }
}

pub fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;

    #[test]
    fn what_is_written_decodes_as_otlp() {
        let ids = Ids {
            trace_id: &[7; 16],
            span_id: &[9; 8],
            parent: Some(&[3; 8]),
            trace_state: Some("congo=t61rcWkgMzE"),
        };
        let mut span = SpanBuf::start(ids, "GET orders", Kind::Server, SystemTime::now());
        span.int("http.response.status_code", 503);
        span.int("negative", -1);
        span.bool("portico.rate_limited", false);
        span.str("url.path", &"/x".repeat(100));
        span.event("jwt rejected", "portico.reason", Any::Str("expired"));
        let bytes = span.finish(Some("upstream answered 503"));
        let other = SpanBuf::start(
            Ids {
                trace_id: &[1; 16],
                span_id: &[2; 8],
                parent: None,
                trace_state: None,
            },
            "GET",
            Kind::Client,
            SystemTime::now(),
        )
        .finish(None);
        let body = otlp::encode("shop", &[bytes, other]);
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let rs = &request.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(rs.scope_spans[0].scope.as_ref().unwrap().name, "portico");
        assert_eq!(spans.len(), 2);
        let s = &spans[0];
        assert_eq!(s.trace_id, vec![7; 16]);
        assert_eq!(s.span_id, vec![9; 8]);
        assert_eq!(s.parent_span_id, vec![3; 8]);
        assert_eq!(s.trace_state, "congo=t61rcWkgMzE");
        assert_eq!(s.name, "GET orders");
        assert_eq!(s.kind, 2);
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        let value = |k: &str| {
            s.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            value("http.response.status_code"),
            Some(Value::IntValue(503))
        );
        assert_eq!(value("negative"), Some(Value::IntValue(-1)));
        assert_eq!(value("portico.rate_limited"), Some(Value::BoolValue(false)));
        assert_eq!(
            value("url.path"),
            Some(Value::StringValue("/x".repeat(100)))
        );
        assert_eq!(s.events[0].name, "jwt rejected");
        assert_eq!(s.events[0].attributes[0].key, "portico.reason");
        let status = s.status.as_ref().unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (2, "upstream answered 503")
        );
        assert_eq!(spans[1].kind, 3);
        assert!(spans[1].parent_span_id.is_empty());
    }
}
