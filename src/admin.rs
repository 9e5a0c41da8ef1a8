//! The admin API: metrics, health, readiness, the effective config, routes, upstreams,
//! splits, cache purges and reload. Connections are handled by `server` like the main
//! listener's (header timeout, idle cut-off, a connection cap). When `admin.token` is
//! set, everything but `/healthz`, `/readyz` and `/metrics` needs
//! `Authorization: Bearer <token>`; a `POST` must also be a request a browser sends only
//! after a CORS preflight (an `Authorization` header or `Content-Type: application/json`),
//! so a page on the same host cannot reload the gateway behind the operator's back.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::config;
use std::sync::Arc;

use crate::control::Control;
use crate::wire::body::Body;
use crate::{mirror, split};

/// Endpoints open without the token: probes and scrapers carry none.
const OPEN: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

pub async fn handle(control: &Arc<Control>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let read = method == Method::GET || method == Method::HEAD;
    let open = read && OPEN.contains(&path.as_str());
    if !open && !authorized(control, &req) {
        return json(
            StatusCode::UNAUTHORIZED,
            json!({"error": "admin token required", "status": 401}),
        );
    }
    if method == Method::POST && !preflighted(&req) {
        return json(
            StatusCode::FORBIDDEN,
            json!({"error": "admin writes need an Authorization header or Content-Type: application/json", "status": 403}),
        );
    }
    match (method, path.as_str()) {
        (Method::GET, "/metrics") => {
            let mut r = Response::new(Body::full(control.shared.metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (Method::GET, "/healthz") => json(StatusCode::OK, json!({"status": "ok"})),
        (Method::GET, "/readyz") => readyz(control),
        (Method::GET, "/config") => {
            let rt = control.runtime.load();
            json(
                StatusCode::OK,
                serde_json::to_value(config::redacted(&rt.config)).unwrap_or(Value::Null),
            )
        }
        (Method::GET, "/routes") => routes(control),
        (Method::GET, "/splits") => json(
            StatusCode::OK,
            split::admin::list(&control.runtime.load().splits),
        ),
        (Method::GET, "/mirrors") => json(
            StatusCode::OK,
            mirror::list(&control.runtime.load().mirrors),
        ),
        (Method::GET, p) if p.starts_with("/mirrors/") => {
            get_mirror(control, &p["/mirrors/".len()..])
        }
        (Method::PUT, p) if p.starts_with("/splits/") => {
            put_split(control, &p["/splits/".len()..], req).await
        }
        (Method::GET, "/upstreams") => upstreams(control),
        (Method::GET, "/consumers") => consumers(control),
        (Method::POST, "/reload") => match control.reload_off_thread().await {
            Ok(()) => json(StatusCode::OK, json!({"status": "reloaded"})),
            Err(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "error": "config refused; the previous config keeps serving",
                    "status": 422,
                    "problems": e.issues.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                }),
            ),
        },
        (Method::DELETE, p) if p.starts_with("/cache/") => {
            purge_cache(control, &p["/cache/".len()..], req.uri().query()).await
        }
        _ => json(
            StatusCode::NOT_FOUND,
            json!({"error": "no such admin endpoint", "status": 404}),
        ),
    }
}

/// `PUT /splits/{route}`: the route name is percent-decoded; the body is bounded.
async fn put_split(control: &Control, route: &str, req: Request<Incoming>) -> Response<Body> {
    use http_body_util::BodyExt;
    let route = percent_encoding::percent_decode_str(route).decode_utf8_lossy();
    let limited = http_body_util::Limited::new(req.into_body(), split::admin::MAX_BODY);
    let Ok(body) = limited.collect().await.map(|b| b.to_bytes()) else {
        return json(
            StatusCode::BAD_REQUEST,
            json!({"error": "body unreadable or above 4 KiB", "status": 400}),
        );
    };
    let (status, value) = split::admin::put(&control.runtime.load().splits, &route, &body);
    json(status, value)
}

/// `GET /mirrors/{route}`: counts and recent mismatches (the route name percent-decoded).
fn get_mirror(control: &Control, route: &str) -> Response<Body> {
    let route = percent_encoding::percent_decode_str(route).decode_utf8_lossy();
    match control.runtime.load().mirrors.get(route.as_ref()) {
        Some(mirror) => json(StatusCode::OK, mirror.view()),
        None => json(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no route named {route:?} with a mirror"), "status": 404}),
        ),
    }
}

/// `DELETE /cache/{name}` (everything) or `DELETE /cache/{name}?path=/products/7`
/// (every entry for that upstream path: any host, query or variant).
async fn purge_cache(control: &Control, name: &str, query: Option<&str>) -> Response<Body> {
    let rt = control.runtime.load_full();
    let Some(cache) = rt.caches.get(name) else {
        return json(
            StatusCode::NOT_FOUND,
            json!({"error": "no such cache", "status": 404}),
        );
    };
    let path = query.and_then(|q| {
        q.split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == "path")
            .map(|(_, v)| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    });
    let path = match path.as_deref().map(crate::wire::path::normalize) {
        None => None,
        Some(Ok(p)) => Some(p.into_owned()),
        Some(Err(_)) => {
            return json(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid path", "status": 400}),
            )
        }
    };
    match cache.purge(path.as_deref()).await {
        Ok(()) => json(
            StatusCode::OK,
            json!({"status": "purged", "cache": name, "path": path}),
        ),
        Err(e) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": format!("purge failed: {e}"), "status": 503}),
        ),
    }
}

