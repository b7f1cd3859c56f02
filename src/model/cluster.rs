//! Clusters: discovery type, endpoints with localities and priorities, load-balancing policy,
//! upstream protocol, circuit-breaker thresholds and the upstream transport socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as pb;
use envoy_types::pb::envoy::config::core::v3::{address, Address};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{http_protocol_options, HttpProtocolOptions};

use super::error::{ConfigError, FieldError, FieldResult};
use super::tls::UpstreamTls;
use super::{duration, unpack, Notes};

pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    pub load_assignment: LoadAssignment,
    pub protocol: UpstreamProtocol,
    pub circuit_breakers: Thresholds,
    pub tls: Option<Arc<UpstreamTls>>,
    /// `filter_metadata.istio.alpn_override` is not `"false"`: `istio.alpn` may replace the
    /// ALPN of this cluster's TLS connections.
    pub alpn_override_allowed: bool,
    /// Istio's metadata exchange cluster filter is on, for this ALPN protocol (TCP proxying only:
    /// HTTP connections never carry the frame).
    pub metadata_exchange: Option<String>,
    /// `transport_socket_matches`, in order; an endpoint matching none uses `tls`.
    pub socket_matches: Vec<SocketMatch>,
    pub dns_refresh_rate: Duration,
    pub dns_lookup_family: DnsLookupFamily,
    pub idle_timeout: Duration,
    pub max_requests_per_connection: Option<u32>,
    pub per_connection_buffer_limit_bytes: u32,
    /// ORIGINAL_DST with `use_http_header`: the header naming the destination.
    pub original_dst_header: Option<http::HeaderName>,
    pub proto: super::retained::Retained<pb::Cluster>,
    /// The cluster as defined, before EDS endpoints were folded into `proto` (the same bytes for
    /// clusters that are not EDS). Two versions with equal definitions differ only in endpoints,
    /// which the cluster manager applies in place, keeping pools.
    pub definition: super::retained::Retained<pb::Cluster>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    Static,
    StrictDns,
    LogicalDns,
    OriginalDst,
    Eds {
        service_name: String,
    },
    /// A `cluster_type` extension Remora does not implement: the cluster never has hosts.
    Unsupported(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsLookupFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest { choice_count: u32 },
    Random,
    RingHash { minimum_ring_size: u64, maximum_ring_size: u64 },
    Maglev { table_size: u64 },
    ClusterProvided,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    UseDownstream,
}

/// Default-priority circuit-breaker thresholds (Envoy's defaults: 1024/1024/1024/3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { max_connections: 1024, max_pending_requests: 1024, max_requests: 1024, max_retries: 3 }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadAssignment {
    pub localities: Vec<LocalityEndpoints>,
}

#[derive(Debug, Clone)]
pub struct LocalityEndpoints {
    pub region: String,
    pub zone: String,
    pub sub_zone: String,
    pub priority: u32,
    pub weight: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    Socket(SocketAddr),
    /// Resolved by DNS at run time (STRICT_DNS / LOGICAL_DNS).
    Dns {
        host: String,
        port: u16,
    },
    Pipe(String),
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: EndpointAddress,
    pub weight: u32,
    pub healthy: bool,
    pub hostname: String,
    /// `metadata.filter_metadata["envoy.transport_socket_match"]` of the endpoint (else of its
    /// locality), as `key → value` text: what `transport_socket_matches` select on (Istio puts
    /// `tlsMode: istio` there for pods with a sidecar).
    pub socket_match_metadata: Vec<(String, String)>,
}

/// One of `transport_socket_matches`: an endpoint whose socket-match metadata has every
/// `criteria` pair is reached through `tls` (`None`: plaintext).
#[derive(Debug, Clone)]
pub struct SocketMatch {
    pub name: String,
    pub criteria: Vec<(String, String)>,
    pub tls: Option<Arc<UpstreamTls>>,
}

const SOCKET_MATCH_KEY: &str = "envoy.transport_socket_match";

