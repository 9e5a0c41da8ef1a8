//! A route's `ip: { allow, deny }` on the client address Portico decided on (after
//! `trusted_proxies`). Each list is compiled into sorted, merged address ranges, one
//! table per family, so a check is a binary search however long the list is. An
//! IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack socket reports) is
//! checked as the IPv4 address it is.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::IpConfig;

/// Sorted, non-overlapping inclusive ranges.
#[derive(Debug, Default)]
struct Ranges {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Ranges {
    fn build(entries: &[String], field: &str) -> Result<Ranges, (String, String)> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let net = crate::wire::forward::parse_net(entry).ok_or_else(|| {
                (
                    format!("{field}[{i}]"),
                    format!("invalid address or CIDR range {entry:?}"),
                )
            })?;
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Ok(Ranges {
            v4: merged(v4),
            v6: merged(v6),
        })
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match crate::wire::forward::canonical(ip) {
            IpAddr::V4(a) => within(&self.v4, u32::from(a)),
            IpAddr::V6(a) => within(&self.v6, u128::from(a)),
        }
    }
}

fn merged<T: Ord + Copy + One>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.saturating_next() => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

trait One {
    fn saturating_next(self) -> Self;
}

impl One for u32 {
    fn saturating_next(self) -> u32 {
        self.saturating_add(1)
    }
}

impl One for u128 {
    fn saturating_next(self) -> u128 {
        self.saturating_add(1)
    }
}

fn within<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x is the only one that can hold it.
    let after = ranges.partition_point(|(start, _)| *start <= x);
    after > 0 && ranges[after - 1].1 >= x
}

/// Which list refused an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address is in `deny`.
    Denied,
    /// `allow` is set and the address is not in it.
    NotAllowed,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Denied => "deny",
            Refusal::NotAllowed => "allow",
        }
    }
}

#[derive(Debug)]
pub struct IpFilter {
    allow: Ranges,
    deny: Ranges,
}

impl IpFilter {
    pub fn build(config: &IpConfig) -> Result<IpFilter, (String, String)> {
        let filter = IpFilter {
            allow: Ranges::build(&config.allow, "allow")?,
            deny: Ranges::build(&config.deny, "deny")?,
        };
        if filter.allow.is_empty() && filter.deny.is_empty() {
            return Err((String::new(), "list allow, deny or both".into()));
        }
        Ok(filter)
    }

    /// A deny wins over an allow, so a range can be carved out of an allowed one.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.deny.contains(ip) {
            return Err(Refusal::Denied);
        }
        if !self.allow.is_empty() && !self.allow.contains(ip) {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilter {
        IpFilter::build(&IpConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
        .expect("valid lists")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_inside_allow_and_both_families() {
        let f = filter(
            &["10.0.0.0/8", "127.0.0.1", "2001:db8::/32"],
            &["10.6.6.0/24"],
        );
        assert_eq!(f.check(ip("10.1.2.3")), Ok(()));
        assert_eq!(f.check(ip("10.6.6.9")), Err(Refusal::Denied));
        assert_eq!(f.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(f.check(ip("127.0.0.2")), Err(Refusal::NotAllowed));
        assert_eq!(f.check(ip("::ffff:10.1.2.3")), Ok(()));
        assert_eq!(f.check(ip("2001:db8::1")), Ok(()));
        assert_eq!(f.check(ip("2001:db9::1")), Err(Refusal::NotAllowed));
        let deny_only = filter(&[], &["192.168.0.0/16"]);
        assert_eq!(deny_only.check(ip("192.168.1.1")), Err(Refusal::Denied));
        assert_eq!(deny_only.check(ip("8.8.8.8")), Ok(()));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let merged = merged(vec![(5u32, 9), (1, 3), (4, 4), (20, 30), (25, 26)]);
        assert_eq!(merged, vec![(1, 9), (20, 30)]);
        let f = filter(&["0.0.0.0/0"], &[]);
        assert_eq!(f.check(ip("255.255.255.255")), Ok(()));
    }

    #[test]
    fn bad_entries_name_their_index() {
        let e = IpFilter::build(&IpConfig {
            allow: vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()],
            deny: vec![],
        })
        .unwrap_err();
        assert_eq!(e.0, "allow[1]");
    }
}
