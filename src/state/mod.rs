//! Process-wide proxy state shared by the data path and the admin API: the current snapshot, the
//! cluster manager, the stats store, and lifecycle flags (draining, health-check failing).
//!
//! Owns: the one `ArcSwap<Snapshot>` the rest of the proxy reads, the RDS route tables HTTP
//! connection managers resolve per request (also an `ArcSwap`, so readers never lock), and the
//! xDS client's view of dynamic resources for `/config_dump`. Must not build config itself;
//! `model` does, and the config sources (bootstrap, xDS) call [`ProxyState::apply`] /
//! [`ProxyState::apply_dynamic`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::model::dynamic::DynamicConfig;
use crate::model::{RouteTable, Snapshot};
use crate::telemetry::stats::Store;
use crate::upstream::ClusterManager;

/// Envoy's `server.state`: 0 LIVE, 1 DRAINING, 2 PRE_INITIALIZING, 3 INITIALIZING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    Live = 0,
    Draining = 1,
    PreInitializing = 2,
    Initializing = 3,
}

#[derive(Debug)]
pub struct ProxyState {
    snapshot: ArcSwap<Snapshot>,
    /// RDS route tables by name (what `RouteSource::Rds` resolves to).
    routes: ArcSwap<HashMap<String, Arc<RouteTable>>>,
    /// Dynamic resources as accepted by the xDS client (for `/config_dump`).
    dynamic: ArcSwap<DynamicConfig>,
    pub clusters: ClusterManager,
    pub stats: Store,
    /// This proxy's side of Istio's TCP metadata exchange (its frame is the bootstrap node's).
    pub metadata_exchange: Arc<crate::tcp::metadata_exchange::LocalExchange>,
    /// Downstream connections open on every listener (for drain completion).
    pub connections: Arc<crate::telemetry::stats::Gauge>,
    server_state: AtomicU8,
    healthcheck_failed: AtomicBool,
    pub drain_time: Duration,
    pub started: SystemTime,
    /// Fires once when draining starts (SIGTERM, `/drain_listeners`, `/quitquitquit`).
    drain_tx: tokio::sync::watch::Sender<bool>,
    /// Fires once when the process should exit.
    shutdown_tx: tokio::sync::watch::Sender<bool>,
}

impl ProxyState {
    pub fn new(drain_time: Duration, node: &envoy_types::pb::envoy::config::core::v3::Node) -> Arc<Self> {
        let stats = Store::default();
        Arc::new(ProxyState {
            metadata_exchange: Arc::new(crate::tcp::metadata_exchange::LocalExchange::new(node, &stats)),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            routes: ArcSwap::from_pointee(HashMap::new()),
            dynamic: ArcSwap::from_pointee(DynamicConfig::default()),
            clusters: ClusterManager::default(),
            connections: Arc::default(),
            stats,
            server_state: AtomicU8::new(ServerState::Initializing as u8),
            healthcheck_failed: AtomicBool::new(false),
            drain_time,
            started: SystemTime::now(),
            drain_tx: tokio::sync::watch::channel(false).0,
            shutdown_tx: tokio::sync::watch::channel(false).0,
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Makes `snapshot` current: clusters first (so routes never point at a cluster that is not
    /// there yet), then the snapshot itself.
    pub async fn apply(&self, snapshot: Snapshot) {
        self.clusters.apply(&snapshot.clusters, &self.stats).await;
        self.snapshot.store(Arc::new(snapshot));
    }

    /// Makes an xDS-assembled configuration current, make-before-break: clusters first (so routes
    /// never point at a cluster that is not there yet), then the RDS tables, then the snapshot.
    pub async fn apply_dynamic(&self, snapshot: Snapshot, routes: HashMap<String, Arc<RouteTable>>) {
        self.clusters.apply(&snapshot.clusters, &self.stats).await;
        self.routes.store(Arc::new(routes));
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The current RDS route table named `name` (lock-free; per request).
    pub fn route_table(&self, name: &str) -> Option<Arc<RouteTable>> {
        self.routes.load().get(name).cloned()
    }

    pub fn dynamic_config(&self) -> Arc<DynamicConfig> {
        self.dynamic.load_full()
    }

    pub fn set_dynamic_config(&self, d: DynamicConfig) {
        self.dynamic.store(Arc::new(d));
    }

    pub fn server_state(&self) -> ServerState {
        match self.server_state.load(Ordering::Relaxed) {
            0 => ServerState::Live,
            1 => ServerState::Draining,
            2 => ServerState::PreInitializing,
            _ => ServerState::Initializing,
        }
    }

    pub fn set_server_state(&self, s: ServerState) {
        self.server_state.store(s as u8, Ordering::Relaxed);
        self.stats.gauge("server.state").set(s as i64);
    }

    pub fn healthcheck_failed(&self) -> bool {
        self.healthcheck_failed.load(Ordering::Relaxed)
    }

    pub fn set_healthcheck_failed(&self, failed: bool) {
        self.healthcheck_failed.store(failed, Ordering::Relaxed);
    }

    pub fn start_draining(&self) {
        self.set_server_state(ServerState::Draining);
        self.drain_tx.send_replace(true);
    }

    pub fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.drain_tx.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        *self.drain_tx.borrow()
    }

    pub fn shutdown(&self) {
        self.drain_tx.send_replace(true);
        self.shutdown_tx.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }
}
