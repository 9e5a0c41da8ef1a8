use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use shop_backends::{Options, Service};

use crate::support::*;

#[tokio::test]
async fn create_get_list_and_verify() {
    let users = alone(Service::Users, options()).await;
    let base = users.url();
    let r = post(
        &format!("{base}/users"),
        json!({ "username": "alice", "email": "alice@example.com", "password": "correct-horse" }),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["username"], "alice");
    assert_eq!(r.body["role"], "customer");
    let text = r.body.to_string();
    assert!(
        !text.contains("correct-horse") && !text.contains("password"),
        "{text}"
    );
    let id = r.body["id"].as_i64().unwrap();

    let r = get(&format!("{base}/users/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["email"], "alice@example.com");
    assert!(!r.body.to_string().contains("password"));

    create_user(&base, "bob").await;
    let r = get(&format!("{base}/users")).await;
    assert_eq!(r.body["users"].as_array().unwrap().len(), 2);
    let r = get(&format!("{base}/users?limit=1&offset=1")).await;
    assert_eq!(r.body["users"][0]["username"], "bob");

    let verify = format!("{base}/users/verify");
    let ok = post(
        &verify,
        json!({ "username": "alice", "password": "correct-horse" }),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body["id"], id);
    let bad = post(
        &verify,
        json!({ "username": "alice", "password": "wrong-horse" }),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.body["error"].is_string());
    let unknown = post(&verify, json!({ "username": "nobody", "password": "x" })).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);

    // user.created is in the outbox (no notifications service configured).
    let r = get(&format!("{base}/outbox")).await;
    assert_eq!(r.body["events"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["events"][0]["type"], "user.created");
    users.stop().await;
}

#[tokio::test]
async fn duplicates_and_validation() {
    let users = alone(Service::Users, options()).await;
    let url = format!("{}/users", users.url());
    create_user(&users.url(), "alice").await;

    let dup_name = post(
        &url,
        json!({ "username": "alice", "email": "other@example.com", "password": "correct-horse" }),
    )
    .await;
    assert_eq!(dup_name.status, StatusCode::CONFLICT);
    assert!(dup_name.body["error"]
        .as_str()
        .unwrap()
        .contains("username"));
    let dup_email = post(
        &url,
        json!({ "username": "alice2", "email": "ALICE@example.com", "password": "correct-horse" }),
    )
    .await;
    assert_eq!(dup_email.status, StatusCode::CONFLICT);
    assert!(dup_email.body["error"].as_str().unwrap().contains("email"));

    for body in [
        json!({ "username": "al", "email": "al@example.com", "password": "correct-horse" }),
        json!({ "username": "bad name", "email": "b@example.com", "password": "correct-horse" }),
        json!({ "username": "carol", "email": "not-an-email", "password": "correct-horse" }),
        json!({ "username": "carol", "email": "carol@example.com", "password": "short" }),
        json!({ "username": "carol", "email": "carol@example.com" }),
        json!({ "username": 7, "email": "carol@example.com", "password": "correct-horse" }),
    ] {
        let r = post(&url, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
        assert!(r.body["error"].is_string());
    }
    let r = post_raw(&url, "{not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body["error"].is_string());

    let r = get(&format!("{}/users/999", users.url())).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error"], "user 999 not found");
    let r = get(&format!("{}/users/abc", users.url())).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body["error"].is_string());
    let r = get(&format!("{}/nowhere", users.url())).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error"], "not found");
    users.stop().await;
}

#[tokio::test]
async fn request_id_is_echoed_or_made() {
    let users = alone(Service::Users, options()).await;
    let r = send(
        client()
            .get(format!("{}/health", users.url()))
            .header("x-request-id", "abc-123"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "ok");
    assert_eq!(r.headers["x-request-id"], "abc-123");
    let r = get(&format!("{}/users/1", users.url())).await;
    assert_eq!(r.headers["x-request-id"].len(), 32);
    users.stop().await;
}

#[tokio::test]
async fn latency_and_fail_rate_spare_health() {
    let flaky = alone(
        Service::Users,
        Options {
            fail_rate: 1.0,
            latency: Duration::from_millis(100),
            ..options()
        },
    )
    .await;
    let started = Instant::now();
    let r = get(&format!("{}/users", flaky.url())).await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.body["error"], "injected failure");
    let r = get(&format!("{}/health", flaky.url())).await;
    assert_eq!(r.status, StatusCode::OK);
    flaky.stop().await;
}

#[tokio::test]
async fn data_survives_a_restart_with_a_file_db() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db").to_string_lossy().into_owned();
    let opts = Options {
        db: db.clone(),
        ..options()
    };
    let users = alone(Service::Users, opts.clone()).await;
    let id = create_user(&users.url(), "alice").await;
    users.stop().await;
    let users = alone(Service::Users, opts).await;
    let r = get(&format!("{}/users/{id}", users.url())).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["username"], "alice");
    users.stop().await;
}
