//! Snapshots from static plus dynamic (xDS) resources: the pure half of the xDS client.
//!
//! Owns: building an EDS cluster with the endpoints EDS delivered, the cross-resource checks xDS
//! needs (listener address clashes, names taken by static resources), assembling one [`Snapshot`]
//! from the bootstrap's static snapshot and the active dynamic clusters and listeners, and the
//! plain-data view of dynamic resources that `/config_dump` renders. Must not do I/O or know about
//! streams, nonces or versions beyond carrying them for the dump.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::cluster::v3 as cluster_pb;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3 as listener_pb;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use super::cluster::Discovery;
use super::error::ConfigError;
use super::hcm::RouteSource;
use super::listener::NetworkTerminal;
use super::retained::Retained;
use super::{Cluster, Listener, Notes, Snapshot};

/// An EDS cluster with `cla` as its endpoints. The endpoints are folded into the cluster's proto so
/// that a change of endpoints is a change of the cluster for the cluster manager, while an
/// unchanged cluster with unchanged endpoints compares equal and keeps its state.
pub fn eds_cluster(
    c: &Retained<cluster_pb::Cluster>,
    cla: &Retained<ClusterLoadAssignment>,
) -> Result<Cluster, ConfigError> {
    let undecodable = |e: prost::DecodeError| ConfigError::new("cluster", "", "", format!("cannot decode: {e}"));
    let mut proto = c.decode().map_err(undecodable)?;
    let mut cla = cla.decode().map_err(undecodable)?;
    cla.cluster_name = proto.name.clone();
    proto.load_assignment = Some(cla);
    let mut notes = Notes::default();
    let mut cluster = Cluster::from_proto(&proto, &mut notes)?;
    cluster.definition = c.clone();
    Ok(cluster)
}

/// The EDS resource name a cluster needs, if it is an EDS cluster.
pub fn eds_service_name(c: &Cluster) -> Option<&str> {
    match &c.discovery {
        Discovery::Eds { service_name } => Some(service_name),
        _ => None,
    }
}

/// `(stat_prefix, route_config_name)` for every HCM of the listener that uses RDS.
pub fn rds_routes(l: &Listener) -> Vec<(String, String)> {
    l.filter_chains
        .iter()
        .chain(l.default_filter_chain.iter())
        .filter_map(|fc| match &fc.terminal {
            NetworkTerminal::Http(h) => match &h.route_source {
                RouteSource::Rds(name) => Some((h.stat_prefix.clone(), name.clone())),
                RouteSource::Inline => None,
            },
            _ => None,
        })
        .collect()
}

/// Envoy refuses a listener whose bound address another listener already has.
pub fn check_address<'a>(l: &Listener, others: impl IntoIterator<Item = &'a Listener>) -> Result<(), ConfigError> {
    if !l.bind_to_port || l.address.port() == 0 {
        return Ok(());
    }
    for o in others {
        if o.name != l.name && o.bind_to_port && o.address == l.address {
            return Err(ConfigError::new(
                "listener",
                &l.name,
                "address",
                format!(
                    "error adding listener '{}': listener '{}' has duplicate address '{}' as existing listener",
                    l.address, o.name, l.address
                ),
            ));
        }
    }
    Ok(())
}

/// The static snapshot plus the active dynamic clusters and listeners, in one new snapshot.
/// Static EDS clusters take their endpoints from `static_eds` when EDS delivered them.
pub fn assemble(
    base: &Snapshot,
    static_eds: &HashMap<String, Arc<Cluster>>,
    clusters: impl IntoIterator<Item = Arc<Cluster>>,
    listeners: impl IntoIterator<Item = Arc<Listener>>,
) -> Snapshot {
    let mut all = base.clusters.clone();
    for (name, c) in static_eds {
        all.insert(name.clone(), c.clone());
    }
    for c in clusters {
        all.entry(c.name.clone()).or_insert(c);
    }
    let mut ls = base.listeners.clone();
    ls.extend(listeners);
    Snapshot {
        listeners: ls,
        clusters: all,
        admin_address: base.admin_address,
        node: base.node.clone(),
        notes: Vec::new(),
        bootstrap: base.bootstrap.clone(),
    }
}

/// One accepted version of a dynamic resource, for `/config_dump`.
#[derive(Debug, Clone)]
pub struct DumpEntry<P> {
    pub name: String,
    pub version: String,
    pub proto: Retained<P>,
    pub last_updated: SystemTime,
}

/// A dynamic listener: the version serving and the version waiting for its routes.
#[derive(Debug, Clone)]
pub struct ListenerDump {
    pub name: String,
    pub active: Option<DumpEntry<listener_pb::Listener>>,
    pub warming: Option<DumpEntry<listener_pb::Listener>>,
}

/// What the xDS client has accepted, as `/config_dump` shows it.
#[derive(Debug, Clone, Default)]
pub struct DynamicConfig {
    pub cds_version: String,
    pub lds_version: String,
    pub active_clusters: Vec<DumpEntry<cluster_pb::Cluster>>,
    pub warming_clusters: Vec<DumpEntry<cluster_pb::Cluster>>,
    pub listeners: Vec<ListenerDump>,
    pub routes: Vec<DumpEntry<RouteConfiguration>>,
    pub endpoints: Vec<DumpEntry<ClusterLoadAssignment>>,
}
