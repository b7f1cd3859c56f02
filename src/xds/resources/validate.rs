//! Decoding and checking one resource of each type. Errors are `ConfigError`s, whose Display names
//! the resource, the field path and the reason: that text is the NACK's `error_detail`.
//!
//! Owns: per-resource checks, including the cross-resource ones Envoy makes when adding a resource
//! (names taken by static resources, listener address clashes). Must not change the store.

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;

use super::{Engine, Kind};
use crate::model::cluster::{load_assignment, Discovery};
use crate::model::dynamic::check_address;
use crate::model::{Cluster, ConfigError, Listener, Notes, RouteTable};

/// A decoded resource of one of the handled types.
pub enum Decoded {
    Cluster(Box<PbCluster>),
    Endpoint(ClusterLoadAssignment),
    Listener(Box<PbListener>),
    Route(RouteConfiguration),
    Secret(Secret),
}

impl Decoded {
    pub fn name(&self) -> &str {
        match self {
            Decoded::Cluster(c) => &c.name,
            Decoded::Endpoint(e) => &e.cluster_name,
            Decoded::Listener(l) => &l.name,
            Decoded::Route(r) => &r.name,
            Decoded::Secret(s) => &s.name,
        }
    }
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Cluster => "cluster",
        Kind::Endpoint => "cluster load assignment",
        Kind::Listener => "listener",
        Kind::Route => "route configuration",
        Kind::Secret => "secret",
    }
}

/// Decodes `any` as a resource of `kind`; `hint` names it in errors when decoding fails.
pub fn decode(kind: Kind, any: &Any, hint: &str) -> Result<Decoded, ConfigError> {
    use prost::Message;
    if any.type_url != kind.type_url() {
        return Err(ConfigError::new(
            kind_label(kind),
            hint,
            "@type",
            format!("resource of type '{}' in a {} response", any.type_url, kind.short()),
        ));
    }
    let bytes = any.value.as_slice();
    let fail = |e: prost::DecodeError| ConfigError::new(kind_label(kind), hint, "", format!("cannot decode: {e}"));
    Ok(match kind {
        Kind::Cluster => Decoded::Cluster(Box::new(PbCluster::decode(bytes).map_err(fail)?)),
        Kind::Endpoint => Decoded::Endpoint(ClusterLoadAssignment::decode(bytes).map_err(fail)?),
        Kind::Listener => Decoded::Listener(Box::new(PbListener::decode(bytes).map_err(fail)?)),
        Kind::Route => Decoded::Route(RouteConfiguration::decode(bytes).map_err(fail)?),
        Kind::Secret => Decoded::Secret(Secret::decode(bytes).map_err(fail)?),
    })
}

fn log_notes(notes: Notes) {
    for n in notes.list {
        tracing::warn!("{n}");
    }
}

impl Engine {
    pub(super) fn check_secret(&self, s: &Secret) -> Result<Arc<crate::secrets::SecretValue>, ConfigError> {
        crate::secrets::SecretValue::from_proto(s)
            .map(Arc::new)
            .map_err(|e| ConfigError::new("secret", &s.name, "", e.to_string()))
    }

    pub(super) fn check_cluster(&self, c: &PbCluster) -> Result<Arc<Cluster>, ConfigError> {
        if self.base.clusters.contains_key(&c.name) {
            return Err(ConfigError::new(
                "cluster",
                &c.name,
                "name",
                "a static cluster of this name exists; CDS cannot replace it",
            ));
        }
        let mut notes = Notes::default();
        let model = Cluster::from_proto(c, &mut notes)?;
        log_notes(notes);
        self.sink.check_cluster(&model)?;
        Ok(Arc::new(model))
    }

    pub(super) fn check_listener(&self, l: &PbListener) -> Result<Arc<Listener>, ConfigError> {
        if l.name.is_empty() {
            return Err(ConfigError::new("listener", "", "name", "value length must be at least 1 characters"));
        }
        if self.base.listeners.iter().any(|s| !s.name.is_empty() && s.name == l.name) {
            return Err(ConfigError::new(
                "listener",
                &l.name,
                "name",
                "a static listener of this name exists; LDS cannot replace it",
            ));
        }
        let mut notes = Notes::default();
        let model = Arc::new(Listener::from_proto(l, &mut notes)?);
        log_notes(notes);
        check_address(
            &model,
            self.base.listeners.iter().map(|l| &**l).chain(self.listeners.values().map(|a| &*a.model)),
        )?;
        self.sink.check_listener(&model)?;
        Ok(model)
    }

    pub(super) fn check_route(&self, r: &RouteConfiguration) -> Result<Arc<RouteTable>, ConfigError> {
        if r.name.is_empty() {
            return Err(ConfigError::new(
                "route configuration",
                "",
                "name",
                "value length must be at least 1 characters",
            ));
        }
        let mut notes = Notes::default();
        let table = RouteTable::from_proto(r, &mut notes)?;
        log_notes(notes);
        Ok(Arc::new(table))
    }

    pub(super) fn check_endpoints(&self, cla: &ClusterLoadAssignment) -> Result<(), ConfigError> {
        let name = &cla.cluster_name;
        if name.is_empty() {
            return Err(ConfigError::new(
                "cluster load assignment",
                "",
                "cluster_name",
                "value length must be at least 1 characters",
            ));
        }
        load_assignment(cla, &Discovery::Eds { service_name: name.clone() })
            .map(|_| ())
            .map_err(|e| e.for_resource("cluster load assignment", name))
    }
}
