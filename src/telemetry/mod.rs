//! Distributed tracing (`telemetry.tracing`): the trace context a client sends is
//! continued (or a trace started), every upstream try gets a child span id in the
//! context it carries, and sampled requests leave a server span and one client span per
//! try for the exporter. Without `telemetry.tracing` none of this runs: the Runtime has
//! no tracer and the request path checks one `Option`.

pub mod context;
mod export;
pub mod otlp;
pub mod span;

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue, Uri};
use prometheus::IntCounterVec;

use crate::config::{Propagation, TracingConfig};
use context::{SpanId, TraceId};
use span::{Ids, Kind, SpanBuf};

/// What one tracing configuration needs on the request path, built once.
#[derive(Debug)]
pub struct Tracer {
    pub config: TracingConfig,
    /// New traces are sampled when the low 64 bits of their id are below this.
    threshold: u64,
    tracecontext: bool,
    baggage: bool,
    b3_single: bool,
    b3_multi: bool,
    exporter: export::Exporter,
}

impl Tracer {
    /// The tracer of `config`, or None when tracing is off (no endpoint).
    pub fn build(
        config: &TracingConfig,
        spans: &IntCounterVec,
    ) -> Result<Option<Arc<Tracer>>, String> {
        let endpoint = config.otlp_endpoint.trim();
        if endpoint.is_empty() {
            return Ok(None);
        }
        let endpoint = traces_url(endpoint)?;
        let has = |p: Propagation| config.propagate.contains(&p);
        Ok(Some(Arc::new(Tracer {
            threshold: if config.sample_ratio >= 1.0 {
                u64::MAX
            } else {
                (config.sample_ratio.max(0.0) * u64::MAX as f64) as u64
            },
            tracecontext: has(Propagation::Tracecontext),
            baggage: has(Propagation::Baggage),
            b3_single: has(Propagation::B3),
            b3_multi: has(Propagation::B3multi),
            exporter: export::Exporter::new(endpoint, &config.service_name, spans),
            config: config.clone(),
        })))
    }

    /// Starts the export task (when the Runtime goes live; `check` never does).
    pub fn start(&self) {
        self.exporter.start();
    }

    /// The request's trace: the client's continued (a parent's sampling decision is
    /// kept), or a new one sampled by `sample_ratio`.
    pub fn begin(self: &Arc<Self>, headers: &HeaderMap) -> TraceScope {
        let parent = context::extract(headers, self.tracecontext, self.b3_single || self.b3_multi);
        let (trace_id, parent_span, sampled, tracestate) = match parent {
            Some(p) => (p.trace_id, Some(p.span_id), p.sampled, p.tracestate),
            None => {
                let trace_id = random_trace_id();
                let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or([0; 8]));
                let sampled = self.threshold == u64::MAX || low < self.threshold;
                (trace_id, None, sampled, None)
            }
        };
        TraceScope {
            tracer: self.clone(),
            trace_id,
            span_id: random_span_id(),
            parent: parent_span,
            sampled,
            tracestate,
            start: SystemTime::now(),
        }
    }
}

/// `/v1/traces` under the configured base URL, unless the URL names it already.
fn traces_url(endpoint: &str) -> Result<Uri, String> {
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    };
    url.parse::<Uri>()
        .map_err(|e| format!("invalid otlp_endpoint: {e}"))
}

/// One request's place in its trace: the server span's ids and whether it is recorded.
/// Cloned into the upstream call (an `Arc` and a few ids).
#[derive(Clone, Debug)]
pub struct TraceScope {
    tracer: Arc<Tracer>,
    pub trace_id: TraceId,
    /// The server span (the gateway's own span for this request).
    pub span_id: SpanId,
    parent: Option<SpanId>,
    pub sampled: bool,
    tracestate: Option<HeaderValue>,
    start: SystemTime,
}

/// One upstream try's client span, open until `finish`.
#[derive(Debug)]
pub struct Attempt {
    pub span_id: SpanId,
    /// The try's `traceparent` value (with `tracecontext`).
    pub traceparent: Option<[u8; 55]>,
    start: SystemTime,
}

impl TraceScope {
    /// Removes the client's trace headers before the request goes upstream (the
    /// gateway sends its own on every try).
    /// (The `tracestate` of a valid parent is the client's own header: it stays.)
    pub fn strip(&self, headers: &mut HeaderMap) {
        let t = &self.tracer;
        let keep_state = t.tracecontext && self.tracestate.is_some();
        context::strip(headers, keep_state, t.b3_single || t.b3_multi, t.baggage);
    }

    /// A new client span for one try: its `traceparent` comes back for the client to
    /// write (no header map insert per try); B3 headers, when configured, go into
    /// `headers`.
    pub fn attempt(&self, headers: &mut HeaderMap) -> Attempt {
        let span_id = random_span_id();
        let tracer = &self.tracer;
        if tracer.b3_single || tracer.b3_multi {
            context::inject_b3(
                headers,
                tracer.b3_single,
                &self.trace_id,
                &span_id,
                &self.span_id,
                self.sampled,
            );
        }
        Attempt {
            traceparent: tracer
                .tracecontext
                .then(|| context::traceparent_bytes(&self.trace_id, &span_id, self.sampled)),
            span_id,
            start: SystemTime::now(),
        }
    }

