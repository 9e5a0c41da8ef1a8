use reqwest::StatusCode;
use serde_json::json;
use shop_backends::Service;

use crate::support::*;

#[tokio::test]
async fn events_are_kept_once() {
    let notifications = alone(Service::Notifications, options()).await;
    let base = notifications.url();
    let event = json!({
        "id": "evt-1", "type": "order.created", "userId": 4, "source": "orders",
        "data": { "id": 9, "quantity": 2, "productName": "Mouse" }
    });
    let r = post(&format!("{base}/events"), event.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["duplicate"], false);
    let r = post(&format!("{base}/events"), event).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["duplicate"], true);

    let r = get(&format!("{base}/notifications?userId=4")).await;
    let list = r.body["notifications"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0]["message"],
        "Your order #9 for 2 x Mouse is confirmed."
    );
    let r = get(&format!("{base}/notifications?userId=5")).await;
    assert!(r.body["notifications"].as_array().unwrap().is_empty());

    let r = post(
        &format!("{base}/events"),
        json!({ "type": "x", "userId": 1 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(
        &format!("{base}/events"),
        json!({ "id": "", "type": "x", "userId": 1 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    notifications.stop().await;
}

/// Notifications stopped, orders placed, notifications started: every event
/// arrives, each exactly once.
#[tokio::test]
async fn outbox_delivers_everything_exactly_once_after_an_outage() {
    let mut fleet = fleet().await;
    let addr = fleet.addr(Service::Notifications);
    fleet.take(Service::Notifications).unwrap().stop().await;

    let user = create_user(&fleet.url(Service::Users), "dora").await;
    let orders = format!("{}/orders", fleet.url(Service::Orders));
    for _ in 0..3 {
        let r = post(
            &orders,
            json!({ "userId": user, "productId": 5, "quantity": 1 }),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    // The relays tried and failed: events wait in the outboxes.
    let outbox = format!("{}/outbox", fleet.url(Service::Orders));
    eventually("a failed delivery attempt", || async {
        let r = get(&outbox).await;
        let events = r.body["events"].as_array()?.clone();
        // The relay stops at the first failure: the oldest event carries the attempts.
        let tried = events.first()?["attempts"].as_i64()? >= 1;
        (events.len() == 3 && tried && events.iter().all(|e| e["deliveredAt"].is_null()))
            .then_some(())
    })
    .await;

    let restarted = shop_backends::spawn(
        Service::Notifications,
        shop_backends::Options { addr, ..options() },
    )
    .await
    .unwrap();
    let base = restarted.url();
    let expected = 1 + 3 + 3; // user.created, payment.completed x3, order.created x3
    notifications_until(&base, user, |l| l.len() >= expected).await;

    // Every outbox row is marked delivered; nothing arrives a second time.
    for service in [Service::Users, Service::Orders, Service::Payments] {
        let url = format!("{}/outbox", fleet.url(service));
        eventually("outbox drained", || async {
            let r = get(&url).await;
            let events = r.body["events"].as_array()?.clone();
            events
                .iter()
                .all(|e| e["deliveredAt"].is_string())
                .then_some(())
        })
        .await;
    }
    let list = notifications_until(&base, user, |_| true).await;
    assert_eq!(list.len(), expected);
    let mut ids: Vec<_> = list
        .iter()
        .map(|n| n["eventId"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected);
    assert_eq!(
        types(&list),
        [
            "order.created",
            "order.created",
            "order.created",
            "payment.completed",
            "payment.completed",
            "payment.completed",
            "user.created"
        ]
    );
    restarted.stop().await;
    fleet.stop().await;
}
