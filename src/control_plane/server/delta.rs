//! Incremental ADS (`DeltaAggregatedResources`), one task per stream.
//!
//! Protocol as istiod implements it (`pilot/pkg/xds/delta.go`): per type the server tracks what
//! the client holds (name → version, seeded from `initial_resource_versions` on reconnect) and
//! sends only upserts and `removed_resources`; subscriptions follow `resource_names_subscribe` /
//! `resource_names_unsubscribe` (an empty first subscription on LDS/CDS, or `*`, is a wildcard);
//! a NACK is logged and not answered; after each CDS ACK every subscribed CLA is pushed again
//! ("FORCE EDS PUSH for warming"), so changed clusters can finish warming.
//!
//! Owns: per-stream, per-type subscription state and what the client holds. Must not touch files.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use tracing::{debug, info, warn};

use super::cache::Snapshot;
use super::Protocol;
use crate::control_plane::resource::{is_wildcard_type, CLUSTER, ENDPOINT, PUSH_ORDER};

#[derive(Default)]
struct Watch {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds: name → version.
    held: HashMap<String, String>,
    nonce: Option<String>,
}

impl Watch {
    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// One stream's protocol state.
pub(crate) struct DeltaStream {
    conn: u64,
    node: String,
    nonces: u64,
    watches: HashMap<String, Watch>,
}

impl DeltaStream {
    pub(crate) fn new(conn: u64) -> Self {
        DeltaStream { conn, node: String::new(), nonces: 0, watches: HashMap::new() }
    }

    /// Handles one request; returns the responses to send.
    pub(crate) fn on_request(&mut self, req: DeltaDiscoveryRequest, snap: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        if let Some(node) = &req.node {
            if self.node.is_empty() && !node.id.is_empty() {
                self.node = node.id.clone();
                info!(conn = self.conn, node = %self.node, "xDS client connected (delta)");
            }
        }
        let type_url = req.type_url.clone();
        let first = !self.watches.contains_key(&type_url);
        let watch = self.watches.entry(type_url.clone()).or_default();
        if first {
            watch.wildcard = is_wildcard_type(&type_url) && req.resource_names_subscribe.is_empty();
            watch.held = req.initial_resource_versions.clone().into_iter().collect();
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                watch.wildcard = true;
            } else {
                watch.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                watch.wildcard = false;
            } else {
                watch.names.remove(name);
            }
            if !watch.subscribed(name) {
                watch.held.remove(name);
            }
        }
        if let Some(err) = &req.error_detail {
            warn!(
                conn = self.conn,
                node = %self.node,
                type_url = %type_url,
                nonce = %req.response_nonce,
                code = err.code,
                error = %err.message,
                "NACK: the client rejected the update and keeps its previous version"
            );
            return Vec::new();
        }
        let is_ack = !req.response_nonce.is_empty()
            && req.resource_names_subscribe.is_empty()
            && req.resource_names_unsubscribe.is_empty();
        if is_ack {
            debug!(conn = self.conn, node = %self.node, type_url = %type_url, nonce = %req.response_nonce, "ACK");
        }
        let mut out = Vec::new();
        if let Some(r) = self.diff(&type_url, snap, first && is_wildcard_type(&type_url), false) {
            out.push(r);
        }
        if type_url == CLUSTER && is_ack && self.watches.contains_key(ENDPOINT) {
            if let Some(r) = self.diff(ENDPOINT, snap, false, true) {
                out.push(r);
            }
        }
        out
    }

