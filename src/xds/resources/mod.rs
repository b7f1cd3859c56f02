//! What the xDS client has accepted, and turning it into configuration.
//!
//! `validate` decodes and checks one resource of each type; `apply` runs an update through the
//! store (Envoy's per-type rules: complete sets for SotW CDS/LDS, upserts and removals otherwise),
//! warms clusters and listeners, assembles the snapshot and hands it to the [`Sink`]; `dump` is the
//! `/config_dump` view.
//!
//! Owns: the accepted resources, their versions, what is active and what is warming, and the
//! server's move to LIVE. Must not touch streams or sockets.

mod apply;
mod dump;
mod validate;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use tokio::time::Instant;

use super::config::{FetchTimeout, XdsConfig};
use super::stats::XdsStats;
use super::{Kind, Sink};
use crate::model::dynamic::DumpEntry;
use crate::model::retained::Retained;
use crate::model::{Cluster, Listener, RouteTable, Snapshot};
use crate::state::ProxyState;

pub use apply::Update;

/// One accepted version of a resource.
#[derive(Debug)]
pub struct Accepted<P, M> {
    pub name: String,
    pub version: String,
    pub proto: Retained<P>,
    pub model: M,
    pub updated: SystemTime,
    /// Changes whenever the resource changes (unchanged re-sends keep it).
    pub seq: u64,
    /// When this version was accepted (its warming started).
    pub since: Instant,
    /// How long it may warm: a cluster's EDS `initial_fetch_timeout` (others warm by their kind's).
    pub warm_timeout: FetchTimeout,
}

impl<P, M> Accepted<P, M> {
    fn dump(&self) -> DumpEntry<P> {
        DumpEntry {
            name: self.name.clone(),
            version: self.version.clone(),
            proto: self.proto.clone(),
            last_updated: self.updated,
        }
    }
}

/// One resource of a response, protocol-agnostic (SotW: the response version; delta: its own).
#[derive(Debug)]
pub struct Incoming {
    pub name: String,
    pub version: String,
    pub any: Any,
}

/// A cluster as the data path uses it (EDS clusters with their endpoints folded in).
#[derive(Debug, Clone)]
struct ActiveCluster {
    seq: u64,
    cla_seq: Option<u64>,
    model: Arc<Cluster>,
    dump: DumpEntry<PbCluster>,
}

#[derive(Debug, Clone)]
struct ActiveListener {
    seq: u64,
    model: Arc<Listener>,
    dump: DumpEntry<PbListener>,
}

/// The resource store and warming state machine behind one xDS client.
pub struct Engine {
    base: Arc<Snapshot>,
    sink: Arc<dyn Sink>,
    state: Arc<ProxyState>,
    pub stats: XdsStats,
    cds: Option<FetchTimeout>,
    lds: Option<FetchTimeout>,
    clusters: BTreeMap<String, Accepted<PbCluster, Arc<Cluster>>>,
    endpoints: BTreeMap<String, Accepted<ClusterLoadAssignment, ()>>,
    listeners: BTreeMap<String, Accepted<PbListener, Arc<Listener>>>,
    routes: BTreeMap<String, Accepted<RouteConfiguration, Arc<RouteTable>>>,
    secrets: BTreeMap<String, Accepted<Secret, Arc<crate::secrets::SecretValue>>>,
    versions: HashMap<Kind, String>,
    active_clusters: BTreeMap<String, ActiveCluster>,
    active_listeners: BTreeMap<String, ActiveListener>,
    static_eds: HashMap<String, ActiveCluster>,
    warming_clusters: BTreeSet<String>,
    warming_listeners: BTreeSet<String>,
    seq: u64,
    started: Instant,
    received: HashSet<Kind>,
    timed_out_init: HashSet<Kind>,
    live: bool,
    /// Responses handled over the life of the client (a stream that got one was healthy).
    pub responses: u64,
}

impl Engine {
    pub fn new(cfg: &XdsConfig, base: Arc<Snapshot>, state: Arc<ProxyState>, sink: Arc<dyn Sink>) -> Engine {
        let stats = XdsStats::new(&state.stats);
        Engine {
            base,
            sink,
            state,
            stats,
            cds: cfg.cds,
            lds: cfg.lds,
            clusters: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            listeners: BTreeMap::new(),
            routes: BTreeMap::new(),
            secrets: BTreeMap::new(),
            versions: HashMap::new(),
            active_clusters: BTreeMap::new(),
            active_listeners: BTreeMap::new(),
            static_eds: HashMap::new(),
            warming_clusters: BTreeSet::new(),
            warming_listeners: BTreeSet::new(),
            seq: 0,
            started: Instant::now(),
            received: HashSet::new(),
            timed_out_init: HashSet::new(),
            live: false,
            responses: 0,
        }
    }

    /// Whether the client subscribes to `kind` at all.
    pub fn subscribes(&self, kind: Kind) -> bool {
        match kind {
            Kind::Cluster => self.cds.is_some(),
            Kind::Listener => self.lds.is_some(),
            Kind::Endpoint | Kind::Route | Kind::Secret => true,
        }
    }

    /// The last version accepted for `kind` (SotW `version_info`).
    pub fn version(&self, kind: Kind) -> String {
        self.versions.get(&kind).cloned().unwrap_or_default()
    }

    /// The resource versions held for `kind` (delta `initial_resource_versions`).
    pub fn known_versions(&self, kind: Kind) -> HashMap<String, String> {
        fn versions<P, M>(m: &BTreeMap<String, Accepted<P, M>>) -> HashMap<String, String> {
            m.iter().map(|(k, v)| (k.clone(), v.version.clone())).collect()
        }
        match kind {
            Kind::Cluster => versions(&self.clusters),
            Kind::Endpoint => versions(&self.endpoints),
            Kind::Listener => versions(&self.listeners),
            Kind::Route => versions(&self.routes),
            Kind::Secret => versions(&self.secrets),
        }
    }

    pub fn set_connected(&self, connected: bool) {
        self.stats.connected_state.set(i64::from(connected));
    }

    /// A stream failed: Envoy counts it as an update failure of each subscription.
    pub fn record_stream_failure(&self) {
        for kind in [Kind::Cluster, Kind::Listener] {
            if self.subscribes(kind) {
                if let Some(s) = self.stats.wildcard(kind) {
                    s.failure.inc();
                }
            }
        }
    }

    /// The EDS / RDS names wanted now (see `subscriptions`).
    pub fn wanted(&self, kind: Kind) -> BTreeSet<String> {
        super::subscriptions::wanted(
            kind,
            self.base.clusters.values().chain(self.clusters.values().map(|a| &a.model)),
            self.base.listeners.iter().chain(self.listeners.values().map(|a| &a.model)),
        )
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}
