//! Remora: an Envoy-compatible service-mesh sidecar data plane.
//!
//! Config flows one way: `bootstrap` (and later xDS) → envoy-types protos → `model` (validated,
//! immutable) → one `Snapshot` in `state`, swapped atomically; the data path (`listener`, `http`,
//! `tcp`, `upstream`, `tls`) only reads snapshots. `admin` and `telemetry` observe both sides.
//! `control_plane` is the server side of xDS (`remora control-plane`); `xds` is the client.

pub mod admin;
pub mod bootstrap;
pub mod control_plane;
pub mod http;
pub mod identity;
pub mod listener;
pub mod model;
pub mod secrets;
pub mod server;
pub mod state;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod xds;
