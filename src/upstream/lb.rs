//! Load balancers over one priority's healthy hosts: weighted round robin, least request (power
//! of N choices), random, ring hash and Maglev. Each is built once per host-set change and then only
//! read (plus one atomic cursor), so picking a host takes no lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use super::manager::Host;
use crate::model::cluster::LbPolicy;

/// Per-request inputs to a pick.
#[derive(Debug, Default, Clone, Copy)]
pub struct LbContext<'a> {
    /// From the route's hash policy, for ring hash and Maglev.
    pub hash: Option<u64>,
    /// Hosts already tried by this request (retry `previous_hosts`).
    pub avoid: &'a [SocketAddr],
    /// Where the downstream connection was originally going (ORIGINAL_DST clusters).
    pub original_dst: Option<SocketAddr>,
}

#[derive(Debug)]
pub enum Balancer {
    RoundRobin { schedule: Vec<usize>, cursor: AtomicUsize },
    LeastRequest { choices: u32 },
    Random,
    Ring { ring: Vec<(u64, usize)> },
    Maglev { table: Vec<usize> },
}

impl Balancer {
    pub fn build(policy: &LbPolicy, hosts: &[Arc<Host>]) -> Self {
        match policy {
            LbPolicy::RoundRobin | LbPolicy::ClusterProvided => {
                let start = if hosts.is_empty() { 0 } else { rand::rng().random_range(0..hosts.len().max(1)) };
                Balancer::RoundRobin { schedule: smooth_weighted_schedule(hosts), cursor: AtomicUsize::new(start) }
            }
            LbPolicy::LeastRequest { choice_count } => Balancer::LeastRequest { choices: (*choice_count).max(2) },
            LbPolicy::Random => Balancer::Random,
            LbPolicy::RingHash { minimum_ring_size, maximum_ring_size } => {
                Balancer::Ring { ring: build_ring(hosts, *minimum_ring_size, *maximum_ring_size) }
            }
            LbPolicy::Maglev { table_size } => Balancer::Maglev { table: build_maglev(hosts, *table_size) },
        }
    }

    pub fn choose(&self, hosts: &[Arc<Host>], ctx: &LbContext<'_>) -> Option<Arc<Host>> {
        if hosts.is_empty() {
            return None;
        }
        let pick = match self {
            Balancer::RoundRobin { schedule, cursor } => {
                let n = cursor.fetch_add(1, Ordering::Relaxed);
                schedule.get(n % schedule.len().max(1)).copied().unwrap_or(0)
            }
            Balancer::LeastRequest { choices } => {
                let mut rng = rand::rng();
                let mut best = rng.random_range(0..hosts.len());
                for _ in 1..*choices {
                    let candidate = rng.random_range(0..hosts.len());
                    // Weighted hosts compare active requests per unit of weight.
                    let cost = |i: usize| {
                        (u64::from(hosts[i].active_requests()) + 1) * 1_000_000 / u64::from(hosts[i].weight.max(1))
                    };
                    if cost(candidate) < cost(best) {
                        best = candidate;
                    }
                }
                best
            }
            Balancer::Random => weighted_random(hosts),
            Balancer::Ring { ring } => {
                let h = ctx.hash.unwrap_or_else(|| rand::rng().random());
                let i = ring.partition_point(|(p, _)| *p < h);
                ring.get(i).or(ring.first()).map(|(_, idx)| *idx).unwrap_or(0)
            }
            Balancer::Maglev { table } => {
                let h = ctx.hash.unwrap_or_else(|| rand::rng().random());
                table.get((h % table.len().max(1) as u64) as usize).copied().unwrap_or(0)
            }
        };
        let host = hosts.get(pick)?;
        if ctx.avoid.contains(&host.address) && hosts.len() > 1 {
            // Retry host predicate: take the next host that was not tried, if any.
            return hosts
                .iter()
                .cycle()
                .skip(pick + 1)
                .take(hosts.len())
                .find(|h| !ctx.avoid.contains(&h.address))
                .cloned()
                .or_else(|| Some(host.clone()));
        }
        Some(host.clone())
    }
}

