//! The validated, immutable configuration the data path reads.
//!
//! Owns: translating envoy-types protos into typed, checked structures and assembling them into one
//! [`Snapshot`]; every error names the resource, the field path and the reason. Must not do network
//! I/O (it reads certificate and body files named by `DataSource`, as Envoy does at load time).

// Envoy still accepts its deprecated fields (legacy header matchers, `http2_protocol_options`, …),
// so the model reads them on purpose.
#![allow(deprecated)]

pub mod cluster;
pub mod cors;
pub mod dynamic;
pub mod error;
pub mod fault;
pub mod format;
pub mod hcm;
pub mod headers;
pub mod istio_alpn;
pub mod istio_peer_metadata;
pub mod listener;
pub mod matcher;
pub mod metadata_exchange;
pub mod retained;
pub mod route;
pub mod tls;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};

use crate::bootstrap::decode;
pub use cluster::Cluster;
pub use error::{ConfigError, FieldError, FieldResult};
pub use listener::Listener;
pub use route::RouteTable;

/// One complete, validated configuration. The data path holds an `Arc<Snapshot>` per connection
/// and never sees a partially applied update.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub listeners: Vec<Arc<Listener>>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub admin_address: Option<SocketAddr>,
    pub node: NodeInfo,
    /// Things accepted but not (fully) implemented, each said once at load time.
    pub notes: Vec<String>,
    /// The bootstrap this snapshot came from (for `/config_dump`).
    pub bootstrap: Option<Arc<Bootstrap>>,
}

#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
}

/// Warnings collected while translating; never errors.
#[derive(Debug, Default)]
pub struct Notes {
    seen: HashSet<String>,
    pub list: Vec<String>,
}

impl Notes {
    pub fn warn(&mut self, msg: String) {
        if self.seen.insert(msg.clone()) {
            self.list.push(msg);
        }
    }

    pub fn per_filter_config<'a>(&mut self, names: impl Iterator<Item = &'a String>) {
        for n in names {
            self.warn(format!(
                "typed_per_filter_config for '{n}' has no effect: Remora does not implement that filter"
            ));
        }
    }
}

/// Builds the snapshot of a static bootstrap, with Envoy's cross-resource checks.
pub fn from_bootstrap(b: &Bootstrap) -> Result<Snapshot, ConfigError> {
    let mut notes = Notes::default();
    let mut snapshot = Snapshot { bootstrap: Some(Arc::new(b.clone())), ..Default::default() };
    if let Some(node) = &b.node {
        snapshot.node = NodeInfo { id: node.id.clone(), cluster: node.cluster.clone() };
    }
    if let Some(admin) = &b.admin {
        if let Some(addr) = &admin.address {
            snapshot.admin_address =
                Some(listener::socket_address(addr).map_err(|e| e.within("address").for_resource("admin", "admin"))?);
        }
    }
    let sr = b.static_resources.clone().unwrap_or_default();
    for (i, c) in sr.clusters.iter().enumerate() {
        let cluster =
            Cluster::from_proto(c, &mut notes).map_err(|e| within_index(e, "static_resources.clusters", i))?;
        if snapshot.clusters.insert(cluster.name.clone(), Arc::new(cluster)).is_some() {
            return Err(ConfigError::new(
                "cluster",
                &c.name,
                format!("static_resources.clusters[{i}].name"),
                format!("cluster manager: duplicate cluster '{}' found", c.name),
            ));
        }
    }
    let mut names = HashSet::new();
    let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
    for (i, l) in sr.listeners.iter().enumerate() {
        let listener =
            Listener::from_proto(l, &mut notes).map_err(|e| within_index(e, "static_resources.listeners", i))?;
        if !l.name.is_empty() && !names.insert(l.name.clone()) {
            // Envoy keeps the first listener of a name and drops later ones without failing.
            notes.warn(format!("duplicate listener '{}' (static_resources.listeners[{i}]) is ignored", l.name));
            continue;
        }
        if listener.bind_to_port && listener.address.port() != 0 {
            if let Some(other) = addresses.insert(listener.address, l.name.clone()) {
                return Err(ConfigError::new(
                    "listener",
                    &l.name,
                    format!("static_resources.listeners[{i}].address"),
                    format!("error adding listener '{}': listener '{other}' has duplicate address '{}' as existing listener", listener.address, listener.address),
                ));
            }
        }
        for table in listener.inline_route_tables() {
            for (vh, cluster) in table.referenced_clusters() {
                if !snapshot.clusters.contains_key(cluster) {
                    return Err(ConfigError::new(
                        "route configuration",
                        &table.name,
                        format!("static_resources.listeners[{i}]"),
                        format!("route: unknown cluster '{cluster}' (virtual host '{vh}')"),
                    ));
                }
            }
        }
        for cluster in listener.tcp_clusters() {
            if !snapshot.clusters.contains_key(cluster) {
                // Envoy resolves tcp_proxy clusters at connection time, so this is only a note.
                notes.warn(format!("listener '{}': tcp_proxy cluster '{cluster}' does not exist", l.name));
            }
        }
        snapshot.listeners.push(Arc::new(listener));
    }
    // Static secrets go straight into the process's secret table (the TLS contexts that name them
    // are built after this, from the same table); a bad one fails the bootstrap like Envoy.
    for (i, secret) in sr.secrets.iter().enumerate() {
        let value = crate::secrets::SecretValue::from_proto(secret).map_err(|e| {
            ConfigError::new("secret", &secret.name, format!("static_resources.secrets[{i}]"), e.to_string())
        })?;
        crate::secrets::store().set(&secret.name, value);
    }
    check_referenced_paths(b)?;
    snapshot.notes = notes.list;
    Ok(snapshot)
}

