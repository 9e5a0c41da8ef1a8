//! Helpers: start services on ephemeral ports, call them, poll with a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use shop_backends::{spawn, spawn_all, Fleet, Options, Ports, Running, Service};

/// Options for tests: fast relay retries.
pub fn options() -> Options {
    Options {
        relay_max_backoff: Duration::from_millis(200),
        ..Options::default()
    }
}

/// Every service, wired together, on ephemeral ports.
pub async fn fleet() -> Fleet {
    fleet_with(options()).await
}

pub async fn fleet_with(opts: Options) -> Fleet {
    spawn_all(opts, Ports::Ephemeral, None)
        .await
        .expect("fleet starts")
}

/// One service alone on an ephemeral port, events kept in its outbox.
pub async fn alone(service: Service, opts: Options) -> Running {
    let opts = Options {
        notifications_url: None,
        ..opts
    };
    spawn(service, opts).await.expect("service starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "response is not JSON ({status}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(url: &str) -> Reply {
    reply(client().get(url).send().await.expect("GET")).await
}

pub async fn post(url: &str, body: Value) -> Reply {
    reply(client().post(url).json(&body).send().await.expect("POST")).await
}

pub async fn post_raw(url: &str, body: &'static str) -> Reply {
    let req = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    reply(req.send().await.expect("POST")).await
}

pub async fn send(req: reqwest::RequestBuilder) -> Reply {
    reply(req.send().await.expect("request")).await
}

/// Creates a user through `base` (`http://users` or `http://monolith/api`), returns its id.
pub async fn create_user(base: &str, name: &str) -> i64 {
    let r = post(
        &format!("{base}/users"),
        json!({ "username": name, "email": format!("{name}@example.com"), "password": "correct-horse" }),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_i64().expect("id")
}

pub async fn stock(products: &str, id: i64) -> i64 {
    let r = get(&format!("{products}/products/{id}/stock")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["stock"].as_i64().expect("stock")
}

/// Polls `check` every 20 ms until it returns `Some`, for at most 15 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The notifications of a user, once `check` accepts them.
pub async fn notifications_until(
    notifications: &str,
    user: i64,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let url = format!("{notifications}/notifications?userId={user}");
    eventually("notifications", || async {
        let r = get(&url).await;
        let list = r.body["notifications"].as_array()?.clone();
        check(&list).then_some(list)
    })
    .await
}

pub fn types(list: &[Value]) -> Vec<String> {
    let mut t: Vec<String> = list
        .iter()
        .filter_map(|n| n["type"].as_str().map(str::to_owned))
        .collect();
    t.sort();
    t
}