/// Nginx-style smooth weighted round robin, unrolled into a schedule of host indexes: equal weights
/// give plain rotation, unequal weights interleave rather than burst.
fn smooth_weighted_schedule(hosts: &[Arc<Host>]) -> Vec<usize> {
    if hosts.is_empty() {
        return vec![];
    }
    let weights: Vec<i64> = hosts.iter().map(|h| i64::from(h.weight.max(1))).collect();
    let g = weights.iter().copied().fold(0, gcd);
    let weights: Vec<i64> = weights.iter().map(|w| w / g.max(1)).collect();
    let total: i64 = weights.iter().sum();
    // Bound the schedule; beyond this the proportions are still exact to within 1/4096.
    let len = total.min(4096) as usize;
    let scale = if total > 4096 { 4096.0 / total as f64 } else { 1.0 };
    let weights: Vec<i64> = weights.iter().map(|w| ((*w as f64 * scale).round() as i64).max(1)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; hosts.len()];
    let mut schedule = Vec::with_capacity(len);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..hosts.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn weighted_random(hosts: &[Arc<Host>]) -> usize {
    let total: u64 = hosts.iter().map(|h| u64::from(h.weight.max(1))).sum();
    let mut draw = rand::rng().random_range(0..total.max(1));
    for (i, h) in hosts.iter().enumerate() {
        let w = u64::from(h.weight.max(1));
        if draw < w {
            return i;
        }
        draw -= w;
    }
    0
}

/// A stable 64-bit hash (FNV-1a with a final avalanche) for ring positions and request keys.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn build_ring(hosts: &[Arc<Host>], min_size: u64, max_size: u64) -> Vec<(u64, usize)> {
    if hosts.is_empty() {
        return vec![];
    }
    let total_weight: u64 = hosts.iter().map(|h| u64::from(h.weight.max(1))).sum();
    let min_weight = hosts.iter().map(|h| u64::from(h.weight.max(1))).min().unwrap_or(1);
    // As Envoy: scale so the lightest host gets at least one entry and the ring has min_size entries,
    // capped at max_size.
    let scale = ((min_size as f64) / (total_weight as f64)).max(1.0 / min_weight as f64);
    let size = ((total_weight as f64 * scale).ceil() as u64).min(max_size).max(hosts.len() as u64);
    let per_weight = size as f64 / total_weight as f64;
    let mut ring = Vec::with_capacity(size as usize);
    for (idx, h) in hosts.iter().enumerate() {
        let replicas = ((u64::from(h.weight.max(1)) as f64 * per_weight).round() as u64).max(1);
        let key = h.address.to_string();
        for i in 0..replicas {
            ring.push((hash64(format!("{key}_{i}").as_bytes()), idx));
        }
    }
    ring.sort_unstable_by_key(|(h, _)| *h);
    ring
}

/// Maglev lookup table (Eisenbud et al., 2016), weighted as Envoy does.
fn build_maglev(hosts: &[Arc<Host>], table_size: u64) -> Vec<usize> {
    let m = table_size.max(1) as usize;
    if hosts.is_empty() {
        return vec![];
    }
    let max_weight = hosts.iter().map(|h| h.weight.max(1)).max().unwrap_or(1) as f64;
    let params: Vec<(usize, usize)> = hosts
        .iter()
        .map(|h| {
            let key = h.address.to_string();
            let offset = (hash64(key.as_bytes()) % m as u64) as usize;
            let skip = (hash64(format!("{key}#skip").as_bytes()) % (m as u64 - 1).max(1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; hosts.len()];
    let mut target_weight = vec![0f64; hosts.len()];
    let mut table = vec![usize::MAX; m];
    let mut filled = 0;
    'outer: loop {
        for i in 0..hosts.len() {
            target_weight[i] += f64::from(hosts[i].weight.max(1)) / max_weight;
            if target_weight[i] < 1.0 {
                continue;
            }
            target_weight[i] -= 1.0;
            let (offset, skip) = params[i];
            loop {
                let c = (offset + next[i] * skip) % m;
                next[i] += 1;
                if table[c] == usize::MAX {
                    table[c] = i;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break 'outer;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Arc::new(Host::new(format!("127.0.0.1:{}", 1000 + i).parse().unwrap(), *w)))
            .collect()
    }

    #[test]
    fn weighted_round_robin_is_proportional() {
        let hs = hosts(&[1, 2, 7]);
        let b = Balancer::build(&LbPolicy::RoundRobin, &hs);
        let mut counts = [0; 3];
        for _ in 0..1000 {
            let h = b.choose(&hs, &LbContext::default()).unwrap();
            counts[(h.address.port() - 1000) as usize] += 1;
        }
        assert_eq!(counts, [100, 200, 700]);
    }

    #[test]
    fn ring_hash_and_maglev_are_sticky() {
        let hs = hosts(&[1, 1, 1, 1]);
        for policy in [
            LbPolicy::RingHash { minimum_ring_size: 1024, maximum_ring_size: 8_388_608 },
            LbPolicy::Maglev { table_size: 65537 },
        ] {
            let b = Balancer::build(&policy, &hs);
            let ctx = LbContext { hash: Some(hash64(b"user-42")), avoid: &[], original_dst: None };
            let first = b.choose(&hs, &ctx).unwrap().address;
            for _ in 0..20 {
                assert_eq!(b.choose(&hs, &ctx).unwrap().address, first);
            }
            let mut seen = std::collections::HashSet::new();
            for k in 0..200u32 {
                let ctx = LbContext { hash: Some(hash64(&k.to_be_bytes())), avoid: &[], original_dst: None };
                seen.insert(b.choose(&hs, &ctx).unwrap().address);
            }
            assert_eq!(seen.len(), 4, "{policy:?} spreads keys over all hosts");
        }
    }
}
