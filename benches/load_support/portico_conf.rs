//! The harness's Portico config: the measured routes, then filler routes and upstreams up
//! to the size of a large deployment, so the peak RSS the report shows is the figure for
//! "1,000 routes and 100 upstreams".

use std::path::Path;

use super::procs::Basics;

/// Routes in every harness Portico config (the measured ones included).
pub const ROUTES: usize = 1000;
/// Upstreams in every harness Portico config (the measured ones included). The filler
/// ones all point at the backend: an upstream that cannot connect would only add retries
/// and log noise, and no request reaches them anyway.
pub const UPSTREAMS: usize = 100;

/// The measured routes `config` writes before the filler ones.
const MEASURED_ROUTES: usize = 8;
/// The upstreams `config` writes before the filler ones.
const MEASURED_UPSTREAMS: usize = 4;

/// The key the edge scenario's consumer holds.
pub const BENCH_API_KEY: &str = "bench-api-key-0123456789abcdef";

/// What differs between the harness's Portico processes.
#[derive(Default)]
pub struct Options<'a> {
    /// `server.access_log` (the JSON line per request on stdout).
    pub access_log: bool,
    /// An HTTPS listener: its port and the certificate and key PEM files.
    pub tls: Option<(u16, &'a Path, &'a Path)>,
}

/// The edge route's IP allow list: loopback among 1 000 other ranges, so the check is a
/// real search.
fn edge_allow_list() -> String {
    let mut list = vec!["127.0.0.0/8".to_string()];
    list.extend((0..1000u32).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)));
    list.join(", ")
}

/// The measured routes first (plain; JWT + rate limit + header transform; cached; an
/// HTTPS upstream; ...), then filler routes up to `ROUTES`, spread over filler upstreams
/// up to `UPSTREAMS`.
pub fn config(port: u16, basics: &Basics, opts: &Options<'_>) -> String {
    let backend = basics.backend.port;
    let tls_listener = match opts.tls {
        Some((tls_port, cert, key)) => format!(
            "  tls:\n    listen: 127.0.0.1:{tls_port}\n    certificates:\n      - {{ cert: \"{}\", key: \"{}\", hosts: [localhost] }}\n",
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    let mut y = format!(
        r#"server:
  listen: 127.0.0.1:{port}
{tls_listener}  access_log: {access_log}
  limits: {{ max_connections: 100000 }}
jwt:
  bench:
    issuer: bench
    audience: [bench]
    algorithms: [RS256]
    public_key: "{key}"
    required_claims: [sub, exp]
    forward_claims: {{ sub: X-User-Id }}
rate_limits:
  never-trips: {{ key: client_ip, limit: 1000000000, per: 1s }}
caches:
  bench: {{ max_size: 64MiB, max_entry: 1MiB, default_ttl: 60s }}
consumers:
  bench-app: {{ api_keys: ["{api_key}"], groups: [apps] }}
cors:
  storefront:
    origins: ["https://shop.example", "https://*.shop.example"]
    expose: [X-Request-Id]
    credentials: true
upstreams:
  backend:
    targets: ["127.0.0.1:{backend}"]
  backend-tls:
    targets: ["127.0.0.1:{tls}"]
    tls: {{ ca_file: "{ca}", server_name: localhost }}
  backend-h2c:
    targets: ["127.0.0.1:{backend}"]
    protocol: h2c
  mirror-backend:
    targets: ["127.0.0.1:{mirror}"]
"#,
        access_log = opts.access_log,
        mirror = basics.mirror_backend.port,
        key = basics.public_key.display(),
        api_key = BENCH_API_KEY,
        tls = basics.backend_tls_port,
        ca = basics.ca_file.display(),
    );
    let pools = UPSTREAMS - MEASURED_UPSTREAMS;
    for i in 0..pools {
        y.push_str(&format!(
            "  pool-{i}:\n    targets: [\"127.0.0.1:{backend}\"]\n"
        ));
    }
    y.push_str(&format!(
        r#"routes:
  - name: grpc
    match: {{ path_prefix: /grpc }}
    rewrite: {{ strip_prefix: /grpc }}
    upstream: backend-h2c
    grpc: true
  - name: h2c
    match: {{ path_prefix: /h2c }}
    rewrite: {{ strip_prefix: /h2c }}
    upstream: backend-h2c
  - name: tls
    match: {{ path_prefix: /tls }}
    rewrite: {{ strip_prefix: /tls }}
    upstream: backend-tls
  - name: plain
    match: {{ path_prefix: /plain }}
    rewrite: {{ strip_prefix: /plain }}
    upstream: backend
  - name: full
    match: {{ path_prefix: /full }}
    rewrite: {{ strip_prefix: /full }}
    jwt: bench
    rate_limit: never-trips
    transform:
      request:
        set_headers: {{ X-Api-Version: "2.0", X-Caller: "${{claim.sub}}" }}
        remove_headers: [X-Debug]
      response:
        set_headers: {{ X-Gateway: portico }}
        remove_headers: [Server]
    upstream: backend
  - name: edge
    match: {{ path_prefix: /edge }}
    rewrite: {{ strip_prefix: /edge }}
    auth: {{ any: [api_key] }}
    allow: {{ groups: [apps] }}
    cors: storefront
    ip: {{ allow: [{allow_list}], deny: [10.6.6.0/24] }}
    upstream: backend
  - name: cached
    match: {{ path_prefix: /cached }}
    rewrite: {{ strip_prefix: /cached }}
    cache: bench
    upstream: backend
  - name: mirrored
    match: {{ path_prefix: /mirrored }}
    rewrite: {{ strip_prefix: /mirrored }}
    upstream: backend
    mirror:
      upstream: mirror-backend
      rewrite: {{ strip_prefix: /mirrored }}
      percent: 100
      methods: [GET, POST]
      max_in_flight: 1000
      compare: {{ status: true, headers: [Content-Type] }}
"#,
        allow_list = edge_allow_list(),
    ));
    for i in 1..=ROUTES - MEASURED_ROUTES {
        y.push_str(&format!(
            "  - name: svc-{i}\n    match: {{ path_prefix: /svc-{i}, methods: [GET] }}\n    rewrite: {{ strip_prefix: /svc-{i} }}\n    upstream: pool-{}\n",
            i % pools
        ));
    }
    y
}
