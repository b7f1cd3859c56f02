//! Listeners and their filter chains: address, filter-chain match criteria, downstream TLS, and the
//! terminal network filter (HTTP connection manager or TCP proxy).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{address, Address, CidrRange};
use envoy_types::pb::envoy::config::listener::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as PbHcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy as PbTcpProxy,
};

use super::error::{ConfigError, FieldError, FieldResult};
use super::hcm::{HttpConnectionManager, TrafficDirection};
use super::route::{RouteTable, WeightedCluster, WeightedClusters};
use super::tls::DownstreamTls;
use super::{duration, unpack, Notes};

/// Non-terminal network filters that can be skipped without changing any byte of a connection:
/// istio_authn only records the peer identity for later policy filters; istio.stats on TCP only
/// counts bytes and connections.
const HARMLESS_NETWORK_FILTERS: [&str; 2] = ["io.istio.network.authn.Config", "stats.PluginConfig"];

const HCM: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const TLS_INSPECTOR: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR: &str = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
const ORIGINAL_DST: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub filter_chains: Vec<Arc<FilterChain>>,
    pub default_filter_chain: Option<Arc<FilterChain>>,
    pub tls_inspector: bool,
    pub http_inspector: bool,
    pub use_original_dst: bool,
    pub bind_to_port: bool,
    pub per_connection_buffer_limit_bytes: u32,
    pub listener_filters_timeout: Option<Duration>,
    pub proto: super::retained::Retained<pb::Listener>,
}

#[derive(Debug)]
pub struct FilterChain {
    pub name: String,
    pub matcher: FilterChainMatch,
    pub tls: Option<Arc<DownstreamTls>>,
    /// Istio's metadata exchange filter is on the chain, for this ALPN protocol.
    pub metadata_exchange: Option<String>,
    pub terminal: NetworkTerminal,
}

#[derive(Debug, Clone, Default)]
pub struct FilterChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<Cidr>,
    pub direct_source_prefix_ranges: Vec<Cidr>,
    pub source_type: SourceType,
    pub source_prefix_ranges: Vec<Cidr>,
    pub source_ports: Vec<u16>,
    pub server_names: Vec<String>,
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SourceType {
    #[default]
    Any,
    SameIpOrLoopback,
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix_len.min(32));
                let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
                (u32::from(net) & mask) == (u32::from(ip) & mask)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix_len.min(128));
                let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
                (u128::from(net) & mask) == (u128::from(ip) & mask)
            }
            (IpAddr::V4(_), IpAddr::V6(ip)) => ip.to_ipv4_mapped().is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            _ => false,
        }
    }
}

#[derive(Debug)]
pub enum NetworkTerminal {
    Http(Arc<HttpConnectionManager>),
    Tcp(Arc<TcpProxy>),
    /// A network filter Remora does not implement: connections on this chain are closed (never
    /// passed through unfiltered).
    Unsupported(String),
}

#[derive(Debug)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub cluster: TcpTarget,
    pub idle_timeout: Option<Duration>,
    pub max_connect_attempts: u32,
}

#[derive(Debug)]
pub enum TcpTarget {
    Cluster(String),
    Weighted(WeightedClusters),
}

impl Listener {
    pub fn from_proto(l: &pb::Listener, notes: &mut Notes) -> Result<Self, ConfigError> {
        Self::build(l, notes).map_err(|e| e.for_resource("listener", &l.name))
    }

