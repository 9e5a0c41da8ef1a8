//! A test OTLP/HTTP collector: `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest`, decoded with the opentelemetry-proto crate (the
//! messages collectors use), the spans kept for the test to read. The subset of the
//! OTLP/HTTP API it covers: the traces endpoint, binary protobuf, uncompressed, 200 with
//! an empty body; what else a collector does (logs, metrics, JSON, gzip, partial
//! success) is not here because Portico sends none of it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

#[derive(Clone, Default)]
pub struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
    pub url: String,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector = Collector {
            url: format!("http://{}", listener.local_addr().unwrap()),
            ..Collector::default()
        };
        let shared = collector.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(shared.take(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        collector
    }

    async fn take(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let ok_type = req
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/x-protobuf");
        if req.uri().path() != "/v1/traces" || req.method() != "POST" || !ok_type {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not an OTLP export")));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let request = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
        for resource_spans in request.resource_spans {
            if let Some(resource) = &resource_spans.resource {
                for kv in &resource.attributes {
                    if kv.key == "service.name" {
                        if let Some(Value::StringValue(s)) =
                            kv.value.as_ref().and_then(|v| v.value.clone())
                        {
                            self.service_names.lock().unwrap().push(s);
                        }
                    }
                }
            }
            for scope in resource_spans.scope_spans {
                self.spans.lock().unwrap().extend(scope.spans);
            }
        }
        Response::new(Full::new(Bytes::new()))
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    pub fn service_names(&self) -> Vec<String> {
        self.service_names.lock().unwrap().clone()
    }

    /// Waits (at most `within`) until at least `n` spans arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Span> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let spans = self.spans();
            if spans.len() >= n || tokio::time::Instant::now() >= until {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A span attribute as text (strings as they are, integers and booleans printed).
pub fn attribute(span: &Span, key: &str) -> Option<String> {
    let kv = span.attributes.iter().find(|kv| kv.key == key)?;
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
