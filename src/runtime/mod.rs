//! `Config` compiled into ready objects: the route table, upstream pools, parsed trusted
//! proxies, pre-resolved metric handles. A Runtime is immutable; a reload builds a new one
//! beside the old (reusing upstreams whose definition did not change, so their connection
//! pools and in-flight counters carry over) and swaps it in whole.

pub mod check;
pub mod edge;

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::IpNet;

use http::HeaderName;
use prometheus::IntCounter;

use crate::auth::Verifier;
use crate::cache::ResponseCache;
use crate::config::{Config, ConfigError, RouteConfig, UnderscoreHeaders};
use crate::grpc::GrpcMetrics;
use crate::mirror::Mirror;
use crate::observe::{AccessLog, Metrics, RouteMetrics};
use crate::ratelimit::Limiter;
use crate::router::{Rewrite, RouteMatch, RouteTable};
use crate::split::{Side, Split};
use crate::telemetry::Tracer;
use crate::transform::Transform;
use crate::upstream::Upstream;

/// What lives for the whole process, across reloads.
#[derive(Debug)]
pub struct Shared {
    pub metrics: Metrics,
    pub access_log: AccessLog,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// For a split route: the stable side's rewrite and upstream; `split` picks per request.
    pub rewrite: Option<Rewrite>,
    pub upstream: Arc<Upstream>,
    pub metrics: RouteMetrics,
    /// The verifier whose claims are forwarded (`jwt:`, or `auth.jwt`).
    pub jwt: Option<Arc<Verifier>>,
    pub rate_limit: Option<Arc<Limiter>>,
    /// Auth, allow, CORS and IP lists.
    pub edge: edge::RouteEdge,
    /// `limits.max_request_body`, at most the server's.
    pub max_request_body: u64,
    pub ratelimit_rejected: Option<IntCounter>,
    pub cache: Option<Arc<ResponseCache>>,
    pub transform: Option<Transform>,
    pub split: Option<Arc<Split>>,
    /// `grpc: true`: the route's gRPC status counters.
    pub grpc: Option<Arc<GrpcMetrics>>,
    pub mirror: Option<Arc<Mirror>>,
}

impl Route {
    /// The upstream a request went to, given the split side it was sent to.
    pub fn upstream_for(&self, side: Option<Side>) -> &Arc<Upstream> {
        match (&self.split, side) {
            (Some(split), Some(side)) => &split.side(side).upstream,
            _ => &self.upstream,
        }
    }
}

#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub routes: RouteTable<Arc<Route>>,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// Migration splits by route name (their state carries over reloads).
    pub splits: BTreeMap<String, Arc<Split>>,
    /// Shadow traffic by route name (their state carries over reloads).
    pub mirrors: BTreeMap<String, Arc<Mirror>>,
    /// Named caches; kept across reloads when their definition is unchanged.
    pub caches: BTreeMap<String, Arc<ResponseCache>>,
    /// Named JWT verifiers and rate limiters, shared by the routes that name them.
    pub verifiers: BTreeMap<String, Arc<Verifier>>,
    pub limiters: BTreeMap<String, Arc<Limiter>>,
    /// The `consumers` and `cors` sections.
    pub edge: edge::Edge,
    /// `cluster.redis`: the shared store (limits with `scope: cluster`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Every `forward_claims` header and the consumer headers: removed from every
    /// incoming request.
    pub claim_headers: Vec<HeaderName>,
    pub trusted_proxies: Vec<IpNet>,
    pub max_request_body: u64,
    /// `server.limits.idle_timeout`: it also bounds what the handler reads into memory
    /// from the client (a JSON request edit) and cuts idle upgraded tunnels.
    pub idle_timeout: std::time::Duration,
    /// `server.allow_trace`.
    pub allow_trace: bool,
    /// `server.path.encoded_slash`.
    pub encoded_slash: crate::wire::path::EncodedSlash,
    /// `server.limits.underscore_headers`, and its counters (dropped, rejected).
    pub underscore_headers: UnderscoreHeaders,
    pub underscore_counters: [IntCounter; 2],
    /// Metrics of requests that matched no route.
    pub no_route: RouteMetrics,
    pub shared: Arc<Shared>,
    /// `telemetry.tracing` with an endpoint: the request path's one check.
    pub tracer: Option<Arc<Tracer>>,
    /// TLS setups re-read for upstreams this Runtime keeps from the one before; put in
    /// service by `activate`, so a refused reload changes nothing.
    renewed_tls: Vec<(Arc<Upstream>, Option<Arc<crate::wire::tls::ClientTls>>)>,
}

