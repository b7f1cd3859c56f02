//! ServiceEntry ports × DestinationRule subsets → outbound clusters and their endpoints, as
//! istiod's cluster builder makes them for a sidecar (`pilot/pkg/networking/core/cluster*.go`):
//! `outbound|<port>||<host>` plus `outbound|<port>|<subset>|<host>` per subset, EDS with a
//! ClusterLoadAssignment of the same name (subset endpoints filtered by labels), the DR traffic
//! policy merged DR → port level → subset → subset port level.
//!
//! Owns: Cluster and ClusterLoadAssignment JSON. Must not build listeners or routes.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::registry::{protocol, Endpoint, Protocol, Registry, Service};
use super::types::{
    envoy_duration, parse_duration, ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, Resolution, ServicePort, SimpleLb, TlsMode, TrafficPolicy,
};
use super::Generated;
use crate::control_plane::resource::Kind;

const MAX: u64 = 4_294_967_295;
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A DestinationRule with its host resolved.
pub struct DrRef<'a> {
    pub name: String,
    pub namespace: String,
    pub host: String,
    pub spec: &'a DestinationRuleSpec,
}

/// The DestinationRule for a hostname: an exact host wins over the longest matching wildcard.
pub fn find_dr<'a, 'b>(drs: &'b [DrRef<'a>], hostname: &str) -> Option<&'b DrRef<'a>> {
    drs.iter().find(|d| d.host == hostname).or_else(|| {
        drs.iter().filter(|d| d.host.starts_with('*') && hostname.ends_with(&d.host[1..])).max_by_key(|d| d.host.len())
    })
}

/// The effective traffic policy for one cluster.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub lb: Option<LoadBalancerSettings>,
    pub pool: Option<ConnectionPoolSettings>,
    pub outlier: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

/// istiod's `MergeTrafficPolicy`: set fields of `tp` (then of its port-level entry for `port`)
/// replace those of `base`.
pub fn merge_policy(base: Policy, tp: Option<&TrafficPolicy>, port: u32) -> Policy {
    let mut p = base;
    let Some(tp) = tp else { return p };
    overlay(&mut p, &tp.load_balancer, &tp.connection_pool, &tp.outlier_detection, &tp.tls);
    if let Some(pl) = tp.port_level_settings.iter().find(|s| s.port.is_some_and(|x| x.number == port)) {
        overlay(&mut p, &pl.load_balancer, &pl.connection_pool, &pl.outlier_detection, &pl.tls);
    }
    p
}

fn overlay(
    p: &mut Policy,
    lb: &Option<LoadBalancerSettings>,
    pool: &Option<ConnectionPoolSettings>,
    outlier: &Option<OutlierDetection>,
    tls: &Option<ClientTlsSettings>,
) {
    if lb.is_some() {
        p.lb = lb.clone();
    }
    if pool.is_some() {
        p.pool = pool.clone();
    }
    if outlier.is_some() {
        p.outlier = outlier.clone();
    }
    if tls.is_some() {
        p.tls = tls.clone();
    }
}

/// The policy of `outbound|port|subset|host` (subset `""` = the default cluster).
pub fn cluster_policy(dr: Option<&DrRef<'_>>, port: u32, subset: &str) -> Policy {
    let Some(dr) = dr else { return Policy::default() };
    let base = merge_policy(Policy::default(), dr.spec.traffic_policy.as_ref(), port);
    if subset.is_empty() {
        return base;
    }
    let sub = dr.spec.subsets.iter().find(|s| s.name == subset).and_then(|s| s.traffic_policy.as_ref());
    merge_policy(base, sub, port)
}

