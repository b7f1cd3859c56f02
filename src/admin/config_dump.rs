//! `/config_dump` in Envoy's JSON format (`envoy.admin.v3.*ConfigDump` with `@type`s), so
//! `istioctl proxy-config` and other Envoy tooling can read it: static resources from the
//! bootstrap, dynamic ones (active and warming, with versions) from the xDS client's view, and
//! endpoint assignments with `?include_eds`.

use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::bootstrap::decode;
use crate::state::ProxyState;

fn any<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

fn timestamp(t: std::time::SystemTime) -> Option<envoy_types::pb::google::protobuf::Timestamp> {
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(envoy_types::pb::google::protobuf::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
}

pub fn render(state: &ProxyState, resource: Option<&str>, include_eds: bool) -> Result<serde_json::Value, String> {
    let snap = state.snapshot();
    let dynamic = state.dynamic_config();
    let dynamic_names: std::collections::HashSet<&str> =
        dynamic.active_clusters.iter().map(|c| c.name.as_str()).collect();
    let dynamic_listeners: std::collections::HashSet<&str> =
        dynamic.listeners.iter().map(|l| l.name.as_str()).collect();
    let cluster_state = |e: &crate::model::dynamic::DumpEntry<envoy_types::pb::envoy::config::cluster::v3::Cluster>| {
        admin::clusters_config_dump::DynamicCluster {
            version_info: e.version.clone(),
            cluster: Some(e.proto.to_any()),
            last_updated: timestamp(e.last_updated),
            ..Default::default()
        }
    };
    let listener_state =
        |e: &crate::model::dynamic::DumpEntry<envoy_types::pb::envoy::config::listener::v3::Listener>| {
            admin::listeners_config_dump::DynamicListenerState {
                version_info: e.version.clone(),
                listener: Some(e.proto.to_any()),
                last_updated: timestamp(e.last_updated),
            }
        };
    let clusters = admin::ClustersConfigDump {
        version_info: dynamic.cds_version.clone(),
        dynamic_active_clusters: dynamic.active_clusters.iter().map(cluster_state).collect(),
        dynamic_warming_clusters: dynamic.warming_clusters.iter().map(cluster_state).collect(),
        static_clusters: {
            let mut cs: Vec<_> = snap.clusters.values().filter(|c| !dynamic_names.contains(c.name.as_str())).collect();
            cs.sort_by(|a, b| a.name.cmp(&b.name));
            cs.iter()
                .map(|c| admin::clusters_config_dump::StaticCluster {
                    cluster: Some(c.proto.to_any()),
                    last_updated: None,
                })
                .collect()
        },
    };
    let listeners = admin::ListenersConfigDump {
        version_info: dynamic.lds_version.clone(),
        dynamic_listeners: dynamic
            .listeners
            .iter()
            .map(|l| admin::listeners_config_dump::DynamicListener {
                name: l.name.clone(),
                active_state: l.active.as_ref().map(listener_state),
                warming_state: l.warming.as_ref().map(listener_state),
                ..Default::default()
            })
            .collect(),
        static_listeners: snap
            .listeners
            .iter()
            .filter(|l| !dynamic_listeners.contains(l.name.as_str()))
            .map(|l| admin::listeners_config_dump::StaticListener {
                listener: Some(l.proto.to_any()),
                last_updated: None,
            })
            .collect(),
    };
    let bootstrap = admin::BootstrapConfigDump { bootstrap: snap.bootstrap.as_deref().cloned(), last_updated: None };
    let routes = admin::RoutesConfigDump {
        dynamic_route_configs: dynamic
            .routes
            .iter()
            .map(|r| admin::routes_config_dump::DynamicRouteConfig {
                version_info: r.version.clone(),
                route_config: Some(r.proto.to_any()),
                last_updated: timestamp(r.last_updated),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut configs = vec![any(&bootstrap), any(&clusters), any(&listeners), any(&routes)];
    if include_eds {
        let endpoints = admin::EndpointsConfigDump {
            dynamic_endpoint_configs: dynamic
                .endpoints
                .iter()
                .map(|e| admin::endpoints_config_dump::DynamicEndpointConfig {
                    version_info: e.version.clone(),
                    endpoint_config: Some(e.proto.to_any()),
                    last_updated: timestamp(e.last_updated),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        configs.push(any(&endpoints));
    }
    let dump = admin::ConfigDump { configs };
    let mut json = decode::to_json(&dump).map_err(|e| e.to_string())?;
    if let Some(kind) = resource {
        // `?resource=static_clusters` and friends: flatten into {"configs": [...]} of that field.
        let mut items = Vec::new();
        if let Some(configs) = json.get("configs").and_then(|c| c.as_array()) {
            for c in configs {
                if let Some(arr) = c.get(kind).and_then(|v| v.as_array()) {
                    items.extend(arr.iter().cloned());
                }
            }
        }
        json = serde_json::json!({ "configs": items });
    }
    Ok(json)
}