impl Runtime {
    pub fn build(
        config: Config,
        shared: &Arc<Shared>,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, ConfigError> {
        let metrics = &shared.metrics;
        let mut upstreams = BTreeMap::new();
        let mut renewed_tls = Vec::new();
        for (name, cfg) in &config.upstreams {
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|u| u.same_definition(cfg, config.consul.as_ref()))
                .cloned();
            // A rebuilt upstream starts its own background tasks (discovery, health checks)
            // once this Runtime is in service (`activate`).
            let previous_upstream = previous
                .and_then(|p| p.upstreams.get(name))
                .map(|u| u.as_ref());
            let upstream = match reused {
                Some(u) if cfg.tls.is_some() => {
                    let tls = u
                        .reread_tls()
                        .map_err(|e| ConfigError::single(format!("upstreams.{name}"), e))?;
                    renewed_tls.push((u.clone(), tls));
                    u
                }
                Some(u) => u,
                None => Upstream::prepare(
                    name,
                    cfg,
                    config.consul.as_ref(),
                    metrics,
                    previous_upstream,
                )
                .map_err(|e| ConfigError::single(format!("upstreams.{name}"), e))?,
            };
            upstreams.insert(name.clone(), upstream);
        }
        let caches = build_caches(&config, previous, metrics);
        let cluster = build_cluster(&config, previous, metrics)?;
        let (verifiers, limiters) = build_guards(&config, previous, metrics, cluster.as_ref())?;
        let edge = edge::build(&config)?;
        let mut entries = Vec::with_capacity(config.routes.len());
        let mut splits = BTreeMap::new();
        let mut mirrors = BTreeMap::new();
        for (i, rc) in config.routes.iter().enumerate() {
            let split = match &rc.split {
                Some(sc) => {
                    let carried = previous
                        .and_then(|p| p.splits.get(&rc.name))
                        .map(|s| &s.state);
                    let split = Split::build(&rc.name, sc, &upstreams, metrics, carried).map_err(
                        |(f, e)| ConfigError::single(format!("routes[{i}].split.{f}"), e),
                    )?;
                    let split = Arc::new(split);
                    splits.insert(rc.name.clone(), split.clone());
                    Some(split)
                }
                None => None,
            };
            let mut route = build_route(i, rc, &upstreams, &caches, metrics, split)?;
            attach_guards(i, &mut route, rc, &verifiers, &limiters, metrics)?;
            route.edge = edge::route(i, rc, &edge, &verifiers, metrics)?;
            route.max_request_body =
                edge::max_request_body(rc, config.server.limits.max_request_body.0);
            let previous_mirrors = previous.map(|p| &p.mirrors);
            route.mirror = Mirror::for_route(
                rc,
                route.split.as_deref(),
                &upstreams,
                metrics,
                previous_mirrors,
            )
            .map_err(|(f, e)| ConfigError::single(format!("routes[{i}].mirror.{f}"), e))?;
            if let Some(mirror) = &route.mirror {
                mirrors.insert(rc.name.clone(), mirror.clone());
            }
            let matcher = RouteMatch::build(&rc.matcher)
                .map_err(|(f, e)| ConfigError::single(format!("routes[{i}].match.{f}"), e))?;
            entries.push((matcher, Arc::new(route)));
        }
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|n| crate::wire::forward::parse_net(n))
            .collect();
        let mut claim_headers = crate::auth::forwarded_headers(config.jwt.values());
        claim_headers.push(crate::auth::route::CONSUMER_HEADER.clone());
        claim_headers.push(crate::auth::route::CONSUMER_GROUPS_HEADER.clone());
        let tracer = build_tracer(&config, previous, metrics)?;
        Ok(Runtime {
            tracer,
            verifiers,
            limiters,
            edge,
            cluster,
            claim_headers,
            max_request_body: config.server.limits.max_request_body.0,
            allow_trace: config.server.allow_trace,
            idle_timeout: config.server.limits.idle_timeout.0,
            encoded_slash: config.server.path.encoded_slash,
            underscore_headers: config.server.limits.underscore_headers,
            underscore_counters: ["dropped", "rejected"]
                .map(|action| metrics.underscore_headers.with_label_values(&[action])),
            config: Arc::new(config),
            routes: RouteTable::new(entries),
            upstreams,
            splits,
            mirrors,
            caches,
            trusted_proxies,
            no_route: metrics.route("none"),
            shared: shared.clone(),
            renewed_tls,
        })
    }
}