/// A `Struct`'s fields as `key → value` text (strings bare, numbers and bools as written).
fn struct_fields(s: &envoy_types::pb::google::protobuf::Struct) -> Vec<(String, String)> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let mut out: Vec<(String, String)> = s
        .fields
        .iter()
        .map(|(k, v)| {
            let text = match &v.kind {
                Some(Kind::StringValue(s)) => s.clone(),
                Some(Kind::NumberValue(n)) => n.to_string(),
                Some(Kind::BoolValue(b)) => b.to_string(),
                Some(Kind::NullValue(_)) | None => "null".to_string(),
                Some(other) => format!("{other:?}"),
            };
            (k.clone(), text)
        })
        .collect();
    out.sort();
    out
}

impl Cluster {
    /// The `transport_socket_matches` entry `ep` uses: the first whose criteria its metadata has
    /// (an empty `match` takes every endpoint), as Envoy picks; `None` for the cluster's socket.
    pub fn socket_match(&self, ep: &Endpoint) -> Option<usize> {
        self.socket_matches
            .iter()
            .position(|m| m.criteria.iter().all(|c| ep.socket_match_metadata.iter().any(|e| e == c)))
    }

    pub fn from_proto(c: &pb::Cluster, notes: &mut Notes) -> Result<Self, ConfigError> {
        Self::build(c, notes).map_err(|e| e.for_resource("cluster", &c.name))
    }

