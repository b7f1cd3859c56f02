//! State-of-the-world ADS (`StreamAggregatedResources`), one task per stream.
//!
//! Protocol as istiod implements it (`pilot/pkg/xds/ads.go`, `ShouldRespond`): the first request
//! per type is answered with the current set; an ACK (matching nonce, no error) with unchanged
//! names is not answered; a NACK (`error_detail`) is logged and not answered, so the client keeps
//! its last good version until the next change; stale nonces are ignored; changed names are
//! answered (for EDS/RDS only when names were added); an empty EDS/RDS subscription means
//! "unsubscribe". LDS/CDS responses are complete sets, EDS/RDS carry the requested names. After a
//! CDS response the next EDS request is always answered, so changed clusters can finish warming.
//!
//! Owns: per-stream, per-type subscription state, versions and nonces. Must not touch files.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tracing::{debug, info, warn};

use super::Protocol;

use super::cache::Snapshot;
use crate::control_plane::resource::{is_wildcard_type, CLUSTER, ENDPOINT, PUSH_ORDER};

#[derive(Default)]
struct Watch {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Nonce of the last response on this type.
    nonce: Option<String>,
    /// What the last response held (name → resource version); `None` before the first response.
    sent: Option<BTreeMap<String, String>>,
    /// Answer the next request even if it looks like an ACK (EDS after a CDS push).
    always_respond: bool,
}

/// One stream's protocol state.
pub(crate) struct SotwStream {
    conn: u64,
    node: String,
    nonces: u64,
    watches: HashMap<String, Watch>,
}

impl SotwStream {
    pub(crate) fn new(conn: u64) -> Self {
        SotwStream { conn, node: String::new(), nonces: 0, watches: HashMap::new() }
    }

    /// Handles one request; returns the responses to send.
    pub(crate) fn on_request(&mut self, req: DiscoveryRequest, snap: &Snapshot) -> Vec<DiscoveryResponse> {
        if let Some(node) = &req.node {
            if self.node.is_empty() && !node.id.is_empty() {
                self.node = node.id.clone();
                info!(conn = self.conn, node = %self.node, "xDS client connected (state of the world)");
            }
        }
        let type_url = req.type_url.clone();
        let watch = self.watches.entry(type_url.clone()).or_default();
        if let Some(err) = &req.error_detail {
            warn!(
                conn = self.conn,
                node = %self.node,
                type_url = %type_url,
                kept_version = %req.version_info,
                nonce = %req.response_nonce,
                code = err.code,
                error = %err.message,
                "NACK: the client rejected the update and keeps its previous version"
            );
            return Vec::new();
        }
        let first = req.response_nonce.is_empty();
        if !first {
            if watch.nonce.as_deref() != Some(req.response_nonce.as_str()) {
                debug!(conn = self.conn, type_url = %type_url, nonce = %req.response_nonce, "stale nonce ignored");
                return Vec::new();
            }
            debug!(conn = self.conn, node = %self.node, type_url = %type_url, version = %req.version_info, "ACK");
        }
        let wildcard_type = is_wildcard_type(&type_url);
        let wildcard = wildcard_type && (req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*"));
        let names: BTreeSet<String> = req.resource_names.into_iter().filter(|n| n != "*").collect();
        let added = names.difference(&watch.names).next().is_some();
        let changed = wildcard != watch.wildcard || names != watch.names;
        watch.wildcard = wildcard;
        watch.names = names;
        if !wildcard_type && watch.names.is_empty() {
            // istiod: an empty EDS/RDS subscription is an unsubscribe, not answered.
            watch.sent = None;
            watch.always_respond = false;
            return Vec::new();
        }
        let respond = first || watch.always_respond || (changed && (wildcard_type || added));
        if !respond {
            return Vec::new();
        }
        vec![self.respond(&type_url, snap)]
    }

    /// A new snapshot: pushes every subscribed type whose content for this client changed.
    pub(crate) fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<DiscoveryResponse> {
        let mut types: Vec<String> = self.watches.keys().cloned().collect();
        types.sort_by_key(|t| (PUSH_ORDER.iter().position(|p| p == t).unwrap_or(PUSH_ORDER.len()), t.clone()));
        let mut out = Vec::new();
        for type_url in types {
            let Some(watch) = self.watches.get(&type_url) else { continue };
            let Some(sent) = &watch.sent else { continue };
            if selected(watch, &type_url, snap).iter().map(|(n, v)| (n.clone(), v.clone())).collect::<BTreeMap<_, _>>()
                != *sent
            {
                out.push(self.respond(&type_url, snap));
            }
        }
        out
    }

    fn respond(&mut self, type_url: &str, snap: &Snapshot) -> DiscoveryResponse {
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let version = snap.version(type_url);
        let mut resources = Vec::new();
        let mut sent = BTreeMap::new();
        if let Some(watch) = self.watches.get_mut(type_url) {
            if let Some(t) = snap.get(type_url) {
                for name in selected(watch, type_url, snap).into_keys() {
                    if let Some(r) = t.resources.get(&name) {
                        sent.insert(name, r.version.clone());
                        resources.push(r.any.clone());
                    }
                }
            }
            watch.sent = Some(sent);
            watch.nonce = Some(nonce.clone());
            watch.always_respond = false;
        }
        if type_url == CLUSTER {
            if let Some(eds) = self.watches.get_mut(ENDPOINT) {
                eds.always_respond = true;
            }
        }
        debug!(conn = self.conn, node = %self.node, type_url, version = %version, resources = resources.len(), "push");
        DiscoveryResponse {
            version_info: version,
            resources,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        }
    }
}

/// The resources (name → version) a watch selects from a snapshot.
fn selected(watch: &Watch, type_url: &str, snap: &Snapshot) -> BTreeMap<String, String> {
    let Some(t) = snap.get(type_url) else { return BTreeMap::new() };
    if watch.wildcard {
        t.resources.iter().map(|(n, r)| (n.clone(), r.version.clone())).collect()
    } else {
        watch.names.iter().filter_map(|n| t.resources.get(n).map(|r| (n.clone(), r.version.clone()))).collect()
    }
}

impl Protocol for SotwStream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "state of the world";

