//! Endpoint selection. Strategies are an enum, not generics. Every strategy is lock-free:
//! weighted round robin walks a precomputed smooth schedule with one atomic counter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use super::Endpoint;
use crate::config::Balance;

/// Longest round-robin schedule kept; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 10_000;

#[derive(Debug)]
pub enum Balancer {
    RoundRobin {
        schedule: Vec<u32>,
        next: AtomicUsize,
    },
    Random {
        cumulative: Vec<u64>,
    },
    LeastRequest,
}

impl Balancer {
    pub fn new(kind: Balance, endpoints: &[Arc<Endpoint>]) -> Balancer {
        let weights: Vec<u64> = endpoints
            .iter()
            .map(|e| u64::from(e.weight.max(1)))
            .collect();
        match kind {
            Balance::RoundRobin => Balancer::RoundRobin {
                schedule: smooth_schedule(&weights),
                next: AtomicUsize::new(0),
            },
            Balance::Random => Balancer::Random {
                cumulative: weights
                    .iter()
                    .scan(0u64, |acc, w| {
                        *acc += w;
                        Some(*acc)
                    })
                    .collect(),
            },
            Balance::LeastRequest => Balancer::LeastRequest,
        }
    }

    /// Index of the endpoint to use, or None when there is none.
    pub fn pick(&self, endpoints: &[Arc<Endpoint>]) -> Option<usize> {
        match endpoints.len() {
            0 => return None,
            1 => return Some(0),
            _ => {}
        }
        match self {
            Balancer::RoundRobin { schedule, next } => {
                let n = next.fetch_add(1, Ordering::Relaxed);
                schedule.get(n % schedule.len().max(1)).map(|i| *i as usize)
            }
            Balancer::Random { cumulative } => {
                let total = *cumulative.last()?;
                let draw = rand::rng().random_range(0..total);
                Some(cumulative.partition_point(|c| *c <= draw))
            }
            Balancer::LeastRequest => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..endpoints.len());
                let mut b = rng.random_range(0..endpoints.len() - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (&endpoints[a], &endpoints[b]);
                let load_a = ea.awaiting_head() as u64 * u64::from(eb.weight.max(1));
                let load_b = eb.awaiting_head() as u64 * u64::from(ea.weight.max(1));
                Some(if load_a <= load_b { a } else { b })
            }
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round robin, unrolled once into a schedule: weights 5,1,1
/// give a,a,b,a,c,a,a rather than a,a,a,a,a,b,c.
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut weights: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        weights = weights
            .iter()
            .map(|w| (w * MAX_SCHEDULE / total).max(1))
            .collect();
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_schedule_interleaves() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
        assert_eq!(smooth_schedule(&[3, 1]).len(), 4);
        let big = smooth_schedule(&[1_000_000, 1]);
        assert!(big.len() <= MAX_SCHEDULE as usize + 1);
        assert!(big.contains(&1));
    }
}