    fn build(c: &pb::Cluster, notes: &mut Notes) -> FieldResult<Self> {
        let proto = super::retained::Retained::encode(c);
        if c.name.is_empty() {
            return Err(FieldError::new("name", "value length must be at least 1 characters"));
        }
        let discovery = match &c.cluster_discovery_type {
            None => Discovery::Static,
            Some(pb::cluster::ClusterDiscoveryType::Type(t)) => match pb::cluster::DiscoveryType::try_from(*t) {
                Ok(pb::cluster::DiscoveryType::Static) => Discovery::Static,
                Ok(pb::cluster::DiscoveryType::StrictDns) => Discovery::StrictDns,
                Ok(pb::cluster::DiscoveryType::LogicalDns) => Discovery::LogicalDns,
                Ok(pb::cluster::DiscoveryType::OriginalDst) => Discovery::OriginalDst,
                Ok(pb::cluster::DiscoveryType::Eds) => Discovery::Eds {
                    service_name: c
                        .eds_cluster_config
                        .as_ref()
                        .map(|e| e.service_name.clone())
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| c.name.clone()),
                },
                Err(_) => {
                    return Err(FieldError::new(
                        "type",
                        format!("value must be one of the defined enum values, got {t}"),
                    ))
                }
            },
            Some(pb::cluster::ClusterDiscoveryType::ClusterType(ct)) => {
                notes.warn(format!(
                    "cluster '{}': cluster_type '{}' is not implemented; the cluster has no hosts",
                    c.name, ct.name
                ));
                Discovery::Unsupported(ct.name.clone())
            }
        };
        let lb_policy = lb_policy(c, notes)?;
        if lb_policy == LbPolicy::ClusterProvided
            && !matches!(discovery, Discovery::OriginalDst | Discovery::Unsupported(_))
        {
            return Err(FieldError::new(
                "lb_policy",
                "CLUSTER_PROVIDED is only valid with a cluster that provides its own load balancer",
            ));
        }
        if discovery == Discovery::OriginalDst && lb_policy != LbPolicy::ClusterProvided {
            return Err(FieldError::new("lb_policy", "cluster: LB policy ROUND_ROBIN is not valid for Cluster type ORIGINAL_DST. Only 'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'"));
        }
        let connect_timeout = match &c.connect_timeout {
            Some(d) => {
                let d = duration(d).map_err(|e| e.within("connect_timeout"))?;
                if d.is_zero() {
                    return Err(FieldError::new("connect_timeout", "value must be greater than 0s"));
                }
                d
            }
            None => Duration::from_secs(5),
        };
        let load_assignment = match &c.load_assignment {
            Some(la) => load_assignment(la, &discovery).map_err(|e| e.within("load_assignment"))?,
            None => LoadAssignment::default(),
        };
        if discovery == Discovery::LogicalDns
            && (load_assignment.localities.len() != 1 || load_assignment.localities[0].endpoints.len() != 1)
        {
            return Err(FieldError::new(
                "load_assignment",
                "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint",
            ));
        }
        let (protocol, idle_timeout, max_requests_per_connection) = upstream_protocol(c)?;
        let circuit_breakers = thresholds(c.circuit_breakers.as_ref());
        let tls = match &c.transport_socket {
            Some(ts) => {
                super::tls::upstream_from_transport_socket(ts).map_err(|e| e.within("transport_socket"))?.map(Arc::new)
            }
            None => None,
        };
        let socket_matches = c
            .transport_socket_matches
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let path = format!("transport_socket_matches[{i}].transport_socket");
                let tls = match &m.transport_socket {
                    Some(ts) => {
                        super::tls::upstream_from_transport_socket(ts).map_err(|e| e.within(&path))?.map(Arc::new)
                    }
                    None => None,
                };
                Ok(SocketMatch {
                    name: m.name.clone(),
                    criteria: m.r#match.as_ref().map(struct_fields).unwrap_or_default(),
                    tls,
                })
            })
            .collect::<FieldResult<Vec<_>>>()?;
        let metadata_exchange = cluster_filters(&c.filters)?;
        if !c.health_checks.is_empty() {
            notes.warn(format!(
                "cluster '{}': active health checks are not implemented; endpoints are treated as healthy",
                c.name
            ));
        }
        if c.outlier_detection.is_some() {
            notes.warn(format!("cluster '{}': outlier_detection is not implemented; no host is ejected", c.name));
        }
        let dns_refresh_rate = c
            .dns_refresh_rate
            .as_ref()
            .map(duration)
            .transpose()
            .map_err(|e| e.within("dns_refresh_rate"))?
            .unwrap_or(Duration::from_secs(5));
        let dns_lookup_family = match c.dns_lookup_family {
            0 => DnsLookupFamily::Auto,
            1 => DnsLookupFamily::V4Only,
            2 => DnsLookupFamily::V6Only,
            3 => DnsLookupFamily::V4Preferred,
            _ => DnsLookupFamily::All,
        };
        Ok(Cluster {
            name: c.name.clone(),
            discovery,
            lb_policy,
            connect_timeout,
            load_assignment,
            protocol,
            circuit_breakers,
            tls,
            alpn_override_allowed: !c
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get("istio"))
                .is_some_and(|s| struct_fields(s).iter().any(|(k, v)| k == "alpn_override" && v == "false")),
            metadata_exchange,
            socket_matches,
            dns_refresh_rate,
            dns_lookup_family,
            idle_timeout,
            max_requests_per_connection,
            per_connection_buffer_limit_bytes: c
                .per_connection_buffer_limit_bytes
                .as_ref()
                .map_or(1024 * 1024, |v| v.value),
            original_dst_header: match &c.lb_config {
                Some(pb::cluster::LbConfig::OriginalDstLbConfig(o)) if o.use_http_header => {
                    let name = if o.http_header_name.is_empty() {
                        "x-envoy-original-dst-host"
                    } else {
                        o.http_header_name.as_str()
                    };
                    Some(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        FieldError::new(
                            "original_dst_lb_config.http_header_name",
                            format!("invalid header name '{name}'"),
                        )
                    })?)
                }
                _ => None,
            },
            proto: proto.clone(),
            definition: proto,
        })
    }
}