    fn new(conn: u64) -> Self {
        SotwStream::new(conn)
    }
    fn request_node(req: &DiscoveryRequest) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        req.node.as_ref()
    }

    fn default_type_url(req: &mut DiscoveryRequest, default: &'static str) {
        if req.type_url.is_empty() {
            req.type_url = default.to_string();
        }
    }
    fn on_request(&mut self, req: DiscoveryRequest, snap: &Snapshot) -> Vec<DiscoveryResponse> {
        SotwStream::on_request(self, req, snap)
    }
    fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<DiscoveryResponse> {
        SotwStream::on_snapshot(self, snap)
    }
    fn node(&self) -> &str {
        &self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_plane::resource::{encode, Kind};
    use crate::control_plane::server::cache::Cache;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use serde_json::json;

    fn req(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn snapshot(timeout: &str) -> Cache {
        let cache = Cache::default();
        cache.update(vec![
            encode(Kind::Cluster, &json!({"name": "a", "connect_timeout": timeout})).unwrap(),
            encode(Kind::Endpoint, &json!({"cluster_name": "a"})).unwrap(),
            encode(Kind::Endpoint, &json!({"cluster_name": "b"})).unwrap(),
        ]);
        cache
    }

    #[test]
    fn first_request_ack_nack_and_push() {
        let cache = snapshot("1s");
        let mut s = SotwStream::new(1);
        let r = s.on_request(req(CLUSTER, &[], ""), &cache.current());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].resources.len(), 1);
        let nonce = r[0].nonce.clone();
        assert!(s.on_request(req(CLUSTER, &[], &nonce), &cache.current()).is_empty(), "ACK is not answered");
        assert!(s.on_request(req(CLUSTER, &[], "bogus"), &cache.current()).is_empty(), "stale nonce");
        let mut nack = req(CLUSTER, &[], &nonce);
        nack.error_detail = Some(RpcStatus { code: 3, message: "bad".into(), details: vec![] });
        assert!(s.on_request(nack, &cache.current()).is_empty(), "NACK is not answered");
        // unchanged snapshot: nothing; changed: a push
        assert!(s.on_snapshot(&cache.current()).is_empty());
        cache.update(vec![encode(Kind::Cluster, &json!({"name": "a", "connect_timeout": "2s"})).unwrap()]);
        assert_eq!(s.on_snapshot(&cache.current()).len(), 1);
    }

    #[test]
    fn eds_follows_names_and_is_answered_after_cds() {
        let cache = snapshot("1s");
        let mut s = SotwStream::new(1);
        let cds = s.on_request(req(CLUSTER, &[], ""), &cache.current());
        let r = s.on_request(req(ENDPOINT, &["a"], ""), &cache.current());
        assert_eq!(r[0].resources.len(), 1);
        let n = r[0].nonce.clone();
        // a CDS ACK, then an EDS ACK: neither is answered
        let _ = s.on_request(req(CLUSTER, &[], &cds[0].nonce), &cache.current());
        assert!(s.on_request(req(ENDPOINT, &["a"], &n), &cache.current()).is_empty());
        cache.update(vec![
            encode(Kind::Cluster, &json!({"name": "a", "connect_timeout": "3s"})).unwrap(),
            encode(Kind::Endpoint, &json!({"cluster_name": "a"})).unwrap(),
            encode(Kind::Endpoint, &json!({"cluster_name": "b"})).unwrap(),
        ]);
        let pushed = s.on_snapshot(&cache.current());
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].type_url, CLUSTER);
        // the EDS request after a CDS push looks like an ACK but is answered (warming)
        let r = s.on_request(req(ENDPOINT, &["a"], &n), &cache.current());
        assert_eq!(r.len(), 1);
        // names added → answered; names removed only → not answered; empty → unsubscribe
        let r2 = s.on_request(req(ENDPOINT, &["a", "b"], &r[0].nonce), &cache.current());
        assert_eq!(r2.len(), 1);
        assert_eq!(r2[0].resources.len(), 2);
        assert!(s.on_request(req(ENDPOINT, &["b"], &r2[0].nonce), &cache.current()).is_empty());
        assert!(s.on_request(req(ENDPOINT, &[], &r2[0].nonce), &cache.current()).is_empty());
    }
}
