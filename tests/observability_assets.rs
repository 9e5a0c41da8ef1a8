//! The Grafana dashboard (deploy/grafana/portico.json) and the Prometheus alerting rules
//! (deploy/prometheus/alerts.yml) checked against a real gateway: every metric they query,
//! and every label value they select, is in the gateway's /metrics once the features are
//! on and some traffic went through; `promtool` checks and unit-tests the rules; a real
//! Prometheus scrapes the gateway, loads the rules, evaluates every query and fires the
//! reload alert when a reload is refused. The last two need `promtool` and `prometheus`
//! on PATH (Debian package `prometheus`, which CI installs) and say so and pass when they
//! are missing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use portico::GatewayHandle;
use serde_json::Value;
use support::tempfile_path::TempPath;
use support::tls::{acceptor, serve_tls, TestCa};
use support::{gateway, Backend, Client, Reply};
use tokio::net::TcpListener;

const DASHBOARD: &str = "deploy/grafana/portico.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yml";
const JWT_SECRET: &str = "observability-assets-test-secret-32-bytes";

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_file(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

// ---------------------------------------------------------------------------------------
// The queries of the dashboard and the rules.

/// One query and where it comes from, for failure messages.
#[derive(Debug)]
struct Query {
    origin: String,
    expr: String,
}

/// Every `expr` of the dashboard (panel targets, rows' nested panels, annotations), with
/// the title or name of the object that holds it.
fn dashboard_exprs(dashboard: &Value) -> Vec<Query> {
    fn walk(v: &Value, origin: &str, out: &mut Vec<Query>) {
        match v {
            Value::Object(map) => {
                // Panels have a title, annotations a name.
                let here = match (map.get("title"), map.get("name")) {
                    (Some(Value::String(t)), _) => format!("panel \"{t}\""),
                    (_, Some(Value::String(n))) => format!("annotation \"{n}\""),
                    _ => origin.to_string(),
                };
                if let Some(expr) = map.get("expr").and_then(Value::as_str) {
                    out.push(Query {
                        origin: format!("{DASHBOARD} {here}"),
                        expr: expr.to_string(),
                    });
                }
                for child in map.values() {
                    walk(child, &here, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, origin, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", &mut out);
    out
}

/// Every panel, those inside rows (collapsed rows hold theirs) included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The dashboard's query variables: `label_values(SELECTOR, LABEL)` as (variable, selector,
/// label).
fn dashboard_variables(dashboard: &Value) -> Vec<(String, String, String)> {
    let shape = regex::Regex::new(r"^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)$")
        .expect("valid regex");
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let name = v["name"].as_str().unwrap_or("?").to_string();
            let definition = v["definition"].as_str().unwrap_or("");
            let caps = shape.captures(definition).unwrap_or_else(|| {
                panic!("variable {name}: {definition:?} is not label_values(...)")
            });
            (name, caps[1].trim().to_string(), caps[2].to_string())
        })
        .collect()
}

fn alert_groups() -> Vec<Value> {
    let rules: Value = serde_yaml_ng::from_str(&read(ALERTS)).expect("alerts.yml is YAML");
    rules["groups"].as_array().expect("groups").clone()
}

fn alert_rules() -> Vec<Value> {
    alert_groups()
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

fn alert_exprs() -> Vec<Query> {
    alert_rules()
        .iter()
        .map(|r| Query {
            origin: format!("{ALERTS} {}", r["alert"].as_str().unwrap_or("?")),
            expr: r["expr"].as_str().expect("expr").to_string(),
        })
        .collect()
}

/// A metric selector in a query: the metric name and its label matchers
/// (label, operator, value).
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// The selectors of Portico's metrics (`portico_*`) and the process metrics (`process_*`)
/// in a PromQL expression (or a Grafana `label_values(...)`). String literals and
/// comments are skipped, so label values and legends never count as names.
fn selectors(expr: &str) -> Vec<Selector> {
    let b = expr.as_bytes();
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c == b':';
    let ident_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    // A quoted string starting at `i`: its unescaped text and the index after it.
    let string = |i: usize| -> (String, usize) {
        let quote = b[i];
        let mut text = Vec::new();
        let mut j = i + 1;
        while j < b.len() && b[j] != quote {
            if b[j] == b'\\' && quote != b'`' && j + 1 < b.len() {
                j += 1;
            }
            text.push(b[j]);
            j += 1;
        }
        (String::from_utf8_lossy(&text).into_owned(), j + 1)
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i = string(i).1;
        } else if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == b'$' {
            // Numbers and durations (5m, 1e3) and Grafana variables ($route) are no names.
            while i < b.len() && (ident_char(b[i]) || b[i] == b'$' || b[i] == b'.') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < b.len() && ident_char(b[i]) {
                i += 1;
            }
            let name = &expr[start..i];
            if !(name.starts_with("portico_") || name.starts_with("process_")) {
                continue;
            }
            let mut matchers = Vec::new();
            let mut j = skip_ws(i);
            if j < b.len() && b[j] == b'{' {
                j += 1;
                loop {
                    j = skip_ws(j);
                    if j < b.len() && b[j] == b',' {
                        j += 1;
                        continue;
                    }
                    if j >= b.len() || b[j] == b'}' {
                        break;
                    }
                    let label_start = j;
                    while j < b.len() && ident_char(b[j]) {
                        j += 1;
                    }
                    let label = expr[label_start..j].to_string();
                    j = skip_ws(j);
                    let op_len = if expr[j..].starts_with("=~")
                        || expr[j..].starts_with("!~")
                        || expr[j..].starts_with("!=")
                    {
                        2
                    } else {
                        1
                    };
                    let op = expr[j..j + op_len].to_string();
                    j = skip_ws(j + op_len);
                    assert!(
                        j < b.len() && (b[j] == b'"' || b[j] == b'\''),
                        "cannot read the matchers of {name} in {expr}"
                    );
                    let (value, next) = string(j);
                    matchers.push((label, op, value));
                    j = next;
                }
                i = j + 1;
            }
            out.push(Selector {
                name: name.to_string(),
                matchers,
            });
        } else {
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The live /metrics text.

/// What /metrics exposes: each family's type (`# TYPE` lines) and each sample name's
/// label sets.
struct Exposition {
    types: BTreeMap<String, String>,
    series: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut types = BTreeMap::new();
    let mut series: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_string(), kind.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let mut labels = BTreeMap::new();
        if line[name_end..].starts_with('{') {
            let b = line.as_bytes();
            let mut j = name_end + 1;
            while j < b.len() && b[j] != b'}' {
                let eq = j + line[j..].find('=').expect("label=value");
                let label = line[j..eq].trim_start_matches(',').to_string();
                let mut value = String::new();
                let mut k = eq + 2; // past `="`
                while b[k] != b'"' {
                    if b[k] == b'\\' {
                        k += 1;
                    }
                    value.push(b[k] as char);
                    k += 1;
                }
                labels.insert(label, value);
                j = k + 1;
                if j < b.len() && b[j] == b',' {
                    j += 1;
                }
            }
        }
        series
            .entry(line[..name_end].to_string())
            .or_default()
            .push(labels);
    }
    Exposition { types, series }
}

/// Labels Prometheus adds to every scraped series: not in /metrics, always there.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Problems of `queries` against the live exposition: names that are not in it, histogram
/// suffixes on a family that is no histogram, labels no series has, and fixed matchers
/// (`state="healthy"`, `status=~"5.."`) that select no live series.
fn problems(queries: &[Query], live: &Exposition) -> Vec<String> {
    let mut out = BTreeSet::new();
    for q in queries {
        for s in selectors(&q.expr) {
            let Some(all) = live.series.get(&s.name) else {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| s.name.strip_suffix(suffix))
                    .map(|f| format!(" (family {f})"))
                    .unwrap_or_default();
                out.insert(format!(
                    "{}: {}{family} is not in /metrics",
                    q.origin, s.name
                ));
                continue;
            };
            if let Some(family) = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| s.name.strip_suffix(suffix))
            {
                let kind = live.types.get(family).map(String::as_str);
                if !matches!(kind, Some("histogram") | Some("summary")) {
                    out.insert(format!(
                        "{}: {} is not a series of a histogram (family {family} is {kind:?})",
                        q.origin, s.name
                    ));
                }
            }
            for (label, op, value) in &s.matchers {
                if TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                if !all.iter().any(|l| l.contains_key(label)) {
                    out.insert(format!(
                        "{}: no {} series has a label {label}",
                        q.origin, s.name
                    ));
                    continue;
                }
                if value.contains('$') || op.starts_with('!') {
                    continue; // a Grafana variable, or a negative match: anything goes
                }
                let matches: Box<dyn Fn(&str) -> bool> = if op == "=~" {
                    let re = regex::Regex::new(&format!("^(?:{value})$"))
                        .unwrap_or_else(|e| panic!("{}: {value}: {e}", q.origin));
                    Box::new(move |v| re.is_match(v))
                } else {
                    let value = value.clone();
                    Box::new(move |v| v == value)
                };
                if !all.iter().any(|l| l.get(label).is_some_and(|v| matches(v))) {
                    let seen: BTreeSet<&str> = all
                        .iter()
                        .filter_map(|l| l.get(label).map(String::as_str))
                        .collect();
                    out.insert(format!(
                        "{}: no {} series with {label}{op}\"{value}\" (live values: {seen:?})",
                        q.origin, s.name
                    ));
                }
            }
        }
    }
    out.into_iter().collect()
}

// ---------------------------------------------------------------------------------------
// A gateway with every feature the dashboard and the alerts watch.

struct Lab {
    gw: GatewayHandle,
    config: TempPath,
    _app: Backend,
    _tls_backend_task: tokio::task::JoinHandle<()>,
    _ca: TestCa,
}

/// Starts backends (plain and TLS) and a gateway with health checks, a breaker, retries,
/// outlier detection, a TLS upstream, a cache, a rate limit, a JWT route, a split and a
/// gRPC route, then sends the traffic that creates the series that only appear after
/// their first event: answers of each route (a 5xx among them), a cache hit, a 429, a
/// 401, split requests and an ejection.
async fn lab() -> Lab {
    let app = Backend::start("app").await;
    let ca = TestCa::new("observability test CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], false);
    let tls_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let tls_backend = serve_tls(tls_listener, acceptor(&leaf, None), |_req| async {
        Response::new(Full::new(Bytes::from_static(b"{\"backend\":\"secure\"}")))
    });
    // An address nothing listens on: connections to it are refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let app_addr = app.address();
    let ca_file = ca.ca_path();
    let yaml = format!(
        r#"server: {{ listen: 127.0.0.1:0, access_log: false }}
admin: {{ listen: 127.0.0.1:0 }}
caches:
  catalog: {{ max_size: 8MiB, default_ttl: 60s }}
rate_limits:
  tight: {{ key: client_ip, limit: 2, per: 1m }}
jwt:
  shop: {{ algorithms: [HS256], secret: {JWT_SECRET} }}
upstreams:
  app:
    targets: ["{app_addr}"]
    health_check: {{ path: /health, interval: 1s, timeout: 1s, healthy_threshold: 1, unhealthy_threshold: 2 }}
    circuit_breaker: {{ error_percent: 50, min_requests: 50, window: 10s, open_for: 30s }}
    retries: {{ attempts: 2, on: [connect_failure] }}
  stable: {{ targets: ["{app_addr}"] }}
  canary: {{ targets: ["{app_addr}"] }}
  flaky:
    targets: ["{dead}", "{app_addr}"]
    outlier_detection: {{ consecutive_errors: 1, interval: 10s, base_ejection: 30s, max_ejection_percent: 50 }}
  secure:
    targets: ["{tls_addr}"]
    tls: {{ ca_file: "{ca_file}" }}
  ledger: {{ targets: ["{app_addr}"], protocol: h2c }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, rewrite: {{ strip_prefix: /api }}, upstream: app }}
  - {{ name: catalog, match: {{ path_prefix: /catalog }}, cache: catalog, upstream: app }}
  - {{ name: limited, match: {{ path_prefix: /limited }}, rate_limit: tight, upstream: app }}
  - {{ name: private, match: {{ path_prefix: /private }}, jwt: shop, upstream: app }}
  - name: orders
    match: {{ path_prefix: /orders }}
    split: {{ stable: {{ upstream: stable }}, canary: {{ upstream: canary }}, percent: 50 }}
  - {{ name: flaky, match: {{ path_prefix: /flaky }}, upstream: flaky }}
  - {{ name: secure, match: {{ path_prefix: /secure }}, upstream: secure }}
  - {{ name: ledger, match: {{ path_prefix: /ledger.v1.Ledger }}, upstream: ledger, grpc: true }}
"#
    );
    let (gw, config) = gateway(&yaml).await;
    let client = Client::new();
    let addr = gw.http_addr;
    let statuses = |replies: Vec<Reply>| replies.iter().map(|r| r.status).collect::<Vec<_>>();

    assert_eq!(client.get(addr, "/api/x").await.status, 200);
    assert_eq!(client.get(addr, "/api/status/500").await.status, 500);
    assert_eq!(client.get(addr, "/secure/x").await.status, 200);
    assert_eq!(client.get(addr, "/private/x").await.status, 401);

    let first = client.get(addr, "/catalog/item").await;
    let second = client.get(addr, "/catalog/item").await;
    assert_eq!(
        (first.header("x-cache"), second.header("x-cache")),
        (Some("MISS"), Some("HIT"))
    );

    let mut limited = Vec::new();
    for _ in 0..4 {
        limited.push(client.get(addr, "/limited/x").await);
    }
    assert!(
        statuses(limited).contains(&429),
        "the rate limit of 2 refuses one of 4 requests"
    );

    let mut split = Vec::new();
    for i in 0..6 {
        split.push(client.get(addr, &format!("/orders/{i}")).await);
    }
    assert!(statuses(split).iter().all(|s| *s == 200));

    // Round robin over a dead and a live target: the dead one fails once (503) and is
    // ejected; the rest go to the live one.
    let mut flaky = Vec::new();
    for _ in 0..4 {
        flaky.push(client.get(addr, "/flaky/x").await);
    }
    let flaky = statuses(flaky);
    assert_eq!(
        (flaky.iter().filter(|s| **s == 503).count(), flaky.len()),
        (1, 4),
        "{flaky:?}"
    );

    Lab {
        gw,
        config,
        _app: app,
        _tls_backend_task: tls_backend,
        _ca: ca,
    }
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what} query what the gateway does not export:\n  {}",
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported_by_a_real_gateway() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON");
    // Every panel queries the data source the importer picks, and has a query.
    let panels = all_panels(&dashboard);
    assert!(dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .any(|v| v["type"] == "datasource" && v["name"] == "DS_PROMETHEUS"));
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or("?");
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(
            !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|e| !e.trim().is_empty())),
            "panel {title} has no query"
        );
    }
    let mut queries = dashboard_exprs(&dashboard);
    for (name, selector, _label) in dashboard_variables(&dashboard) {
        queries.push(Query {
            origin: format!("{DASHBOARD} variable {name}"),
            expr: selector,
        });
    }
    let lab = lab().await;
    let live = parse_exposition(&lab.gw.metrics());
    let names: BTreeSet<String> = queries
        .iter()
        .flat_map(|q| selectors(&q.expr))
        .map(|s| s.name)
        .collect();
    assert_no_problems("the dashboard panels", &problems(&queries, &live));
    // The variables' labels are on their metrics (the scrape adds instance).
    for (name, selector, label) in dashboard_variables(&dashboard) {
        let metric = &selectors(&selector)[0].name;
        assert!(
            TARGET_LABELS.contains(&label.as_str())
                || live.series[metric].iter().any(|l| l.contains_key(&label)),
            "variable {name}: {metric} has no label {label}"
        );
    }
    eprintln!(
        "{} dashboard queries use {} metrics, all exported: {names:?}",
        queries.len(),
        names.len()
    );
    lab.gw.shutdown().await;
}

