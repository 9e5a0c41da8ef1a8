//! End-to-end tests of JWT authentication: a real gateway, a real echo backend and a real
//! JWKS server, with keys and tokens made in the test.

#[path = "support/jwks.rs"]
mod jwks;
mod support;

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use jwks::{JwksServer, TestKey};
use serde_json::{json, Value};
use support::client::get;
use support::tempfile_path::TempPath;
use support::{eventually, gateway, Backend, Client, Reply};

const ISS: &str = "http://issuer.test";
const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> Value {
    json!({
        "iss": ISS, "aud": "shop-api", "sub": "user-7", "role": "admin",
        "groups": ["a", "b"], "exp": now() + 300, "nbf": now() - 5, "iat": now(),
    })
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn bearer(client: &Client, addr: std::net::SocketAddr, path: &str, token: &str) -> Reply {
    get(
        client,
        addr,
        path,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

fn verifier(name: &str, algorithms: &str, key: &str) -> String {
    format!(
        "  {name}:\n    issuer: {ISS}\n    audience: [shop-api, admin-api]\n    algorithms: {algorithms}\n    {key}\n    leeway: 5s\n    required_claims: [sub, exp]\n    forward_claims: {{ sub: X-User-Id, role: X-User-Role, groups: X-User-Groups }}\n"
    )
}

#[tokio::test]
async fn tokens_of_every_algorithm_are_accepted_and_claims_forwarded() {
    let backend = Backend::start("b").await;
    let rsa = TestKey::generate(Algorithm::RS256, "rsa-1");
    let ec = TestKey::generate(Algorithm::ES256, "ec-1");
    let ed = TestKey::generate(Algorithm::EdDSA, "ed-1");
    let issuer = JwksServer::start(&[&ec, &ed], "max-age=60").await;
    let pem = TempPath::new("portico-rsa", "pem");
    std::fs::write(pem.path(), &rsa.public_pem).unwrap();
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, access_log: false }}\nupstreams:\n  b: {{ targets: [\"{}\"] }}\njwt:\n{}{}{}{}routes:\n{}",
        backend.address(),
        verifier("hs", "[HS256]", &format!("secret: {SECRET}")),
        verifier("rs", "[RS256]", &format!("public_key: {}", pem.path().display())),
        verifier("es", "[ES256]", &format!("jwks_url: {}", issuer.url())),
        verifier("ed", "[EdDSA]", &format!("jwks_url: {}", issuer.url())),
        "  - { name: hs, match: { path_prefix: /hs }, jwt: hs, upstream: b }\n  - { name: rs, match: { path_prefix: /rs }, jwt: rs, upstream: b }\n  - { name: es, match: { path_prefix: /es }, jwt: es, upstream: b }\n  - { name: ed, match: { path_prefix: /ed }, jwt: ed, upstream: b }\n  - { name: public, match: { path_prefix: / }, upstream: b }\n",
    );
    let (gw, _file) = gateway(&yaml).await;
    let (client, addr) = (Client::new(), gw.http_addr);

    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    for (path, token) in [
        ("/hs", hs),
        ("/rs", rsa.sign(&claims())),
        ("/es", ec.sign(&claims())),
        ("/ed", ed.sign(&claims())),
    ] {
        let r = get(
            &client,
            addr,
            path,
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-user-id", "forged"),
                ("x-user-role", "forged"),
            ],
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.echoed("x-user-id"), ["user-7"], "{path}");
        assert_eq!(r.echoed("x-user-role"), ["admin"], "{path}");
        assert_eq!(r.echoed("x-user-groups"), ["a,b"], "{path}");
    }
    // A token for one verifier is no good for another.
    let r = bearer(&client, addr, "/es", &ed.sign(&claims())).await;
    assert_eq!(r.status, 401);

    // Forged claim headers are removed on routes without jwt too.
    let r = get(
        &client,
        addr,
        "/open",
        &[
            ("x-user-id", "admin"),
            ("X-User-Role", "root"),
            ("x-user-groups", "x"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.echoed("x-user-id").is_empty());
    assert!(r.echoed("x-user-role").is_empty());
    assert!(r.echoed("x-user-groups").is_empty());
}

#[tokio::test]
async fn every_attack_is_refused_with_401() {
    let backend = Backend::start("b").await;
    let rsa = TestKey::generate(Algorithm::RS256, "rsa-1");
    let ec = TestKey::generate(Algorithm::ES256, "ec-1");
    let issuer = JwksServer::start(&[&rsa, &ec], "max-age=300").await;
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, access_log: false }}\nupstreams:\n  b: {{ targets: [\"{}\"] }}\njwt:\n{}routes:\n  - {{ name: orders, match: {{ path_prefix: /orders }}, jwt: shop, upstream: b }}\n",
        backend.address(),
        verifier("shop", "[RS256, ES256]", &format!("jwks_url: {}", issuer.url())),
    );
    let (gw, _file) = gateway(&yaml).await;
    let (client, addr) = (Client::new(), gw.http_addr);

    // Both algorithms of the list work.
    assert_eq!(
        bearer(&client, addr, "/orders", &rsa.sign(&claims()))
            .await
            .status,
        200
    );
    assert_eq!(
        bearer(&client, addr, "/orders", &ec.sign(&claims()))
            .await
            .status,
        200
    );
    let hits_before = backend.hits();

    let good = rsa.sign(&claims());
    let mut parts = good.split('.');
    let (head, _, sig) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let payload = b64(claims().to_string().as_bytes());
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
    )
    .unwrap();
    let tampered = format!(
        "{head}.{}.{sig}",
        b64(with(claims(), "role", json!("root")).to_string().as_bytes())
    );
    let attacks: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
            "malformed",
        ),
        (
            "alg none with signature",
            format!("{}.{payload}.AAAA", b64(br#"{"alg":"none"}"#)),
            "algorithm",
        ),
        (
            "HS256 with the RSA public key as secret",
            confused,
            "algorithm",
        ),
        (
            "expired past leeway",
            rsa.sign(&with(claims(), "exp", json!(now() - 60))),
            "expired",
        ),
        (
            "nbf in the future",
            rsa.sign(&with(claims(), "nbf", json!(now() + 120))),
            "not_yet_valid",
        ),
        (
            "wrong iss",
            rsa.sign(&with(claims(), "iss", json!("http://evil.test"))),
            "issuer",
        ),
        (
            "wrong aud",
            rsa.sign(&with(claims(), "aud", json!(["other-api"]))),
            "audience",
        ),
        (
            "missing required claim",
            rsa.sign(&without(claims(), "sub")),
            "missing_claim",
        ),
        (
            "unknown kid",
            rsa.sign_with_kid(&claims(), "who-knows"),
            "unknown_kid",
        ),
        ("tampered payload", tampered, "signature"),
        (
            "9 KiB token",
            format!("{head}.{}.{sig}", "A".repeat(9 * 1024)),
            "too_large",
        ),
        ("garbage", "not-a-jwt".into(), "malformed"),
        ("bad base64", "%%%.abc.def".into(), "malformed"),
        (
            "bad json",
            format!("{}.{payload}.{sig}", b64(b"{not json")),
            "malformed",
        ),
        ("four parts", format!("{good}.extra"), "malformed"),
        (
            "crit header",
            format!(
                "{}.{payload}.{sig}",
                b64(br#"{"alg":"RS256","kid":"rsa-1","crit":["x"]}"#)
            ),
            "crit",
        ),
    ];
    for (name, token, reason) in &attacks {
        let metric = format!("portico_jwt_rejected_total{{reason=\"{reason}\",route=\"orders\"}}");
        let before = support::metric(&gw.metrics(), &metric);
        let r = bearer(&client, addr, "/orders", token).await;
        assert_eq!(
            r.status,
            401,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        let body = r.json();
        assert_eq!(body["status"], 401, "{name}");
        assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(!String::from_utf8_lossy(&r.body).contains(token.as_str()) || token.len() < 12);
        // The reason this attack is refused for is the one counted, once.
        let after = support::metric(&gw.metrics(), &metric);
        assert_eq!(
            after - before,
            1.0,
            "{name}: {metric} went {before} -> {after}"
        );
    }
    // No token at all: 401 with a plain challenge.
    let r = get(&client, addr, "/orders", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = get(
        &client,
        addr,
        "/orders",
        &[("authorization", "Basic dXNlcjpwYXNz")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        backend.hits(),
        hits_before,
        "no refused request reached the backend"
    );
}

#[tokio::test]
async fn jwks_rotation_outage_and_unknown_kid_flood() {
    let backend = Backend::start("b").await;
    let old = TestKey::generate(Algorithm::ES256, "old");
    let new = TestKey::generate(Algorithm::ES256, "new");
    let issuer = JwksServer::start(&[&old], "max-age=3600").await;
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, access_log: false }}\nupstreams:\n  b: {{ targets: [\"{}\"] }}\njwt:\n{}routes:\n  - {{ name: orders, match: {{ path_prefix: /orders }}, jwt: shop, upstream: b }}\n",
        backend.address(),
        verifier("shop", "[ES256]", &format!("jwks_url: {}", issuer.url())),
    );
    let (gw, _file) = gateway(&yaml).await;
    let (client, addr) = (Client::new(), gw.http_addr);
    let ok = eventually(Duration::from_secs(10), || async {
        bearer(&client, addr, "/orders", &old.sign(&claims()))
            .await
            .status
            == 200
    })
    .await;
    assert!(ok, "the first keys were fetched");

    // The issuer rotates: the new kid is fetched on demand, without a restart.
    issuer.set_keys(&[&new, &old]);
    let r = bearer(&client, addr, "/orders", &new.sign(&claims())).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.echoed("x-user-id"), ["user-7"]);

    // A flood of made-up kids does not turn into a flood of JWKS fetches.
    let before = issuer.hits();
    for i in 0..40 {
        let r = bearer(
            &client,
            addr,
            "/orders",
            &new.sign_with_kid(&claims(), &format!("kid-{i}")),
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let fetched = issuer.hits() - before;
    assert!(fetched <= 2, "{fetched} JWKS fetches for 40 unknown kids");

    // The issuer goes down: the keys already fetched keep working.
    issuer.stop();
    for key in [&old, &new] {
        assert_eq!(
            bearer(&client, addr, "/orders", &key.sign(&claims()))
                .await
                .status,
            200
        );
    }
    let r = bearer(
        &client,
        addr,
        "/orders",
        &new.sign_with_kid(&claims(), "later"),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        bearer(&client, addr, "/orders", &new.sign(&claims()))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn protected_routes_answer_503_until_the_keys_arrive_and_others_serve() {
    let backend = Backend::start("b").await;
    let key = TestKey::generate(Algorithm::RS256, "k1");
    // The issuer's port is bound but nobody answers on it yet.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let spot = listener.local_addr().unwrap();
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, access_log: false }}\nupstreams:\n  b: {{ targets: [\"{}\"] }}\njwt:\n{}routes:\n  - {{ name: orders, match: {{ path_prefix: /orders }}, jwt: shop, upstream: b }}\n  - {{ name: public, match: {{ path_prefix: / }}, upstream: b }}\n",
        backend.address(),
        verifier("shop", "[RS256]", &format!("jwks_url: http://{spot}/jwks.json")),
    );
    let (gw, _file) = gateway(&yaml).await;
    let (client, addr) = (Client::new(), gw.http_addr);
    assert_eq!(get(&client, addr, "/products", &[]).await.status, 200);
    let r = bearer(&client, addr, "/orders", &key.sign(&claims())).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], 503);

    let issuer = JwksServer::serve(listener, &[&key], "max-age=60");
    let ok = eventually(Duration::from_secs(40), || async {
        bearer(&client, addr, "/orders", &key.sign(&claims()))
            .await
            .status
            == 200
    })
    .await;
    assert!(
        ok,
        "keys arrived once the issuer came up ({} fetches)",
        issuer.hits()
    );
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_verifier_and_its_keys() {
    let backend = Backend::start("b").await;
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let issuer = JwksServer::start(&[&key], "max-age=3600").await;
    let yaml = format!(
        "server: {{ listen: 127.0.0.1:0, access_log: false }}\nupstreams:\n  b: {{ targets: [\"{}\"] }}\njwt:\n{}routes:\n  - {{ name: orders, match: {{ path_prefix: /orders }}, jwt: shop, upstream: b }}\n",
        backend.address(),
        verifier("shop", "[ES256]", &format!("jwks_url: {}", issuer.url())),
    );
    let (gw, file) = gateway(&yaml).await;
    let (client, addr) = (Client::new(), gw.http_addr);
    let ok = eventually(Duration::from_secs(10), || async {
        bearer(&client, addr, "/orders", &key.sign(&claims()))
            .await
            .status
            == 200
    })
    .await;
    assert!(ok);
    let before = gw.runtime().verifiers["shop"].clone();
    // Same verifier, one more route: the verifier (and its fetched keys) carry over.
    std::fs::write(
        file.path(),
        format!(
            "{yaml}  - {{ name: more, match: {{ path_prefix: /more }}, jwt: shop, upstream: b }}\n"
        ),
    )
    .unwrap();
    gw.reload().unwrap();
    let after = gw.runtime().verifiers["shop"].clone();
    assert!(std::sync::Arc::ptr_eq(&before, &after));
    issuer.stop();
    assert_eq!(
        bearer(&client, addr, "/more", &key.sign(&claims()))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn invalid_jwt_config_is_refused_with_paths() {
    let bad = [
        ("algorithms: []\n    secret: 0123456789abcdef0123456789abcdef", "jwt.a.algorithms"),
        ("algorithms: [none]\n    secret: 0123456789abcdef0123456789abcdef", "jwt.a.algorithms"),
        ("algorithms: [RS256]\n    secret: 0123456789abcdef0123456789abcdef", "jwt.a.algorithms"),
        ("algorithms: [HS256]\n    jwks_url: http://127.0.0.1:1/j", "jwt.a.algorithms"),
        ("algorithms: [RS256]", "jwt.a.secret"),
        ("algorithms: [RS256]\n    jwks_url: http://127.0.0.1:1/j\n    public_key: /nonexistent.pem", "jwt.a.secret"),
        ("algorithms: [RS256]\n    public_key: /nonexistent.pem", "jwt.a.public_key"),
        ("algorithms: [RS256]\n    jwks_url: ftp://x/y", "jwt.a.jwks_url"),
        ("algorithms: [RS256]\n    jwks_url: http://127.0.0.1:1/j\n    forward_claims: { sub: \"X User\" }", "jwt.a.forward_claims"),
    ];
    for (body, path) in bad {
        let yaml = format!(
            "server: {{ listen: 127.0.0.1:0 }}\nupstreams:\n  b: {{ targets: [\"127.0.0.1:9\"] }}\njwt:\n  a:\n    {body}\nroutes:\n  - {{ name: r, jwt: a, upstream: b }}\n"
        );
        support::assert_refused_at(&yaml, path);
    }
    let unknown = "server: { listen: 127.0.0.1:0 }\nupstreams:\n  b: { targets: [\"127.0.0.1:9\"] }\nroutes:\n  - { name: r, jwt: nope, upstream: b }\n";
    support::assert_refused_at(unknown, "routes[0].jwt");
}

#[tokio::test]
async fn jwks_over_https_from_a_private_ca_verifies_tokens_and_follows_rotation() {
    let ca = support::tls::TestCa::new("identity provider CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], false);
    let backend = Backend::start("b").await;
    let old = TestKey::generate(Algorithm::RS256, "old");
    let new = TestKey::generate(Algorithm::RS256, "new");
    let issuer =
        JwksServer::start_tls(support::tls::acceptor(&leaf, None), &[&old], "max-age=3600").await;
    assert!(issuer.url().starts_with("https://"));
    let yaml = |ca_file: &str| {
        format!(
            "server: {{ listen: 127.0.0.1:0, access_log: false }}\nupstreams:\n  b: {{ targets: [\"{}\"] }}\njwt:\n{}routes:\n  - {{ name: orders, match: {{ path_prefix: /orders }}, jwt: shop, upstream: b }}\n",
            backend.address(),
            verifier(
                "shop",
                "[RS256]",
                &format!("jwks_url: {}\n    ca_file: {ca_file}", issuer.url())
            ),
        )
    };
    let (gw, _file) = gateway(&yaml(&ca.ca_path())).await;
    let (client, addr) = (Client::new(), gw.http_addr);
    let ok = eventually(Duration::from_secs(10), || async {
        bearer(&client, addr, "/orders", &old.sign(&claims()))
            .await
            .status
            == 200
    })
    .await;
    assert!(ok, "keys fetched over https");
    issuer.set_keys(&[&new, &old]);
    let r = bearer(&client, addr, "/orders", &new.sign(&claims())).await;
    assert_eq!(
        r.status, 200,
        "a rotated key is fetched on demand over https"
    );
    gw.shutdown().await;

    // Without the private CA the issuer is not trusted: no keys, 503, never a pass.
    let other = support::tls::TestCa::new("someone else");
    let (gw, _file) = gateway(&yaml(&other.ca_path())).await;
    let r = bearer(
        &Client::new(),
        gw.http_addr,
        "/orders",
        &old.sign(&claims()),
    )
    .await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    gw.shutdown().await;

    // A ca_file with an http jwks_url, or one that is not there, is a config error.
    let http = yaml("/nonexistent.pem").replace("https://", "http://");
    let err = portico::check::parse(&http).unwrap_err().to_string();
    assert!(err.contains("jwt.shop.ca_file"), "{err}");
    let err = portico::check::parse(&yaml("/nonexistent.pem"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("jwt.shop.ca_file"), "{err}");
}
