//! HTTP: the connection manager (h1 / h2c / h2 on hyper), HCM header behaviour, local replies and
//! the router (route match, weighted clusters, rewrites, retries, timeouts).
//!
//! Owns: everything between a decoded downstream request and the upstream client. Must not open
//! upstream sockets itself: it asks `upstream` for a host and a pooled client.

pub mod body;
pub mod conn;
mod cors;
pub mod fault;
pub mod hcm;
mod idle;
pub mod local_reply;
mod peer_metadata;
pub mod request_headers;
pub mod router;
mod router_upgrade;
pub mod xfcc;

pub use conn::{serve_connection, ConnInfo, HcmRuntime};
