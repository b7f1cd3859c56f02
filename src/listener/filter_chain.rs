//! Envoy's filter-chain selection: criteria are applied in a fixed order (destination port,
//! destination IP, server name, transport protocol, application protocols, direct source IP,
//! source type, source IP, source port); at each step the most specific match wins and chains
//! that leave the criterion empty are the fallback.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::model::listener::{Cidr, FilterChain, FilterChainMatch, Listener, SourceType};

/// Facts about a new connection that filter chains match on.
pub struct ConnFacts<'a> {
    pub destination: SocketAddr,
    pub source: SocketAddr,
    pub sni: Option<&'a str>,
    pub transport_protocol: &'a str,
    pub alpn: &'a [String],
}

/// Per criterion: `None` if the chain does not constrain it, `Some(None)` if it does and the
/// connection fails it, `Some(Some(specificity))` if it matches.
type Score = Option<Option<u32>>;

pub fn select<'a>(listener: &'a Listener, f: &ConnFacts<'_>) -> Option<&'a Arc<FilterChain>> {
    let mut candidates: Vec<&Arc<FilterChain>> = listener.filter_chains.iter().collect();
    let steps: [&dyn Fn(&FilterChainMatch) -> Score; 9] = [
        &|m| m.destination_port.map(|p| (p == f.destination.port()).then_some(1)),
        &|m| cidr_score(&m.prefix_ranges, f.destination),
        &|m| server_name_score(&m.server_names, f.sni),
        &|m| m.transport_protocol.as_ref().map(|t| (t == f.transport_protocol).then_some(1)),
        &|m| {
            (!m.application_protocols.is_empty())
                .then(|| m.application_protocols.iter().any(|p| f.alpn.contains(p)).then_some(1))
        },
        &|m| cidr_score(&m.direct_source_prefix_ranges, f.source),
        &|m| match m.source_type {
            SourceType::Any => None,
            SourceType::SameIpOrLoopback => {
                Some((f.source.ip().is_loopback() || f.source.ip() == f.destination.ip()).then_some(1))
            }
            SourceType::External => {
                Some((!(f.source.ip().is_loopback() || f.source.ip() == f.destination.ip())).then_some(1))
            }
        },
        &|m| cidr_score(&m.source_prefix_ranges, f.source),
        &|m| (!m.source_ports.is_empty()).then(|| m.source_ports.contains(&f.source.port()).then_some(1)),
    ];
    for step in steps {
        candidates = narrow(candidates, step);
        if candidates.is_empty() {
            return listener.default_filter_chain.as_ref();
        }
    }
    candidates.first().copied().or(listener.default_filter_chain.as_ref())
}

fn narrow<'a>(
    candidates: Vec<&'a Arc<FilterChain>>,
    score: &dyn Fn(&FilterChainMatch) -> Score,
) -> Vec<&'a Arc<FilterChain>> {
    let scored: Vec<(Score, &Arc<FilterChain>)> = candidates.into_iter().map(|c| (score(&c.matcher), c)).collect();
    let best = scored.iter().filter_map(|(s, _)| s.flatten()).max();
    match best {
        Some(b) => scored.into_iter().filter(|(s, _)| *s == Some(Some(b))).map(|(_, c)| c).collect(),
        None => scored.into_iter().filter(|(s, _)| s.is_none()).map(|(_, c)| c).collect(),
    }
}

fn cidr_score(ranges: &[Cidr], addr: SocketAddr) -> Score {
    if ranges.is_empty() {
        return None;
    }
    // Longer prefixes are more specific; +1 so a /0 match still beats "no match".
    Some(ranges.iter().filter(|c| c.contains(addr.ip())).map(|c| u32::from(c.prefix_len) + 1).max())
}

fn server_name_score(names: &[String], sni: Option<&str>) -> Score {
    if names.is_empty() {
        return None;
    }
    let Some(sni) = sni else { return Some(None) };
    let mut best = None;
    for n in names {
        let s = if n == sni {
            // Exact names beat every wildcard.
            Some(u32::MAX)
        } else if let Some(suffix) = n.strip_prefix('*') {
            (sni.ends_with(suffix) && sni.len() > suffix.len()).then_some(suffix.len() as u32)
        } else {
            None
        };
        best = best.max(s);
    }
    Some(best)
}