#[tokio::test]
async fn every_metric_the_alerts_query_is_exported_and_every_alert_is_unit_tested() {
    let rules = alert_rules();
    assert!(!rules.is_empty());
    // Each rule: a `for`, a severity, and a summary and description to act on.
    for r in &rules {
        let name = r["alert"].as_str().expect("every rule is an alert");
        assert!(r["for"].is_string(), "{name}: no for:");
        assert!(
            matches!(
                r["labels"]["severity"].as_str(),
                Some("warning" | "critical")
            ),
            "{name}: severity is {:?}",
            r["labels"]["severity"]
        );
        for key in ["summary", "description"] {
            assert!(
                r["annotations"][key].as_str().is_some_and(|s| s.len() > 20),
                "{name}: annotation {key} is missing or empty"
            );
        }
    }
    // alerts_test.yml has a firing and a not-firing case for every alert.
    let tests: Value = serde_yaml_ng::from_str(&read(ALERTS_TEST)).expect("alerts_test.yml");
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in tests["tests"].as_array().expect("tests") {
        for case in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            let firing = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            let entry = cases.entry(name).or_default();
            if firing {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }
    for r in &rules {
        let name = r["alert"].as_str().unwrap();
        let (firing, quiet) = cases.get(name).copied().unwrap_or_default();
        assert!(
            firing > 0 && quiet > 0,
            "{ALERTS_TEST}: {name} has {firing} firing and {quiet} not-firing cases"
        );
    }

    let queries = alert_exprs();
    let lab = lab().await;
    let live = parse_exposition(&lab.gw.metrics());
    assert_no_problems("the alert rules", &problems(&queries, &live));
    lab.gw.shutdown().await;
}

/// `program` from PATH, if it is installed.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

#[tokio::test]
async fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = on_path("promtool") else {
        eprintln!(
            "promtool is not on PATH (Debian: apt-get install prometheus): the rules were not checked by promtool"
        );
        return;
    };
    for args in [["check", "rules", ALERTS], ["test", "rules", ALERTS_TEST]] {
        let run = tokio::process::Command::new(&promtool)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("promtool {args:?} did not finish within 60s"))
            .expect("promtool runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
        eprintln!("promtool {}:\n{}", args.join(" "), text.trim_end());
    }
}

