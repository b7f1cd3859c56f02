//! Running an update through the store, warming, and publishing.
//!
//! Envoy's rules: a SotW CDS/LDS response is the complete set (what it lacks is removed); SotW
//! EDS/RDS responses and delta responses are upserts, delta `removed_resources` removals. Each
//! resource is checked on its own: bad ones are rejected (the NACK lists them all) and keep their
//! previous version, good ones are applied. A new or changed EDS cluster is active once its
//! endpoints are known (a cached assignment counts, as Envoy's EDS cache does); a listener once
//! every RDS route table it names is known; until then the previous version keeps serving. The
//! `initial_fetch_timeout` of the source ends a wait (0 = wait forever).
//!
//! Owns: the order of those steps. Must not send on the stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::validate::{decode, Decoded};
use super::{Accepted, ActiveCluster, ActiveListener, Engine, Incoming, Kind};
use crate::model::dynamic::{assemble, eds_cluster, eds_service_name, rds_routes};
use crate::model::retained::Retained;
use crate::model::ConfigError;
use crate::state::ServerState;
use crate::xds::config::{ads_source, FetchTimeout, DEFAULT_INITIAL_FETCH_TIMEOUT};

/// One response, protocol-agnostic.
#[derive(Debug)]
pub struct Update {
    pub kind: Kind,
    pub system_version: String,
    pub resources: Vec<Incoming>,
    /// Delta `removed_resources`.
    pub removed: Vec<String>,
    /// SotW CDS/LDS: the response is the complete set.
    pub complete: bool,
}

/// Inserts or replaces `name` with a checked resource.
fn upsert<P, M>(
    map: &mut BTreeMap<String, Accepted<P, M>>,
    (name, version, seq): (&str, &str, u64),
    proto: Retained<P>,
    checked: Result<(M, FetchTimeout), ConfigError>,
) -> Result<bool, ConfigError> {
    let (model, warm_timeout) = checked?;
    map.insert(
        name.to_string(),
        Accepted {
            name: name.to_string(),
            version: version.to_string(),
            proto,
            model,
            updated: SystemTime::now(),
            seq,
            since: Instant::now(),
            warm_timeout,
        },
    );
    Ok(true)
}

fn timed_out(since: Instant, timeout: FetchTimeout, now: Instant) -> bool {
    timeout.is_some_and(|t| now >= since + t)
}

fn eds_timeout(c: &envoy_types::pb::envoy::config::cluster::v3::Cluster) -> FetchTimeout {
    c.eds_cluster_config
        .as_ref()
        .and_then(|e| e.eds_config.as_ref())
        .and_then(|cs| ads_source(cs, "eds_cluster_config.eds_config").ok().flatten())
        .unwrap_or(Some(DEFAULT_INITIAL_FETCH_TIMEOUT))
}