fn lb_policy(c: &pb::Cluster, notes: &mut Notes) -> FieldResult<LbPolicy> {
    use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
    if let Some(policy) = &c.load_balancing_policy {
        // The typed policy list: the first one Remora knows wins, as in Envoy.
        for (i, p) in policy.policies.iter().enumerate() {
            let Some(tec) = p.typed_extension_config.as_ref() else {
                continue;
            };
            let Some(any) = tec.typed_config.as_ref() else {
                continue;
            };
            let path = format!("load_balancing_policy.policies[{i}].typed_extension_config.typed_config");
            let name = super::decode::effective_type_name(any).map_err(|e| FieldError::new(&path, e.to_string()))?;
            let policy = match name.as_str() {
                "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin" => LbPolicy::RoundRobin,
                "envoy.extensions.load_balancing_policies.random.v3.Random" => LbPolicy::Random,
                "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest" => {
                    let lr: lbp::least_request::v3::LeastRequest =
                        unpack(any).map_err(|e| FieldError::new(&path, e))?;
                    LbPolicy::LeastRequest { choice_count: lr.choice_count.map_or(2, |v| v.value) }
                }
                "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash" => {
                    let rh: lbp::ring_hash::v3::RingHash = unpack(any).map_err(|e| FieldError::new(&path, e))?;
                    ring_hash(rh.minimum_ring_size.map(|v| v.value), rh.maximum_ring_size.map(|v| v.value))
                        .map_err(|e| e.within(&path))?
                }
                "envoy.extensions.load_balancing_policies.maglev.v3.Maglev" => {
                    let m: lbp::maglev::v3::Maglev = unpack(any).map_err(|e| FieldError::new(&path, e))?;
                    LbPolicy::Maglev { table_size: m.table_size.map_or(65537, |v| v.value) }
                }
                "envoy.extensions.load_balancing_policies.cluster_provided.v3.ClusterProvided" => {
                    LbPolicy::ClusterProvided
                }
                other => {
                    notes.warn(format!("cluster '{}': load balancing policy {other} is not implemented", c.name));
                    continue;
                }
            };
            return Ok(policy);
        }
        return Err(FieldError::new("load_balancing_policy", "no supported load balancing policy in the list"));
    }
    Ok(match pb::cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(pb::cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(pb::cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest {
            choice_count: match &c.lb_config {
                Some(pb::cluster::LbConfig::LeastRequestLbConfig(l)) => l.choice_count.map_or(2, |v| v.value),
                _ => 2,
            },
        },
        Ok(pb::cluster::LbPolicy::Random) => LbPolicy::Random,
        Ok(pb::cluster::LbPolicy::RingHash) => match &c.lb_config {
            Some(pb::cluster::LbConfig::RingHashLbConfig(r)) => {
                ring_hash(r.minimum_ring_size.map(|v| v.value), r.maximum_ring_size.map(|v| v.value))
                    .map_err(|e| e.within("ring_hash_lb_config"))?
            }
            _ => ring_hash(None, None)?,
        },
        Ok(pb::cluster::LbPolicy::Maglev) => LbPolicy::Maglev {
            table_size: match &c.lb_config {
                Some(pb::cluster::LbConfig::MaglevLbConfig(m)) => m.table_size.map_or(65537, |v| v.value),
                _ => 65537,
            },
        },
        Ok(pb::cluster::LbPolicy::ClusterProvided) => LbPolicy::ClusterProvided,
        Ok(pb::cluster::LbPolicy::LoadBalancingPolicyConfig) => {
            return Err(FieldError::new("lb_policy", "LOAD_BALANCING_POLICY_CONFIG requires load_balancing_policy"))
        }
        Err(_) => {
            return Err(FieldError::new(
                "lb_policy",
                format!("value must be one of the defined enum values, got {}", c.lb_policy),
            ))
        }
    })
}

fn ring_hash(min: Option<u64>, max: Option<u64>) -> FieldResult<LbPolicy> {
    let minimum_ring_size = min.unwrap_or(1024);
    let maximum_ring_size = max.unwrap_or(8 * 1024 * 1024);
    if minimum_ring_size > maximum_ring_size {
        return Err(FieldError::new(
            "minimum_ring_size",
            "minimum_ring_size must not be larger than maximum_ring_size",
        ));
    }
    Ok(LbPolicy::RingHash { minimum_ring_size, maximum_ring_size })
}

fn upstream_protocol(c: &pb::Cluster) -> FieldResult<(UpstreamProtocol, Duration, Option<u32>)> {
    let mut protocol =
        if c.http2_protocol_options.is_some() { UpstreamProtocol::Http2 } else { UpstreamProtocol::Http1 };
    let mut common = c.common_http_protocol_options;
    for (key, any) in &c.typed_extension_protocol_options {
        let path = format!("typed_extension_protocol_options[{key}]");
        let name = super::decode::effective_type_name(any).map_err(|e| FieldError::new(&path, e.to_string()))?;
        if name != HTTP_PROTOCOL_OPTIONS {
            continue;
        }
        let opts: HttpProtocolOptions = unpack(any).map_err(|e| FieldError::new(&path, e))?;
        protocol = match &opts.upstream_protocol_options {
            Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_)) => {
                    UpstreamProtocol::Http2
                }
                Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(FieldError::new(&path, "HTTP/3 upstreams are not supported"))
                }
                _ => UpstreamProtocol::Http1,
            },
            Some(http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => {
                UpstreamProtocol::UseDownstream
            }
            // ALPN-negotiated: without TLS that is HTTP/1.1, as in Envoy.
            Some(http_protocol_options::UpstreamProtocolOptions::AutoConfig(_)) => UpstreamProtocol::Http1,
            None => protocol,
        };
        if opts.common_http_protocol_options.is_some() {
            common = opts.common_http_protocol_options;
        }
    }
    let idle_timeout = common
        .as_ref()
        .and_then(|o| o.idle_timeout.as_ref())
        .map(duration)
        .transpose()?
        .unwrap_or(Duration::from_secs(3600));
    let max_requests = common
        .as_ref()
        .and_then(|o| o.max_requests_per_connection.map(|v| v.value))
        .or(c.max_requests_per_connection.map(|v| v.value))
        .filter(|v| *v > 0);
    Ok((protocol, idle_timeout, max_requests))
}

