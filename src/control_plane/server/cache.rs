//! The versioned snapshot cache: every resource the control plane serves, per type, with a version
//! per type (bumped only when that type's contents change) and a version per resource (a digest).
//!
//! Owns: the current snapshot and change notification (a `watch` channel every stream follows).
//! Must not know the xDS protocol; streams decide what to send from snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::control_plane::resource::Resource;

/// One type's resources at one version.
#[derive(Debug, Default)]
pub struct TypeSnapshot {
    pub version: String,
    pub resources: BTreeMap<String, Arc<Resource>>,
}

impl TypeSnapshot {
    fn same_contents(&self, other: &BTreeMap<String, Arc<Resource>>) -> bool {
        self.resources.len() == other.len()
            && self.resources.iter().zip(other.iter()).all(|((n1, r1), (n2, r2))| n1 == n2 && r1.version == r2.version)
    }
}

/// Everything served, at one instant.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every change.
    pub serial: u64,
    pub types: BTreeMap<&'static str, Arc<TypeSnapshot>>,
    /// Resources for one proxy only, by its node IP (a workload's inbound configuration).
    pub scoped: BTreeMap<String, Vec<Arc<Resource>>>,
}

impl Snapshot {
    /// What the proxy at `node_ip` is served: everything shared, plus its own resources. A type
    /// with resources of its own gets a version of its own, so a change to them alone is pushed.
    pub fn for_node(self: &Arc<Self>, node_ip: Option<&str>) -> Arc<Snapshot> {
        let Some(own) = node_ip.and_then(|ip| self.scoped.get(ip)) else { return self.clone() };
        let mut types = self.types.clone();
        for type_url in own.iter().map(|r| r.type_url).collect::<std::collections::BTreeSet<_>>() {
            let base = self.types.get(type_url);
            let mut resources = base.map(|t| t.resources.clone()).unwrap_or_default();
            let mut digest = String::new();
            for r in own.iter().filter(|r| r.type_url == type_url) {
                digest.push_str(&r.name);
                digest.push_str(&r.version);
                resources.insert(r.name.clone(), r.clone());
            }
            let version = format!(
                "{}+{:x}",
                base.map(|t| t.version.as_str()).unwrap_or("0"),
                crate::control_plane::resource::fnv1a(digest.as_bytes())
            );
            types.insert(type_url, Arc::new(TypeSnapshot { version, resources }));
        }
        Arc::new(Snapshot { serial: self.serial, types, scoped: BTreeMap::new() })
    }

    pub fn get(&self, type_url: &str) -> Option<&Arc<TypeSnapshot>> {
        self.types.get(type_url)
    }

    /// The type's version (`""` before it ever had resources).
    pub fn version(&self, type_url: &str) -> String {
        self.get(type_url).map(|t| t.version.clone()).unwrap_or_default()
    }

    /// How many resources of every type (for logs).
    pub fn counts(&self) -> String {
        self.types
            .iter()
            .map(|(t, s)| format!("{}={}", t.rsplit('.').next().unwrap_or(t), s.resources.len()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The current snapshot, shared by all streams.
pub struct Cache {
    tx: watch::Sender<Arc<Snapshot>>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache { tx: watch::Sender::new(Arc::new(Snapshot::default())) }
    }
}

impl Cache {
    /// A receiver that sees the current snapshot and every later one.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Replaces the served set. Types whose contents did not change keep their version (and their
    /// shared maps); returns whether anything changed, in which case every stream is woken.
    pub fn update(&self, resources: Vec<Resource>) -> bool {
        let old = self.current();
        let serial = old.serial + 1;
        let mut grouped: BTreeMap<&'static str, BTreeMap<String, Arc<Resource>>> = BTreeMap::new();
        let mut scoped: BTreeMap<String, Vec<Arc<Resource>>> = BTreeMap::new();
        for r in resources {
            match &r.scope {
                Some(ip) => scoped.entry(ip.clone()).or_default().push(Arc::new(r)),
                None => {
                    grouped.entry(r.type_url).or_default().insert(r.name.clone(), Arc::new(r));
                }
            }
        }
        let mut changed = scoped != old.scoped;
        let mut types = BTreeMap::new();
        let all: std::collections::BTreeSet<&'static str> = old.types.keys().chain(grouped.keys()).copied().collect();
        for type_url in all {
            let new_map = grouped.remove(type_url).unwrap_or_default();
            match old.types.get(type_url) {
                Some(prev) if prev.same_contents(&new_map) => {
                    types.insert(type_url, prev.clone());
                }
                _ => {
                    changed = true;
                    types.insert(type_url, Arc::new(TypeSnapshot { version: serial.to_string(), resources: new_map }));
                }
            }
        }
        if changed {
            self.tx.send_replace(Arc::new(Snapshot { serial, types, scoped }));
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::resource::{encode, Kind, CLUSTER, LISTENER};
    use serde_json::json;

    fn cluster(name: &str, timeout: &str) -> Resource {
        encode(Kind::Cluster, &json!({"name": name, "connect_timeout": timeout})).unwrap()
    }

    #[test]
    fn versions_bump_per_type_only_on_change() {
        let cache = Cache::default();
        assert!(cache.update(vec![cluster("a", "1s")]));
        let v1 = cache.current().version(CLUSTER);
        assert!(!cache.update(vec![cluster("a", "1s")]));
        assert_eq!(cache.current().version(CLUSTER), v1);
        assert!(cache.update(vec![cluster("a", "2s")]));
        assert_ne!(cache.current().version(CLUSTER), v1);
        assert_eq!(cache.current().version(LISTENER), "");
        assert!(cache.update(vec![]));
        assert!(cache.current().get(CLUSTER).unwrap().resources.is_empty());
    }
}
