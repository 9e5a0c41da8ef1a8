//! End-to-end tests of who may call: consumers with API keys and basic auth, `auth.any`
//! with JWT, `allow`, consumer-keyed rate limits, CORS at the header level (the browser
//! test is tests/cors_browser.rs), IP lists and per-route body limits, through a real
//! gateway in front of a real echo backend.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::client::get;
use support::{gateway, metric, Backend, Client};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
const MOBILE_KEY: &str = "mobile-key-0123456789abcdef";
const PARTNER_KEY: &str = "partner-key-0123456789abcdef";

fn token(role: &str, sub: &str) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({ "sub": sub, "role": role, "exp": now + 300, "iat": now });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn sha256_hex(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn partner_config(backend: &Backend) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, access_log: false }}
admin: {{ listen: 127.0.0.1:0 }}
upstreams:
  b: {{ targets: ["{addr}"] }}
jwt:
  shop: {{ algorithms: [HS256], secret: {SECRET} }}
consumers:
  mobile-app: {{ api_keys: ["{MOBILE_KEY}"], groups: [apps] }}
  partner: {{ api_keys: ["sha256:{hashed}"], groups: [partners] }}
  ops-bot: {{ jwt_subjects: [bot-1], groups: [apps] }}
rate_limits:
  per-consumer: {{ key: consumer, limit: 3, per: 1m }}
routes:
  - name: partner-orders
    match: {{ path_prefix: /api/partner }}
    auth: {{ any: [api_key, jwt], jwt: shop }}
    allow: {{ groups: [apps], claims: {{ role: [admin] }} }}
    rate_limit: per-consumer
    transform:
      request: {{ set_headers: {{ X-Who: "${{consumer}}" }} }}
    upstream: b
  - name: by-query
    match: {{ path_prefix: /q }}
    auth: {{ any: [api_key], api_key: {{ query: apikey }} }}
    upstream: b
  - name: public
    match: {{ path_prefix: / }}
    upstream: b
"#,
        addr = backend.address(),
        hashed = sha256_hex(PARTNER_KEY),
    )
}

