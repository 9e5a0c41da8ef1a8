//! What `cluster.redis.url` (and `nodes`) name: one Redis, a Redis Cluster, or a master
//! found through Sentinel.
//!
//! - `redis://[user:password@]host:port[/db]`, `rediss://...`: one Redis;
//! - `redis+cluster://[user:password@]h1:p,h2:p,...` or `nodes:`: a Redis Cluster;
//! - `redis+sentinel://[user:password@]s1:p,s2:p/MASTER[/db]`: the master that the
//!   Sentinels name `MASTER` (the credentials and db are the master's).

#[derive(Debug, PartialEq)]
pub enum Topology {
    Single(String),
    Cluster(Vec<String>),
    Sentinel {
        /// `redis://host:port` of each Sentinel.
        sentinels: Vec<String>,
        master: String,
        /// `redis://[user:password@]master/db`: how to talk to the master once found.
        master_url: String,
    },
}

fn split_userinfo(rest: &str) -> (Option<&str>, &str) {
    match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    }
}

fn with_userinfo(userinfo: Option<&str>, host: &str) -> String {
    match userinfo {
        Some(u) => format!("redis://{u}@{host}"),
        None => format!("redis://{host}"),
    }
}

pub fn parse(config: &crate::config::RedisConfig) -> Result<Topology, String> {
    let url = config.url.trim();
    if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        let (userinfo, rest) = split_userinfo(rest);
        let (hosts, path) = rest.split_once('/').ok_or(
            "redis+sentinel:// needs the master's name: redis+sentinel://host:26379/mymaster",
        )?;
        let mut parts = path.split('/');
        let master = parts.next().unwrap_or("").to_string();
        if master.is_empty() {
            return Err(
                "redis+sentinel:// needs the master's name: redis+sentinel://host:26379/mymaster"
                    .into(),
            );
        }
        let db = parts.next().filter(|d| !d.is_empty()).unwrap_or("0");
        if db.parse::<u16>().is_err() {
            return Err(format!("invalid database number {db:?}"));
        }
        let sentinels: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| format!("redis://{h}"))
            .collect();
        if sentinels.is_empty() {
            return Err("redis+sentinel:// needs at least one sentinel host:port".into());
        }
        return Ok(Topology::Sentinel {
            sentinels,
            master,
            master_url: format!("{}/{db}", with_userinfo(userinfo, "master")),
        });
    }
    let mut nodes: Vec<String> = config.nodes.clone();
    if let Some(rest) = url.strip_prefix("redis+cluster://") {
        let (userinfo, hosts) = split_userinfo(rest);
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            nodes.push(with_userinfo(userinfo, host.trim_end_matches('/')));
        }
        if nodes.is_empty() {
            return Err("redis+cluster:// needs at least one host:port".into());
        }
        return Ok(Topology::Cluster(nodes));
    }
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(
            "expected a redis://, rediss://, redis+cluster:// or redis+sentinel:// URL".into(),
        );
    }
    if nodes.is_empty() {
        Ok(Topology::Single(url.to_string()))
    } else {
        nodes.insert(0, url.to_string());
        Ok(Topology::Cluster(nodes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisConfig;

    fn redis(url: &str, nodes: &[&str]) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            timeout: crate::config::Duration::from_millis(50),
            key_prefix: "p:".into(),
            ca_file: None,
        }
    }

    #[test]
    fn urls_name_one_redis_a_cluster_or_a_sentinel_master() {
        assert_eq!(
            parse(&redis("redis://127.0.0.1:6379/0", &[])),
            Ok(Topology::Single("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            parse(&redis(
                "redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7000",
                &[]
            )),
            Ok(Topology::Cluster(vec![
                "redis://u:pw@10.0.0.1:7000".to_string(),
                "redis://u:pw@10.0.0.2:7000".to_string()
            ]))
        );
        assert_eq!(
            parse(&redis(
                "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/2",
                &[]
            )),
            Ok(Topology::Sentinel {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
                master: "mymaster".into(),
                master_url: "redis://:pw@master/2".into(),
            })
        );
        assert!(parse(&redis("redis+sentinel://s1:26379", &[])).is_err());
        assert!(parse(&redis("http://x", &[])).is_err());
    }
}