fn thresholds(cb: Option<&pb::CircuitBreakers>) -> Thresholds {
    let mut t = Thresholds::default();
    // Remora has one priority for requests, so the DEFAULT (0) thresholds apply.
    if let Some(th) = cb.and_then(|cb| cb.thresholds.iter().find(|t| t.priority == 0)) {
        if let Some(v) = th.max_connections {
            t.max_connections = v.value;
        }
        if let Some(v) = th.max_pending_requests {
            t.max_pending_requests = v.value;
        }
        if let Some(v) = th.max_requests {
            t.max_requests = v.value;
        }
        if let Some(v) = th.max_retries {
            t.max_retries = v.value;
        }
    }
    t
}

/// Validates a `ClusterLoadAssignment` (also used for EDS).
pub fn load_assignment(la: &ClusterLoadAssignment, discovery: &Discovery) -> FieldResult<LoadAssignment> {
    let mut localities = Vec::with_capacity(la.endpoints.len());
    for (i, le) in la.endpoints.iter().enumerate() {
        let path = format!("endpoints[{i}]");
        let mut endpoints = Vec::with_capacity(le.lb_endpoints.len());
        for (j, lb) in le.lb_endpoints.iter().enumerate() {
            let epath = format!("{path}.lb_endpoints[{j}]");
            let endpoint = match &lb.host_identifier {
                Some(HostIdentifier::Endpoint(e)) => e,
                Some(HostIdentifier::EndpointName(_)) => {
                    return Err(FieldError::new(format!("{epath}.endpoint_name"), "named endpoints are not supported"))
                }
                None => return Err(FieldError::new(format!("{epath}.endpoint"), "value is required")),
            };
            let addr = endpoint
                .address
                .as_ref()
                .ok_or_else(|| FieldError::new(format!("{epath}.endpoint.address"), "value is required"))?;
            let address =
                endpoint_address(addr, discovery).map_err(|e| e.within(&format!("{epath}.endpoint.address")))?;
            let weight = lb.load_balancing_weight.map_or(1, |w| w.value);
            if weight == 0 {
                return Err(FieldError::new(
                    format!("{epath}.load_balancing_weight"),
                    "value must be greater than or equal to 1",
                ));
            }
            // UNKNOWN(0), HEALTHY(1), DEGRADED(5) serve; UNHEALTHY, DRAINING, TIMEOUT do not.
            let healthy = matches!(lb.health_status, 0 | 1 | 5);
            let socket_match_metadata = [lb.metadata.as_ref(), le.metadata.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|m| m.filter_metadata.get(SOCKET_MATCH_KEY))
                .map(struct_fields)
                .unwrap_or_default();
            endpoints.push(Endpoint {
                address,
                weight,
                healthy,
                hostname: endpoint.hostname.clone(),
                socket_match_metadata,
            });
        }
        let locality = le.locality.clone().unwrap_or_default();
        localities.push(LocalityEndpoints {
            region: locality.region,
            zone: locality.zone,
            sub_zone: locality.sub_zone,
            priority: le.priority,
            weight: le.load_balancing_weight.map(|w| w.value).filter(|w| *w > 0),
            endpoints,
        });
    }
    Ok(LoadAssignment { localities })
}

