//! The OTLP trace messages (opentelemetry-proto `trace/v1`, `common/v1`, `resource/v1`,
//! `collector/trace/v1`), the fields the gateway sends, with prost's derive: the wire
//! format of `POST /v1/traces` with `content-type: application/x-protobuf`. Field
//! numbers are the proto files'; the tests decode what is sent with the
//! opentelemetry-proto crate.

use prost::Message;

use super::span::{SpanRecord, Value};

#[derive(Clone, PartialEq, Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<Span>,
}

#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Span {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub trace_state: String,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    /// SpanKind: 2 server, 3 client.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Event {
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "3")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    /// 0 unset, 1 ok, 2 error.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(oneof = "any_value::Value", tags = "1, 2, 3")]
    pub value: Option<any_value::Value>,
}

pub mod any_value {
    // The names are the proto's (`string_value`, ...).
    #[allow(clippy::enum_variant_names)]
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        StringValue(String),
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        #[prost(int64, tag = "3")]
        IntValue(i64),
    }
}

fn key_value(key: &str, value: &Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s.to_string()),
        Value::Int(i) => any_value::Value::IntValue(*i),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn span(record: &SpanRecord) -> Span {
    Span {
        trace_id: record.trace_id.to_vec(),
        span_id: record.span_id.to_vec(),
        trace_state: record.trace_state.clone().unwrap_or_default(),
        parent_span_id: record.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: record.name.clone(),
        kind: record.kind as i32,
        start_time_unix_nano: record.start_unix_nano,
        end_time_unix_nano: record.end_unix_nano,
        attributes: record
            .attributes
            .iter()
            .map(|(k, v)| key_value(k, v))
            .collect(),
        events: record
            .events
            .iter()
            .map(|e| Event {
                time_unix_nano: e.unix_nano,
                name: e.name.to_string(),
                attributes: e.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
            })
            .collect(),
        status: record.error.as_ref().map(|message| Status {
            message: message.clone(),
            code: 2,
        }),
    }
}

/// One export request: the batch under one resource (`service.name`) and one scope.
pub fn encode(service_name: &str, batch: &[SpanRecord]) -> Vec<u8> {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    key_value("service.name", &Value::Str(service_name.to_string().into())),
                    key_value(
                        "service.version",
                        &Value::Str(env!("CARGO_PKG_VERSION").into()),
                    ),
                ],
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "portico".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans: batch.iter().map(span).collect(),
            }],
        }],
    };
    request.encode_to_vec()
}