    fn build(l: &pb::Listener, notes: &mut Notes) -> FieldResult<Self> {
        let direction = TrafficDirection::from_proto(l.traffic_direction);
        // An internal listener (Envoy's user-space listeners, used by Istio's HBONE) has no
        // socket; Remora does not implement them, so it keeps the resource but never binds it.
        let internal = l.listener_specifier.is_some() && l.address.is_none();
        if internal {
            notes.warn(format!(
                "listener '{}': internal listeners are not implemented; it is accepted but not started",
                l.name
            ));
        }
        let address = match &l.address {
            Some(addr) => socket_address(addr).map_err(|e| e.within("address"))?,
            None if internal => SocketAddr::from(([0, 0, 0, 0], 0)),
            None => return Err(FieldError::new("address", "value is required")),
        };
        if l.api_listener.is_some() {
            return Err(FieldError::new("api_listener", "API listeners are not supported"));
        }
        if l.filter_chain_matcher.is_some() {
            return Err(FieldError::new(
                "filter_chain_matcher",
                "the matcher-tree filter chain API is not supported; use filter_chain_match",
            ));
        }
        let mut tls_inspector = false;
        let mut http_inspector = false;
        let mut original_dst_filter = false;
        for (i, f) in l.listener_filters.iter().enumerate() {
            use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType;
            let type_name = match &f.config_type {
                Some(ConfigType::TypedConfig(any)) => super::decode::effective_type_name(any)
                    .map_err(|e| FieldError::new(format!("listener_filters[{i}].typed_config"), e.to_string()))?,
                _ => legacy_listener_filter(&f.name)
                    .ok_or_else(|| {
                        FieldError::new(
                            format!("listener_filters[{i}]"),
                            format!("Didn't find a registered implementation for '{}' with type URL: ''", f.name),
                        )
                    })?
                    .to_string(),
            };
            match type_name.as_str() {
                TLS_INSPECTOR => tls_inspector = true,
                HTTP_INSPECTOR => http_inspector = true,
                ORIGINAL_DST => original_dst_filter = true,
                other => notes
                    .warn(format!("listener '{}': listener filter {other} is not implemented and is skipped", l.name)),
            }
        }
        let mut filter_chains = Vec::with_capacity(l.filter_chains.len());
        for (i, fc) in l.filter_chains.iter().enumerate() {
            filter_chains.push(Arc::new(
                FilterChain::from_proto(fc, direction, notes).map_err(|e| e.within(&format!("filter_chains[{i}]")))?,
            ));
        }
        check_duplicate_matches(&filter_chains, &l.name)?;
        let default_filter_chain = l
            .default_filter_chain
            .as_ref()
            .map(|fc| {
                FilterChain::from_proto(fc, direction, notes)
                    .map(Arc::new)
                    .map_err(|e| e.within("default_filter_chain"))
            })
            .transpose()?;
        if filter_chains.is_empty() && default_filter_chain.is_none() {
            return Err(FieldError::new("filter_chains", "no filter chains specified"));
        }
        Ok(Listener {
            name: l.name.clone(),
            address,
            filter_chains,
            default_filter_chain,
            tls_inspector,
            http_inspector,
            use_original_dst: l.use_original_dst.is_some_and(|b| b.value) || original_dst_filter,
            bind_to_port: !internal && l.bind_to_port.as_ref().is_none_or(|b| b.value),
            per_connection_buffer_limit_bytes: l
                .per_connection_buffer_limit_bytes
                .as_ref()
                .map_or(1024 * 1024, |v| v.value),
            listener_filters_timeout: match &l.listener_filters_timeout {
                Some(d) => {
                    Some(duration(d).map_err(|e| e.within("listener_filters_timeout"))?).filter(|d| !d.is_zero())
                }
                None => Some(Duration::from_secs(15)),
            },
            proto: super::retained::Retained::encode(l),
        })
    }

    /// Every route table embedded in this listener's HTTP connection managers.
    pub fn inline_route_tables(&self) -> impl Iterator<Item = &Arc<RouteTable>> {
        self.filter_chains.iter().chain(self.default_filter_chain.iter()).filter_map(|fc| match &fc.terminal {
            NetworkTerminal::Http(h) => h.inline_routes.as_ref(),
            _ => None,
        })
    }

    /// Clusters named by TCP proxies (for static validation).
    pub fn tcp_clusters(&self) -> Vec<&str> {
        self.filter_chains
            .iter()
            .chain(self.default_filter_chain.iter())
            .filter_map(|fc| match &fc.terminal {
                NetworkTerminal::Tcp(t) => Some(t),
                _ => None,
            })
            .flat_map(|t| match &t.cluster {
                TcpTarget::Cluster(c) => vec![c.as_str()],
                TcpTarget::Weighted(w) => w.clusters.iter().map(|c| c.name.as_str()).collect(),
            })
            .collect()
    }
}

fn legacy_listener_filter(name: &str) -> Option<&'static str> {
    Some(match name {
        "envoy.filters.listener.tls_inspector" | "envoy.listener.tls_inspector" => TLS_INSPECTOR,
        "envoy.filters.listener.http_inspector" | "envoy.listener.http_inspector" => HTTP_INSPECTOR,
        "envoy.filters.listener.original_dst" | "envoy.listener.original_dst" => ORIGINAL_DST,
        _ => return None,
    })
}

/// Envoy rejects two filter chains with identical match criteria.
fn check_duplicate_matches(chains: &[Arc<FilterChain>], listener: &str) -> FieldResult<()> {
    for (i, a) in chains.iter().enumerate() {
        for b in &chains[..i] {
            if format!("{:?}", a.matcher) == format!("{:?}", b.matcher) {
                return Err(FieldError::new(
                    format!("filter_chains[{i}].filter_chain_match"),
                    format!("error adding listener '{listener}': filter chain '{}' has the same matching rules defined as '{}'", a.name, b.name),
                ));
            }
        }
    }
    Ok(())
}