fn endpoint_address(addr: &Address, discovery: &Discovery) -> FieldResult<EndpointAddress> {
    match &addr.address {
        Some(address::Address::SocketAddress(sa)) => {
            let port = super::socket_port(sa)?;
            if sa.protocol != 0 {
                return Err(FieldError::new("socket_address.protocol", "only TCP endpoints are supported"));
            }
            match sa.address.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(EndpointAddress::Socket(SocketAddr::new(ip, port))),
                Err(_)
                    if matches!(
                        discovery,
                        Discovery::StrictDns | Discovery::LogicalDns | Discovery::Unsupported(_)
                    ) =>
                {
                    Ok(EndpointAddress::Dns { host: sa.address.clone(), port })
                }
                Err(_) => {
                    Err(FieldError::new("socket_address.address", format!("malformed IP address: {}", sa.address)))
                }
            }
        }
        Some(address::Address::Pipe(p)) => Ok(EndpointAddress::Pipe(p.path.clone())),
        Some(_) => Err(FieldError::new("address", "only socket_address and pipe endpoints are supported")),
        None => Err(FieldError::new("address", "value is required")),
    }
}

/// The cluster's upstream network filters. Istio's metadata exchange is the one Remora speaks; any
/// other could rewrite the connection's bytes, so the cluster is rejected rather than sent
/// traffic without it.
fn cluster_filters(filters: &[pb::Filter]) -> FieldResult<Option<String>> {
    let mut metadata_exchange = None;
    for (i, f) in filters.iter().enumerate() {
        let path = format!("filters[{i}]");
        let Some(any) = &f.typed_config else {
            return Err(FieldError::new(&path, format!("cluster filter '{}' has no typed_config", f.name)));
        };
        let type_name = super::decode::effective_type_name(any)
            .map_err(|e| FieldError::new(format!("{path}.typed_config"), e.to_string()))?;
        if type_name != super::metadata_exchange::TYPE_NAME {
            return Err(FieldError::new(
                format!("{path}.typed_config"),
                format!("Didn't find a registered upstream network filter implementation for '{}' with type URL: '{type_name}'", f.name),
            ));
        }
        metadata_exchange = Some(super::metadata_exchange::protocol(any, &path)?);
    }
    Ok(metadata_exchange)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_with_filters(filters: serde_json::Value) -> pb::Cluster {
        let json = serde_json::json!({"name": "c", "type": "STATIC", "connect_timeout": "1s", "filters": filters});
        crate::bootstrap::decode::from_json(&json, Default::default()).expect("cluster")
    }

    #[test]
    fn metadata_exchange_is_the_only_cluster_filter() {
        let mx = cluster_with_filters(serde_json::json!([{"name": "istio.metadata_exchange", "typed_config": {
            "@type": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange", "protocol": "istio-peer-exchange"}}]));
        let c = Cluster::from_proto(&mx, &mut Notes::default()).expect("accepted");
        assert_eq!(c.metadata_exchange.as_deref(), Some("istio-peer-exchange"));

        let empty = cluster_with_filters(serde_json::json!([{"name": "istio.metadata_exchange", "typed_config": {
            "@type": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"}}]));
        let e = Cluster::from_proto(&empty, &mut Notes::default()).expect_err("no protocol");
        assert!(e.to_string().contains("filters[0].typed_config.protocol"), "{e}");

        let other = cluster_with_filters(serde_json::json!([{"name": "x", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "x", "cluster": "y"}}]));
        let e = Cluster::from_proto(&other, &mut Notes::default()).expect_err("rejected");
        assert!(e.to_string().contains("upstream network filter"), "{e}");
    }
}
