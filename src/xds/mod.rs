//! The xDS client: Remora's own dynamic configuration over one ADS stream (state of the world or
//! delta), as Envoy's `dynamic_resources` describe it.
//!
//! Layout: `config` (bootstrap `dynamic_resources` → [`XdsConfig`]), `transport` (the gRPC channel
//! over the xDS cluster: TCP or Unix pipe, optional TLS, connect timeout), `client` (the reconnect
//! loop and the two stream flavours), `resources` (decode, validate, accept, warm, assemble),
//! `subscriptions` (which EDS/RDS names are wanted), `kind` (type URLs), `backoff`, `stats`.
//!
//! Owns: streams, per-type versions and nonces, ACK/NACK with `error_detail`, subscriptions,
//! warming, reconnects, and the server state's move to LIVE when dynamic config is in use. Must not
//! build data-path objects itself (listener runtimes, sockets, cluster pools): it hands assembled
//! snapshots to a [`Sink`] that `server` implements.

pub mod backoff;
pub mod client;
pub mod config;
pub mod kind;
pub mod resources;
pub mod stats;
pub mod subscriptions;
pub mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use client::run;
pub use config::{Api, XdsConfig};
pub use kind::Kind;

use crate::model::{Cluster, ConfigError, Listener, RouteTable, Snapshot};

/// Why the xDS client could not connect or keep its stream.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("xDS cluster '{cluster}': {reason}")]
    Cluster { cluster: String, reason: String },
    #[error("cannot connect to the xDS server: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("xDS stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("xDS stream closed by the server")]
    Closed,
    #[error("invalid initial_metadata '{0}'")]
    Metadata(String),
}

/// Where the client puts what it accepted. `server` implements it: it owns sockets and listener
/// runtimes, so checks that need them (downstream TLS material) are made there too.
pub trait Sink: Send + Sync + 'static {
    /// Checks a listener as serving would build it (TLS certificates, keys), without binding.
    fn check_listener(&self, l: &Arc<Listener>) -> Result<(), ConfigError>;
    /// Checks a cluster's upstream TLS material as the cluster manager would build it.
    fn check_cluster(&self, c: &Cluster) -> Result<(), ConfigError>;
    /// Makes `snapshot` (static plus active dynamic resources) and the RDS tables current: clusters
    /// first, routes, then listeners (new ones bound, changed ones swapped, removed ones drained).
    fn apply(
        &self,
        snapshot: Snapshot,
        routes: HashMap<String, Arc<RouteTable>>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}