impl FilterChain {
    fn from_proto(fc: &pb::FilterChain, direction: TrafficDirection, notes: &mut Notes) -> FieldResult<Self> {
        let matcher = fc
            .filter_chain_match
            .as_ref()
            .map(filter_chain_match)
            .transpose()
            .map_err(|e| e.within("filter_chain_match"))?
            .unwrap_or_default();
        let tls = fc
            .transport_socket
            .as_ref()
            .map(super::tls::downstream_from_transport_socket)
            .transpose()
            .map_err(|e| e.within("transport_socket"))?
            .flatten()
            .map(Arc::new);
        if fc.filters.is_empty() {
            // Envoy accepts a chain without filters; its connections are simply closed.
            let terminal = NetworkTerminal::Unsupported("no network filters".into());
            return Ok(FilterChain { name: fc.name.clone(), matcher, tls, metadata_exchange: None, terminal });
        }
        let mut terminal = None;
        let mut metadata_exchange = None;
        for (i, f) in fc.filters.iter().enumerate() {
            use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
            let path = format!("filters[{i}]");
            let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
                return Err(FieldError::new(
                    &path,
                    format!("Didn't find a registered implementation for '{}' with type URL: ''", f.name),
                ));
            };
            let type_name = super::decode::effective_type_name(any)
                .map_err(|e| FieldError::new(format!("{path}.typed_config"), e.to_string()))?;
            let is_last = i + 1 == fc.filters.len();
            if HARMLESS_NETWORK_FILTERS.contains(&type_name.as_str()) && !is_last {
                continue;
            }
            if type_name == super::metadata_exchange::TYPE_NAME && !is_last {
                metadata_exchange = Some(super::metadata_exchange::protocol(any, &path)?);
                continue;
            }
            let this = match type_name.as_str() {
                HCM => {
                    let pb: PbHcm = unpack(any).map_err(|e| FieldError::new(format!("{path}.typed_config"), e))?;
                    NetworkTerminal::Http(Arc::new(
                        HttpConnectionManager::from_proto(&pb, direction, notes)
                            .map_err(|e| e.within(&format!("{path}.typed_config")))?,
                    ))
                }
                TCP_PROXY => {
                    let pb: PbTcpProxy = unpack(any).map_err(|e| FieldError::new(format!("{path}.typed_config"), e))?;
                    NetworkTerminal::Tcp(Arc::new(
                        tcp_proxy(&pb).map_err(|e| e.within(&format!("{path}.typed_config")))?,
                    ))
                }
                other if other.starts_with("envoy.extensions.filters.network.") => {
                    notes.warn(format!(
                        "network filter {other} is not implemented: connections on its filter chain are closed"
                    ));
                    NetworkTerminal::Unsupported(other.to_string())
                }
                other
                    if super::decode::descriptor(other).is_ok()
                        && !other.starts_with("envoy.extensions.filters.network.") =>
                {
                    return Err(FieldError::new(
                        format!("{path}.typed_config"),
                        format!(
                            "Didn't find a registered network filter implementation for '{}' with type URL: '{}'",
                            f.name, other
                        ),
                    ));
                }
                other => {
                    return Err(FieldError::new(
                        format!("{path}.typed_config"),
                        format!("unknown network filter type '{other}'"),
                    ))
                }
            };
            if is_last {
                terminal = Some(this);
            } else if !matches!(this, NetworkTerminal::Unsupported(_)) {
                return Err(FieldError::new(
                    &path,
                    format!(
                        "Error: terminal filter named {} of type {} must be the last filter in a network filter chain.",
                        f.name, type_name
                    ),
                ));
            } else {
                // A non-terminal network filter Remora does not implement: fail closed.
                terminal = Some(this);
                break;
            }
        }
        let terminal = terminal.ok_or_else(|| FieldError::new("filters", "no terminal network filter"))?;
        Ok(FilterChain { name: fc.name.clone(), matcher, tls, metadata_exchange, terminal })
    }
}

/// Validated CIDR ranges (`field` names the list in errors).
pub fn cidrs(v: &[CidrRange], field: &str) -> FieldResult<Vec<Cidr>> {
    v.iter()
        .enumerate()
        .map(|(i, c)| {
            let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
                FieldError::new(
                    format!("{field}[{i}].address_prefix"),
                    format!("malformed IP address: {}", c.address_prefix),
                )
            })?;
            let prefix_len = c.prefix_len.map_or(0, |p| p.value);
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if prefix_len > max {
                return Err(FieldError::new(
                    format!("{field}[{i}].prefix_len"),
                    format!("value must be less than or equal to {max}"),
                ));
            }
            Ok(Cidr { addr, prefix_len: prefix_len as u8 })
        })
        .collect()
}

