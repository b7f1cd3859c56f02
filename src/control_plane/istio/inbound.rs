//! The inbound side of each workload's proxy, the way istiod builds a sidecar's `virtualInbound`
//! chains (`pilot/pkg/networking/core/filterchain_options.go`): for every port a service selects
//! the workload on, a listener on the workload's address and port whose filter chains follow the
//! PeerAuthentication mode in force there (workload port-level, workload, namespace, mesh root
//! namespace, default PERMISSIVE): STRICT accepts mutual TLS only, PERMISSIVE mutual TLS with
//! Istio's ALPN and plaintext, DISABLE plaintext only. Mutual TLS uses the workload's `default`
//! certificate and the mesh `ROOTCA` from `sds-grpc`, requires a client certificate from the
//! trust domain, and forwards the caller's identity in `x-forwarded-client-cert`.
//!
//! These resources are for one proxy each (scoped to the workload's address, which the proxy's
//! node names). Unlike istiod's (bound through iptables to 15006 and sent to the application
//! through an ORIGINAL_DST cluster from 127.0.0.6), the listener binds the workload's address
//! itself and the `inbound|<port>||` cluster sends to the application on 127.0.0.1:<port>: there
//! is no traffic capture without iptables, so only workloads on an address other than 127.0.0.1
//! get one (and only those labelled `security.istio.io/tlsMode: istio`, i.e. with a proxy).
//!
//! Owns: inbound listeners and clusters. Must not build outbound resources.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::clusters::{agent_sds, metadata_exchange_filter};
use super::registry::{protocol, Endpoint, Protocol, Registry};
use super::types::{MtlsMode, PeerAuthenticationSpec};
use super::{Generated, Options};
use crate::control_plane::resource::Kind;

/// Istio's root namespace: PeerAuthentications there without a selector are mesh-wide.
const ROOT_NAMESPACE: &str = "istio-system";
/// `allIstioMtlsALPNs`: what an Istio client offers over mutual TLS.
const ISTIO_MTLS_ALPNS: [&str; 5] = ["istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"];

/// A workload's inbound ports and their protocols.
type InboundPorts = BTreeMap<u32, Protocol>;

/// A PeerAuthentication and its namespace.
pub struct PaRef<'a> {
    pub namespace: String,
    pub spec: &'a PeerAuthenticationSpec,
}

pub fn build(reg: &Registry, policies: &[PaRef<'_>], opts: &Options) -> Vec<Generated> {
    // Each WorkloadEntry once, with the ports its services reach it on.
    let mut workloads: BTreeMap<(String, String), (&Endpoint, InboundPorts)> = BTreeMap::new();
    for svc in reg.services.values() {
        // Workloads with a proxy (labelled for Istio mTLS, as injected pods are) on an address
        // of their own.
        let proxied = |e: &&Endpoint| !e.workload.is_empty() && e.istio_mtls() && e.address != "127.0.0.1";
        for ep in svc.endpoints.iter().filter(proxied) {
            let entry = workloads.entry((ep.namespace.clone(), ep.workload.clone())).or_insert((ep, BTreeMap::new()));
            for p in &svc.ports {
                entry.1.entry(ep.port_for(p)).or_insert(protocol(p));
            }
        }
    }
    let mut out = Vec::new();
    for (ep, ports) in workloads.values() {
        for (&port, &proto) in ports {
            let mode = mode_for(policies, ep, port);
            out.push(Generated::for_workload(Kind::Listener, listener(ep, port, proto, mode, opts), &ep.address));
            out.push(Generated::for_workload(Kind::Cluster, cluster(port, proto), &ep.address));
        }
    }
    out
}

/// The mode in force for `port` of the workload: the most specific policy that sets one.
fn mode_for(policies: &[PaRef<'_>], ep: &Endpoint, port: u32) -> MtlsMode {
    let selects = |p: &&PaRef<'_>| {
        p.namespace == ep.namespace
            && p.spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty() && ep.matches(&s.match_labels))
    };
    let unselective = |ns: &str| {
        let ns = ns.to_string();
        move |p: &&PaRef<'_>| p.namespace == ns && p.spec.selector.as_ref().is_none_or(|s| s.match_labels.is_empty())
    };
    let workload = policies.iter().find(selects);
    let candidates = [
        workload.and_then(|p| p.spec.port_level_mtls.get(&port.to_string())).map(|m| m.mode()),
        workload.and_then(|p| p.spec.mtls.as_ref()).map(|m| m.mode()),
        policies.iter().find(unselective(&ep.namespace)).and_then(|p| p.spec.mtls.as_ref()).map(|m| m.mode()),
        policies.iter().find(unselective(ROOT_NAMESPACE)).and_then(|p| p.spec.mtls.as_ref()).map(|m| m.mode()),
    ];
    candidates.into_iter().flatten().find(|m| *m != MtlsMode::Unset).unwrap_or(MtlsMode::Permissive)
}

