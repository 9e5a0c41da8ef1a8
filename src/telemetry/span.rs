//! A finished span as the request path leaves it for the exporter: plain data, turned
//! into OTLP only in the export task.

use std::borrow::Cow;
use std::time::SystemTime;

use super::context::{SpanId, TraceId};

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Value {
        Value::Str(Cow::Borrowed(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(Cow::Owned(s))
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

pub type Attributes = Vec<(&'static str, Value)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Kind {
    Server = 2,
    Client = 3,
}

#[derive(Clone, Debug)]
pub struct SpanEvent {
    pub unix_nano: u64,
    pub name: &'static str,
    pub attributes: Attributes,
}

#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub trace_state: Option<String>,
    pub name: String,
    pub kind: Kind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub attributes: Attributes,
    pub events: Vec<SpanEvent>,
    /// The span's status is an error, with this description.
    pub error: Option<String>,
}

pub fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
