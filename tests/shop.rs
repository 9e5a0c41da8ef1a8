//! The demo, end to end: every shop service on an ephemeral port, Portico on
//! `config/shop.yaml` (ports rewritten), and a customer's journey through the gateway:
//! sign up, log in, browse, order, read the order back.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use shop_backends::{ledger, spawn_all, Options, Ports, Service};
use support::{gateway, metric, Client};

fn shop_config(fleet: &shop_backends::Fleet, certs: &std::path::Path) -> String {
    let mut yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/shop.yaml"))
            .expect("config/shop.yaml");
    for service in [
        Service::Users,
        Service::Products,
        Service::Orders,
        Service::Payments,
        Service::Auth,
        Service::Notifications,
    ] {
        yaml = yaml.replace(
            &format!("127.0.0.1:{}", service.default_port()),
            &fleet.addr(service).to_string(),
        );
    }
    let payments_tls = fleet
        .get(Service::Payments)
        .and_then(|p| p.tls_addr)
        .expect("payments serves https");
    let ledger = fleet
        .get(Service::Payments)
        .and_then(|p| p.grpc_addr)
        .expect("payments serves its ledger over gRPC");
    yaml.replace("127.0.0.1:3014", &payments_tls.to_string())
        .replace("127.0.0.1:50051", &ledger.to_string())
        .replace(
            "config/certs/ca.pem",
            &certs.join("ca.pem").display().to_string(),
        )
        .replace(
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:0\n  access_log: false",
        )
        .replace("listen: 127.0.0.1:9901", "listen: 127.0.0.1:0")
}

fn json_post(
    addr: std::net::SocketAddr,
    path: &str,
    body: serde_json::Value,
) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Signs `username` up through `addr` (the gateway or the monolith) and checks it worked.
async fn sign_up(client: &Client, addr: std::net::SocketAddr, username: &str) -> support::Reply {
    let user = client
        .send(json_post(
            addr,
            "/api/users",
            serde_json::json!({
                "username": username,
                "email": format!("{username}@example.com"),
                "password": "correct horse",
            }),
        ))
        .await;
    assert_eq!(user.status, 201, "{}", String::from_utf8_lossy(&user.body));
    user
}

