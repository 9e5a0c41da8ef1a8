//! Micro benchmarks of the request-path cost of auth and rate limiting: verifying a
//! bearer token (HS256, RS256, ES256) and one limiter check with 1 and 100 000 keys.
//!
//!     cargo bench --bench auth

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{header, HeaderMap, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portico::auth::Verifier;
use portico::config::{Duration, JwtConfig, RateLimitConfig};
use portico::ratelimit::{BucketKey, Limiter};
use serde_json::json;

const SECRET: &str = "a-benchmark-secret-that-is-long-enough-for-hs256";

fn config(alg: &str) -> JwtConfig {
    JwtConfig {
        issuer: Some("http://issuer.bench".into()),
        audience: vec!["bench".into()],
        algorithms: vec![alg.into()],
        jwks_url: None,
        ca_file: None,
        secret: None,
        public_key: None,
        leeway: Some(Duration::from_secs(30)),
        required_claims: vec!["sub".into()],
        forward_claims: Default::default(),
    }
}

fn claims() -> serde_json::Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({"iss": "http://issuer.bench", "aud": "bench", "sub": "user-1", "exp": now + 3600, "nbf": now})
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
    h.insert(header::AUTHORIZATION, value);
    h
}

/// A verifier with a generated public key (written to a temp file) and a token for it.
fn asymmetric(alg: Algorithm) -> (Verifier, HeaderMap) {
    let (rcgen_alg, name) = match alg {
        Algorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, "RS256"),
        _ => (&rcgen::PKCS_ECDSA_P256_SHA256, "ES256"),
    };
    let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("key");
    let private = pair.serialize_pem();
    let encoding = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private.as_bytes()),
        _ => EncodingKey::from_ec_pem(private.as_bytes()),
    }
    .expect("encoding key");
    let path =
        std::env::temp_dir().join(format!("portico-bench-{name}-{}.pem", std::process::id()));
    std::fs::write(&path, pair.public_key_pem()).expect("write pem");
    let mut cfg = config(name);
    cfg.public_key = Some(path.display().to_string());
    let verifier = Verifier::build("bench", &cfg, None).expect("verifier");
    let _ = std::fs::remove_file(&path);
    let token = jsonwebtoken::encode(&Header::new(alg), &claims(), &encoding).expect("sign");
    (verifier, bearer(&token))
}

fn verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt_verify");
    let mut hs = config("HS256");
    hs.secret = Some(SECRET.into());
    let verifier = Verifier::build("bench", &hs, None).expect("verifier");
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let headers = bearer(&token);
    assert!(verifier.verify(&headers).is_ok());
    group.bench_function("HS256", |b| b.iter(|| verifier.verify(black_box(&headers))));
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let (verifier, headers) = asymmetric(alg);
        assert!(verifier.verify(&headers).is_ok());
        group.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| verifier.verify(black_box(&headers)))
        });
    }
    group.finish();
}

fn limiter_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit_check");
    let config = RateLimitConfig {
        key: "client_ip".into(),
        limit: 1_000_000_000,
        per: Duration::from_secs(1),
        burst: None,
        max_keys: None,
        scope: Default::default(),
    };
    // No Tokio runtime here, so no housekeeping task: the keys all stay.
    let one = Limiter::build("one", &config, None).expect("limiter");
    let key = BucketKey::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    group.bench_function("1 key", |b| b.iter(|| one.check_key(black_box(&key))));

    let many = Limiter::build("many", &config, None).expect("limiter");
    let keys: Vec<BucketKey> = (0..100_000u32)
        .map(|i| BucketKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i))))
        .collect();
    for k in &keys {
        many.check_key(k);
    }
    let mut i = 0usize;
    group.bench_function("100000 keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            many.check_key(black_box(&keys[i]))
        })
    });
    group.finish();
}

criterion_group!(benches, verification, limiter_check);
criterion_main!(benches);
