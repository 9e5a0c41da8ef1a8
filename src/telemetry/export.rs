//! The span exporter: the request path hands finished spans to a bounded queue and never
//! waits; one task takes them in batches (up to `MAX_BATCH`, or what came within
//! `BATCH_DELAY` of the first) and POSTs each batch to the collector. A full queue drops
//! the span, a failed POST its batch, both counted: a slow or absent collector costs
//! spans, never request time.

use std::sync::Mutex;
use std::time::Duration;

use http::{header, HeaderValue, Request, Uri};
use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::mpsc;

use crate::wire::body::Body;
use crate::wire::client::build_client;

const QUEUE: usize = 2048;
const MAX_BATCH: usize = 512;
const BATCH_DELAY: Duration = Duration::from_millis(500);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Exporter {
    tx: mpsc::Sender<Vec<u8>>,
    /// Taken by `start`: the export task owns it.
    rx: Mutex<Option<mpsc::Receiver<Vec<u8>>>>,
    endpoint: Uri,
    service_name: String,
    exported: IntCounter,
    dropped: IntCounter,
    failed: IntCounter,
}

impl Exporter {
    pub fn new(endpoint: Uri, service_name: &str, spans: &IntCounterVec) -> Exporter {
        let (tx, rx) = mpsc::channel(QUEUE);
        let counter = |result: &str| spans.with_label_values(&[result]);
        Exporter {
            tx,
            rx: Mutex::new(Some(rx)),
            endpoint,
            service_name: service_name.to_string(),
            exported: counter("exported"),
            dropped: counter("dropped"),
            failed: counter("failed"),
        }
    }

    /// A finished span (its OTLP `Span` fields).
    pub fn record(&self, span: Vec<u8>) {
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    /// Starts the export task (once). It ends when every sender is gone: after the
    /// tracer is replaced by a reload, it sends what is queued and stops.
    pub fn start(&self) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let client = match build_client(CONNECT_TIMEOUT, None) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "tracing: no HTTP client for the collector; spans are dropped");
                return;
            }
        };
        let (endpoint, service) = (self.endpoint.clone(), self.service_name.clone());
        let (exported, failed) = (self.exported.clone(), self.failed.clone());
        tokio::spawn(async move {
            let mut failing = false;
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let until = tokio::time::Instant::now() + BATCH_DELAY;
                while batch.len() < MAX_BATCH {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(span)) => batch.push(span),
                        _ => break,
                    }
                }
                let spans = batch.len() as u64;
                let body = super::otlp::encode(&service, &batch);
                let request = Request::post(endpoint.clone())
                    .header(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/x-protobuf"),
                    )
                    .body(Body::full(body));
                let Ok(request) = request else {
                    failed.inc_by(spans);
                    continue;
                };
                let sent = tokio::time::timeout(EXPORT_TIMEOUT, client.request(request)).await;
                let outcome = match sent {
                    Ok(Ok(response)) if response.status().is_success() => Ok(()),
                    Ok(Ok(response)) => Err(format!("collector answered {}", response.status())),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
                };
                match outcome {
                    Ok(()) => {
                        exported.inc_by(spans);
                        if failing {
                            tracing::info!("tracing: the collector takes spans again");
                            failing = false;
                        }
                    }
                    Err(error) => {
                        failed.inc_by(spans);
                        // Once per outage, not once per batch.
                        if !failing {
                            tracing::warn!(%error, endpoint = %endpoint, "tracing: spans could not be exported (counted in portico_tracing_spans_total{{result=\"failed\"}})");
                            failing = true;
                        }
                    }
                }
            }
        });
    }
}
