//! gRPC through the gateway, end to end: a real tonic service (served by hyper over h2c)
//! behind a `grpc: true` route, and a real tonic client speaking h2c to Portico. Unary,
//! server-streaming, client-streaming and bidi calls stream through; the service's
//! statuses, metadata and trailers reach the client; every refusal the gateway makes
//! reaches it as a gRPC status; `grpc-timeout` bounds the call; retries on listed gRPC
//! codes; `portico_grpc_responses_total` counts each call's status.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{gateway, metric};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Ping {
    #[prost(string, tag = "1")]
    message: String,
    /// Messages a streaming answer sends.
    #[prost(uint32, tag = "2")]
    count: u32,
    /// Time before each answer.
    #[prost(uint64, tag = "3")]
    delay_ms: u64,
    /// A gRPC code to end with (0: OK).
    #[prost(int32, tag = "4")]
    fail: i32,
    /// Calls with this message that fail with UNAVAILABLE before one succeeds.
    #[prost(uint32, tag = "5")]
    fail_first: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Pong {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint32, tag = "2")]
    index: u32,
}

type Codec = ProstCodec<Pong, Ping>;
const SERVICE: &str = "/portico.test.Echo/";

/// Calls seen per message, for `fail_first`.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<HashMap<String, u32>>>);

impl Calls {
    fn seen(&self, message: &str) -> u32 {
        self.0.lock().unwrap().get(message).copied().unwrap_or(0)
    }

    fn count(&self, message: &str) -> u32 {
        let mut calls = self.0.lock().unwrap();
        let n = calls.entry(message.to_string()).or_insert(0);
        *n += 1;
        *n
    }
}

fn failure(code: i32) -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("x-detail", "from-the-service".parse().unwrap());
    Status::with_metadata(Code::from(code), "failed on purpose", metadata)
}

struct Unary(Calls);
impl tonic::server::UnaryService<Ping> for Unary {
    type Response = Pong;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<Pong>, Status>>;
    fn call(&mut self, request: Request<Ping>) -> Self::Future {
        let calls = self.0.clone();
        Box::pin(async move {
            let ping = request.into_inner();
            let n = calls.count(&ping.message);
            if n <= ping.fail_first {
                return Err(Status::unavailable("not yet"));
            }
            tokio::time::sleep(Duration::from_millis(ping.delay_ms)).await;
            if ping.fail != 0 {
                return Err(failure(ping.fail));
            }
            let mut response = Response::new(Pong {
                message: ping.message,
                index: n,
            });
            response
                .metadata_mut()
                .insert("x-served-by", "echo".parse().unwrap());
            Ok(response)
        })
    }
}

type PongStream = ReceiverStream<Result<Pong, Status>>;

/// `count` answers, `delay_ms` apart, then the status `fail` (in trailers).
struct Watch;
impl tonic::server::ServerStreamingService<Ping> for Watch {
    type Response = Pong;
    type ResponseStream = PongStream;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<PongStream>, Status>>;
    fn call(&mut self, request: Request<Ping>) -> Self::Future {
        let ping = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for index in 0..ping.count {
                tokio::time::sleep(Duration::from_millis(ping.delay_ms)).await;
                let pong = Pong {
                    message: ping.message.clone(),
                    index,
                };
                if tx.send(Ok(pong)).await.is_err() {
                    return;
                }
            }
            if ping.fail != 0 {
                let _ = tx.send(Err(failure(ping.fail))).await;
            }
        });
        Box::pin(async move { Ok(Response::new(ReceiverStream::new(rx))) })
    }
}

/// Answers each message as it arrives.
struct Chat;
impl tonic::server::StreamingService<Ping> for Chat {
    type Response = Pong;
    type ResponseStream = PongStream;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<PongStream>, Status>>;
    fn call(&mut self, request: Request<Streaming<Ping>>) -> Self::Future {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut index = 0;
            while let Some(Ok(ping)) = incoming.next().await {
                let pong = Pong {
                    message: format!("re: {}", ping.message),
                    index,
                };
                index += 1;
                if tx.send(Ok(pong)).await.is_err() {
                    return;
                }
            }
        });
        Box::pin(async move { Ok(Response::new(ReceiverStream::new(rx))) })
    }
}

/// The sum of the counts of every message.
struct Sum;
impl tonic::server::ClientStreamingService<Ping> for Sum {
    type Response = Pong;
    type Future = futures_util::future::BoxFuture<'static, Result<Response<Pong>, Status>>;
    fn call(&mut self, request: Request<Streaming<Ping>>) -> Self::Future {
        let mut incoming = request.into_inner();
        Box::pin(async move {
            let mut total = 0;
            while let Some(ping) = incoming.next().await {
                total += ping?.count;
            }
            Ok(Response::new(Pong {
                message: "sum".into(),
                index: total,
            }))
        })
    }
}