/// `outbound|<port>|<subset>|<host>`.
pub fn cluster_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Every outbound cluster (and its CLA), plus `PassthroughCluster` and `BlackHoleCluster` (the
/// targets of the `allow_any` route) when there is any service.
pub fn build(reg: &Registry, drs: &[DrRef<'_>], metadata_exchange: bool) -> Vec<Generated> {
    let mut out = Vec::new();
    for svc in reg.services.values() {
        let dr = find_dr(drs, &svc.hostname);
        for port in &svc.ports {
            out.extend(build_one(svc, port, dr, "", &BTreeMap::new(), metadata_exchange));
            if let Some(dr) = dr {
                for subset in &dr.spec.subsets {
                    out.extend(build_one(svc, port, Some(dr), &subset.name, &subset.labels, metadata_exchange));
                }
            }
        }
    }
    if reg.services.is_empty() {
        return out;
    }
    out.push(Generated::new(
        Kind::Cluster,
        json!({
            "name": "PassthroughCluster",
            "type": "ORIGINAL_DST",
            "connect_timeout": "10s",
            "lb_policy": "CLUSTER_PROVIDED",
            "circuit_breakers": {"thresholds": [max_thresholds()]},
        }),
    ));
    out.push(Generated::new(
        Kind::Cluster,
        json!({"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"}),
    ));
    out
}

fn max_thresholds() -> Value {
    json!({"max_connections": MAX, "max_pending_requests": MAX, "max_requests": MAX, "max_retries": MAX, "track_remaining": true})
}

fn build_one(
    svc: &Service,
    port: &ServicePort,
    dr: Option<&DrRef<'_>>,
    subset: &str,
    labels: &BTreeMap<String, String>,
    metadata_exchange: bool,
) -> Vec<Generated> {
    let name = cluster_name(port.number, subset, &svc.hostname);
    let policy = cluster_policy(dr, port.number, subset);
    let endpoints: Vec<&Endpoint> = svc.endpoints.iter().filter(|e| e.matches(labels)).collect();
    let mut c = Map::new();
    c.insert("name".into(), json!(name));
    let mut out = Vec::new();
    let passthrough_lb = policy.lb.as_ref().and_then(|l| l.simple) == Some(SimpleLb::Passthrough);
    match svc.resolution {
        _ if passthrough_lb => {
            c.insert("type".into(), json!("ORIGINAL_DST"));
        }
        Resolution::None if endpoints.is_empty() => {
            c.insert("type".into(), json!("ORIGINAL_DST"));
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            let logical = svc.resolution == Resolution::DnsRoundRobin;
            c.insert("type".into(), json!(if logical { "LOGICAL_DNS" } else { "STRICT_DNS" }));
            c.insert("dns_lookup_family".into(), json!("V4_ONLY"));
            let mut cla = load_assignment(&name, svc, port, &endpoints);
            if endpoints.is_empty() {
                cla = json!({"cluster_name": name, "endpoints": [{"lb_endpoints": [lb_endpoint(&svc.hostname, port.number, None)]}]});
            } else if logical {
                // LOGICAL_DNS takes exactly one address.
                if let Some(first) = endpoints.first() {
                    cla = load_assignment(&name, svc, port, &[*first]);
                }
            }
            c.insert("load_assignment".into(), cla);
        }
        _ => {
            c.insert("type".into(), json!("EDS"));
            c.insert(
                "eds_cluster_config".into(),
                json!({"eds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}, "service_name": name}),
            );
            out.push(Generated::new(Kind::Endpoint, load_assignment(&name, svc, port, &endpoints)));
        }
    }
    let connect_timeout = policy
        .pool
        .as_ref()
        .and_then(|p| p.tcp.as_ref())
        .and_then(|t| t.connect_timeout.as_deref())
        .and_then(|d| parse_duration(d).ok())
        .map(envoy_duration)
        .unwrap_or_else(|| "10s".into());
    c.insert("connect_timeout".into(), json!(connect_timeout));
    let original_dst = passthrough_lb || c.get("type") == Some(&json!("ORIGINAL_DST"));
    apply_lb(&mut c, policy.lb.as_ref(), original_dst);
    apply_pool(&mut c, policy.pool.as_ref(), protocol(port));
    if let Some(o) = &policy.outlier {
        apply_outlier(&mut c, o);
    }
    apply_tls(&mut c, policy.tls.as_ref(), svc, port, subset, &endpoints);
    let mut istio = json!({
        "services": [{"host": svc.hostname, "name": svc.name, "namespace": svc.namespace}],
        "default_original_port": port.number,
    });
    if let Some(dr) = dr {
        istio["config"] = json!(format!(
            "/apis/networking.istio.io/v1alpha3/namespaces/{}/destination-rule/{}",
            dr.namespace, dr.name
        ));
    }
    if !subset.is_empty() {
        istio["subset"] = json!(subset);
    }
    if matches!(policy.tls.as_ref().and_then(|t| t.mode), Some(TlsMode::Simple | TlsMode::Mutual)) {
        // istiod's AddALPNOverrideToMetadata: user TLS keeps its own ALPN.
        istio["alpn_override"] = json!("false");
    }
    c.insert("metadata".into(), json!({"filter_metadata": {"istio": istio}}));
    if metadata_exchange {
        // istiod's cluster filter: TCP connections that negotiate `istio-peer-exchange` carry
        // the metadata-exchange frame.
        c.insert("filters".into(), json!([metadata_exchange_filter()]));
    }
    out.insert(0, Generated::new(Kind::Cluster, Value::Object(c)));
    out
}

fn load_assignment(name: &str, svc: &Service, port: &ServicePort, endpoints: &[&Endpoint]) -> Value {
    let mut by_locality: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in endpoints {
        let mut lb = lb_endpoint(&e.address, e.port_for(port), e.weight);
        let mut fm = Map::new();
        if e.istio_mtls() {
            fm.insert("envoy.transport_socket_match".into(), json!({"tlsMode": "istio"}));
        }
        let canonical = e
            .labels
            .get("service.istio.io/canonical-name")
            .or_else(|| e.labels.get("app"))
            .cloned()
            .unwrap_or_else(|| svc.name.clone());
        let revision = e
            .labels
            .get("service.istio.io/canonical-revision")
            .or_else(|| e.labels.get("version"))
            .cloned()
            .unwrap_or_else(|| "latest".into());
        fm.insert(
            "istio".into(),
            json!({"workload": format!("{};{};{};{};", e.workload, e.namespace, canonical, revision)}),
        );
        lb["metadata"] = json!({"filter_metadata": fm});
        by_locality.entry(e.locality.clone().unwrap_or_default()).or_default().push(lb);
    }
    let groups: Vec<Value> = by_locality
        .into_iter()
        .map(|(loc, eps)| {
            let mut g = json!({"lb_endpoints": eps});
            if !loc.is_empty() {
                let mut parts = loc.splitn(3, '/');
                g["locality"] = json!({
                    "region": parts.next().unwrap_or(""),
                    "zone": parts.next().unwrap_or(""),
                    "sub_zone": parts.next().unwrap_or(""),
                });
            }
            g
        })
        .collect();
    json!({"cluster_name": name, "endpoints": groups})
}

fn lb_endpoint(address: &str, port: u32, weight: Option<u32>) -> Value {
    let mut v = json!({"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}});
    if let Some(w) = weight {
        v["load_balancing_weight"] = json!(w);
    }
    v
}

fn apply_lb(c: &mut Map<String, Value>, lb: Option<&LoadBalancerSettings>, original_dst: bool) {
    if original_dst {
        c.insert("lb_policy".into(), json!("CLUSTER_PROVIDED"));
        return;
    }
    let warmup = lb
        .and_then(|l| l.warmup_duration_secs.as_deref())
        .and_then(|d| parse_duration(d).ok())
        .map(|d| json!({"slow_start_config": {"slow_start_window": envoy_duration(d)}}));
    if let Some(ch) = lb.and_then(|l| l.consistent_hash.as_ref()) {
        if let Some(m) = &ch.maglev {
            c.insert("lb_policy".into(), json!("MAGLEV"));
            c.insert("maglev_lb_config".into(), json!({"table_size": m.table_size.unwrap_or(65537)}));
        } else {
            let size = ch.ring_hash.and_then(|r| r.minimum_ring_size).or(ch.minimum_ring_size).unwrap_or(1024);
            c.insert("lb_policy".into(), json!("RING_HASH"));
            c.insert("ring_hash_lb_config".into(), json!({"minimum_ring_size": size}));
        }
        return;
    }
    match lb.and_then(|l| l.simple) {
        Some(SimpleLb::RoundRobin) => {
            c.insert("lb_policy".into(), json!("ROUND_ROBIN"));
            if let Some(w) = warmup {
                c.insert("round_robin_lb_config".into(), w);
            }
        }
        Some(SimpleLb::Random) => {
            c.insert("lb_policy".into(), json!("RANDOM"));
        }
        _ => {
            c.insert("lb_policy".into(), json!("LEAST_REQUEST"));
            if let Some(w) = warmup {
                c.insert("least_request_lb_config".into(), w);
            }
        }
    }
}

/// The route `hash_policy` that goes with a consistent-hash load balancer.
pub fn hash_policy(policy: &Policy) -> Option<Value> {
    let ch = policy.lb.as_ref()?.consistent_hash.as_ref()?;
    if let Some(h) = &ch.http_header_name {
        return Some(json!([{"header": {"header_name": h}}]));
    }
    if let Some(c) = &ch.http_cookie {
        let mut cookie = json!({"name": c.name});
        if let Some(p) = &c.path {
            cookie["path"] = json!(p);
        }
        if let Some(ttl) = c.ttl.as_deref().and_then(|t| parse_duration(t).ok()) {
            cookie["ttl"] = json!(envoy_duration(ttl));
        }
        return Some(json!([{"cookie": cookie}]));
    }
    if ch.use_source_ip == Some(true) {
        return Some(json!([{"connection_properties": {"source_ip": true}}]));
    }
    if let Some(q) = &ch.http_query_parameter_name {
        return Some(json!([{"query_parameter": {"name": q}}]));
    }
    None
}

fn apply_pool(c: &mut Map<String, Value>, pool: Option<&ConnectionPoolSettings>, proto: Protocol) {
    let mut t = max_thresholds();
    let mut common = Map::new();
    let mut h2 = Map::new();
    let mut upgrade = proto == Protocol::Http2;
    let mut use_client = false;
    if let Some(tcp) = pool.and_then(|p| p.tcp.as_ref()) {
        if let Some(n) = tcp.max_connections.filter(|n| *n > 0) {
            t["max_connections"] = json!(n);
        }
        if let Some(k) = &tcp.tcp_keepalive {
            let mut ka = Map::new();
            if let Some(p) = k.probes {
                ka.insert("keepalive_probes".into(), json!(p));
            }
            if let Some(d) = k.time.as_deref().and_then(|d| parse_duration(d).ok()) {
                ka.insert("keepalive_time".into(), json!(d.as_secs()));
            }
            if let Some(d) = k.interval.as_deref().and_then(|d| parse_duration(d).ok()) {
                ka.insert("keepalive_interval".into(), json!(d.as_secs()));
            }
            c.insert("upstream_connection_options".into(), json!({"tcp_keepalive": ka}));
        }
        if let Some(d) = tcp.max_connection_duration.as_deref().and_then(|d| parse_duration(d).ok()) {
            common.insert("max_connection_duration".into(), json!(envoy_duration(d)));
        }
        if let Some(d) = tcp.idle_timeout.as_deref().and_then(|d| parse_duration(d).ok()) {
            common.insert("idle_timeout".into(), json!(envoy_duration(d)));
        }
    }
    if let Some(http) = pool.and_then(|p| p.http.as_ref()) {
        for (key, v) in [
            ("max_pending_requests", http.http1_max_pending_requests),
            ("max_requests", http.http2_max_requests),
            ("max_retries", http.max_retries),
        ] {
            if let Some(n) = v.filter(|n| *n > 0) {
                t[key] = json!(n);
            }
        }
        if let Some(d) = http.idle_timeout.as_deref().and_then(|d| parse_duration(d).ok()) {
            common.insert("idle_timeout".into(), json!(envoy_duration(d)));
        }
        if let Some(n) = http.max_requests_per_connection.filter(|n| *n > 0) {
            common.insert("max_requests_per_connection".into(), json!(n));
        }
        if let Some(n) = http.max_concurrent_streams.filter(|n| *n > 0) {
            h2.insert("max_concurrent_streams".into(), json!(n));
        }
        match http.h2_upgrade_policy {
            Some(H2UpgradePolicy::Upgrade) => upgrade = true,
            Some(H2UpgradePolicy::DoNotUpgrade) => upgrade = proto == Protocol::Http2,
            _ => {}
        }
        use_client = http.use_client_protocol == Some(true);
    }
    c.insert("circuit_breakers".into(), json!({"thresholds": [t]}));
    if proto == Protocol::Tcp || (common.is_empty() && !upgrade && !use_client) {
        return;
    }
    let mut opts = Map::new();
    opts.insert("@type".into(), json!(format!("type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}")));
    if !common.is_empty() {
        opts.insert("common_http_protocol_options".into(), Value::Object(common));
    }
    if use_client {
        opts.insert(
            "use_downstream_protocol_config".into(),
            json!({"http_protocol_options": {}, "http2_protocol_options": h2}),
        );
    } else if upgrade {
        opts.insert("explicit_http_config".into(), json!({"http2_protocol_options": h2}));
    } else {
        opts.insert("explicit_http_config".into(), json!({"http_protocol_options": {}}));
    }
    c.insert("typed_extension_protocol_options".into(), json!({HTTP_PROTOCOL_OPTIONS: opts}));
}

fn apply_outlier(c: &mut Map<String, Value>, o: &OutlierDetection) {
    let mut od = Map::new();
    let five = o.consecutive_5xx_errors.or(o.consecutive_errors.and_then(|n| u32::try_from(n).ok()));
    if let Some(n) = five {
        od.insert("consecutive_5xx".into(), json!(n));
        od.insert("enforcing_consecutive_5xx".into(), json!(if n > 0 { 100 } else { 0 }));
    }
    if let Some(n) = o.consecutive_gateway_errors {
        od.insert("consecutive_gateway_failure".into(), json!(n));
        od.insert("enforcing_consecutive_gateway_failure".into(), json!(if n > 0 { 100 } else { 0 }));
    }
    if let Some(d) = o.interval.as_deref().and_then(|d| parse_duration(d).ok()) {
        od.insert("interval".into(), json!(envoy_duration(d)));
    }
    if let Some(d) = o.base_ejection_time.as_deref().and_then(|d| parse_duration(d).ok()) {
        od.insert("base_ejection_time".into(), json!(envoy_duration(d)));
    }
    if let Some(p) = o.max_ejection_percent {
        od.insert("max_ejection_percent".into(), json!(p));
    }
    if o.split_external_local_origin_errors == Some(true) {
        od.insert("split_external_local_origin_errors".into(), json!(true));
        if let Some(n) = o.consecutive_local_origin_failures {
            od.insert("consecutive_local_origin_failure".into(), json!(n));
            od.insert("enforcing_consecutive_local_origin_failure".into(), json!(100));
        }
    }
    od.insert("enforcing_success_rate".into(), json!(0));
    c.insert("outlier_detection".into(), Value::Object(od));
    c.insert(
        "common_lb_config".into(),
        json!({"healthy_panic_threshold": {"value": f64::from(o.min_health_percent.unwrap_or(0))}}),
    );
}

/// The SDS config istiod gives sidecars: pilot-agent's `sds-grpc` cluster.
/// `istio.metadata_exchange` as istiod writes it (the cluster filter and the inbound network
/// filter share it).
pub(super) fn metadata_exchange_filter() -> Value {
    json!({
        "name": "istio.metadata_exchange",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
            "protocol": "istio-peer-exchange"
        }
    })
}

pub(super) fn agent_sds(name: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "api_config_source": {
                "api_type": "GRPC",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}],
                "set_node_on_first_message_only": true,
                "transport_api_version": "V3",
            },
            "initial_fetch_timeout": "0s",
            "resource_api_version": "V3",
        }
    })
}

