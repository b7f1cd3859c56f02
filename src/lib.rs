//! Remora: an Envoy-compatible service-mesh sidecar data plane.
//!
//! Config flows one way: `bootstrap` (and later xDS) → envoy-types protos → `model` (validated,
//! immutable) → one `Snapshot` swapped atomically; the data path (`listener`, `http`, `tcp`,
//! `upstream`) only reads snapshots.

pub mod bootstrap;