fn filter_chain_match(m: &pb::FilterChainMatch) -> FieldResult<FilterChainMatch> {
    let destination_port = m
        .destination_port
        .map(|p| {
            u16::try_from(p.value)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| FieldError::new("destination_port", "value must be inside range [1, 65535]"))
        })
        .transpose()?;
    Ok(FilterChainMatch {
        destination_port,
        prefix_ranges: cidrs(&m.prefix_ranges, "prefix_ranges")?,
        direct_source_prefix_ranges: cidrs(&m.direct_source_prefix_ranges, "direct_source_prefix_ranges")?,
        source_type: match m.source_type {
            1 => SourceType::SameIpOrLoopback,
            2 => SourceType::External,
            _ => SourceType::Any,
        },
        source_prefix_ranges: cidrs(&m.source_prefix_ranges, "source_prefix_ranges")?,
        source_ports: m
            .source_ports
            .iter()
            .map(|p| {
                u16::try_from(*p).map_err(|_| FieldError::new("source_ports", "value must be inside range [1, 65535]"))
            })
            .collect::<FieldResult<_>>()?,
        server_names: m.server_names.iter().map(|s| s.to_ascii_lowercase()).collect(),
        transport_protocol: Some(m.transport_protocol.clone()).filter(|t| !t.is_empty()),
        application_protocols: m.application_protocols.clone(),
    })
}

fn tcp_proxy(t: &PbTcpProxy) -> FieldResult<TcpProxy> {
    if t.stat_prefix.is_empty() {
        return Err(FieldError::new("stat_prefix", "value length must be at least 1 characters"));
    }
    let cluster = match &t.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => TcpTarget::Cluster(c.clone()),
        Some(ClusterSpecifier::Cluster(_)) | None => {
            return Err(FieldError::new("cluster_specifier", "one of cluster or weighted_clusters is required"))
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut clusters = Vec::new();
            let mut total = 0u64;
            for (i, c) in w.clusters.iter().enumerate() {
                if c.name.is_empty() {
                    return Err(FieldError::new(
                        format!("weighted_clusters.clusters[{i}].name"),
                        "value length must be at least 1 characters",
                    ));
                }
                if c.weight == 0 {
                    return Err(FieldError::new(
                        format!("weighted_clusters.clusters[{i}].weight"),
                        "value must be greater than or equal to 1",
                    ));
                }
                total += u64::from(c.weight);
                clusters.push(WeightedCluster {
                    name: c.name.clone(),
                    weight: u64::from(c.weight),
                    request_headers: Default::default(),
                    response_headers: Default::default(),
                    host_rewrite: None,
                });
            }
            if clusters.is_empty() {
                return Err(FieldError::new("weighted_clusters.clusters", "value must contain at least 2 item(s)"));
            }
            TcpTarget::Weighted(WeightedClusters { clusters, total_weight: total })
        }
    };
    let idle_timeout = match &t.idle_timeout {
        None => Some(Duration::from_secs(3600)),
        Some(d) => Some(duration(d).map_err(|e| e.within("idle_timeout"))?).filter(|d| !d.is_zero()),
    };
    Ok(TcpProxy {
        stat_prefix: t.stat_prefix.clone(),
        cluster,
        idle_timeout,
        max_connect_attempts: t.max_connect_attempts.map_or(1, |v| v.value.max(1)),
    })
}

/// A socket address of a listener (IP literal and port).
pub fn socket_address(addr: &Address) -> FieldResult<SocketAddr> {
    match &addr.address {
        Some(address::Address::SocketAddress(sa)) => {
            let port = super::socket_port(sa)?;
            let ip: IpAddr = if sa.address.is_empty() {
                return Err(FieldError::new("socket_address.address", "value length must be at least 1 characters"));
            } else {
                sa.address.parse().map_err(|_| {
                    FieldError::new("socket_address.address", format!("malformed IP address: {}", sa.address))
                })?
            };
            if sa.protocol != 0 {
                return Err(FieldError::new("socket_address.protocol", "UDP listeners are not supported"));
            }
            Ok(SocketAddr::new(ip, port))
        }
        Some(address::Address::Pipe(_)) => Err(FieldError::new("pipe", "Unix-socket listeners are not supported")),
        Some(_) => Err(FieldError::new("address", "only socket_address listeners are supported")),
        None => Err(FieldError::new("address", "value is required")),
    }
}
