use reqwest::StatusCode;
use serde_json::json;
use shop_backends::{Options, Service};

use crate::support::*;

/// The same order flow as the services, in one process and one transaction.
#[tokio::test]
async fn monolith_order_flow() {
    let monolith = alone(
        Service::Monolith,
        Options {
            decline_above: 2000.0,
            ..options()
        },
    )
    .await;
    let api = format!("{}/api", monolith.url());
    let user = create_user(&api, "lena").await;
    let r = get(&format!("{api}/users/{user}")).await;
    assert_eq!(r.body["username"], "lena");
    let r = get(&format!("{api}/products")).await;
    assert!(r.headers.contains_key("etag"));
    let before = stock(&api, 1).await;

    let orders = format!("{api}/orders");
    let r = send(
        client()
            .post(&orders)
            .header("idempotency-key", "m-1")
            .json(&json!({ "userId": user, "productId": 1, "quantity": 1 })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "completed");
    let order = r.body;
    let payment = order["paymentId"].as_i64().unwrap();
    let r = get(&format!("{api}/payments/{payment}")).await;
    assert_eq!(r.body["status"], "completed");
    assert_eq!(stock(&api, 1).await, before - 1);

    // Retried with the same key: the first answer, no second order.
    let r = send(
        client()
            .post(&orders)
            .header("idempotency-key", "m-1")
            .json(&json!({ "userId": user, "productId": 1, "quantity": 1 })),
    )
    .await;
    assert_eq!(r.body, order);
    assert_eq!(stock(&api, 1).await, before - 1);

    // Declined: nothing of the transaction stays but the failed order.
    let r = post(
        &orders,
        json!({ "userId": user, "productId": 1, "quantity": 2 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED, "{}", r.body);
    assert_eq!(r.body["order"]["status"], "failed");
    assert_eq!(stock(&api, 1).await, before - 1);
    let r = get(&format!("{api}/payments?orderId={}", r.body["order"]["id"])).await;
    assert!(r.body["payments"].as_array().unwrap().is_empty());

    let r = post(
        &orders,
        json!({ "userId": user, "productId": 2, "quantity": 100000 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(
        &orders,
        json!({ "userId": user, "productId": 1, "quantity": 1000 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = post(
        &orders,
        json!({ "userId": 999, "productId": 1, "quantity": 1 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    let r = get(&format!("{orders}?userId={user}")).await;
    let statuses: Vec<_> = r.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["completed", "failed", "failed"]);

    let r = get(&format!("{}/outbox", monolith.url())).await;
    let mut events: Vec<_> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            "order.created",
            "order.failed",
            "order.failed",
            "order.failed",
            "payment.completed",
            "user.created"
        ]
    );
    let r = get(&format!("{}/health", monolith.url())).await;
    assert_eq!(r.body["service"], "monolith");
    monolith.stop().await;
}