#[tokio::test]
async fn an_order_is_placed_through_the_gateway() {
    let certs = support::tempfile_path::TempPath::new("shop-certs", "d");
    let options = Options {
        tls_dir: Some(certs.path().to_path_buf()),
        ..Options::default()
    };
    let fleet = spawn_all(options, Ports::Ephemeral, None)
        .await
        .expect("shop services start");
    let (gw, _file) = gateway(&shop_config(&fleet, certs.path())).await;
    let addr = gw.http_addr;
    let client = Client::new();

    let user = sign_up(&client, addr, "ada").await;
    let user_id = user.json()["id"].clone();
    assert!(user.json().get("password").is_none());
    assert!(user.json().get("password_hash").is_none());

    let login = client
        .send(json_post(
            addr,
            "/api/auth/login",
            serde_json::json!({"username": "ada", "password": "correct horse"}),
        ))
        .await;
    assert_eq!(login.status, 200, "{:?}", login.body);
    let token = login.json()["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    assert_eq!(token.split('.').count(), 3);
    let bearer = format!("Bearer {token}");

    // Orders and user reads need the token; the gateway verifies it against the JWKS.
    let anonymous = client.get(addr, &format!("/api/users/{user_id}")).await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("www-authenticate").is_some());
    let me = client
        .send(
            Request::get(format!("http://{addr}/api/users/{user_id}"))
                .header("authorization", &bearer)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(me.status, 200, "{}", String::from_utf8_lossy(&me.body));
    assert_eq!(me.json()["username"], "ada");
    assert!(me.header("ratelimit-limit").is_some());

    let jwks = client.get(addr, "/.well-known/jwks.json").await;
    assert_eq!(jwks.status, 200);
    assert!(jwks.json()["keys"]
        .as_array()
        .is_some_and(|k| !k.is_empty()));

    let products = client.get(addr, "/api/products?limit=5").await;
    assert_eq!(products.status, 200);
    assert_eq!(products.header("x-cache"), Some("MISS"));
    let again = client.get(addr, "/api/products?limit=5").await;
    assert_eq!(again.header("x-cache"), Some("HIT"));
    assert_eq!(again.body, products.body);
    let list = products.json();
    let items = list
        .as_array()
        .cloned()
        .or_else(|| list["products"].as_array().cloned())
        .or_else(|| list["items"].as_array().cloned())
        .expect("a product list");
    let product = &items[0];
    let product_id = product["id"].clone();
    // Stock is read from the products service itself: through the gateway it is cached
    // for the max-age the service sends.
    let products_addr = fleet.addr(Service::Products);
    let stock_before = client
        .get(products_addr, &format!("/products/{product_id}/stock"))
        .await
        .json()["stock"]
        .as_i64()
        .expect("stock");

    let mut order_req = json_post(
        addr,
        "/api/orders",
        serde_json::json!({"userId": user_id, "productId": product_id, "quantity": 1}),
    );
    order_req.headers_mut().insert(
        "idempotency-key",
        http::HeaderValue::from_static("e2e-order-1"),
    );
    order_req.headers_mut().insert(
        "authorization",
        http::HeaderValue::from_str(&bearer).unwrap(),
    );
    let order = client.send(order_req).await;
    assert_eq!(
        order.status,
        201,
        "{}",
        String::from_utf8_lossy(&order.body)
    );
    assert_eq!(order.json()["status"], "completed");
    let order_id = order.json()["id"].clone();

    let read_back = client
        .send(
            Request::get(format!("http://{addr}/api/orders/{order_id}"))
                .header("authorization", &bearer)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(read_back.status, 200);
    assert_eq!(read_back.json()["status"], "completed");
    let stock_after = client
        .get(products_addr, &format!("/products/{product_id}/stock"))
        .await
        .json()["stock"]
        .as_i64()
        .expect("stock");
    assert_eq!(stock_after, stock_before - 1);

    // The order's payment, read through the gateway from payments over HTTPS.
    let payments = client
        .get(addr, &format!("/api/payments?orderId={order_id}"))
        .await;
    assert_eq!(
        payments.status,
        200,
        "{}",
        String::from_utf8_lossy(&payments.body)
    );
    assert!(
        payments.body.windows(9).any(|w| w == b"completed"),
        "{}",
        String::from_utf8_lossy(&payments.body)
    );
    assert_eq!(
        metric(
            &gw.metrics(),
            "portico_upstream_tls_handshakes_total{result=\"failed\",upstream=\"payments\"}"
        ),
        0.0
    );

    // The same payment in the ledger, over gRPC through the gateway (h2c both ways).
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the gateway takes h2c");
    let mut grpc = tonic::client::Grpc::new(channel);
    let ask = |token: Option<&str>| {
        let mut request = tonic::Request::new(ledger::AccountRequest {
            user_id: user_id.as_i64().expect("user id"),
        });
        if let Some(bearer) = token {
            request
                .metadata_mut()
                .insert("authorization", bearer.parse().unwrap());
        }
        request
    };
    let codec =
        || tonic_prost::ProstCodec::<ledger::AccountRequest, ledger::AccountBalance>::default();
    let path = http::uri::PathAndQuery::from_static("/shop.ledger.v1.Ledger/Balance");
    grpc.ready().await.unwrap();
    let balance = grpc
        .unary(ask(Some(&bearer)), path.clone(), codec())
        .await
        .expect("the ledger answers");
    assert_eq!(balance.get_ref().payments, 1);
    assert!(balance.get_ref().paid_cents > 0);
    grpc.ready().await.unwrap();
    let refused = grpc.unary(ask(None), path, codec()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // The partner API takes the partner's key (never forwarded) or an admin's token;
    // a signed-in customer is authenticated but not allowed.
    let partner = |headers: &[(&str, &str)]| {
        let mut request = Request::get(format!("http://{addr}/api/partner/products?limit=2"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        client.send(request.body(Full::default()).unwrap())
    };
    let with_key = partner(&[("x-api-key", "acme-demo-key-0123456789")]).await;
    assert_eq!(
        with_key.status,
        200,
        "{}",
        String::from_utf8_lossy(&with_key.body)
    );
    assert_eq!(partner(&[]).await.status, 401);
    assert_eq!(partner(&[("authorization", &bearer)]).await.status, 403);

    // The ops view of notifications: basic auth, from loopback.
    let ops = |credentials: &str| {
        use base64::Engine;
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        );
        client.send(
            Request::get(format!("http://{addr}/api/notifications?userId={user_id}"))
                .header("authorization", value)
                .body(Full::default())
                .unwrap(),
        )
    };
    assert_eq!(ops("ops:ops-demo-password").await.status, 200);
    assert_eq!(ops("ops:guess").await.status, 401);

    // The storefront origin's preflight for an order is answered by the gateway.
    let preflight = client
        .send(
            Request::options(format!("http://{addr}/api/orders"))
                .header("origin", "http://localhost:5173")
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                )
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("http://localhost:5173")
    );

    // Only what the gateway exposes is reachable: payments are read-only.
    let refused = client
        .send(json_post(addr, "/api/payments", serde_json::json!({})))
        .await;
    assert_eq!(refused.status, 404);
    assert!(gw
        .metrics()
        .contains(r#"portico_requests_total{route="orders",status="201"} 1"#));
    gw.shutdown().await;
    fleet.stop().await;
}

/// config/monolith-sidecar.yaml with the monolith and the orders service where they run.
fn sidecar_config(monolith: std::net::SocketAddr, orders: std::net::SocketAddr) -> String {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/monolith-sidecar.yaml"
    ))
    .expect("config/monolith-sidecar.yaml");
    yaml.replace("127.0.0.1:3000", &monolith.to_string())
        .replace("127.0.0.1:3003", &orders.to_string())
        .replace(
            "listen: 127.0.0.1:8080",
            "listen: 127.0.0.1:0\n  access_log: false",
        )
        .replace("listen: 127.0.0.1:9901", "listen: 127.0.0.1:0")
}

#[tokio::test]
async fn the_monolith_sidecar_splits_orders_between_the_monolith_and_the_new_service() {
    let fleet = spawn_all(Options::default(), Ports::Ephemeral, None)
        .await
        .expect("shop services start");
    let (gw, _file) = gateway(&sidecar_config(
        fleet.addr(Service::Monolith),
        fleet.addr(Service::Orders),
    ))
    .await;
    let addr = gw.http_addr;
    let admin = gw.admin_addr.expect("admin listener");
    let client = Client::new();

    // Everything but orders is the monolith's.
    let products = client.get(addr, "/api/products?limit=2").await;
    assert_eq!(products.status, 200);
    assert!(products.header("x-portico-split").is_none());

    // An order only the monolith has tells which backend answered.
    let monolith = fleet.addr(Service::Monolith);
    let user = sign_up(&client, monolith, "stella").await;
    let user_id = user.json()["id"].clone();
    let placed = client
        .send(json_post(
            monolith,
            "/api/orders",
            serde_json::json!({"userId": user_id, "productId": 1, "quantity": 1}),
        ))
        .await;
    assert_eq!(
        placed.status,
        201,
        "{}",
        String::from_utf8_lossy(&placed.body)
    );
    let answered_by_monolith =
        |r: &support::Reply| r.json()["orders"].as_array().is_some_and(|o| !o.is_empty());

    // An operator holds the migration at 0%: orders stay on the monolith...
    let put = client
        .send(
            Request::put(format!("http://{admin}/splits/orders"))
                .body(Full::new(Bytes::from_static(br#"{"percent": 0}"#)))
                .unwrap(),
        )
        .await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    for user in ["u1", "u2", "u3"] {
        let r = client
            .send(
                Request::get(format!("http://{addr}/api/orders?userId={user_id}"))
                    .header("x-user-id", user)
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-portico-split"), Some("stable"));
        assert!(
            answered_by_monolith(&r),
            "not the monolith's answer: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // ...while testers reach the orders service with the force header.
    let canary = client
        .send(
            Request::get(format!("http://{addr}/api/orders?userId={user_id}"))
                .header("x-canary", "1")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    assert_eq!(
        canary.status,
        200,
        "{}",
        String::from_utf8_lossy(&canary.body)
    );
    assert_eq!(canary.header("x-portico-split"), Some("canary"));
    assert!(
        !answered_by_monolith(&canary),
        "the canary answer came from the monolith: {}",
        String::from_utf8_lossy(&canary.body)
    );
    let splits = client.get(admin, "/splits").await;
    assert_eq!(splits.status, 200);
    assert!(String::from_utf8_lossy(&splits.body).contains("orders"));
    gw.shutdown().await;
    fleet.stop().await;
}

/// `scripts/demo monolith`: the monolith, the new orders service reading users, products
/// and payments from the monolith, and Portico on config/monolith-sidecar.yaml. An order
/// sent to the canary is placed by the orders service (not the monolith) and takes its
/// stock from the monolith's catalogue; a stable one is the monolith's.
#[tokio::test]
async fn the_demo_monolith_mode_serves_orders_from_both_sides() {
    let any_port = || Options {
        addr: "127.0.0.1:0".parse().unwrap(),
        ..Options::default()
    };
    let monolith = shop_backends::spawn(Service::Monolith, any_port())
        .await
        .expect("monolith starts");
    let api = format!("{}/api", monolith.url());
    let orders = shop_backends::spawn(
        Service::Orders,
        Options {
            users_url: api.clone(),
            products_url: api.clone(),
            payments_url: api.clone(),
            notifications_url: None,
            ..any_port()
        },
    )
    .await
    .expect("orders service starts");
    let yaml = sidecar_config(monolith.addr, orders.addr);
    let (gw, _file) = gateway(&yaml).await;
    let addr = gw.http_addr;
    let client = Client::new();

    let user = sign_up(&client, addr, "moira").await;
    let user_id = user.json()["id"].clone();
    let stock_of = |product: u64| {
        let client = client.clone();
        async move {
            let r = client
                .get(addr, &format!("/api/products/{product}/stock"))
                .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.json()["stock"].as_i64().expect("stock")
        }
    };
    let before = stock_of(3).await;

    let mut canary = json_post(
        addr,
        "/api/orders",
        serde_json::json!({"userId": user_id, "productId": 3, "quantity": 1}),
    );
    canary
        .headers_mut()
        .insert("x-canary", http::HeaderValue::from_static("1"));
    let placed = client.send(canary).await;
    assert_eq!(
        placed.status,
        201,
        "{}",
        String::from_utf8_lossy(&placed.body)
    );
    let order_id = placed.json()["id"].clone();
    // The orders service has it; the monolith does not.
    let at_service = client
        .get(orders.addr, &format!("/orders/{order_id}"))
        .await;
    assert_eq!(at_service.status, 200, "not placed by the orders service");
    assert_eq!(at_service.json()["productId"], 3);
    let at_monolith = client
        .get(monolith.addr, &format!("/api/orders?userId={user_id}"))
        .await;
    assert_eq!(at_monolith.status, 200);
    assert!(
        !String::from_utf8_lossy(&at_monolith.body).contains("\"productId\":3"),
        "the monolith placed the canary order too: {}",
        String::from_utf8_lossy(&at_monolith.body)
    );
    assert_eq!(
        stock_of(3).await,
        before - 1,
        "stock not taken from the monolith"
    );
    gw.shutdown().await;
    orders.stop().await;
    monolith.stop().await;
}
