//! Upstream: the cluster manager, load balancers, connection pools and circuit breakers.
//!
//! Owns: per-cluster runtime state (hosts, LB state, pooled clients, stats) built from
//! `model::Cluster`. Must not parse config. Clusters whose config did not change keep their state
//! (and so their pooled connections) across snapshot swaps.

pub mod connector;
pub mod h1pool;
pub mod h2pool;
pub mod lb;
pub mod manager;

pub use manager::{ClusterManager, ClusterState, Host};