fn authorized(control: &Control, req: &Request<Incoming>) -> bool {
    let rt = control.runtime.load();
    let Some(token) = rt
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token.as_deref())
        .filter(|t| !t.is_empty())
    else {
        return true;
    };
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let given = given
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

/// Compares SHA-256 digests, so neither the time taken nor an early length check tells
/// anything about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use aws_lc_rs::digest::{digest, SHA256};
    let (a, b) = (digest(&SHA256, a), digest(&SHA256, b));
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A request no browser sends across origins without a CORS preflight (which this API
/// never answers): it carries `Authorization`, or a JSON content type.
fn preflighted(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    headers.contains_key(header::AUTHORIZATION)
        || headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Ready when the listeners are up and every upstream has an endpoint. Redis being
/// down does not make the gateway unready (shared decisions fall back): it is reported
/// as `degraded` with the last error.
fn readyz(control: &Control) -> Response<Body> {
    let rt = control.runtime.load();
    let empty: Vec<&str> = rt
        .upstreams
        .values()
        .filter(|u| !u.ready())
        .map(|u| u.name.as_str())
        .collect();
    let redis = rt.cluster.as_ref().map(|c| {
        json!({
            "up": c.is_up(),
            "on_redis_error": c.on_error,
            "last_error": c.last_error(),
        })
    });
    let degraded = rt.cluster.as_ref().is_some_and(|c| !c.is_up());
    if control.ready() && empty.is_empty() {
        let mut body = json!({"status": if degraded { "degraded" } else { "ready" }});
        if let Some(redis) = redis {
            body["redis"] = redis;
        }
        json(StatusCode::OK, body)
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "status": "not ready",
                "listeners_up": control.ready(),
                "upstreams_without_endpoints": empty,
                "redis": redis,
            }),
        )
    }
}

fn routes(control: &Control) -> Response<Body> {
    let rt = control.runtime.load();
    let list: Vec<Value> = rt
        .config
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "match": r.matcher,
                "rewrite": r.rewrite,
                "upstream": r.upstream,
                "split": r.split,
                "mirror": r.mirror,
            })
        })
        .collect();
    json(StatusCode::OK, json!({ "routes": list }))
}

/// `GET /consumers`: names and groups, never a credential.
fn consumers(control: &Control) -> Response<Body> {
    let rt = control.runtime.load();
    let list: Vec<Value> = rt
        .edge
        .consumers
        .listing()
        .into_iter()
        .map(|(name, groups)| {
            let groups: Vec<&str> = groups.iter().map(|g| &**g).collect();
            json!({ "name": name, "groups": groups })
        })
        .collect();
    json(StatusCode::OK, json!({ "consumers": list }))
}

fn upstreams(control: &Control) -> Response<Body> {
    let rt = control.runtime.load();
    let mut out = serde_json::Map::new();
    for (name, upstream) in &rt.upstreams {
        out.insert(name.clone(), upstream.describe());
    }
    json(StatusCode::OK, json!({ "upstreams": out }))
}

fn json(status: StatusCode, value: Value) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
