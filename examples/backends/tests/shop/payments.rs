use reqwest::StatusCode;
use serde_json::json;
use shop_backends::{Options, Service};

use crate::support::*;

#[tokio::test]
async fn complete_decline_and_refund() {
    let payments = alone(
        Service::Payments,
        Options {
            decline_above: 100.0,
            ..options()
        },
    )
    .await;
    let base = payments.url();
    let url = format!("{base}/payments");

    let r = post(&url, json!({ "orderId": 1, "userId": 7, "amount": 99.5 })).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["status"], "completed");
    assert_eq!(r.body["amount"], 99.5);
    let paid = r.body["id"].as_i64().unwrap();

    let r = post(&url, json!({ "orderId": 2, "userId": 7, "amount": 100.01 })).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
    assert!(r.body["error"].as_str().unwrap().contains("declined"));
    assert_eq!(r.body["payment"]["status"], "declined");
    let declined = r.body["payment"]["id"].as_i64().unwrap();

    let r = post(&format!("{base}/payments/{paid}/refund"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "refunded");
    // Refunding again changes nothing and records no second event.
    let r = post(&format!("{base}/payments/{paid}/refund"), json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "refunded");
    let r = post(&format!("{base}/payments/{declined}/refund"), json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = post(&format!("{base}/payments/999/refund"), json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let r = get(&format!("{base}/payments/{paid}")).await;
    assert_eq!(r.body["status"], "refunded");
    let r = get(&format!("{base}/payments/999")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get(&format!("{base}/payments?orderId=2")).await;
    assert_eq!(r.body["payments"].as_array().unwrap().len(), 1);

    let r = get(&format!("{base}/outbox")).await;
    let events: Vec<_> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["payment.completed", "payment.refunded"]);

    for body in [
        json!({ "orderId": 1, "userId": 7, "amount": 0 }),
        json!({ "orderId": 1, "userId": 7, "amount": -3 }),
        json!({ "orderId": 0, "userId": 7, "amount": 3 }),
        json!({ "orderId": 1, "amount": 3 }),
    ] {
        let r = post(&url, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
    }
    payments.stop().await;
}
