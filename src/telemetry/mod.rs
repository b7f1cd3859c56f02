//! Telemetry: the stats store with Envoy's stat names. Owns counters and gauges and their text
//! and Prometheus renderings. Must not block the data path: updates are single atomic operations on
//! handles resolved when a snapshot is applied.

pub mod logging;
pub mod stats;