#[tokio::test]
async fn a_key_or_a_token_passes_and_allow_decides() {
    let backend = Backend::start("orders").await;
    let (gw, _file) = gateway(&partner_config(&backend)).await;
    let client = Client::new();
    let addr = gw.http_addr;

    // A key alone: the consumer is named upstream, the key itself is not forwarded.
    let r = get(
        &client,
        addr,
        "/api/partner/1",
        &[("x-api-key", MOBILE_KEY)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.echoed("x-api-key").is_empty(),
        "the key reached the upstream"
    );
    assert_eq!(r.echoed("x-consumer"), ["mobile-app"]);
    assert_eq!(r.echoed("x-consumer-groups"), ["apps"]);
    assert_eq!(r.echoed("x-who"), ["mobile-app"]);

    // A token alone whose claim matches: its consumer is the subject.
    let admin = format!("Bearer {}", token("admin", "user-7"));
    let r = get(
        &client,
        addr,
        "/api/partner/1",
        &[("authorization", &admin)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-consumer"), ["user-7"]);
    // A mapped subject is its consumer, with the consumer's groups.
    let bot = format!("Bearer {}", token("none", "bot-1"));
    let r = get(&client, addr, "/api/partner/1", &[("authorization", &bot)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-consumer"), ["ops-bot"]);

    // Neither: 401 naming what the route accepts.
    let r = get(&client, addr, "/api/partner/1", &[]).await;
    assert_eq!(r.status, 401);
    let message = r.json()["error"].as_str().unwrap_or("").to_string();
    assert!(message.contains("API key (x-api-key header)"), "{message}");
    assert!(message.contains("bearer token"), "{message}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    // A wrong key, never echoed in the answer.
    let r = get(
        &client,
        addr,
        "/api/partner/1",
        &[("x-api-key", "wrong-key-0000000000")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(!String::from_utf8_lossy(&r.body).contains("wrong-key"));

    // Authenticated but not allowed: a token without the claim value, a key whose
    // consumer is in none of the groups.
    let user = format!("Bearer {}", token("customer", "user-8"));
    let r = get(&client, addr, "/api/partner/1", &[("authorization", &user)]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["status"], 403);
    let r = get(
        &client,
        addr,
        "/api/partner/1",
        &[("x-api-key", PARTNER_KEY)],
    )
    .await;
    assert_eq!(r.status, 403);

    // A client cannot forge the identity headers, on any route.
    let r = get(
        &client,
        addr,
        "/anything",
        &[("x-consumer", "admin"), ("x-consumer-groups", "admins")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.echoed("x-consumer").is_empty());
    assert!(r.echoed("x-consumer-groups").is_empty());
    let r = get(
        &client,
        addr,
        "/api/partner/1",
        &[("x-api-key", MOBILE_KEY), ("x-consumer", "admin")],
    )
    .await;
    assert_eq!(r.echoed("x-consumer"), ["mobile-app"]);

    // The limit is per consumer: mobile-app spends its 3, the admin token keeps its own.
    let key_request = || {
        get(
            &client,
            addr,
            "/api/partner/1",
            &[("x-api-key", MOBILE_KEY)],
        )
    };
    assert_eq!(key_request().await.status, 200);
    let r = key_request().await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    let r = get(
        &client,
        addr,
        "/api/partner/1",
        &[("authorization", &admin)],
    )
    .await;
    assert_eq!(r.status, 200);

    let admin_addr = gw.admin_addr.expect("admin listener");
    let metrics = client.get(admin_addr, "/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    let series = |method: &str, reason: &str| {
        metric(
            &text,
            &format!("portico_auth_rejected_total{{method=\"{method}\",reason=\"{reason}\",route=\"partner-orders\"}}"),
        )
    };
    assert_eq!(series("none", "missing"), 1.0, "{text}");
    assert_eq!(series("api_key", "unknown_key"), 1.0);
    assert_eq!(series("any", "claim"), 2.0);
    assert!(text.contains("portico_auth_rejected_total{method=\"basic\",reason=\"invalid\",route=\"partner-orders\"} 0"));

    // The admin API lists names and groups; the config never shows a key.
    let consumers = client.get(admin_addr, "/consumers").await.json();
    assert_eq!(
        consumers["consumers"],
        json!([
            { "name": "mobile-app", "groups": ["apps"] },
            { "name": "ops-bot", "groups": ["apps"] },
            { "name": "partner", "groups": ["partners"] },
        ])
    );
    let config = client.get(admin_addr, "/config").await;
    let config_text = String::from_utf8_lossy(&config.body);
    assert!(!config_text.contains(MOBILE_KEY));
    assert!(!config_text.contains(&sha256_hex(PARTNER_KEY)));
    assert!(!text.contains(MOBILE_KEY));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_query_key_is_taken_out_of_the_forwarded_query() {
    let backend = Backend::start("orders").await;
    let (gw, _file) = gateway(&partner_config(&backend)).await;
    let client = Client::new();
    let r = client
        .get(gw.http_addr, &format!("/q/x?a=1&apikey={MOBILE_KEY}&b=2"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["query"], "a=1&b=2");
    let r = client
        .get(gw.http_addr, &format!("/q/x?apikey={MOBILE_KEY}"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["query"], serde_json::Value::Null);
    let r = client.get(gw.http_addr, "/q/x?apikey=nope").await;
    assert_eq!(r.status, 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn basic_auth_checks_argon2id_and_bcrypt_hashes() {
    let backend = Backend::start("ops").await;
    let argon = portico::auth::basic::hash_password("correct horse").expect("argon2id");
    let bcrypt = bcrypt::hash("battery staple", 4).expect("bcrypt");
    let yaml = format!(
        r#"
server: {{ listen: 127.0.0.1:0, access_log: false }}
upstreams:
  b: {{ targets: ["{}"] }}
consumers:
  ops: {{ basic_auth: {{ username: ops, password_hash: "{argon}" }}, groups: [admins] }}
  oncall: {{ basic_auth: {{ username: oncall, password_hash: "{bcrypt}" }}, groups: [admins] }}
routes:
  - name: admin
    match: {{ path_prefix: /admin }}
    auth: {{ any: [basic] }}
    allow: {{ groups: [admins] }}
    upstream: b
"#,
        backend.address()
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    let addr = gw.http_addr;
    for _ in 0..3 {
        let r = get(
            &client,
            addr,
            "/admin/x",
            &[("authorization", &basic("ops", "correct horse"))],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.echoed("x-consumer"), ["ops"]);
        assert!(
            r.echoed("authorization").is_empty(),
            "basic credentials were forwarded"
        );
    }
    let r = get(
        &client,
        addr,
        "/admin/x",
        &[("authorization", &basic("oncall", "battery staple"))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("x-consumer"), ["oncall"]);
    for (user, password) in [
        ("ops", "wrong"),
        ("nobody", "correct horse"),
        ("oncall", "correct horse"),
    ] {
        let r = get(
            &client,
            addr,
            "/admin/x",
            &[("authorization", &basic(user, password))],
        )
        .await;
        assert_eq!(r.status, 401, "{user}");
        let challenge = r.header("www-authenticate").unwrap_or("");
        assert!(challenge.starts_with("Basic realm="), "{challenge}");
        assert!(!String::from_utf8_lossy(&r.body).contains(password));
    }
    let r = get(&client, addr, "/admin/x", &[("authorization", "Basic !!!")]).await;
    assert_eq!(r.status, 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn ip_lists_apply_to_the_client_address_trusted_proxies_decided() {
    let backend = Backend::start("b").await;
    let config = |trusted: &str| {
        format!(
            r#"
server: {{ listen: 127.0.0.1:0, access_log: false{trusted} }}
admin: {{ listen: 127.0.0.1:0 }}
upstreams:
  b: {{ targets: ["{}"] }}
routes:
  - name: internal
    match: {{ path_prefix: /internal }}
    ip: {{ allow: [10.0.0.0/8, "2001:db8::/32"], deny: [10.6.6.0/24] }}
    upstream: b
  - name: local
    match: {{ path_prefix: /local }}
    ip: {{ allow: [127.0.0.1] }}
    upstream: b
"#,
            backend.address()
        )
    };
    // Directly: the client is 127.0.0.1, and X-Forwarded-For is not believed.
    let (gw, _file) = gateway(&config("")).await;
    let client = Client::new();
    let r = get(
        &client,
        gw.http_addr,
        "/internal",
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "client address not allowed");
    assert_eq!(client.get(gw.http_addr, "/local").await.status, 200);
    let text = String::from_utf8_lossy(&client.get(gw.admin_addr.unwrap(), "/metrics").await.body)
        .to_string();
    assert_eq!(
        metric(
            &text,
            "portico_ip_rejected_total{list=\"allow\",route=\"internal\"}"
        ),
        1.0
    );
    gw.shutdown().await;

    // Behind a trusted proxy, the forwarded address is the client's.
    let (gw, _file) = gateway(&config(", trusted_proxies: [127.0.0.1/32]")).await;
    let at = |xff: &'static str| {
        let client = client.clone();
        let addr = gw.http_addr;
        async move {
            get(&client, addr, "/internal", &[("x-forwarded-for", xff)])
                .await
                .status
        }
    };
    assert_eq!(at("10.1.2.3").await, 200);
    assert_eq!(at("10.6.6.7").await, 403, "a deny inside an allow");
    assert_eq!(at("2001:db8::5").await, 200, "IPv6");
    assert_eq!(at("2001:db9::5").await, 403);
    assert_eq!(at("192.168.1.1").await, 403);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_route_lowers_the_body_limit() {
    let backend = Backend::start("b").await;
    let yaml = format!(
        r#"
server: {{ listen: 127.0.0.1:0, access_log: false }}
upstreams:
  b: {{ targets: ["{}"] }}
routes:
  - name: small
    match: {{ path_prefix: /small }}
    limits: {{ max_request_body: 1KiB }}
    upstream: b
  - name: rest
    match: {{ path_prefix: / }}
    upstream: b
"#,
        backend.address()
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    let post = |path: &str, n: usize| {
        Request::post(format!("http://{}{path}", gw.http_addr))
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    assert_eq!(client.send(post("/small", 1024)).await.status, 200);
    assert_eq!(client.send(post("/small", 2048)).await.status, 413);
    assert_eq!(client.send(post("/other", 2048)).await.status, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn cors_preflights_are_answered_and_actual_responses_get_headers() {
    let backend = Backend::start("store").await;
    let yaml = format!(
        r#"
server: {{ listen: 127.0.0.1:0, access_log: false }}
admin: {{ listen: 127.0.0.1:0 }}
upstreams:
  b: {{ targets: ["{}"] }}
consumers:
  mobile-app: {{ api_keys: ["{MOBILE_KEY}"] }}
cors:
  storefront:
    origins: ["https://shop.example", "https://*.shop.example"]
    methods: [GET, PUT]
    headers: [Content-Type, X-API-Key]
    expose: [X-Request-Id]
    credentials: true
    max_age: 10m
routes:
  - name: store
    match: {{ path_prefix: /api/store }}
    auth: {{ any: [api_key] }}
    cors: storefront
    upstream: b
"#,
        backend.address()
    );
    let (gw, _file) = gateway(&yaml).await;
    let client = Client::new();
    let addr = gw.http_addr;
    let options = |origin: &str, method: Option<&str>| {
        let mut b = Request::builder()
            .method("OPTIONS")
            .uri(format!("http://{addr}/api/store/items"))
            .header("origin", origin);
        if let Some(m) = method {
            b = b
                .header("access-control-request-method", m)
                .header("access-control-request-headers", "content-type,x-api-key");
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    // A preflight carries no credentials and is answered without the upstream.
    let r = client
        .send(options("https://eu.shop.example", Some("PUT")))
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://eu.shop.example")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Content-Type, X-API-Key")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    let r = client
        .send(options("https://evil.example", Some("PUT")))
        .await;
    assert_eq!(r.status, 403);
    assert!(r.header("access-control-allow-origin").is_none());
    let r = client
        .send(options("https://shop.example", Some("DELETE")))
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(backend.hits(), 0, "preflights reached the upstream");
    // A plain OPTIONS is a request like any other (and needs the key).
    let r = client.send(options("https://shop.example", None)).await;
    assert_eq!(r.status, 401);

    // Actual responses: the origin echoed (never `*` with credentials), Vary: Origin.
    let r = get(
        &client,
        addr,
        "/api/store/items",
        &[
            ("origin", "https://shop.example"),
            ("x-api-key", MOBILE_KEY),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("X-Request-Id")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    // Refusals carry them too, so the page can read why.
    let r = get(
        &client,
        addr,
        "/api/store/items",
        &[("origin", "https://shop.example")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let r = get(
        &client,
        addr,
        "/api/store/items",
        &[
            ("origin", "https://evil.example"),
            ("x-api-key", MOBILE_KEY),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());

    let text = String::from_utf8_lossy(&client.get(gw.admin_addr.unwrap(), "/metrics").await.body)
        .to_string();
    assert_eq!(
        metric(
            &text,
            "portico_cors_preflights_total{result=\"allowed\",route=\"store\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "portico_cors_preflights_total{result=\"rejected\",route=\"store\"}"
        ),
        2.0
    );
    gw.shutdown().await;
}

#[test]
fn bad_who_may_call_config_is_refused_with_paths() {
    use support::assert_refused_at;
    let base = "server: { listen: 127.0.0.1:0 }\nupstreams:\n  b: { targets: [\"127.0.0.1:9\"] }\n";
    assert_refused_at(
        &format!("{base}consumers:\n  ops: {{ basic_auth: {{ username: ops, password_hash: \"md5:abc\" }} }}\n"),
        "consumers.ops.basic_auth.password_hash",
    );
    assert_refused_at(
        &format!("{base}consumers:\n  a: {{ groups: [x] }}\nroutes:\n  - {{ name: r, auth: {{ any: [api_key] }}, upstream: b }}\n"),
        "routes[0].auth.any[0]",
    );
    assert_refused_at(
        &format!("{base}cors:\n  open: {{ origins: [\"*\"], credentials: true }}\n"),
        "cors.open.origins[0]",
    );
    assert_refused_at(
        &format!("{base}routes:\n  - {{ name: r, ip: {{ allow: [10.0.0.0/33] }}, upstream: b }}\n"),
        "routes[0].ip.allow[0]",
    );
    assert_refused_at(
        &format!("{base}routes:\n  - {{ name: r, limits: {{ max_request_body: 100GiB }}, upstream: b }}\n"),
        "routes[0].limits.max_request_body",
    );
    assert_refused_at(
        &format!("{base}routes:\n  - {{ name: r, allow: {{ groups: [a] }}, upstream: b }}\n"),
        "routes[0].allow",
    );
    assert_refused_at(
        &format!("{base}routes:\n  - {{ name: r, cors: nope, upstream: b }}\n"),
        "routes[0].cors",
    );
    assert_refused_at(
        &format!("{base}rate_limits:\n  c: {{ key: consumer, limit: 1, per: 1s }}\nroutes:\n  - {{ name: r, rate_limit: c, upstream: b }}\n"),
        "routes[0].rate_limit",
    );
    // A group nobody has is allowed, and said.
    let yaml = format!("{base}consumers:\n  a: {{ api_keys: [\"{MOBILE_KEY}\"], groups: [apps] }}\nroutes:\n  - {{ name: r, auth: {{ any: [api_key] }}, allow: {{ groups: [admins] }}, upstream: b }}\n");
    let config = portico::check::parse(&yaml).expect("valid");
    let warnings = portico::check::warnings(&config);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("routes[0].allow.groups[0]")),
        "{warnings:?}"
    );
}