    /// A new snapshot: sends each subscribed type's changes, in istiod's push order.
    pub(crate) fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        let mut types: Vec<String> = self.watches.keys().cloned().collect();
        types.sort_by_key(|t| (PUSH_ORDER.iter().position(|p| p == t).unwrap_or(PUSH_ORDER.len()), t.clone()));
        types.into_iter().filter_map(|t| self.diff(&t, snap, false, false)).collect()
    }

    /// The response bringing the client's copy of `type_url` up to date, if anything differs.
    /// `always` answers even when nothing changed (the first wildcard request); `force` resends
    /// every subscribed resource.
    fn diff(&mut self, type_url: &str, snap: &Snapshot, always: bool, force: bool) -> Option<DeltaDiscoveryResponse> {
        let watch = self.watches.get_mut(type_url)?;
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let current = snap.get(type_url);
        if let Some(t) = current {
            let names: Box<dyn Iterator<Item = &String>> =
                if watch.wildcard { Box::new(t.resources.keys()) } else { Box::new(watch.names.iter()) };
            for name in names {
                let Some(r) = t.resources.get(name) else { continue };
                if force || watch.held.get(name) != Some(&r.version) {
                    resources.push(Resource {
                        name: name.clone(),
                        version: r.version.clone(),
                        resource: Some(r.any.clone()),
                        ..Default::default()
                    });
                }
            }
        }
        let mut gone: Vec<String> = watch
            .held
            .keys()
            .filter(|n| current.is_none_or(|t| !t.resources.contains_key(*n)) || !watch.subscribed(n))
            .cloned()
            .collect();
        gone.sort();
        for name in gone {
            watch.held.remove(&name);
            removed.push(name);
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        for r in &resources {
            watch.held.insert(r.name.clone(), r.version.clone());
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        watch.nonce = Some(nonce.clone());
        let version = snap.version(type_url);
        debug!(
            conn = self.conn,
            node = %self.node,
            type_url,
            version = %version,
            upserts = resources.len(),
            removed = removed.len(),
            "push"
        );
        Some(DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }
}

impl Protocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    fn new(conn: u64) -> Self {
        DeltaStream::new(conn)
    }
    fn request_node(req: &DeltaDiscoveryRequest) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }

    fn default_type_url(req: &mut DeltaDiscoveryRequest, default: &'static str) {
        if req.type_url.is_empty() {
            req.type_url = default.to_string();
        }
    }
    fn on_request(&mut self, req: DeltaDiscoveryRequest, snap: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        DeltaStream::on_request(self, req, snap)
    }
    fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        DeltaStream::on_snapshot(self, snap)
    }
    fn node(&self) -> &str {
        &self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::resource::{encode, Kind, LISTENER};
    use crate::control_plane::server::cache::Cache;
    use serde_json::json;

    fn req(type_url: &str, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn clusters(names: &[(&str, &str)]) -> Vec<crate::control_plane::resource::Resource> {
        let mut v: Vec<_> = names
            .iter()
            .map(|(n, t)| encode(Kind::Cluster, &json!({"name": n, "connect_timeout": t})).unwrap())
            .collect();
        v.extend(names.iter().map(|(n, _)| encode(Kind::Endpoint, &json!({"cluster_name": n})).unwrap()));
        v
    }

    #[test]
    fn sends_changes_and_removals_only() {
        let cache = Cache::default();
        cache.update(clusters(&[("a", "1s"), ("b", "1s")]));
        let mut s = DeltaStream::new(1);
        let r = s.on_request(req(CLUSTER, &[], &[], ""), &cache.current());
        assert_eq!(r[0].resources.len(), 2);
        // empty LDS still gets an (empty) first answer
        assert_eq!(s.on_request(req(LISTENER, &[], &[], ""), &cache.current()).len(), 1);
        cache.update(clusters(&[("a", "2s")]));
        let pushed = s.on_snapshot(&cache.current());
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].resources.len(), 1);
        assert_eq!(pushed[0].removed_resources, vec!["b".to_string()]);
        assert!(s.on_snapshot(&cache.current()).is_empty());
    }

    #[test]
    fn reconnect_with_initial_versions_and_forced_eds() {
        let cache = Cache::default();
        cache.update(clusters(&[("a", "1s")]));
        let snap = cache.current();
        let held = snap.get(CLUSTER).unwrap().resources["a"].version.clone();
        let mut s = DeltaStream::new(2);
        let mut first = req(CLUSTER, &[], &[], "");
        first.initial_resource_versions.insert("a".into(), held);
        let r = s.on_request(first, &snap);
        assert_eq!(r.len(), 1, "the first wildcard request is answered");
        assert!(r[0].resources.is_empty(), "nothing the client already has");
        let e = s.on_request(req(ENDPOINT, &["a"], &[], ""), &snap);
        assert_eq!(e[0].resources.len(), 1);
        assert!(s.on_request(req(ENDPOINT, &[], &[], &e[0].nonce), &snap).is_empty(), "EDS ACK");
        let forced = s.on_request(req(CLUSTER, &[], &[], &r[0].nonce), &snap);
        assert_eq!(forced.len(), 1, "CDS ACK forces an EDS push");
        assert_eq!(forced[0].type_url, ENDPOINT);
        // unsubscribe: forgotten without a removal
        assert!(s.on_request(req(ENDPOINT, &[], &["a"], ""), &snap).is_empty());
    }
}
