//! `/config_dump` in Envoy's JSON format (`envoy.admin.v3.*ConfigDump` with `@type`s), so
//! `istioctl proxy-config` and other Envoy tooling can read it.

use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::bootstrap::decode;
use crate::state::ProxyState;

fn any<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

pub fn render(state: &ProxyState, resource: Option<&str>) -> Result<serde_json::Value, String> {
    let snap = state.snapshot();
    let clusters = admin::ClustersConfigDump {
        static_clusters: {
            let mut cs: Vec<_> = snap.clusters.values().collect();
            cs.sort_by(|a, b| a.name.cmp(&b.name));
            cs.iter()
                .map(|c| admin::clusters_config_dump::StaticCluster {
                    cluster: Some(any(&*c.proto)),
                    last_updated: None,
                })
                .collect()
        },
        ..Default::default()
    };
    let listeners = admin::ListenersConfigDump {
        static_listeners: snap
            .listeners
            .iter()
            .map(|l| admin::listeners_config_dump::StaticListener {
                listener: Some(any(&*l.proto)),
                last_updated: None,
            })
            .collect(),
        ..Default::default()
    };
    let bootstrap = admin::BootstrapConfigDump { bootstrap: snap.bootstrap.as_deref().cloned(), last_updated: None };
    let dump = admin::ConfigDump { configs: vec![any(&bootstrap), any(&clusters), any(&listeners)] };
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
