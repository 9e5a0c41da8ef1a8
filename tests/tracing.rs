//! Distributed tracing end to end: a real gateway with `telemetry.tracing`, a real echo
//! backend, and a test OTLP/HTTP collector that decodes the exports with
//! opentelemetry-proto. Trace context is continued or started, each upstream try carries
//! its own span id, sampling follows the parent or `sample_ratio`, and a collector that
//! is down costs spans, not requests.

mod support;

use std::time::Duration;

use http::Request;
use http_body_util::Full;
use support::otlp::{attribute, hex, Collector};
use support::{gateway, metric, Backend, Client};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn config(backend: &str, upstream_extra: &str, tracing: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0, access_log: false }}\ntelemetry:\n  tracing:\n{tracing}upstreams:\n  b:\n    targets: [\"{backend}\"]\n{upstream_extra}routes:\n  - {{ name: api, match: {{ path_prefix: / }}, upstream: b }}\n"
    )
}

fn tracing(collector: &str, extra: &str) -> String {
    format!("    otlp_endpoint: {collector}\n    service_name: shop-gateway\n{extra}")
}

async fn get(
    client: &Client,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> support::Reply {
    let mut request = Request::get(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client.send(request.body(Full::default()).unwrap()).await
}

/// The parts of a `traceparent` value: trace id, parent id, flags.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

#[tokio::test]
async fn a_sampled_parent_is_continued_with_a_server_span_and_a_client_span() {
    let backend = Backend::start("b").await;
    let collector = Collector::start().await;
    let (gw, _f) = gateway(&config(
        &backend.address(),
        "",
        &tracing(&collector.url, ""),
    ))
    .await;
    let client = Client::new();
    let reply = get(
        &client,
        gw.http_addr,
        "/orders/7",
        &[
            ("traceparent", PARENT),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("baggage", "tenant=acme"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    let sent = reply.echoed("traceparent");
    assert_eq!(sent.len(), 1, "one traceparent upstream: {sent:?}");
    let (trace, parent, flags) = parts(&sent[0]);
    assert_eq!(
        trace, "4bf92f3577b34da6a3ce929d0e0e4736",
        "the client's trace goes on"
    );
    assert_ne!(
        parent, "00f067aa0ba902b7",
        "the upstream's parent is the gateway's span"
    );
    assert_eq!(flags, "01");
    assert_eq!(reply.echoed("tracestate"), vec!["congo=t61rcWkgMzE"]);
    assert_eq!(reply.echoed("baggage"), vec!["tenant=acme"]);

    let spans = collector.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    let upstream = spans.iter().find(|s| s.kind == 3).expect("a client span");
    assert_eq!(hex(&server.trace_id), trace);
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(server.name, "GET api");
    assert_eq!(attribute(server, "http.route").as_deref(), Some("api"));
    assert_eq!(
        attribute(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attribute(server, "url.path").as_deref(), Some("/orders/7"));
    assert_eq!(server.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(hex(&upstream.trace_id), trace);
    assert_eq!(
        hex(&upstream.span_id),
        parent,
        "the client span is what the backend saw as its parent"
    );
    assert_eq!(upstream.parent_span_id, server.span_id);
    assert_eq!(
        attribute(upstream, "portico.upstream").as_deref(),
        Some("b")
    );
    assert_eq!(
        attribute(upstream, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(upstream.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(upstream.end_time_unix_nano <= server.end_time_unix_nano);
    assert_eq!(collector.service_names()[0], "shop-gateway");
    assert_eq!(
        metric(
            &gw.metrics(),
            "portico_tracing_spans_total{result=\"exported\"}"
        ),
        2.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn every_retry_is_a_client_span_of_its_own() {
    let backend = Backend::start("b").await;
    let collector = Collector::start().await;
    let retries = "    retries: { attempts: 3, on: [\"503\"] }\n";
    let (gw, _f) = gateway(&config(
        &backend.address(),
        retries,
        &tracing(&collector.url, ""),
    ))
    .await;
    let reply = get(&Client::new(), gw.http_addr, "/status/503", &[]).await;
    assert_eq!(reply.status, 503);
    let spans = collector.wait_for(4, Duration::from_secs(10)).await;
    let mut tries: Vec<_> = spans.iter().filter(|s| s.kind == 3).collect();
    tries.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(tries.len(), 3, "{spans:?}");
    assert_eq!(attribute(tries[0], "http.request.resend_count"), None);
    assert_eq!(
        attribute(tries[1], "http.request.resend_count").as_deref(),
        Some("1")
    );
    assert_eq!(
        attribute(tries[2], "http.request.resend_count").as_deref(),
        Some("2")
    );
    assert_eq!(
        attribute(tries[1], "portico.retry_reason").as_deref(),
        Some("503")
    );
    let ids: std::collections::BTreeSet<_> = tries.iter().map(|s| s.span_id.clone()).collect();
    assert_eq!(ids.len(), 3, "a span id per try");
    let server = spans.iter().find(|s| s.kind == 2).expect("server span");
    assert!(tries.iter().all(|t| t.parent_span_id == server.span_id));
    assert_eq!(
        server.status.as_ref().map(|s| s.code),
        Some(2),
        "a 503 is an error"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn unsampled_requests_propagate_context_but_record_nothing() {
    let backend = Backend::start("b").await;
    let collector = Collector::start().await;
    let (gw, _f) = gateway(&config(
        &backend.address(),
        "",
        &tracing(&collector.url, "    sample_ratio: 0\n"),
    ))
    .await;
    let client = Client::new();
    // A parent that is not sampled: the decision is kept, the trace continues.
    let unsampled = PARENT.replace("-01", "-00");
    let reply = get(&client, gw.http_addr, "/a", &[("traceparent", &unsampled)]).await;
    let (trace, _, flags) = parts(&reply.echoed("traceparent")[0]);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(flags, "00");
    // No parent and sample_ratio 0: a new, unsampled trace.
    let reply = get(&client, gw.http_addr, "/b", &[]).await;
    let (fresh, _, flags) = parts(&reply.echoed("traceparent")[0]);
    assert_ne!(fresh, trace);
    assert_eq!(flags, "00");
    // A sampled parent is always kept, whatever the ratio.
    get(&client, gw.http_addr, "/c", &[("traceparent", PARENT)]).await;
    let spans = collector.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 2, "only the sampled request: {spans:?}");
    assert!(spans.iter().all(|s| hex(&s.trace_id) == trace));
    gw.shutdown().await;
}

#[tokio::test]
async fn an_invalid_traceparent_starts_a_new_trace_and_is_never_echoed() {
    let backend = Backend::start("b").await;
    let collector = Collector::start().await;
    let (gw, _f) = gateway(&config(
        &backend.address(),
        "",
        &tracing(&collector.url, ""),
    ))
    .await;
    let bad = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let reply = get(
        &Client::new(),
        gw.http_addr,
        "/x",
        &[("traceparent", bad), ("tracestate", "a=b")],
    )
    .await;
    let sent = reply.echoed("traceparent");
    assert_eq!(sent.len(), 1);
    assert_ne!(sent[0], bad);
    let (trace, _, flags) = parts(&sent[0]);
    assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(flags, "01", "sample_ratio defaults to 1");
    assert!(
        reply.echoed("tracestate").is_empty(),
        "no state without a valid parent"
    );
    let spans = collector.wait_for(2, Duration::from_secs(10)).await;
    let server = spans.iter().find(|s| s.kind == 2).expect("server span");
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert_eq!(hex(&server.trace_id), trace);
    gw.shutdown().await;
}

#[tokio::test]
async fn b3_headers_are_read_and_written_when_propagated() {
    let backend = Backend::start("b").await;
    let collector = Collector::start().await;
    let extra = "    propagate: [tracecontext, b3multi]\n";
    let (gw, _f) = gateway(&config(
        &backend.address(),
        "",
        &tracing(&collector.url, extra),
    ))
    .await;
    let reply = get(
        &Client::new(),
        gw.http_addr,
        "/x",
        &[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    assert_eq!(
        reply.echoed("x-b3-traceid"),
        vec!["80f198ee56343ba864fe8b2a57d3eff7"]
    );
    let span_id = reply.echoed("x-b3-spanid");
    assert_eq!(span_id.len(), 1);
    assert_ne!(span_id[0], "e457b5a2e4d86bd1");
    let (trace, parent, _) = parts(&reply.echoed("traceparent")[0]);
    assert_eq!(trace, "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(parent, span_id[0], "both formats name the same span");
    let spans = collector.wait_for(2, Duration::from_secs(10)).await;
    let server = spans.iter().find(|s| s.kind == 2).expect("server span");
    assert_eq!(hex(&server.parent_span_id), "e457b5a2e4d86bd1");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_collector_that_is_down_costs_spans_not_requests() {
    let backend = Backend::start("b").await;
    let (gw, _f) = gateway(&config(
        &backend.address(),
        "",
        &tracing("http://127.0.0.1:9", ""),
    ))
    .await;
    let client = Client::new();
    for _ in 0..20 {
        assert_eq!(get(&client, gw.http_addr, "/x", &[]).await.status, 200);
    }
    let failed = support::eventually(Duration::from_secs(10), || {
        let text = gw.metrics();
        async move { metric(&text, "portico_tracing_spans_total{result=\"failed\"}") >= 40.0 }
    })
    .await;
    assert!(failed, "{}", gw.metrics());
    gw.shutdown().await;
}

#[test]
fn tracing_settings_are_checked() {
    for (tracing, path) in [
        (
            "    otlp_endpoint: collector:4318\n",
            "telemetry.tracing.otlp_endpoint",
        ),
        (
            "    otlp_endpoint: http://c:4318\n    sample_ratio: 1.5\n",
            "telemetry.tracing.sample_ratio",
        ),
        (
            "    otlp_endpoint: http://c:4318\n    propagate: [jaeger]\n",
            "telemetry.tracing.propagate",
        ),
        (
            "    otlp_endpoint: http://c:4318\n    sampler: always\n",
            "telemetry.tracing.sampler",
        ),
    ] {
        let err = portico::check::parse(&config("127.0.0.1:9", "", tracing))
            .expect_err(tracing)
            .to_string();
        assert!(err.contains(path), "{tracing}: {err}");
    }
    // An empty endpoint (the default of ${OTEL_EXPORTER_OTLP_ENDPOINT:-}) is tracing off.
    assert!(portico::check::parse(&config("127.0.0.1:9", "", "    otlp_endpoint: \"\"\n")).is_ok());
}

/// An HTTP/2-only backend (h2c) answering with the `traceparent` values it received.
async fn h2c_echo() -> String {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let sent: Vec<String> = req
                            .headers()
                            .get_all("traceparent")
                            .iter()
                            .map(|v| v.to_str().unwrap_or("").to_string())
                            .collect();
                        let body = serde_json::json!({ "traceparent": sent }).to_string();
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from(body),
                        )))
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_http2_upstream_gets_the_try_context_too() {
    let backend = h2c_echo().await;
    let collector = Collector::start().await;
    let (gw, _f) = gateway(&config(
        &backend,
        "    protocol: h2c\n",
        &tracing(&collector.url, ""),
    ))
    .await;
    let reply = get(
        &Client::new(),
        gw.http_addr,
        "/x",
        &[("traceparent", PARENT)],
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let sent = reply.json()["traceparent"].clone();
    let sent: Vec<String> = serde_json::from_value(sent).unwrap();
    assert_eq!(
        sent.len(),
        1,
        "the client's traceparent is replaced: {sent:?}"
    );
    let (trace, parent, _) = parts(&sent[0]);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    let spans = collector.wait_for(2, Duration::from_secs(10)).await;
    let upstream = spans.iter().find(|s| s.kind == 3).expect("a client span");
    assert_eq!(hex(&upstream.span_id), parent);
    gw.shutdown().await;
}
