//! The xDS client's stats, with Envoy's names (pilot-agent's readiness probe reads some of them):
//! `control_plane.connected_state`, `cluster_manager.cds.*`, `listener_manager.lds.*`,
//! `http.<stat_prefix>.rds.<route>.*`, `cluster.<name>.update_*` (EDS), and the active / warming
//! gauges.
//!
//! Owns: stat names and handles. Must not decide when they move.

use std::sync::Arc;

use super::Kind;
use crate::telemetry::stats::{Counter, Gauge, Store};

/// Envoy's subscription stats (`update_attempt`, `update_success`, `update_rejected`,
/// `update_failure`, `init_fetch_timeout`) under one scope.
#[derive(Debug, Clone)]
pub struct SubscriptionStats {
    pub attempt: Arc<Counter>,
    pub success: Arc<Counter>,
    pub rejected: Arc<Counter>,
    pub failure: Arc<Counter>,
    pub init_fetch_timeout: Arc<Counter>,
}

impl SubscriptionStats {
    pub fn new(store: &Store, scope: &str) -> Self {
        let c = |s: &str| store.counter(&format!("{scope}.{s}"));
        SubscriptionStats {
            attempt: c("update_attempt"),
            success: c("update_success"),
            rejected: c("update_rejected"),
            failure: c("update_failure"),
            init_fetch_timeout: c("init_fetch_timeout"),
        }
    }

    pub fn record(&self, ok: bool) {
        self.attempt.inc();
        if ok {
            self.success.inc()
        } else {
            self.rejected.inc()
        }
    }
}

#[derive(Debug, Clone)]
pub struct XdsStats {
    pub store: Store,
    pub connected_state: Arc<Gauge>,
    pub cds: SubscriptionStats,
    pub lds: SubscriptionStats,
    pub active_clusters: Arc<Gauge>,
    pub warming_clusters: Arc<Gauge>,
    pub listeners_active: Arc<Gauge>,
    pub listeners_warming: Arc<Gauge>,
}

impl XdsStats {
    pub fn new(store: &Store) -> Self {
        XdsStats {
            store: store.clone(),
            connected_state: store.gauge("control_plane.connected_state"),
            cds: SubscriptionStats::new(store, "cluster_manager.cds"),
            lds: SubscriptionStats::new(store, "listener_manager.lds"),
            active_clusters: store.gauge("cluster_manager.active_clusters"),
            warming_clusters: store.gauge("cluster_manager.warming_clusters"),
            listeners_active: store.gauge("listener_manager.total_listeners_active"),
            listeners_warming: store.gauge("listener_manager.total_listeners_warming"),
        }
    }

    /// The stats of a wildcard type (CDS/LDS), `None` for the named ones.
    pub fn wildcard(&self, kind: Kind) -> Option<&SubscriptionStats> {
        match kind {
            Kind::Cluster => Some(&self.cds),
            Kind::Listener => Some(&self.lds),
            _ => None,
        }
    }

    /// RDS: `http.<stat_prefix>.rds.<route_config_name>.*`.
    pub fn rds(&self, stat_prefix: &str, route: &str) -> SubscriptionStats {
        SubscriptionStats::new(&self.store, &format!("http.{stat_prefix}.rds.{route}"))
    }

    /// EDS: `cluster.<cluster_name>.*`.
    pub fn eds(&self, cluster: &str) -> SubscriptionStats {
        SubscriptionStats::new(&self.store, &format!("cluster.{cluster}"))
    }
}