impl Runtime {
    /// Waits (at most `within` in all) until every split read the shared state, so a
    /// replica that starts serves with it (a rolled-back split stays rolled back).
    pub async fn shared_ready(&self, within: std::time::Duration) {
        let reads = self.splits.values().map(|s| s.state.first_sync(within));
        let _ = tokio::time::timeout(within, futures_util::future::join_all(reads)).await;
    }

    /// Starts what a Runtime runs once it is in service, after the swap: the background
    /// tasks of upstreams built for it, and the splits' new settings (percent, window,
    /// ramp) on state that may be carried over from the Runtime it replaced. Building
    /// has no such effects, so a reload that fails changes nothing that serves.
    pub fn activate(&self) {
        if let Some(tracer) = &self.tracer {
            tracer.start();
        }
        if let Some(cluster) = &self.cluster {
            cluster.start();
        }
        for (upstream, tls) in &self.renewed_tls {
            upstream.use_tls(tls.clone());
        }
        for upstream in self.upstreams.values() {
            upstream.start_tasks();
        }
        for split in self.splits.values() {
            split.activate();
            split.state.share_through(self.cluster.as_ref());
            split.state.share_rule(split.shared_rule());
        }
    }
}

/// The tracer of `telemetry.tracing`, the previous Runtime's when its settings are the
/// same (its export task and queue carry on).
fn build_tracer(
    config: &Config,
    previous: Option<&Runtime>,
    metrics: &Metrics,
) -> Result<Option<Arc<Tracer>>, ConfigError> {
    let Some(cfg) = config.telemetry.as_ref().and_then(|t| t.tracing.as_ref()) else {
        return Ok(None);
    };
    if let Some(reused) = previous
        .and_then(|p| p.tracer.as_ref())
        .filter(|t| &t.config == cfg)
    {
        return Ok(Some(reused.clone()));
    }
    Tracer::build(cfg, &metrics.tracing_spans)
        .map_err(|e| ConfigError::single("telemetry.tracing.otlp_endpoint", e))
}

/// The shared store of `cluster:`, the previous Runtime's when its settings are the
/// same (its connection carries on).
fn build_cluster(
    config: &Config,
    previous: Option<&Runtime>,
    metrics: &Metrics,
) -> Result<Option<Arc<crate::cluster::Cluster>>, ConfigError> {
    let Some(cfg) = &config.cluster else {
        return Ok(None);
    };
    if let Some(reused) = previous
        .and_then(|p| p.cluster.as_ref())
        .filter(|c| &c.config == cfg)
    {
        return Ok(Some(reused.clone()));
    }
    crate::cluster::Cluster::build(cfg, &metrics.cluster)
        .map(Some)
        .map_err(|e| ConfigError::single("cluster", e))
}

fn build_caches(
    config: &Config,
    previous: Option<&Runtime>,
    metrics: &Metrics,
) -> BTreeMap<String, Arc<ResponseCache>> {
    config
        .caches
        .iter()
        .map(|(name, cfg)| {
            let reused = previous
                .and_then(|p| p.caches.get(name))
                .filter(|c| &c.config == cfg)
                .cloned();
            let cache =
                reused.unwrap_or_else(|| Arc::new(ResponseCache::build(name, cfg, &metrics.cache)));
            (name.clone(), cache)
        })
        .collect()
}

