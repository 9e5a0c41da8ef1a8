//! `Config` compiled into ready objects: the route table, upstream pools, parsed trusted
//! proxies, pre-resolved metric handles. A Runtime is immutable; a reload builds a new one
//! beside the old (reusing upstreams whose definition did not change, so their connection
//! pools and in-flight counters carry over) and swaps it in whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::IpNet;

use crate::cache::ResponseCache;
use crate::config::{Config, ConfigError, RouteConfig};
use crate::observe::{AccessLog, Metrics, RouteMetrics};
use crate::router::{Rewrite, RouteMatch, RouteTable};
use crate::split::{Side, Split};
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
    pub cache: Option<Arc<ResponseCache>>,
    pub transform: Option<Transform>,
    pub split: Option<Arc<Split>>,
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
    /// Named caches; kept across reloads when their definition is unchanged.
    pub caches: BTreeMap<String, Arc<ResponseCache>>,
    pub trusted_proxies: Vec<IpNet>,
    pub max_request_body: u64,
    /// Metrics of requests that matched no route.
    pub no_route: RouteMetrics,
    pub shared: Arc<Shared>,
}

impl Runtime {
    pub fn build(
        config: Config,
        shared: &Arc<Shared>,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, ConfigError> {
        let metrics = &shared.metrics;
        let mut upstreams = BTreeMap::new();
        for (name, cfg) in &config.upstreams {
            let reused = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|u| u.same_definition(cfg, config.consul.as_ref()))
                .cloned();
            // A rebuilt upstream starts its own background tasks (discovery, health checks).
            let previous_upstream = previous
                .and_then(|p| p.upstreams.get(name))
                .map(|u| u.as_ref());
            let upstream = match reused {
                Some(u) => u,
                None => Upstream::start(
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
        let mut entries = Vec::with_capacity(config.routes.len());
        let mut splits = BTreeMap::new();
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
            let route = build_route(i, rc, &upstreams, &caches, metrics, split)?;
            let matcher = RouteMatch::build(&rc.matcher)
                .map_err(|(f, e)| ConfigError::single(format!("routes[{i}].match.{f}"), e))?;
            entries.push((matcher, Arc::new(route)));
        }
        let trusted_proxies = config
            .server
            .trusted_proxies
            .iter()
            .filter_map(|n| crate::server::parse_net(n))
            .collect();
        Ok(Runtime {
            max_request_body: config.server.limits.max_request_body.0,
            config: Arc::new(config),
            routes: RouteTable::new(entries),
            upstreams,
            splits,
            caches,
            trusted_proxies,
            no_route: metrics.route("none"),
            shared: shared.clone(),
        })
    }
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
            let cache = reused
                .unwrap_or_else(|| Arc::new(ResponseCache::build(name, cfg, &metrics.cache)));
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
    if let Some(split) = split {
        return Ok(Route {
            name: rc.name.clone(),
            rewrite: split.stable.rewrite.clone(),
            upstream: split.stable.upstream.clone(),
            metrics: metrics.route(&rc.name),
            split: Some(split),
            cache,
            transform,
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
    })
}
