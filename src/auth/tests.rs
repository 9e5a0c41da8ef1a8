use super::*;
use crate::config::Duration as ConfigDuration;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

fn hs_config() -> JwtConfig {
    JwtConfig {
        issuer: Some("https://issuer.test".into()),
        audience: vec!["api".into(), "other".into()],
        algorithms: vec!["HS256".into()],
        jwks_url: None,
        ca_file: None,
        secret: Some(SECRET.into()),
        public_key: None,
        leeway: Some(ConfigDuration::from_secs(5)),
        required_claims: vec!["sub".into(), "role".into()],
        forward_claims: [("sub".to_string(), "X-User-Id".to_string())].into(),
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn good_claims() -> Value {
    json!({"sub": "u1", "role": "admin", "iss": "https://issuer.test", "aud": "api", "exp": now() + 60, "nbf": now() - 1})
}

fn hs(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn verifies_a_real_hs256_token_with_the_crypto_backend() {
    // Without a jsonwebtoken crypto backend feature this panics: keep it.
    let v = Verifier::build("t", &hs_config(), None).unwrap();
    let claims = v.verify(&bearer(&hs(&good_claims()))).unwrap();
    assert_eq!(claims.subject(), Some("u1"));
    let mut up = HeaderMap::new();
    v.forward(&claims, &mut up);
    assert_eq!(up["x-user-id"], "u1");
}

#[test]
fn refuses_each_broken_token() {
    let v = Verifier::build("t", &hs_config(), None).unwrap();
    let check = |claims: Value| v.verify(&bearer(&hs(&claims))).unwrap_err();
    let mut c = good_claims();
    c["exp"] = json!(now() - 60);
    assert_eq!(check(c), AuthError::Expired);
    let mut c = good_claims();
    c["exp"] = json!(now() - 3); // within leeway
    assert!(v.verify(&bearer(&hs(&c))).is_ok());
    let mut c = good_claims();
    c["nbf"] = json!(now() + 60);
    assert_eq!(check(c), AuthError::NotYetValid);
    let mut c = good_claims();
    c["iss"] = json!("https://evil.test");
    assert_eq!(check(c), AuthError::Issuer);
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(check(c), AuthError::MissingClaim);
    let mut c = good_claims();
    c["aud"] = json!(["nope", "other"]);
    assert!(v.verify(&bearer(&hs(&c))).is_ok(), "any of the audiences");
    c["aud"] = json!("nope");
    assert_eq!(check(c), AuthError::Audience);
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("role");
    assert_eq!(check(c), AuthError::MissingClaim);
    let mut c = good_claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(check(c), AuthError::MissingClaim);

    // alg none, crit, tampering, garbage, size.
    let payload = b64(&good_claims());
    let none = format!("{}.{payload}.", b64(&json!({"alg": "none"})));
    assert_eq!(v.verify(&bearer(&none)).unwrap_err(), AuthError::Malformed);
    let none = format!("{}.{payload}.c2ln", b64(&json!({"alg": "none"})));
    assert_eq!(v.verify(&bearer(&none)).unwrap_err(), AuthError::Algorithm);
    let token = hs(&good_claims());
    let sig = token.rsplit('.').next().unwrap();
    let crit = format!(
        "{}.{payload}.{sig}",
        b64(&json!({"alg": "HS256", "crit": ["exp"]}))
    );
    assert_eq!(v.verify(&bearer(&crit)).unwrap_err(), AuthError::Crit);
    let mut evil = good_claims();
    evil["role"] = json!("root");
    let tampered = format!("{}.{}.{sig}", token.split('.').next().unwrap(), b64(&evil));
    assert_eq!(
        v.verify(&bearer(&tampered)).unwrap_err(),
        AuthError::Signature
    );
    for garbage in ["a.b", "a.b.c.d", "!!!.x.y", "e30.e30.e30", "....", "x"] {
        assert!(v.verify(&bearer(garbage)).is_err(), "{garbage}");
    }
    let big = "a".repeat(9 * 1024);
    assert_eq!(v.verify(&bearer(&big)).unwrap_err(), AuthError::TooLarge);
    assert_eq!(v.verify(&HeaderMap::new()).unwrap_err(), AuthError::Missing);
    let mut basic = HeaderMap::new();
    basic.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic dTpw"),
    );
    assert_eq!(v.verify(&basic).unwrap_err(), AuthError::Missing);
    let mut lower = HeaderMap::new();
    lower.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("bEaReR {}", hs(&good_claims()))).unwrap(),
    );
    assert!(v.verify(&lower).is_ok());
}

#[test]
fn claims_as_text() {
    let c = Claims(
        json!({"s": "x", "n": 7, "b": true, "a": ["r1", 2, false], "o": {"k": 1}})
            .as_object()
            .unwrap()
            .clone(),
    );
    assert_eq!(c.text("s").as_deref(), Some("x"));
    assert_eq!(c.text("n").as_deref(), Some("7"));
    assert_eq!(c.text("b").as_deref(), Some("true"));
    assert_eq!(c.text("a").as_deref(), Some("r1,2,false"));
    assert_eq!(c.text("o"), None);
    assert_eq!(c.text("missing"), None);
}

#[test]
fn config_checks_are_strict() {
    let problems = |f: &dyn Fn(&mut JwtConfig)| {
        let mut c = hs_config();
        f(&mut c);
        check(&c)
            .into_iter()
            .map(|(field, _)| field)
            .collect::<Vec<_>>()
    };
    assert!(problems(&|_| {}).is_empty());
    assert_eq!(problems(&|c| c.algorithms.clear()), ["algorithms"]);
    assert_eq!(
        problems(&|c| c.algorithms = vec!["none".into()]),
        ["algorithms"]
    );
    assert_eq!(
        problems(&|c| c.algorithms = vec!["HS999".into()]),
        ["algorithms"]
    );
    assert_eq!(
        problems(&|c| c.algorithms = vec!["RS256".into()]),
        ["algorithms"]
    );
    assert_eq!(problems(&|c| c.secret = Some("short".into())), ["secret"]);
    assert_eq!(
        problems(&|c| c.jwks_url = Some("http://127.0.0.1:1/jwks".into())),
        ["secret"]
    );
    assert_eq!(
        problems(&|c| {
            c.secret = None;
            c.jwks_url = Some("http://127.0.0.1:1/jwks".into());
        }),
        ["algorithms"]
    );
    assert_eq!(
        problems(&|c| {
            c.secret = None;
            c.algorithms = vec!["RS256".into()];
        }),
        ["secret"]
    );
    assert_eq!(
        problems(&|c| c.forward_claims = [("sub".into(), "bad header".into())].into()),
        ["forward_claims"]
    );
    assert_eq!(
        problems(&|c| c.forward_claims = [("sub".into(), "Host".into())].into()),
        ["forward_claims"]
    );
    assert_eq!(
        problems(&|c| c.leeway = Some(ConfigDuration::from_secs(3600))),
        ["leeway"]
    );
}

#[test]
fn challenges() {
    assert_eq!(AuthError::Missing.challenge().unwrap(), "Bearer");
    let c = AuthError::Expired.challenge().unwrap();
    assert_eq!(
        c,
        "Bearer error=\"invalid_token\", error_description=\"token expired\""
    );
    assert_eq!(AuthError::KeysUnavailable.status(), 503);
    for (i, e) in AuthError::ALL.iter().enumerate() {
        assert_eq!(e.index(), i);
    }
}