fn build_route(
    i: usize,
    rc: &RouteConfig,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    caches: &BTreeMap<String, Arc<ResponseCache>>,
    metrics: &Metrics,
    split: Option<Arc<Split>>,
) -> Result<Route, ConfigError> {
    let err = |field: &str, e: String| ConfigError::single(format!("routes[{i}].{field}"), e);
    let cache = match &rc.cache {
        Some(name) => Some(
            caches
                .get(name)
                .cloned()
                .ok_or_else(|| err("cache", format!("unknown cache {name:?}")))?,
        ),
        None => None,
    };
    let transform = rc
        .transform
        .as_ref()
        .map(|t| Transform::build(&rc.name, t, &metrics.transform))
        .transpose()
        .map_err(|e| err("transform", e))?;
    let grpc = rc
        .grpc
        .then(|| Arc::new(GrpcMetrics::new(&metrics.grpc_responses, &rc.name)));
    if let Some(split) = split {
        return Ok(Route {
            name: rc.name.clone(),
            rewrite: split.stable.rewrite.clone(),
            upstream: split.stable.upstream.clone(),
            metrics: metrics.route(&rc.name),
            split: Some(split),
            cache,
            transform,
            jwt: None,
            rate_limit: None,
            edge: edge::RouteEdge::default(),
            max_request_body: 0,
            ratelimit_rejected: None,
            grpc,
            mirror: None,
        });
    }
    let upstream_name = rc
        .upstream
        .as_deref()
        .ok_or_else(|| err("upstream", "a route needs an upstream".into()))?;
    let upstream = upstreams
        .get(upstream_name)
        .cloned()
        .ok_or_else(|| err("upstream", format!("unknown upstream {upstream_name:?}")))?;
    let rewrite = rc
        .rewrite
        .as_ref()
        .map(Rewrite::build)
        .transpose()
        .map_err(|e| err("rewrite", e))?;
    Ok(Route {
        name: rc.name.clone(),
        rewrite,
        upstream,
        metrics: metrics.route(&rc.name),
        split: None,
        cache,
        transform,
        jwt: None,
        rate_limit: None,
        edge: edge::RouteEdge::default(),
        max_request_body: 0,
        ratelimit_rejected: None,
        grpc,
        mirror: None,
    })
}

type Guards = (
    BTreeMap<String, Arc<Verifier>>,
    BTreeMap<String, Arc<Limiter>>,
);

/// Builds each named verifier and limiter once, reusing the previous Runtime's when the
/// definition is unchanged (JWKS keys already fetched, limiter buckets kept).
fn build_guards(
    config: &Config,
    previous: Option<&Runtime>,
    metrics: &Metrics,
    cluster: Option<&Arc<crate::cluster::Cluster>>,
) -> Result<Guards, ConfigError> {
    let mut verifiers = BTreeMap::new();
    for (name, cfg) in &config.jwt {
        let reused = previous
            .and_then(|p| p.verifiers.get(name))
            .filter(|v| v.reusable_for(cfg))
            .cloned();
        let verifier = match reused {
            Some(v) => v,
            None => Arc::new(
                Verifier::build(name, cfg, None)
                    .map_err(|e| ConfigError::single(format!("jwt.{name}"), e))?,
            ),
        };
        verifiers.insert(name.clone(), verifier);
    }
    let mut limiters = BTreeMap::new();
    for (name, cfg) in &config.rate_limits {
        let shared = match cfg.scope {
            crate::config::Scope::Local => None,
            crate::config::Scope::Cluster => Some(cluster.ok_or_else(|| {
                ConfigError::single(
                    format!("rate_limits.{name}.scope"),
                    "scope: cluster needs cluster.redis",
                )
            })?),
        };
        let same_store = |l: &Arc<Limiter>| match (l.cluster(), shared) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        let reused = previous
            .and_then(|p| p.limiters.get(name))
            .filter(|l| &l.config == cfg && same_store(l))
            .cloned();
        let limiter = match reused {
            Some(l) => l,
            None => {
                let local = Limiter::build(name, cfg, None)
                    .map_err(|e| ConfigError::single(format!("rate_limits.{name}"), e))?;
                Arc::new(match shared {
                    Some(cluster) => local.shared_through(
                        cluster,
                        metrics
                            .cluster
                            .ratelimit_fallback
                            .with_label_values(&[name]),
                    ),
                    None => local,
                })
            }
        };
        limiter.report_evictions_to(metrics.ratelimit_evicted.with_label_values(&[name]));
        limiters.insert(name.clone(), limiter);
    }
    Ok((verifiers, limiters))
}