    /// Writes the context with `span_id` as the parent the upstream sees.
    pub fn inject(&self, headers: &mut HeaderMap, span_id: &SpanId) {
        let tracer = &self.tracer;
        if tracer.tracecontext {
            headers.insert(
                context::TRACEPARENT.clone(),
                context::traceparent(&self.trace_id, span_id, self.sampled),
            );
            if let Some(state) = &self.tracestate {
                headers.insert(context::TRACESTATE.clone(), state.clone());
            }
        }
        if tracer.b3_single || tracer.b3_multi {
            context::inject_b3(
                headers,
                tracer.b3_single,
                &self.trace_id,
                span_id,
                &self.span_id,
                self.sampled,
            );
        }
    }

    /// The server span, to fill and `record` (sampled requests only).
    pub fn server_span(&self, name: &str) -> SpanBuf {
        let ids = Ids {
            trace_id: &self.trace_id,
            span_id: &self.span_id,
            parent: self.parent.as_ref(),
            trace_state: self.tracestate.as_ref().and_then(|s| s.to_str().ok()),
        };
        SpanBuf::start(ids, name, Kind::Server, self.start)
    }

    /// A try's client span, to fill and `record` (sampled requests only).
    pub fn client_span(&self, attempt: &Attempt, name: &str) -> SpanBuf {
        let ids = Ids {
            trace_id: &self.trace_id,
            span_id: &attempt.span_id,
            parent: Some(&self.span_id),
            trace_state: None,
        };
        SpanBuf::start(ids, name, Kind::Client, attempt.start)
    }

    /// Ends `span` now and hands it to the exporter (when the request is sampled).
    pub fn record(&self, span: SpanBuf, error: Option<&str>) {
        if self.sampled {
            self.tracer.exporter.record(span.finish(error));
        }
    }

    pub fn trace_id_hex(&self) -> String {
        context::hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        context::hex(&self.span_id)
    }
}

thread_local! {
    // Ids need to be unpredictable enough not to collide, not secret: a small fast
    // generator per thread, seeded from the OS (ChaCha, rand's default, costs a block
    // refill every few requests).
    static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_os_rng());
}

fn random_bytes<const N: usize>() -> [u8; N] {
    IDS.with(|rng| loop {
        let mut id = [0u8; N];
        rand::RngCore::fill_bytes(&mut *rng.borrow_mut(), &mut id);
        if id != [0; N] {
            return id;
        }
    })
}

fn random_trace_id() -> TraceId {
    random_bytes()
}

fn random_span_id() -> SpanId {
    random_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(ratio: f64, propagate: Vec<Propagation>) -> Arc<Tracer> {
        let spans = IntCounterVec::new(prometheus::Opts::new("t", "t"), &["result"]).unwrap();
        let config = TracingConfig {
            otlp_endpoint: "http://127.0.0.1:4318".into(),
            service_name: "portico".into(),
            sample_ratio: ratio,
            propagate,
        };
        Tracer::build(&config, &spans).unwrap().unwrap()
    }

    #[test]
    fn the_endpoint_gets_its_path() {
        assert_eq!(
            traces_url("http://c:4318").unwrap().to_string(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces").unwrap().to_string(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c/otlp/").unwrap().to_string(),
            "https://c/otlp/v1/traces"
        );
    }

    #[test]
    fn sampling_keeps_the_parents_decision_and_follows_the_ratio() {
        let t = tracer(0.0, vec![Propagation::Tracecontext]);
        let mut h = HeaderMap::new();
        assert!(!t.begin(&h).sampled, "ratio 0, no parent");
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let scope = t.begin(&h);
        assert!(scope.sampled, "a sampled parent is kept");
        assert_eq!(scope.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(scope.span_id_hex(), "00f067aa0ba902b7", "a span of its own");
        let all = tracer(1.0, vec![Propagation::Tracecontext]);
        assert!(all.begin(&HeaderMap::new()).sampled);
        let half = tracer(0.5, vec![Propagation::Tracecontext]);
        let sampled = (0..2000)
            .filter(|_| half.begin(&HeaderMap::new()).sampled)
            .count();
        assert!((800..1200).contains(&sampled), "{sampled} of 2000 at 0.5");
    }

    #[test]
    fn each_attempt_carries_its_own_span_id() {
        let t = tracer(1.0, vec![Propagation::Tracecontext, Propagation::B3multi]);
        let scope = t.begin(&HeaderMap::new());
        let mut headers = HeaderMap::new();
        let first = scope.attempt(&mut headers);
        let sent = String::from_utf8(first.traceparent.unwrap().to_vec()).unwrap();
        assert!(sent.contains(&context::hex(&first.span_id)));
        assert!(sent.starts_with(&format!("00-{}-", scope.trace_id_hex())));
        assert!(sent.ends_with("-01"));
        assert_eq!(headers["x-b3-parentspanid"], scope.span_id_hex().as_str());
        let second = scope.attempt(&mut headers);
        assert_ne!(first.span_id, second.span_id);
        assert!(String::from_utf8(second.traceparent.unwrap().to_vec())
            .unwrap()
            .contains(&context::hex(&second.span_id)));
    }
}
