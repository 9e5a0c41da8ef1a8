//! End-to-end tests of what the cache may share and under which key: authenticated
//! answers, routes and schemes that share a cache, Vary variants, and hostile `Age`
//! values. A real gateway in front of the scripted echo backend (`support::CacheBackend`),
//! whose default answer is `max-age=60` with a JSON echo of the request it received.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::client::get;
use support::{client, gateway, metric, CacheBackend, Client, Reply, Script};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn token(sub: &str) -> String {
    let claims = json!({ "sub": sub, "exp": jsonwebtoken::get_current_timestamp() + 300 });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

async fn as_user(
    client: &Client,
    addr: SocketAddr,
    path: &str,
    user: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let bearer = format!("Bearer {}", token(user));
    let mut headers = vec![("authorization", bearer.as_str())];
    headers.extend_from_slice(extra);
    get(client, addr, path, &headers).await
}

fn x_cache(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or("")
}

/// The user the backend saw, from the forwarded claim header it echoed.
fn user_seen(r: &Reply) -> String {
    r.json()["headers"]["x-user-id"]
        .as_str()
        .unwrap_or("<none>")
        .to_string()
}

fn jwt_yaml(backend: &CacheBackend) -> String {
    format!(
        r#"server: {{ listen: 127.0.0.1:0, access_log: false }}
jwt:
  users:
    algorithms: [HS256]
    secret: {SECRET}
    forward_claims: {{ sub: X-User-Id }}
caches:
  c: {{ max_size: 8MiB }}
upstreams:
  u: {{ targets: ["{}"] }}
routes:
  - name: stripped
    match: {{ path_prefix: /stripped }}
    jwt: users
    transform: {{ request: {{ remove_headers: [Authorization] }} }}
    cache: c
    upstream: u
  - name: me
    match: {{ path_prefix: /me }}
    jwt: users
    cache: c
    upstream: u
  - name: open
    match: {{ path_prefix: /open }}
    cache: c
    upstream: u
"#,
        backend.address()
    )
}

/// A per-user answer with a plain `max-age` (the upstream knows the user from the
/// forwarded claim header, which is not in the key) is never served to another user,
/// however the Authorization header got lost on the way upstream; `public` is shared.
#[tokio::test]
async fn authenticated_answers_are_shared_only_when_the_origin_says_so() {
    let backend = CacheBackend::start().await;
    let (gw, _f) = gateway(&jwt_yaml(&backend)).await;
    let client = Client::new();
    let addr = gw.http_addr;

    // Authorization forwarded as is.
    let a = as_user(&client, addr, "/me/profile", "alice", &[]).await;
    let b = as_user(&client, addr, "/me/profile", "bob", &[]).await;
    assert_eq!(user_seen(&a), "alice");
    assert_eq!(user_seen(&b), "bob", "bob was served alice's profile");

    // A request transform removes Authorization before the upstream sees it.
    let a = as_user(&client, addr, "/stripped/profile", "alice", &[]).await;
    assert_eq!(a.status, 200);
    assert!(a.json()["headers"]["authorization"].is_null());
    let b = as_user(&client, addr, "/stripped/profile", "bob", &[]).await;
    assert_eq!(user_seen(&a), "alice");
    assert_eq!(
        user_seen(&b),
        "bob",
        "transform: bob was served alice's profile"
    );
    assert_eq!(x_cache(&b), "MISS");

    // The client names Authorization as hop-by-hop: JWT reads it, then it is stripped.
    let hop = [("connection", "authorization")];
    let a = as_user(&client, addr, "/me/settings", "alice", &hop).await;
    assert_eq!(a.status, 200);
    assert!(a.json()["headers"]["authorization"].is_null());
    let b = as_user(&client, addr, "/me/settings", "bob", &hop).await;
    assert_eq!(user_seen(&a), "alice");
    assert_eq!(
        user_seen(&b),
        "bob",
        "Connection: bob was served alice's profile"
    );
    assert_eq!(backend.hits("/me/settings"), 2);

    // No jwt on the route, but the client sent credentials that go no further.
    let a = get(
        &client,
        addr,
        "/open/inbox",
        &[
            ("authorization", "Bearer alice"),
            ("connection", "authorization"),
        ],
    )
    .await;
    let b = get(
        &client,
        addr,
        "/open/inbox",
        &[
            ("authorization", "Bearer bob"),
            ("connection", "authorization"),
        ],
    )
    .await;
    assert_eq!(x_cache(&b), "MISS");
    assert_ne!(a.json()["n"], b.json()["n"]);
    assert_eq!(backend.hits("/open/inbox"), 2);

    // The origin says the answer is the same for everyone: shared.
    for (path, cc) in [
        ("/me/catalog", "public, max-age=60"),
        ("/stripped/catalog", "s-maxage=60"),
    ] {
        backend.script(path, Script::ok(&[("cache-control", cc)]));
        let a = as_user(&client, addr, path, "alice", &hop).await;
        let b = as_user(&client, addr, path, "bob", &hop).await;
        assert_eq!(x_cache(&b), "HIT", "{path}");
        assert_eq!(b.body, a.body, "{path}");
        assert_eq!(backend.hits(path), 1, "{path}");
    }
}

fn two_routes_yaml(backend: &CacheBackend, tls: &str) -> String {
    format!(
        r#"server:
  listen: 127.0.0.1:0
  access_log: false
{tls}
caches:
  c: {{ max_size: 8MiB }}
upstreams:
  u: {{ targets: ["{}"] }}
routes:
  - name: edited
    match: {{ path_prefix: /edited }}
    rewrite: {{ replace_prefix: {{ from: /edited, to: /items }} }}
    transform: {{ response: {{ json_body: {{ set: {{ edited: true }}, remove: [headers] }} }} }}
    cache: c
    upstream: u
  - name: plain
    match: {{ path_prefix: /plain }}
    rewrite: {{ replace_prefix: {{ from: /plain, to: /items }} }}
    cache: c
    upstream: u
"#,
        backend.address()
    )
}

/// Stored bodies are already edited by the storing route's JSON transform: a second
/// route on the same cache, upstream and path gets its own entry.
#[tokio::test]
async fn routes_sharing_a_cache_upstream_and_path_keep_their_own_answers() {
    let backend = CacheBackend::start().await;
    let (gw, _f) = gateway(&two_routes_yaml(&backend, "")).await;
    let client = Client::new();
    let addr = gw.http_addr;
    let edited = get(&client, addr, "/edited/1", &[]).await;
    assert_eq!(edited.json()["edited"], true);
    let plain = get(&client, addr, "/plain/1", &[]).await;
    assert_eq!(x_cache(&plain), "MISS", "plain was served the edited entry");
    assert!(plain.json()["edited"].is_null());
    assert_eq!(plain.json()["path"], "/items/1");
    // Each route still hits its own entry.
    let edited2 = get(&client, addr, "/edited/1", &[]).await;
    let plain2 = get(&client, addr, "/plain/1", &[]).await;
    assert_eq!((x_cache(&edited2), x_cache(&plain2)), ("HIT", "HIT"));
    assert_eq!(edited2.json()["edited"], true);
    assert!(plain2.json()["edited"].is_null());
    assert_eq!(backend.hits("/items/1"), 2);

    // An unsafe request through one route invalidates the URL for every route.
    let post = Request::post(format!("http://{addr}/plain/1"))
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(client.send(post).await.status, 200);
    assert_eq!(x_cache(&get(&client, addr, "/edited/1", &[]).await), "MISS");
    assert_eq!(x_cache(&get(&client, addr, "/plain/1", &[]).await), "MISS");
}

/// http and https answers do not mix: the upstream may answer each differently (here it
/// echoes `X-Forwarded-Proto`).
#[tokio::test]
async fn http_and_https_answers_are_stored_apart() {
    let backend = CacheBackend::start().await;
    let dir = support::tempfile_path::TempPath::new("portico-certs", "d");
    std::fs::create_dir_all(dir.path()).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["shop.test".to_string()]).unwrap();
    let cert = dir.path().join("shop.pem");
    let key = dir.path().join("shop-key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "  tls:\n    listen: 127.0.0.1:0\n    certificates:\n      - {{ cert: \"{}\", key: \"{}\", hosts: [shop.test] }}\n",
        cert.display(),
        key.display()
    );
    let (gw, _f) = gateway(&two_routes_yaml(&backend, &tls)).await;
    let client = Client::new();
    let https = gw.https_addr.expect("https listener");
    let roots = [ck.cert.der().to_vec()];

    let plain = get(&client, gw.http_addr, "/plain/2", &[("host", "shop.test")]).await;
    assert_eq!(plain.json()["headers"]["x-forwarded-proto"], "http");
    let (secure, _) = client::tls_get(https, "shop.test", &roots, false, "/plain/2").await;
    assert_eq!(secure.status, 200);
    assert_eq!(x_cache(&secure), "MISS", "https was served the http entry");
    assert_eq!(secure.json()["headers"]["x-forwarded-proto"], "https");
    let (again, _) = client::tls_get(https, "shop.test", &roots, false, "/plain/2").await;
    assert_eq!(x_cache(&again), "HIT");
    assert_eq!(again.json()["headers"]["x-forwarded-proto"], "https");
    assert_eq!(backend.hits("/items/2"), 2);
    let _ = std::fs::remove_dir_all(dir.path());
}

fn simple_yaml(backend: &CacheBackend) -> String {
    format!(
        r#"server: {{ listen: 127.0.0.1:0, access_log: false }}
caches:
  c: {{ max_size: 8MiB }}
upstreams:
  u: {{ targets: ["{}"] }}
routes:
  - name: r
    cache: c
    upstream: u
"#,
        backend.address()
    )
}

/// One URL with `Vary: Accept-Language` and a new language on every request: the
/// variants stay capped (oldest out), and the gateway keeps answering each request with
/// its own variant.
#[tokio::test]
async fn vary_variants_of_one_url_stay_bounded() {
    let backend = CacheBackend::start().await;
    backend.script(
        "/v",
        Script::ok(&[("cache-control", "max-age=60"), ("vary", "Accept-Language")]),
    );
    let (gw, _f) = gateway(&simple_yaml(&backend)).await;
    let client = Client::new();
    let addr = gw.http_addr;
    let langs: Vec<String> = (0..200).map(|i| format!("x-{i:03}")).collect();
    for lang in &langs {
        let r = get(&client, addr, "/v", &[("accept-language", lang)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["headers"]["accept-language"], lang.as_str());
    }
    let entries = metric(&gw.metrics(), r#"portico_cache_entries{cache="c"}"#);
    // 32 variants plus the URL's index.
    assert!(entries <= 33.0, "{entries} entries for one URL");
    // The newest variants are still served; the oldest were evicted and are fetched again.
    let newest = get(&client, addr, "/v", &[("accept-language", "x-199")]).await;
    assert_eq!(x_cache(&newest), "HIT");
    assert_eq!(newest.json()["headers"]["accept-language"], "x-199");
    let oldest = get(&client, addr, "/v", &[("accept-language", "x-000")]).await;
    assert_eq!(x_cache(&oldest), "MISS");
    assert_eq!(oldest.json()["headers"]["accept-language"], "x-000");
    let evicted = metric(
        &gw.metrics(),
        r#"portico_cache_variant_evictions_total{cache="c"}"#,
    );
    assert!(evicted >= 168.0, "{evicted} variant evictions");
}

/// `Age: 2^64-1` on a storable answer: clamped, not an overflow; every request answers.
/// The sum of that Age and the time in the cache overflows once the entry is a second
/// old, so the second round waits that long; the ETag and the grace keep the entries.
#[tokio::test]
async fn a_huge_age_is_clamped_instead_of_overflowing() {
    let backend = CacheBackend::start().await;
    let huge = "18446744073709551615";
    backend.script(
        "/age",
        Script {
            etag: Some("\"a1\"".into()),
            ..Script::ok(&[("cache-control", "max-age=60"), ("age", huge)])
        },
    );
    backend.script(
        "/age-grace",
        Script::ok(&[
            (
                "cache-control",
                "max-age=60, stale-while-revalidate=18446744073709551615, stale-if-error=99999999999999999999",
            ),
            ("age", huge),
        ]),
    );
    let (gw, _f) = gateway(&simple_yaml(&backend)).await;
    let client = Client::new();
    for round in 0..3 {
        if round == 1 {
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        }
        for path in ["/age", "/age-grace"] {
            let req = Request::get(format!("http://{}{path}", gw.http_addr))
                .body(Full::<Bytes>::default())
                .unwrap();
            let reply = client.try_send(req).await;
            let reply = reply.unwrap_or_else(|e| panic!("{path}, round {round}: {e}"));
            assert_eq!(reply.status, 200, "{path}");
            let age: u64 = reply
                .header("age")
                .and_then(|a| a.parse().ok())
                .expect("Age");
            // RFC 9111 §5.1: an age that large is sent as 2^31.
            assert_eq!(age, 1 << 31, "{path}");
        }
    }
    // Already older than its lifetime: revalidated with its ETag, not served as fresh.
    assert!(backend.not_modified() >= 1);
}
