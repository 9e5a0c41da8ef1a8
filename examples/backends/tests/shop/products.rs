use reqwest::StatusCode;
use serde_json::json;
use shop_backends::Service;

use crate::support::*;

#[tokio::test]
async fn seeded_catalogue_with_paging() {
    let products = alone(Service::Products, options()).await;
    let base = products.url();
    let r = get(&format!("{base}/products")).await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.body["products"].as_array().unwrap();
    assert!(list.len() >= 3, "{}", r.body);
    assert_eq!(r.body["total"].as_u64().unwrap() as usize, list.len());
    assert!(list[0]["price"].as_f64().unwrap() > 0.0);

    let r = get(&format!("{base}/products?limit=2&offset=1")).await;
    let page = r.body["products"].as_array().unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["id"], list[1]["id"]);

    let r = get(&format!("{base}/products?limit=0")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = get(&format!("{base}/products?limit=abc")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body["error"].is_string());
    let r = get(&format!("{base}/products/999")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["error"], "product 999 not found");
    products.stop().await;
}

#[tokio::test]
async fn reads_are_cacheable_with_etags() {
    let products = alone(Service::Products, options()).await;
    let url = format!("{}/products/1", products.url());
    let r = get(&url).await;
    assert_eq!(r.headers["cache-control"], "public, max-age=30");
    let etag = r.headers["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"'));

    let r = send(client().get(&url).header("if-none-match", &etag)).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers["etag"].to_str().unwrap(), etag);
    assert_eq!(r.body, serde_json::Value::Null);

    // A change makes a new ETag.
    post(&format!("{url}/decrease-stock"), json!({ "quantity": 1 })).await;
    let r = send(client().get(&url).header("if-none-match", &etag)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(r.headers["etag"].to_str().unwrap(), etag);

    for path in ["/products", "/products/1/stock"] {
        let r = get(&format!("{}{path}", products.url())).await;
        assert!(r.headers.contains_key("etag"), "{path}");
        assert_eq!(r.headers["cache-control"], "public, max-age=30");
    }
    products.stop().await;
}

#[tokio::test]
async fn create_and_validate() {
    let products = alone(Service::Products, options()).await;
    let url = format!("{}/products", products.url());
    let r = post(&url, json!({ "name": "Cable", "price": 9.5, "stock": 3 })).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["priceCents"], 950);
    assert_eq!(r.body["stock"], 3);
    let id = r.body["id"].as_i64().unwrap();
    assert_eq!(stock(&products.url(), id).await, 3);

    for body in [
        json!({ "name": "", "price": 1.0 }),
        json!({ "name": "X", "price": -1.0 }),
        json!({ "name": "X", "price": 1.0, "stock": -5 }),
        json!({ "price": 1.0 }),
    ] {
        let r = post(&url, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
    }
    products.stop().await;
}

#[tokio::test]
async fn stock_never_goes_negative() {
    let products = alone(Service::Products, options()).await;
    let base = products.url();
    let r = post(
        &format!("{base}/products"),
        json!({ "name": "Rare", "price": 1.0, "stock": 10 }),
    )
    .await;
    let id = r.body["id"].as_i64().unwrap();

    let r = post(
        &format!("{base}/products/{id}/decrease-stock"),
        json!({ "quantity": 11 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body["error"]
        .as_str()
        .unwrap()
        .contains("insufficient stock"));
    assert_eq!(stock(&base, id).await, 10);

    // 25 concurrent decrements of 1 against a stock of 10: exactly 10 win.
    let tasks: Vec<_> = (0..25)
        .map(|_| {
            let url = format!("{base}/products/{id}/decrease-stock");
            tokio::spawn(async move { post(&url, json!({ "quantity": 1 })).await.status })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(stock(&base, id).await, 0);

    let r = post(
        &format!("{base}/products/{id}/increase-stock"),
        json!({ "quantity": 4 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["stock"], 4);
    for q in [0, -1] {
        let r = post(
            &format!("{base}/products/{id}/decrease-stock"),
            json!({ "quantity": q }),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    let r = post(
        &format!("{base}/products/999/decrease-stock"),
        json!({ "quantity": 1 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post(
        &format!("{base}/products/999/increase-stock"),
        json!({ "quantity": 1 }),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    products.stop().await;
}
