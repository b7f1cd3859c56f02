//! Outbound listeners, one per service port, in the shape istiod gives a sidecar: `0.0.0.0_<port>`
//! with an HTTP connection manager on RDS route `"<port>"` for HTTP ports, or a `tcp_proxy` to
//! `outbound|<port>||<host>` for TCP ports. istiod's listeners do not bind (`bind_to_port: false`,
//! traffic arrives through iptables and `virtualOutbound`); these do, on the configured
//! `--listener-address` and, per port, `--listener-port PORT=BIND_PORT`, so a proxy can be used
//! directly without iptables (on loopback in tests).
//!
//! Owns: Listener JSON. Must not build routes or clusters.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use tracing::warn;

use super::clusters::cluster_name;
use super::registry::{protocol, Registry};
use super::{Generated, Options};
use crate::control_plane::resource::Kind;

pub fn build(reg: &Registry, fault_ports: &BTreeSet<u32>, opts: &Options) -> Vec<Generated> {
    let mut http_ports = BTreeSet::new();
    let mut tcp_ports: BTreeMap<u32, String> = BTreeMap::new();
    for svc in reg.services.values() {
        for p in &svc.ports {
            if protocol(p).is_http() {
                http_ports.insert(p.number);
            } else if let Some(owner) = tcp_ports.get(&p.number) {
                warn!(port = p.number, service = %svc.hostname, owner = %owner, "TCP port already served by another service; ignored");
            } else {
                tcp_ports.insert(p.number, svc.hostname.clone());
            }
        }
    }
    let mut out = Vec::new();
    for port in &http_ports {
        if let Some(owner) = tcp_ports.remove(port) {
            warn!(port, service = %owner, "port is both HTTP and TCP; the HTTP listener wins");
        }
        let mut filters = Vec::new();
        if fault_ports.contains(port) {
            filters.push(json!({
                "name": "envoy.filters.http.fault",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}
            }));
        }
        // istiod puts the CORS filter on every sidecar HCM; routes carry the policies.
        filters.push(json!({
            "name": "envoy.filters.http.cors",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}
        }));
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": format!("outbound_0.0.0.0_{port}"),
            "rds": {
                "config_source": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                "route_config_name": port.to_string(),
            },
            "http_filters": filters,
            "use_remote_address": false,
            "stream_idle_timeout": "0s",
            "upgrade_configs": [{"upgrade_type": "websocket"}],
        });
        out.push(listener(
            *port,
            opts,
            json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}),
        ));
    }
    for (port, host) in tcp_ports {
        let cluster = cluster_name(port, "", &host);
        let tcp = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": cluster,
            "cluster": cluster,
        });
        out.push(listener(port, opts, json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp})));
    }
    out
}

fn listener(port: u32, opts: &Options, filter: Value) -> Generated {
    let bind_port = opts.listener_ports.get(&port).copied().unwrap_or(port);
    Generated::new(
        Kind::Listener,
        json!({
            "name": format!("0.0.0.0_{port}"),
            "address": {"socket_address": {"address": opts.listener_address, "port_value": bind_port}},
            "traffic_direction": "OUTBOUND",
            "filter_chains": [{"filters": [filter]}],
        }),
    )
}