/// Gives a route its verifier and limiter. An unknown name is an error, never a route
/// left unprotected.
fn attach_guards(
    i: usize,
    route: &mut Route,
    rc: &RouteConfig,
    verifiers: &BTreeMap<String, Arc<Verifier>>,
    limiters: &BTreeMap<String, Arc<Limiter>>,
    metrics: &Metrics,
) -> Result<(), ConfigError> {
    if let Some(name) = rc.verifier_name() {
        let verifier = verifiers.get(name).ok_or_else(|| {
            ConfigError::single(
                format!("routes[{i}].jwt"),
                format!("unknown jwt verifier {name:?}"),
            )
        })?;
        route.jwt = Some(verifier.clone());
    }
    if let Some(name) = &rc.rate_limit {
        let limiter = limiters.get(name).ok_or_else(|| {
            ConfigError::single(
                format!("routes[{i}].rate_limit"),
                format!("unknown rate limit {name:?}"),
            )
        })?;
        route.rate_limit = Some(limiter.clone());
        route.ratelimit_rejected = Some(metrics.ratelimit_rejections(&rc.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::AccessLog;

    fn shared() -> Arc<Shared> {
        let metrics = Metrics::new();
        let dropped = metrics.access_log_dropped.clone();
        Arc::new(Shared {
            metrics,
            access_log: AccessLog::disabled(dropped),
        })
    }

    /// A reload whose Runtime cannot be built leaves the serving split's state alone:
    /// building has no side effects, `activate` applies the settings after the swap.
    #[tokio::test]
    async fn a_failed_build_changes_nothing_that_serves() {
        let yaml = r#"
server: { listen: "127.0.0.1:0" }
upstreams:
  monolith: { targets: ["127.0.0.1:9"] }
  orders: { targets: ["127.0.0.1:9"] }
routes:
  - name: orders
    match: { path_prefix: /orders }
    split:
      stable: { upstream: monolith }
      canary: { upstream: orders }
      percent: 10
      rollback: { max_error_rate: 90%, window: 60s, min_requests: 1000 }
"#;
        let config = crate::check::parse(yaml).expect("valid config");
        let shared = shared();
        let live = Runtime::build(config.clone(), &shared, None).expect("builds");
        live.activate();
        let state = live.splits["orders"].state.clone();
        state.record_canary(true, None);
        state.record_canary(false, None);
        let before = state.window().tally();
        assert_eq!(before.total, 2);

        // A new rollback window, and a route the runtime cannot build.
        let mut broken = config;
        if let Some(rollback) = broken.routes[0]
            .split
            .as_mut()
            .and_then(|s| s.rollback.as_mut())
        {
            rollback.window = crate::config::Duration::from_secs(5);
        }
        let mut bad_route = broken.routes[0].clone();
        bad_route.name = "bad".into();
        bad_route.split = None;
        bad_route.cache = Some("no-such-cache".into());
        bad_route.upstream = Some("monolith".into());
        broken.routes.push(bad_route);
        assert!(Runtime::build(broken, &shared, Some(&live)).is_err());

        let after = state.window();
        assert_eq!(after.span, std::time::Duration::from_secs(60));
        assert_eq!(after.tally(), before);
    }
}