impl Engine {
    /// Applies one response to the store. `Err` is the NACK's `error_detail`; the resources that
    /// passed are applied either way.
    pub fn update(&mut self, u: Update) -> Result<(), String> {
        self.responses += 1;
        self.received.insert(u.kind);
        let mut errors: Vec<ConfigError> = Vec::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut outcomes: Vec<(String, bool)> = Vec::new();
        for (i, r) in u.resources.into_iter().enumerate() {
            let Incoming { name: resource_name, version: resource_version, any } = r;
            let hint = if resource_name.is_empty() { format!("resources[{i}]") } else { resource_name.clone() };
            let decoded = match decode(u.kind, &any, &hint) {
                Ok(d) => d,
                Err(e) => {
                    if !resource_name.is_empty() {
                        seen.insert(resource_name);
                    }
                    errors.push(e);
                    continue;
                }
            };
            let name = if decoded.name().is_empty() { resource_name } else { decoded.name().to_string() };
            seen.insert(name.clone());
            let version = if resource_version.is_empty() { u.system_version.clone() } else { resource_version };
            let seq = self.next_seq();
            let entry = (name.as_str(), version.as_str(), seq);
            let bytes = bytes::Bytes::from(any.value);
            // An identical re-send (byte for byte) keeps the accepted entry untouched: its warming
            // clock and sequence number, and it is not re-validated.
            macro_rules! apply {
                ($map:ident, $check:expr) => {{
                    let proto = Retained::from_encoded(bytes);
                    if self.$map.get(&name).is_some_and(|a| a.proto == proto) {
                        Ok(false)
                    } else {
                        let checked = $check;
                        upsert(&mut self.$map, entry, proto, checked)
                    }
                }};
            }
            let result = match &decoded {
                Decoded::Cluster(c) => apply!(clusters, self.check_cluster(c).map(|m| (m, eds_timeout(c)))),
                Decoded::Listener(l) => apply!(listeners, self.check_listener(l).map(|m| (m, None))),
                Decoded::Route(rc) => apply!(routes, self.check_route(rc).map(|m| (m, None))),
                Decoded::Endpoint(cla) => apply!(endpoints, self.check_endpoints(cla).map(|m| (m, None))),
                Decoded::Secret(sec) => apply!(secrets, self.check_secret(sec).map(|m| (m, None))),
            };
            if let (Ok(true), Some(accepted)) = (&result, self.secrets.get(&name).filter(|_| u.kind == Kind::Secret)) {
                crate::secrets::store().set_shared(&name, accepted.model.clone());
            }
            match result {
                Ok(changed) => {
                    if changed {
                        tracing::debug!(kind = u.kind.short(), %name, %version, "resource accepted");
                    }
                    outcomes.push((name, true));
                }
                Err(e) => {
                    tracing::warn!(kind = u.kind.short(), error = %e, "resource rejected");
                    outcomes.push((name, false));
                    errors.push(e);
                }
            }
        }
        let mut removed = u.removed;
        if u.complete {
            let held: Vec<String> = match u.kind {
                Kind::Cluster => self.clusters.keys().cloned().collect(),
                Kind::Listener => self.listeners.keys().cloned().collect(),
                _ => Vec::new(),
            };
            removed.extend(held.into_iter().filter(|n| !seen.contains(n)));
        }
        for name in &removed {
            let gone = match u.kind {
                Kind::Cluster => self.clusters.remove(name).is_some(),
                Kind::Listener => self.listeners.remove(name).is_some(),
                Kind::Route => self.routes.remove(name).is_some(),
                Kind::Endpoint => self.endpoints.remove(name).is_some(),
                Kind::Secret => self.secrets.remove(name).is_some(),
            };
            if gone {
                tracing::info!(kind = u.kind.short(), %name, "resource removed");
            }
        }
        self.record_stats(u.kind, &outcomes, errors.is_empty());
        if errors.is_empty() {
            self.versions.insert(u.kind, u.system_version);
            Ok(())
        } else {
            Err(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        }
    }

    fn record_stats(&self, kind: Kind, outcomes: &[(String, bool)], ok: bool) {
        match kind {
            Kind::Cluster | Kind::Listener => {
                if let Some(s) = self.stats.wildcard(kind) {
                    s.record(ok);
                }
            }
            Kind::Route => {
                for (name, ok) in outcomes {
                    for l in self.listeners.values() {
                        for (prefix, route) in rds_routes(&l.model) {
                            if &route == name {
                                self.stats.rds(&prefix, name).record(*ok);
                            }
                        }
                    }
                }
            }
            Kind::Endpoint => {
                for (name, ok) in outcomes {
                    let users = self.base.clusters.values().chain(self.clusters.values().map(|a| &a.model));
                    for c in users.filter(|c| eds_service_name(c) == Some(name.as_str())) {
                        self.stats.eds(&c.name).record(*ok);
                    }
                }
            }
            Kind::Secret => {}
        }
    }

    /// Drops EDS/RDS resources nothing references any more (Envoy forgets unsubscribed names).
    pub fn prune(&mut self) {
        let eds = self.wanted(Kind::Endpoint);
        self.endpoints.retain(|n, _| eds.contains(n));
        let rds = self.wanted(Kind::Route);
        self.routes.retain(|n, _| rds.contains(n));
    }

    /// Recomputes what is active and what is warming, and whether the server is LIVE.
    pub fn evaluate(&mut self, now: Instant) {
        let mut active = BTreeMap::new();
        let mut warming = BTreeSet::new();
        for (name, acc) in &self.clusters {
            let prev = self.active_clusters.get(name);
            let next = match eds_service_name(&acc.model) {
                None => Some(ActiveCluster { seq: acc.seq, cla_seq: None, model: acc.model.clone(), dump: acc.dump() }),
                Some(svc) => match self.endpoints.get(svc) {
                    Some(cla) => match prev.filter(|p| p.seq == acc.seq && p.cla_seq == Some(cla.seq)) {
                        Some(p) => Some(p.clone()),
                        None => {
                            let model = eds_cluster(&acc.proto, &cla.proto).map(Arc::new).unwrap_or_else(|e| {
                                tracing::warn!(error = %e, "endpoints do not fit the cluster; it has no hosts");
                                acc.model.clone()
                            });
                            Some(ActiveCluster { seq: acc.seq, cla_seq: Some(cla.seq), model, dump: acc.dump() })
                        }
                    },
                    None if timed_out(acc.since, acc.warm_timeout, now) => {
                        Some(ActiveCluster { seq: acc.seq, cla_seq: None, model: acc.model.clone(), dump: acc.dump() })
                    }
                    None => {
                        warming.insert(name.clone());
                        prev.cloned()
                    }
                },
            };
            if let Some(n) = next {
                active.insert(name.clone(), n);
            }
        }
        self.active_clusters = active;
        self.warming_clusters = warming;

        let mut static_eds = HashMap::new();
        for (name, c) in &self.base.clusters {
            let (Some(svc), Some(proto)) = (eds_service_name(c), Some(&c.proto)) else { continue };
            let Some(cla) = self.endpoints.get(svc) else { continue };
            let next = match self.static_eds.get(name).filter(|p| p.cla_seq == Some(cla.seq)) {
                Some(p) => p.clone(),
                None => match eds_cluster(proto, &cla.proto) {
                    Ok(m) => ActiveCluster {
                        seq: 0,
                        cla_seq: Some(cla.seq),
                        model: Arc::new(m),
                        dump: crate::model::dynamic::DumpEntry {
                            name: name.clone(),
                            version: String::new(),
                            proto: proto.clone(),
                            last_updated: SystemTime::now(),
                        },
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "endpoints do not fit the static cluster");
                        continue;
                    }
                },
            };
            static_eds.insert(name.clone(), next);
        }
        self.static_eds = static_eds;

        let rds_timeout = self.lds.flatten();
        let mut active = BTreeMap::new();
        let mut warming = BTreeSet::new();
        for (name, acc) in &self.listeners {
            let ready = rds_routes(&acc.model).iter().all(|(_, r)| self.routes.contains_key(r))
                || timed_out(acc.since, rds_timeout, now);
            let next = if ready {
                Some(ActiveListener { seq: acc.seq, model: acc.model.clone(), dump: acc.dump() })
            } else {
                warming.insert(name.clone());
                self.active_listeners.get(name).cloned()
            };
            if let Some(n) = next {
                active.insert(name.clone(), n);
            }
        }
        self.active_listeners = active;
        self.warming_listeners = warming;
        self.stats.active_clusters.set(self.active_clusters.len() as i64);
        self.stats.warming_clusters.set(self.warming_clusters.len() as i64);
        self.stats.listeners_active.set(self.active_listeners.len() as i64);
        self.stats.listeners_warming.set(self.warming_listeners.len() as i64);
        self.check_live(now);
    }