fn within_index(mut e: ConfigError, list: &str, i: usize) -> ConfigError {
    e.path = format!("{list}[{i}].{}", e.path);
    e
}

/// A protobuf `Duration` as a std `Duration`; negative values are rejected as Envoy's PGV does.
pub fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> FieldResult<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(FieldError::new("", "value must be greater than or equal to 0s"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Reads a `DataSource` (inline or file) as Envoy does at load time.
/// Where a `DataSource` comes from, as Envoy's `/certs` names it: the file, else `<inline>`.
pub fn data_source_path(ds: &DataSource) -> String {
    match &ds.specifier {
        Some(Specifier::Filename(f)) => f.clone(),
        _ => "<inline>".into(),
    }
}

pub fn data_source(ds: &DataSource) -> FieldResult<bytes::Bytes> {
    match &ds.specifier {
        Some(Specifier::InlineBytes(b)) => Ok(bytes::Bytes::from(b.clone())),
        Some(Specifier::InlineString(s)) => Ok(bytes::Bytes::from(s.clone())),
        Some(Specifier::Filename(f)) => std::fs::read(f)
            .map(bytes::Bytes::from)
            .map_err(|e| FieldError::new("filename", format!("Invalid path: {f}: {e}"))),
        Some(Specifier::EnvironmentVariable(v)) => std::env::var(v)
            .map(bytes::Bytes::from)
            .map_err(|_| FieldError::new("environment_variable", format!("Environment variable doesn't exist: {v}"))),
        None => Ok(bytes::Bytes::new()),
    }
}

/// Unpacks an `Any` (or a TypedStruct-wrapped one) as `T`, with unknown fields rejected.
pub fn unpack<T: prost::Message + prost::Name + Default>(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<T, String> {
    decode::unpack(any, decode::DecodeOptions::default()).map_err(|e| e.to_string())
}

/// The file a filesystem `ConfigSource` reads, if it is one.
pub fn config_source_path(cs: &envoy_types::pb::envoy::config::core::v3::ConfigSource) -> Option<&str> {
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
    match &cs.config_source_specifier {
        Some(ConfigSourceSpecifier::Path(p)) => Some(p),
        Some(ConfigSourceSpecifier::PathConfigSource(p)) => Some(&p.path),
        _ => None,
    }
}

/// Envoy refuses to start when a file it must watch does not exist.
pub fn require_existing_path(path: &str) -> FieldResult<()> {
    if std::path::Path::new(path).exists() {
        Ok(())
    } else {
        Err(FieldError::new(
            "path",
            format!("paths must refer to an existing path in the system: '{path}' does not exist"),
        ))
    }
}

fn check_referenced_paths(b: &Bootstrap) -> Result<(), ConfigError> {
    use envoy_types::pb::envoy::config::bootstrap::v3::runtime_layer::LayerSpecifier;
    if let Some(dr) = &b.dynamic_resources {
        for (field, cs) in [("lds_config", &dr.lds_config), ("cds_config", &dr.cds_config)] {
            if let Some(path) = cs.as_ref().and_then(config_source_path) {
                require_existing_path(path).map_err(|e| {
                    e.within(&format!("dynamic_resources.{field}")).for_resource("bootstrap", "dynamic_resources")
                })?;
            }
        }
    }
    if let Some(rt) = &b.layered_runtime {
        for (i, layer) in rt.layers.iter().enumerate() {
            if let Some(LayerSpecifier::DiskLayer(d)) = &layer.layer_specifier {
                if !d.symlink_root.is_empty() && !std::path::Path::new(&d.symlink_root).exists() {
                    return Err(ConfigError::new(
                        "runtime layer",
                        &layer.name,
                        format!("layered_runtime.layers[{i}].disk_layer.symlink_root"),
                        format!(
                            "unable to add filesystem watch for file {}: No such file or directory",
                            d.symlink_root
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The port of a `SocketAddress` (named ports are a Windows/pipe-era feature Remora rejects).
pub fn socket_port(sa: &envoy_types::pb::envoy::config::core::v3::SocketAddress) -> FieldResult<u16> {
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(p).map_err(|_| {
            FieldError::new("socket_address.port_value", format!("value must be less than or equal to 65535, got {p}"))
        }),
        Some(PortSpecifier::NamedPort(_)) => {
            Err(FieldError::new("socket_address.named_port", "named ports are not supported"))
        }
        None => Ok(0),
    }
}