fn ads_sds(name: &str) -> Value {
    json!({"name": name, "sds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}})
}

fn san_matchers(sans: &[String]) -> Vec<Value> {
    sans.iter()
        .map(|s| {
            let kind = if s.starts_with("spiffe://") { "URI" } else { "DNS" };
            json!({"san_type": kind, "matcher": {"exact": s}})
        })
        .collect()
}

/// Istio mTLS (§7.1 of the contract): workload cert `default` and trust bundle `ROOTCA` from SDS.
fn istio_mutual(sni: String, sans: &[String], proto: Protocol) -> Value {
    let alpn = if proto == Protocol::Http2 {
        json!(["istio-peer-exchange", "istio", "h2"])
    } else {
        json!(["istio-peer-exchange", "istio"])
    };
    let mut validation = json!({});
    if !sans.is_empty() {
        validation["match_typed_subject_alt_names"] = json!(san_matchers(sans));
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                "alpn_protocols": alpn,
                "tls_certificate_sds_secret_configs": [agent_sds("default")],
                "combined_validation_context": {
                    "default_validation_context": validation,
                    "validation_context_sds_secret_config": agent_sds("ROOTCA"),
                },
            },
            "sni": sni,
        }
    })
}

fn apply_tls(
    c: &mut Map<String, Value>,
    tls: Option<&ClientTlsSettings>,
    svc: &Service,
    port: &ServicePort,
    subset: &str,
    endpoints: &[&Endpoint],
) {
    let proto = protocol(port);
    let dns_srv = format!("outbound_.{}_.{}_.{}", port.number, subset, svc.hostname);
    match tls.and_then(|t| t.mode) {
        Some(TlsMode::Disable) => {}
        None => {
            // Auto mTLS: istiod always adds the match; this control plane only does when some
            // endpoint is labelled for it, because it does not serve `default`/`ROOTCA` yet and
            // Envoy would otherwise wait for those secrets before warming the cluster.
            if endpoints.iter().any(|e| e.istio_mtls()) {
                c.insert(
                    "transport_socket_matches".into(),
                    json!([
                        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": istio_mutual(dns_srv, &svc.subject_alt_names, proto)},
                        {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}},
                    ]),
                );
            }
        }
        Some(TlsMode::IstioMutual) => {
            let t = tls.cloned().unwrap_or_default();
            let sans = if t.subject_alt_names.is_empty() { svc.subject_alt_names.clone() } else { t.subject_alt_names };
            c.insert("transport_socket".into(), istio_mutual(t.sni.unwrap_or(dns_srv), &sans, proto));
        }
        Some(mode @ (TlsMode::Simple | TlsMode::Mutual)) => {
            let t = tls.cloned().unwrap_or_default();
            let mut common = Map::new();
            let sans = if t.subject_alt_names.is_empty() { svc.subject_alt_names.clone() } else { t.subject_alt_names };
            if let Some(cred) = &t.credential_name {
                if mode == TlsMode::Mutual {
                    common.insert(
                        "tls_certificate_sds_secret_configs".into(),
                        json!([ads_sds(&format!("kubernetes://{cred}"))]),
                    );
                }
                if t.insecure_skip_verify != Some(true) {
                    let mut v = json!({});
                    if !sans.is_empty() {
                        v["match_typed_subject_alt_names"] = json!(san_matchers(&sans));
                    }
                    common.insert(
                        "combined_validation_context".into(),
                        json!({"default_validation_context": v, "validation_context_sds_secret_config": ads_sds(&format!("kubernetes://{cred}-cacert"))}),
                    );
                }
            } else {
                if mode == TlsMode::Mutual {
                    if let (Some(cert), Some(key)) = (&t.client_certificate, &t.private_key) {
                        common.insert(
                            "tls_certificates".into(),
                            json!([{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}]),
                        );
                    }
                }
                if t.insecure_skip_verify != Some(true) {
                    let mut v = Map::new();
                    if let Some(ca) = &t.ca_certificates {
                        v.insert("trusted_ca".into(), json!({"filename": ca}));
                    }
                    if let Some(crl) = &t.ca_crl {
                        v.insert("crl".into(), json!({"filename": crl}));
                    }
                    if !sans.is_empty() {
                        v.insert("match_typed_subject_alt_names".into(), json!(san_matchers(&sans)));
                    }
                    if !v.is_empty() {
                        common.insert("validation_context".into(), Value::Object(v));
                    }
                }
            }
            if proto == Protocol::Http2 {
                common.insert("alpn_protocols".into(), json!(["h2"]));
            }
            let mut ctx = json!({
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": common,
            });
            if let Some(sni) = &t.sni {
                ctx["sni"] = json!(sni);
            }
            c.insert("transport_socket".into(), json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx}));
        }
    }
}