fn listener(ep: &Endpoint, port: u32, proto: Protocol, mode: MtlsMode, opts: &Options) -> Value {
    let terminal = if proto.is_http() { hcm(port) } else { tcp_proxy(port) };
    let mut chains = Vec::new();
    if mode != MtlsMode::Disable {
        let mut m = json!({"destination_port": port, "transport_protocol": "tls"});
        if mode == MtlsMode::Permissive {
            m["application_protocols"] = json!(ISTIO_MTLS_ALPNS);
        }
        chains.push(json!({
            "name": format!("inbound_mtls_{port}"),
            "filter_chain_match": m,
            "filters": if opts.metadata_exchange { vec![metadata_exchange_filter(), terminal.clone()] } else { vec![terminal.clone()] },
            "transport_socket": downstream_tls(proto, &opts.trust_domain),
        }));
    }
    if mode != MtlsMode::Strict {
        chains.push(json!({
            "name": format!("inbound_plaintext_{port}"),
            "filter_chain_match": {"destination_port": port, "transport_protocol": "raw_buffer"},
            "filters": [terminal],
        }));
    }
    json!({
        "name": format!("virtualInbound_{port}"),
        "address": {"socket_address": {"address": ep.address, "port_value": port}},
        "traffic_direction": "INBOUND",
        "listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}
        }],
        "filter_chains": chains,
    })
}

fn hcm(port: u32) -> Value {
    let cluster = format!("inbound|{port}||");
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": format!("inbound_0.0.0.0_{port}"),
            "route_config": {
                "name": cluster,
                "virtual_hosts": [{"name": format!("inbound|http|{port}"), "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}],
                "validate_clusters": false
            },
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
            }],
            "forward_client_cert_details": "APPEND_FORWARD",
            "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true},
            "use_remote_address": false,
        }
    })
}

fn tcp_proxy(port: u32) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": format!("inbound|{port}||"),
            "cluster": format!("inbound|{port}||"),
        }
    })
}

/// istiod's inbound `DownstreamTlsContext` (`authn/utils.go`).
fn downstream_tls(proto: Protocol, trust_domain: &str) -> Value {
    let alpn =
        if proto.is_http() { json!(["h2", "http/1.1"]) } else { json!(["istio-peer-exchange", "h2", "http/1.1"]) };
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_2",
                    "tls_maximum_protocol_version": "TLSv1_3",
                    "cipher_suites": ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
                        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-GCM-SHA256"]
                },
                "alpn_protocols": alpn,
                "tls_certificate_sds_secret_configs": [agent_sds("default")],
                "combined_validation_context": {
                    "default_validation_context": {"match_subject_alt_names": [{"prefix": format!("spiffe://{trust_domain}/")}]},
                    "validation_context_sds_secret_config": agent_sds("ROOTCA")
                }
            }
        }
    })
}

fn cluster(port: u32, proto: Protocol) -> Value {
    let name = format!("inbound|{port}||");
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    });
    if proto == Protocol::Http2 {
        c["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }});
    }
    c
}
