//! One xDS resource as the control plane serves it: its type, name, version and encoded body.
//!
//! Owns: turning proto3 JSON (a plain Envoy resource, or one the Istio translation built) into an
//! encoded `Any` through Remora's own decoder (`bootstrap::decode`), so files and translations are
//! judged by exactly the rules the proxy applies. Must not know where the JSON came from.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde_json::Value;

use crate::bootstrap::decode::{self, DecodeError, DecodeOptions};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The order istiod pushes types in (CDS → EDS → LDS → RDS → SDS), "make before break".
pub const PUSH_ORDER: [&str; 5] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET];

/// Wildcard types: an empty subscription means "everything" and SotW responses are complete sets.
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// The five resource kinds the control plane serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Listener,
    Cluster,
    Route,
    Endpoint,
    Secret,
}

impl Kind {
    /// The kind for a message name (`envoy.config.cluster.v3.Cluster`) or type URL.
    pub fn from_type(type_name_or_url: &str) -> Option<Kind> {
        match decode::type_name(type_name_or_url) {
            "envoy.config.listener.v3.Listener" => Some(Kind::Listener),
            "envoy.config.cluster.v3.Cluster" => Some(Kind::Cluster),
            "envoy.config.route.v3.RouteConfiguration" => Some(Kind::Route),
            "envoy.config.endpoint.v3.ClusterLoadAssignment" => Some(Kind::Endpoint),
            "envoy.extensions.transport_sockets.tls.v3.Secret" => Some(Kind::Secret),
            _ => None,
        }
    }

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Listener => LISTENER,
            Kind::Cluster => CLUSTER,
            Kind::Route => ROUTE,
            Kind::Endpoint => ENDPOINT,
            Kind::Secret => SECRET,
        }
    }

    /// The short name used in logs (`Listener`, `Cluster`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Kind::Listener => "Listener",
            Kind::Cluster => "Cluster",
            Kind::Route => "RouteConfiguration",
            Kind::Endpoint => "ClusterLoadAssignment",
            Kind::Secret => "Secret",
        }
    }
}

/// An encoded resource, ready to be put on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub type_url: &'static str,
    pub name: String,
    /// A digest of the resource's JSON (objects have sorted keys, so it is canonical; the protobuf
    /// encoding is not, as map fields are encoded in hash order): stable across restarts, so delta
    /// clients that reconnect with `initial_resource_versions` are not sent what they already have.
    pub version: String,
    pub any: Any,
    /// Served only to the proxy whose node IP this is (a workload's own inbound configuration);
    /// `None`: served to every proxy.
    pub scope: Option<String>,
}

impl Resource {
    fn new(kind: Kind, name: String, body: Vec<u8>, json: &Value) -> Self {
        let version = format!("{:016x}", fnv1a(json.to_string().as_bytes()));
        Resource {
            type_url: kind.type_url(),
            name,
            version,
            any: Any { type_url: kind.type_url().to_string(), value: body },
            scope: None,
        }
    }
}

/// Why a JSON document is not a valid resource of its kind.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResourceError {
    #[error("{kind} '{name}': {source}")]
    Decode { kind: &'static str, name: String, source: DecodeError },
    #[error("{kind}: the resource has no name")]
    NoName { kind: &'static str },
}

/// Decodes proto3 JSON (without a top-level `@type`) as a resource of `kind` and encodes it.
pub fn encode(kind: Kind, json: &Value) -> Result<Resource, ResourceError> {
    let opts = DecodeOptions::default();
    let guess = guess_name(kind, json);
    let wrap = |source| ResourceError::Decode { kind: kind.label(), name: guess.clone(), source };
    let (name, body) = match kind {
        Kind::Listener => {
            let m: Listener = decode::from_json(json, opts).map_err(wrap)?;
            (m.name.clone(), m.encode_to_vec())
        }
        Kind::Cluster => {
            let m: Cluster = decode::from_json(json, opts).map_err(wrap)?;
            (m.name.clone(), m.encode_to_vec())
        }
        Kind::Route => {
            let m: RouteConfiguration = decode::from_json(json, opts).map_err(wrap)?;
            (m.name.clone(), m.encode_to_vec())
        }
        Kind::Endpoint => {
            let m: ClusterLoadAssignment = decode::from_json(json, opts).map_err(wrap)?;
            (m.cluster_name.clone(), m.encode_to_vec())
        }
        Kind::Secret => {
            let m: Secret = decode::from_json(json, opts).map_err(wrap)?;
            (m.name.clone(), m.encode_to_vec())
        }
    };
    if name.is_empty() {
        return Err(ResourceError::NoName { kind: kind.label() });
    }
    Ok(Resource::new(kind, name, body, json))
}

/// The resource's name as written (for error messages before decoding succeeded).
pub fn guess_name(kind: Kind, json: &Value) -> String {
    let key = if kind == Kind::Endpoint { ["cluster_name", "clusterName"] } else { ["name", "name"] };
    key.iter().find_map(|k| json.get(*k).and_then(Value::as_str)).unwrap_or("").to_string()
}

/// FNV-1a, 64 bit: a small, deterministic digest for resource versions.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_a_cluster_and_names_bad_fields() {
        let ok = encode(Kind::Cluster, &json!({"name": "c", "connect_timeout": "1s"})).unwrap();
        assert_eq!(ok.name, "c");
        assert_eq!(ok.type_url, CLUSTER);
        let err = encode(Kind::Cluster, &json!({"name": "c", "bogus": 1})).unwrap_err().to_string();
        assert!(err.contains("Cluster 'c'") && err.contains("bogus"), "{err}");
        assert!(encode(Kind::Cluster, &json!({"connect_timeout": "1s"})).is_err());
    }
}
