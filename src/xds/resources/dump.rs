//! The `/config_dump` view of dynamic resources: active and warming clusters and listeners with the
//! version each was accepted at, route configurations and endpoint assignments.
//!
//! Owns: building [`DynamicConfig`]. Must not render JSON (`admin` does).

use super::Engine;
use crate::model::dynamic::{DynamicConfig, ListenerDump};
use crate::xds::Kind;

impl Engine {
    pub fn dump(&self) -> DynamicConfig {
        let warming_clusters = self
            .clusters
            .iter()
            .filter(|(n, a)| self.active_clusters.get(*n).is_none_or(|act| act.seq != a.seq))
            .map(|(_, a)| a.dump())
            .collect();
        let mut names: Vec<&String> = self.listeners.keys().chain(self.active_listeners.keys()).collect();
        names.sort();
        names.dedup();
        let listeners = names
            .into_iter()
            .map(|n| {
                let active = self.active_listeners.get(n);
                let warming = self.listeners.get(n).filter(|a| active.is_none_or(|act| act.seq != a.seq));
                ListenerDump {
                    name: n.clone(),
                    active: active.map(|a| a.dump.clone()),
                    warming: warming.map(|a| a.dump()),
                }
            })
            .collect();
        DynamicConfig {
            cds_version: self.version(Kind::Cluster),
            lds_version: self.version(Kind::Listener),
            active_clusters: self.active_clusters.values().map(|a| a.dump.clone()).collect(),
            warming_clusters,
            listeners,
            routes: self.routes.values().map(|a| a.dump()).collect(),
            endpoints: self.endpoints.values().map(|a| a.dump()).collect(),
        }
    }
}
