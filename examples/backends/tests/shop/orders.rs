use reqwest::StatusCode;
use serde_json::json;
use shop_backends::{Options, Service};

use crate::support::*;

#[tokio::test]
async fn order_completes_across_services() {
    let fleet = fleet().await;
    let products = fleet.url(Service::Products);
    let user = create_user(&fleet.url(Service::Users), "erin").await;
    let before = stock(&products, 2).await;

    let url = format!("{}/orders", fleet.url(Service::Orders));
    let r = send(
        client()
            .post(&url)
            .header("x-request-id", "order-req-1")
            .json(&json!({ "userId": user, "productId": 2, "quantity": 3 })),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.headers["x-request-id"], "order-req-1");
    let order = r.body;
    assert_eq!(order["status"], "completed");
    assert_eq!(order["quantity"], 3);
    assert_eq!(order["productName"], "Headphones");
    assert_eq!(order["total"], 599.97);
    assert_eq!(stock(&products, 2).await, before - 3);

    let payment = order["paymentId"].as_i64().unwrap();
    let r = get(&format!(
        "{}/payments/{payment}",
        fleet.url(Service::Payments)
    ))
    .await;
    assert_eq!(r.body["status"], "completed");
    assert_eq!(r.body["amount"], 599.97);

    let id = order["id"].as_i64().unwrap();
    let r = get(&format!("{url}/{id}")).await;
    assert_eq!(r.body, order);
    let r = get(&format!("{url}?userId={user}")).await;
    assert_eq!(r.body["orders"].as_array().unwrap().len(), 1);
    let r = get(&format!("{url}?userId=999")).await;
    assert!(r.body["orders"].as_array().unwrap().is_empty());
    let r = get(&format!("{url}/999")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let list =
        notifications_until(&fleet.url(Service::Notifications), user, |l| l.len() >= 3).await;
    assert_eq!(
        types(&list),
        ["order.created", "payment.completed", "user.created"]
    );
    fleet.stop().await;
}

/// Payment declined: stock back where it was, order failed with the reason,
/// no refund (there was no payment to refund), events recorded.
#[tokio::test]
async fn saga_compensates_a_declined_payment() {
    let fleet = fleet_with(Options {
        decline_above: 50.0,
        ..options()
    })
    .await;
    let products = fleet.url(Service::Products);
    let payments = fleet.url(Service::Payments);
    let user = create_user(&fleet.url(Service::Users), "frank").await;
    let before = stock(&products, 1).await;

    let url = format!("{}/orders", fleet.url(Service::Orders));
    let r = post(
        &url,
        json!({ "userId": user, "productId": 1, "quantity": 1 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED, "{}", r.body);
    assert!(r.body["error"].as_str().unwrap().contains("declined"));
    let order = &r.body["order"];
    assert_eq!(order["status"], "failed");
    assert!(order["reason"].as_str().unwrap().contains("declined"));
    assert!(order["paymentId"].is_null());
    assert_eq!(stock(&products, 1).await, before);

    let id = order["id"].as_i64().unwrap();
    let r = get(&format!("{url}/{id}")).await;
    assert_eq!(r.body["status"], "failed");
    let r = get(&format!("{payments}/payments?orderId={id}")).await;
    let list = r.body["payments"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["status"], "declined");

    let r = get(&format!("{}/outbox", fleet.url(Service::Orders))).await;
    let events: Vec<_> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(events, [json!("order.failed")]);
    let r = get(&format!("{payments}/outbox")).await;
    assert!(
        r.body["events"].as_array().unwrap().is_empty(),
        "no payment.completed, no refund"
    );
    let list =
        notifications_until(&fleet.url(Service::Notifications), user, |l| l.len() >= 2).await;
    assert_eq!(types(&list), ["order.failed", "user.created"]);
    fleet.stop().await;
}

#[tokio::test]
async fn failed_steps_leave_failed_orders() {
    let mut fleet = fleet().await;
    let products = fleet.url(Service::Products);
    let url = format!("{}/orders", fleet.url(Service::Orders));
    let user = create_user(&fleet.url(Service::Users), "gina").await;

    let r = post(
        &url,
        json!({ "userId": 999, "productId": 1, "quantity": 1 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["order"]["status"], "failed");
    let r = post(
        &url,
        json!({ "userId": user, "productId": 999, "quantity": 1 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body["error"].as_str().unwrap().contains("product 999"));

    let before = stock(&products, 1).await;
    let r = post(
        &url,
        json!({ "userId": user, "productId": 1, "quantity": before + 1 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body["error"]
        .as_str()
        .unwrap()
        .contains("insufficient stock"));
    assert_eq!(stock(&products, 1).await, before);

    for body in [
        json!({ "userId": user, "productId": 1, "quantity": 0 }),
        json!({ "userId": user, "productId": 1 }),
        json!({ "userId": -1, "productId": 1, "quantity": 1 }),
    ] {
        let r = post(&url, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
    }

    // Payments down: the stock already taken is given back.
    fleet.take(Service::Payments).unwrap().stop().await;
    let r = post(
        &url,
        json!({ "userId": user, "productId": 3, "quantity": 2 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    assert_eq!(r.body["order"]["status"], "failed");
    let r = get(&format!("{products}/products/3/stock")).await;
    assert_eq!(r.body["stock"], 100);
    fleet.stop().await;
}

#[tokio::test]
async fn idempotency_key_places_one_order() {
    let fleet = fleet().await;
    let products = fleet.url(Service::Products);
    let user = create_user(&fleet.url(Service::Users), "hank").await;
    let before = stock(&products, 4).await;
    let url = format!("{}/orders", fleet.url(Service::Orders));
    let body = json!({ "userId": user, "productId": 4, "quantity": 2 });

    let first = send(
        client()
            .post(&url)
            .header("idempotency-key", "k-1")
            .json(&body),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let second = send(
        client()
            .post(&url)
            .header("idempotency-key", "k-1")
            .json(&body),
    )
    .await;
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(second.body, first.body);
    assert_eq!(second.headers["idempotent-replayed"], "true");
    assert_eq!(stock(&products, 4).await, before - 2);
    let r = get(&format!("{url}?userId={user}")).await;
    assert_eq!(r.body["orders"].as_array().unwrap().len(), 1);

    let other = json!({ "userId": user, "productId": 4, "quantity": 1 });
    let r = send(
        client()
            .post(&url)
            .header("idempotency-key", "k-1")
            .json(&other),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Without a key, the same body orders again.
    let r = post(&url, body).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_ne!(r.body["id"], first.body["id"]);
    assert_eq!(stock(&products, 4).await, before - 4);
    fleet.stop().await;
}
