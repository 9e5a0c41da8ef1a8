use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shop_backends::auth::Claims;
use shop_backends::Service;

use crate::support::*;

async fn login(auth: &str, username: &str, password: &str) -> crate::support::Reply {
    post(
        &format!("{auth}/auth/login"),
        json!({ "username": username, "password": password }),
    )
    .await
}

/// Verifies `token` against the published JWKS, as the gateway will.
async fn verify(auth: &str, token: &str) -> Result<Claims, String> {
    let kid = decode_header(token)
        .map_err(|e| e.to_string())?
        .kid
        .ok_or("no kid")?;
    let jwks = get(&format!("{auth}/.well-known/jwks.json")).await.body;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or("kid not in JWKS")?
        .clone();
    let key =
        DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap())
            .map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["shop-api"]);
    validation.set_issuer(&[auth]);
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    decode::<Claims>(token, &key, &validation)
        .map(|t| t.claims)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn login_issues_a_verifiable_rs256_token() {
    let fleet = fleet().await;
    let auth = fleet.url(Service::Auth);
    let user = create_user(&fleet.url(Service::Users), "ivy").await;

    let r = login(&auth, "ivy", "correct-horse").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 900);
    let token = r.body["access_token"].as_str().unwrap();
    let header = decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let claims = verify(&auth, token).await.unwrap();
    assert_eq!(claims.sub, user.to_string());
    assert_eq!(claims.role, "customer");
    assert_eq!(claims.aud, "shop-api");
    assert_eq!(claims.iss, auth);
    assert_eq!(claims.exp - claims.iat, 900);

    let jwks = get(&format!("{auth}/.well-known/jwks.json")).await;
    assert!(jwks.headers.contains_key("cache-control"));
    let key: &Value = &jwks.body["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["use"], "sig");
    assert!(key.get("d").is_none(), "no private parts in the JWKS");

    let r = login(&auth, "ivy", "wrong-horse").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["error"], "invalid username or password");
    let r = login(&auth, "nobody", "correct-horse").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = post(&format!("{auth}/auth/login"), json!({ "username": "ivy" })).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    fleet.stop().await;
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid() {
    let fleet = fleet().await;
    let auth = fleet.url(Service::Auth);
    create_user(&fleet.url(Service::Users), "jack").await;
    let old = login(&auth, "jack", "correct-horse").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_kid = decode_header(&old).unwrap().kid.unwrap();

    let r = post(&format!("{auth}/auth/rotate"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    let new_kid = r.body["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);

    let jwks = get(&format!("{auth}/.well-known/jwks.json")).await.body;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    let fresh = login(&auth, "jack", "correct-horse").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(decode_header(&fresh).unwrap().kid.unwrap(), new_kid);
    verify(&auth, &fresh).await.unwrap();
    verify(&auth, &old).await.unwrap();
    fleet.stop().await;
}

#[tokio::test]
async fn users_service_down_is_a_bad_gateway() {
    let mut fleet = fleet().await;
    let auth = fleet.url(Service::Auth);
    fleet.take(Service::Users).unwrap().stop().await;
    let r = login(&auth, "kim", "correct-horse").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.body["error"].as_str().unwrap().contains("users service"));
    fleet.stop().await;
}