/// A Prometheus server on a loopback port, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: TempPath,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `binary` scraping `target`'s /metrics every second as job `portico`, with
    /// the rules of alerts.yml evaluated every second.
    fn start(binary: &Path, target: SocketAddr) -> Prometheus {
        let dir = TempPath::new("portico-prometheus", "d");
        std::fs::create_dir_all(dir.path()).expect("prometheus dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: portico\n    metrics_path: /metrics\n    static_configs:\n      - targets: [\"{target}\"]\n",
                repo_file(ALERTS).display()
            ),
        )
        .expect("write prometheus.yml");
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().unwrap()
        };
        let log = dir.path().join("prometheus.log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `check` until it gives a value or `within` passes; panics with the log then.
    async fn wait_for<T, F, Fut>(&mut self, what: &str, within: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "prometheus exited ({status}) before {what}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A Grafana query as Prometheus can run it: `$__rate_interval` (and the other `$__`
/// intervals) become 1m, variables (`$route`) match anything.
fn as_promql(expr: &str) -> String {
    let intervals = regex::Regex::new(r"\$__[a-z_]+").expect("valid regex");
    let variables = regex::Regex::new(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?").expect("valid regex");
    variables
        .replace_all(&intervals.replace_all(expr, "1m"), ".*")
        .into_owned()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_gateway_loads_the_rules_and_runs_every_query() {
    let Some(binary) = on_path("prometheus") else {
        eprintln!(
            "prometheus is not on PATH (Debian: apt-get install prometheus): the dashboard and rules were not run against a real Prometheus"
        );
        return;
    };
    let started = Instant::now();
    let lab = lab().await;
    let admin = lab.gw.admin_addr.expect("admin listener");
    let mut prom = Prometheus::start(&binary, admin);
    let client = Client::new();
    let within = Duration::from_secs(30);
    let at = prom.addr;

    let target = admin.to_string();
    prom.wait_for("up{job=\"portico\"} is 1", within, || async {
        let r = instant_query(&client, at, "up{job=\"portico\"}").await?;
        (r[0]["value"][1] == "1" && r[0]["metric"]["instance"] == target.as_str()).then_some(())
    })
    .await;
    let requests = prom
        .wait_for("portico_requests_total has data", within, || {
            instant_query(&client, at, "portico_requests_total{job=\"portico\"}")
        })
        .await;
    assert!(requests
        .iter()
        .any(|s| s["metric"]["route"] == "api" && s["metric"]["status"] == "500"));
    // rate() over the dashboard's 1m windows needs two samples or more of each series.
    prom.wait_for("three scrapes", within, || async {
        let r = instant_query(&client, at, "count_over_time(up{job=\"portico\"}[1m]) >= 3").await;
        r.map(|_| ())
    })
    .await;

    // The rules are loaded, in their groups, and every one evaluates without error.
    let groups: BTreeSet<String> = alert_groups()
        .iter()
        .map(|g| g["name"].as_str().expect("group name").to_string())
        .collect();
    let alerts: BTreeSet<String> = alert_rules()
        .iter()
        .map(|r| r["alert"].as_str().unwrap().to_string())
        .collect();
    let loaded = prom
        .wait_for("every rule evaluated with health ok", within, || async {
            let v = api(&client, at, "/api/v1/rules").await?;
            let loaded = v["data"]["groups"].as_array()?.clone();
            let rules: Vec<&Value> = loaded
                .iter()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            let all_ok = !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok");
            all_ok.then_some(loaded)
        })
        .await;
    let loaded_groups: BTreeSet<String> = loaded
        .iter()
        .map(|g| g["name"].as_str().unwrap_or("?").to_string())
        .collect();
    let loaded_alerts: BTreeSet<String> = loaded
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .map(|r| r["name"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(loaded_groups, groups);
    assert_eq!(loaded_alerts, alerts);

    // The gateway is healthy: no alert is pending or firing.
    let alerts_now = api(&client, at, "/api/v1/alerts").await.expect("alerts");
    assert_eq!(
        alerts_now["data"]["alerts"],
        Value::Array(Vec::new()),
        "alerts on a healthy gateway"
    );

    // Every dashboard query and alert expression runs in Prometheus.
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut failures = Vec::new();
    let mut with_data = 0;
    let queries: Vec<Query> = dashboard_exprs(&dashboard)
        .into_iter()
        .chain(alert_exprs())
        .collect();
    for q in &queries {
        let promql = as_promql(&q.expr);
        match api(
            &client,
            at,
            &format!(
                "/api/v1/query?query={}",
                utf8_percent_encode(&promql, NON_ALPHANUMERIC)
            ),
        )
        .await
        {
            Some(v) if v["status"] == "success" => {
                if v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
                {
                    with_data += 1;
                } else {
                    eprintln!("no series now: {}", q.origin);
                }
            }
            other => failures.push(format!("{}: {promql}\n    -> {other:?}", q.origin)),
        }
    }
    assert!(
        failures.is_empty(),
        "queries Prometheus refused:\n  {}",
        failures.join("\n  ")
    );
    // The variables list the gateway's instance, routes and upstreams.
    for (name, selector, label) in dashboard_variables(&dashboard) {
        let path = format!(
            "/api/v1/label/{label}/values?match[]={}",
            utf8_percent_encode(&as_promql(&selector), NON_ALPHANUMERIC)
        );
        let v = api(&client, at, &path).await.expect("label values");
        let values: Vec<&str> = v["data"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let expected = match label.as_str() {
            "instance" => target.clone(),
            "route" => "orders".to_string(),
            "upstream" => "secure".to_string(),
            other => panic!("variable {name}: no expectation for label {other}"),
        };
        assert!(
            values.contains(&expected.as_str()),
            "variable {name} ({selector}): {values:?} lacks {expected}"
        );
    }
    // End to end: a refused reload fires PorticoConfigReloadFailed for this gateway.
    std::fs::write(lab.config.path(), "server: {").expect("break the config file");
    assert!(lab.gw.reload().is_err(), "a broken file is refused");
    let firing = prom
        .wait_for("PorticoConfigReloadFailed fires", within, || async {
            let v = api(&client, at, "/api/v1/alerts").await?;
            v["data"]["alerts"]
                .as_array()?
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == "PorticoConfigReloadFailed"
                        && a["state"] == "firing"
                })
                .cloned()
        })
        .await;
    assert_eq!(firing["labels"]["instance"], target.as_str());
    assert_eq!(firing["labels"]["severity"], "warning");

    eprintln!(
        "Prometheus scraped the gateway, loaded {} rules in {} groups and ran {} queries ({} with data) in {:?}",
        alerts.len(),
        groups.len(),
        queries.len(),
        with_data,
        started.elapsed()
    );
    drop(prom);
    lab.gw.shutdown().await;
}

async fn api(client: &Client, prom: SocketAddr, path: &str) -> Option<Value> {
    let req = Request::get(format!("http://{prom}{path}"))
        .body(Full::default())
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), client.try_send(req))
        .await
        .ok()?
        .ok()?;
    serde_json::from_slice(&reply.body).ok()
}

/// The result vector of an instant query, when it has at least one series.
async fn instant_query(client: &Client, prom: SocketAddr, promql: &str) -> Option<Vec<Value>> {
    let path = format!(
        "/api/v1/query?query={}",
        utf8_percent_encode(promql, NON_ALPHANUMERIC)
    );
    let v = api(client, prom, &path).await?;
    let result = v["data"]["result"].as_array()?.clone();
    (!result.is_empty()).then_some(result)
}