/// The Echo service on hyper's HTTP/2 server (h2c), as tonic's generated server would
/// route it; returns its address.
async fn echo_service() -> (String, Calls) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Calls::default();
    let shared = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let calls = shared.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<Incoming>| {
                    let calls = calls.clone();
                    async move {
                        let mut grpc = tonic::server::Grpc::new(Codec::default());
                        let method = req.uri().path().trim_start_matches(SERVICE).to_string();
                        let response = match method.as_str() {
                            "Unary" => grpc.unary(Unary(calls), req).await,
                            "Watch" => grpc.server_streaming(Watch, req).await,
                            "Chat" => grpc.streaming(Chat, req).await,
                            "Sum" => grpc.client_streaming(Sum, req).await,
                            _ => Status::unimplemented(method).into_http(),
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr.to_string(), calls)
}

type Client = tonic::client::Grpc<tonic::transport::Channel>;

async fn client(addr: std::net::SocketAddr) -> Client {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the gateway accepts h2c");
    tonic::client::Grpc::new(channel)
}

fn path(method: &str) -> PathAndQuery {
    format!("{SERVICE}{method}").parse().unwrap()
}

fn ping(message: &str) -> Ping {
    Ping {
        message: message.into(),
        ..Ping::default()
    }
}

async fn unary(client: &mut Client, request: Request<Ping>) -> Result<Response<Pong>, Status> {
    client.ready().await.unwrap();
    client
        .unary(request, path("Unary"), ProstCodec::<Ping, Pong>::default())
        .await
}

/// One call on a plain HTTP/2 client: the head, the messages (undecoded) and the
/// trailers.
async fn raw_call(
    addr: std::net::SocketAddr,
    method: &str,
    ping: &Ping,
    grpc_timeout: &str,
) -> (
    http::Response<()>,
    Vec<bytes::Bytes>,
    Option<http::HeaderMap>,
) {
    use http_body_util::BodyExt;
    use prost::Message;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let encoded = ping.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    let request = http::Request::post(format!("http://{addr}{SERVICE}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (head, mut body) = response.into_parts();
    let mut messages = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(data) => messages.push(data),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    (http::Response::from_parts(head, ()), messages, trailers)
}

fn config(target: &str, upstream_extra: &str, extra: &str, routes: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0, access_log: false }}\nupstreams:\n  echo:\n    targets: [\"{target}\"]\n    protocol: h2c\n{upstream_extra}{extra}routes:\n  - name: echo\n    match: {{ path_prefix: {SERVICE} }}\n    upstream: echo\n    grpc: true\n{routes}"
    )
}

fn grpc_count(metrics: &str, route: &str, status: &str) -> f64 {
    metric(
        metrics,
        &format!("portico_grpc_responses_total{{grpc_status=\"{status}\",route=\"{route}\"}}"),
    )
}

#[tokio::test]
async fn unary_and_streaming_calls_stream_through_with_their_statuses_and_trailers() {
    let (target, _) = echo_service().await;
    let (gw, _f) = gateway(&config(&target, "", "", "")).await;
    let mut client = client(gw.http_addr).await;

    // Unary: the answer and the service's metadata.
    let answer = unary(&mut client, Request::new(ping("hello")))
        .await
        .unwrap();
    assert_eq!(answer.metadata().get("x-served-by").unwrap(), "echo");
    assert_eq!(answer.get_ref().message, "hello");

    // The service's own error status and its metadata reach the client as sent.
    let status = unary(
        &mut client,
        Request::new(Ping {
            fail: Code::FailedPrecondition as i32,
            ..ping("no stock")
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "failed on purpose");
    assert_eq!(
        status.metadata().get("x-detail").unwrap(),
        "from-the-service"
    );

    // Server streaming: five messages, then a status in the trailers.
    client.ready().await.unwrap();
    let request = Request::new(Ping {
        count: 5,
        delay_ms: 10,
        fail: Code::Aborted as i32,
        ..ping("tick")
    });
    let mut stream = client
        .server_streaming(request, path("Watch"), ProstCodec::<Ping, Pong>::default())
        .await
        .unwrap()
        .into_inner();
    let mut indexes = Vec::new();
    let trailer_status = loop {
        match stream.message().await {
            Ok(Some(pong)) => indexes.push(pong.index),
            Ok(None) => panic!("the stream ended without its status"),
            Err(status) => break status,
        }
    };
    assert_eq!(indexes, vec![0, 1, 2, 3, 4]);
    assert_eq!(trailer_status.code(), Code::Aborted);
    assert_eq!(
        trailer_status.metadata().get("x-detail").unwrap(),
        "from-the-service",
        "trailer metadata passes through"
    );

    // Bidi: each answer comes back before the next message is sent, which only works
    // when nothing on the way buffers the request stream.
    client.ready().await.unwrap();
    let (tx, rx) = mpsc::channel::<Ping>(1);
    let mut answers = client
        .streaming(
            Request::new(ReceiverStream::new(rx)),
            path("Chat"),
            ProstCodec::<Ping, Pong>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        tx.send(ping(&format!("m{i}"))).await.unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .expect("an answer per message, without waiting for the stream's end")
            .unwrap()
            .unwrap();
        assert_eq!(pong.message, format!("re: m{i}"));
        assert_eq!(pong.index, i);
    }
    drop(tx);
    assert!(answers.message().await.unwrap().is_none());

    // Client streaming.
    client.ready().await.unwrap();
    let pings = tokio_stream::iter((1..=4).map(|n| Ping {
        count: n,
        ..ping("n")
    }));
    let sum = client
        .client_streaming(
            Request::new(pings),
            path("Sum"),
            ProstCodec::<Ping, Pong>::default(),
        )
        .await
        .unwrap();
    assert_eq!(sum.get_ref().index, 10);

    let metrics = gw.metrics();
    assert_eq!(grpc_count(&metrics, "echo", "0"), 3.0, "{metrics}");
    assert_eq!(grpc_count(&metrics, "echo", "9"), 1.0);
    assert_eq!(grpc_count(&metrics, "echo", "10"), 1.0);
    assert_eq!(
        grpc_count(&metrics, "echo", "14"),
        0.0,
        "every status's series exists from the start"
    );
    assert!(metrics.contains("portico_grpc_responses_total{grpc_status=\"14\",route=\"echo\"} 0"));
    gw.shutdown().await;
}

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn token() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "svc-1", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn gateway_refusals_reach_grpc_clients_as_grpc_statuses() {
    let (target, _) = echo_service().await;
    let extra = format!(
        "  gone:\n    targets: [\"127.0.0.1:9\"]\n    protocol: h2c\njwt:\n  idp: {{ algorithms: [HS256], secret: {SECRET} }}\nrate_limits:\n  once: {{ key: client_ip, limit: 1, per: 1h }}\n"
    );
    let routes = "  - { name: guarded, match: { path_prefix: /guarded.Echo/ }, upstream: echo, grpc: true, jwt: idp, rewrite: { replace_prefix: { from: /guarded.Echo/, to: /portico.test.Echo/ } } }\n  - { name: limited, match: { path_prefix: /limited.Echo/ }, upstream: echo, grpc: true, rate_limit: once, rewrite: { replace_prefix: { from: /limited.Echo/, to: /portico.test.Echo/ } } }\n  - { name: down, match: { path_prefix: /down.Echo/ }, upstream: gone, grpc: true }\n";
    let (gw, _f) = gateway(&config(&target, "", &extra, routes)).await;
    let client = client(gw.http_addr).await;
    let call = |prefix: &str| -> PathAndQuery { format!("/{prefix}.Echo/Unary").parse().unwrap() };
    let send = |p: PathAndQuery, request: Request<Ping>| {
        let mut client = client.clone();
        async move {
            client.ready().await.unwrap();
            client
                .unary(request, p, ProstCodec::<Ping, Pong>::default())
                .await
        }
    };

    // JWT: no token is UNAUTHENTICATED; a valid one goes through.
    let refused = send(call("guarded"), Request::new(ping("x")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("token"), "{}", refused.message());
    let mut with_token = Request::new(ping("x"));
    with_token.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", token()).parse().unwrap(),
    );
    assert_eq!(
        send(call("guarded"), with_token)
            .await
            .unwrap()
            .get_ref()
            .message,
        "x"
    );

    // Rate limit: the second call is RESOURCE_EXHAUSTED.
    send(call("limited"), Request::new(ping("a")))
        .await
        .unwrap();
    let limited = send(call("limited"), Request::new(ping("b")))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);

    // No endpoint answers: UNAVAILABLE.
    let down = send(call("down"), Request::new(ping("x")))
        .await
        .unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");

    // A gRPC call no route takes: UNIMPLEMENTED, not a JSON 404.
    let nowhere = send(call("nowhere"), Request::new(ping("x")))
        .await
        .unwrap_err();
    assert_eq!(nowhere.code(), Code::Unimplemented, "{nowhere:?}");

    // The deadline the client sets bounds the call: DEADLINE_EXCEEDED from the gateway
    // (the service here does not enforce grpc-timeout; the calls go out on a plain
    // HTTP/2 client, because tonic's own client would end them at the same instant).
    let slow = Ping {
        delay_ms: 3000,
        ..ping("slow")
    };
    let started = std::time::Instant::now();
    let (head, messages, trailers) = raw_call(gw.http_addr, "Unary", &slow, "200m").await;
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["grpc-status"], "4", "{head:?}");
    assert!(messages.is_empty() && trailers.is_none());
    assert!(started.elapsed() < Duration::from_secs(2));

    // A stream past its deadline ends with DEADLINE_EXCEEDED in its trailers, after the
    // messages sent in time.
    let ticks = Ping {
        count: 50,
        delay_ms: 100,
        ..ping("tick")
    };
    let (head, messages, trailers) = raw_call(gw.http_addr, "Watch", &ticks, "450m").await;
    assert_eq!(head.status(), 200);
    assert!(head.headers().get("grpc-status").is_none());
    let trailers = trailers.expect("trailers end the stream");
    assert_eq!(trailers["grpc-status"], "4", "{trailers:?}");
    assert!(
        (1..10).contains(&messages.len()),
        "{} messages before the deadline",
        messages.len()
    );

    let metrics = gw.metrics();
    assert_eq!(grpc_count(&metrics, "guarded", "16"), 1.0, "{metrics}");
    assert_eq!(grpc_count(&metrics, "limited", "8"), 1.0);
    assert_eq!(grpc_count(&metrics, "down", "14"), 1.0);
    assert_eq!(grpc_count(&metrics, "echo", "4"), 2.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn calls_are_retried_on_listed_grpc_codes_only() {
    let (target, calls) = echo_service().await;
    let upstream_extra = "    retries: { attempts: 3, on: [unavailable] }\n";
    let (gw, _f) = gateway(&config(&target, upstream_extra, "", "")).await;
    let mut client = client(gw.http_addr).await;

    // UNAVAILABLE twice, then an answer: the client sees only the answer.
    let answer = unary(
        &mut client,
        Request::new(Ping {
            fail_first: 2,
            ..ping("flaky")
        }),
    )
    .await
    .unwrap();
    assert_eq!(answer.get_ref().index, 3, "the third call answered");

    // A code that is not listed is not retried (the call may have had an effect).
    let status = unary(
        &mut client,
        Request::new(Ping {
            fail: Code::Internal as i32,
            ..ping("broken")
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(calls.count("broken"), 2, "one call before this count");
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "portico_upstream_retries_total{result=\"retried\",upstream=\"echo\"}"
        ),
        2.0,
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_split_moves_grpc_calls_to_the_canary_service() {
    let (stable, stable_calls) = echo_service().await;
    let (canary, canary_calls) = echo_service().await;
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, access_log: false }}\nupstreams:\n  stable: {{ targets: [\"{stable}\"], protocol: h2c }}\n  canary: {{ targets: [\"{canary}\"], protocol: h2c }}\nroutes:\n  - name: echo\n    match: {{ path_prefix: {SERVICE} }}\n    grpc: true\n    split: {{ stable: {{ upstream: stable }}, canary: {{ upstream: canary }}, percent: 100, side_header: true }}\n"
    );
    let (gw, _f) = gateway(&yaml).await;
    let mut client = client(gw.http_addr).await;
    for i in 0..5 {
        let message = format!("m{i}");
        let answer = unary(&mut client, Request::new(ping(&message)))
            .await
            .unwrap();
        assert_eq!(answer.metadata().get("x-portico-split").unwrap(), "canary");
        assert_eq!(canary_calls.seen(&message), 1);
        assert_eq!(stable_calls.seen(&message), 0);
    }
    gw.shutdown().await;
}

#[test]
fn grpc_routes_are_checked() {
    let http1 = "server: { listen: 127.0.0.1:0 }\nupstreams:\n  legacy: { targets: [\"127.0.0.1:9\"] }\nroutes:\n  - { name: rpc, match: { path_prefix: /a.B/ }, upstream: legacy, grpc: true }\n";
    let err = portico::check::parse(http1).unwrap_err().to_string();
    assert!(err.contains("routes[0].grpc"), "{err}");
    assert!(err.contains("HTTP/2"), "{err}");
    let cached = config("127.0.0.1:9", "", "caches:\n  c: { max_size: 1MiB }\n", "")
        .replace("    grpc: true\n", "    grpc: true\n    cache: c\n");
    let err = portico::check::parse(&cached).unwrap_err().to_string();
    assert!(err.contains("routes[0].cache"), "{err}");
    let bad_code = config(
        "127.0.0.1:9",
        "    retries: { attempts: 2, on: [unavialable] }\n",
        "",
        "",
    );
    let err = portico::check::parse(&bad_code).unwrap_err().to_string();
    assert!(err.contains("upstreams.echo.retries"), "{err}");
    assert!(portico::check::parse(&config("127.0.0.1:9", "", "", "")).is_ok());
}