    fn init_done(&mut self, kind: Kind, timeout: Option<FetchTimeout>, now: Instant) -> bool {
        let Some(timeout) = timeout else { return true };
        if self.received.contains(&kind) || self.timed_out_init.contains(&kind) {
            return true;
        }
        if timed_out(self.started, timeout, now) {
            tracing::warn!(kind = kind.short(), "initial fetch timed out; initialization continues without it");
            if let Some(s) = self.stats.wildcard(kind) {
                s.init_fetch_timeout.inc();
            }
            self.timed_out_init.insert(kind);
            return true;
        }
        false
    }

    fn check_live(&mut self, now: Instant) {
        if self.live {
            return;
        }
        let cds = self.init_done(Kind::Cluster, self.cds, now);
        let lds = self.init_done(Kind::Listener, self.lds, now);
        if cds && lds && self.warming_clusters.is_empty() && self.warming_listeners.is_empty() {
            self.live = true;
            self.state.stats.gauge("listener_manager.workers_started").set(1);
            if !self.state.is_draining() {
                self.state.set_server_state(ServerState::Live);
            }
            tracing::info!("initial dynamic configuration applied and warmed; server is live");
        }
    }

    /// When warming or initialization next needs re-evaluating (a fetch timeout), if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if !self.live {
            for (kind, timeout) in [(Kind::Cluster, self.cds), (Kind::Listener, self.lds)] {
                if let Some(Some(t)) = timeout {
                    if !self.received.contains(&kind) && !self.timed_out_init.contains(&kind) {
                        consider(self.started + t);
                    }
                }
            }
        }
        for name in &self.warming_clusters {
            if let Some(acc) = self.clusters.get(name) {
                if let Some(t) = acc.warm_timeout {
                    consider(acc.since + t);
                }
            }
        }
        if let Some(t) = self.lds.flatten() {
            for name in &self.warming_listeners {
                if let Some(acc) = self.listeners.get(name) {
                    consider(acc.since + t);
                }
            }
        }
        // Never spin on a deadline already past.
        next.map(|n| n.max(Instant::now() + Duration::from_millis(1)))
    }

    /// Hands the active configuration to the sink and refreshes the `/config_dump` view.
    pub async fn publish(&mut self) {
        let static_eds = self.static_eds.iter().map(|(n, a)| (n.clone(), a.model.clone())).collect();
        let snapshot = assemble(
            &self.base,
            &static_eds,
            self.active_clusters.values().map(|a| a.model.clone()),
            self.active_listeners.values().map(|a| a.model.clone()),
        );
        let routes = self.routes.iter().map(|(n, a)| (n.clone(), a.model.clone())).collect();
        self.sink.apply(snapshot, routes).await;
        self.state.set_dynamic_config(self.dump());
    }
}
