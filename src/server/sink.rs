//! The server's side of the xDS client ([`crate::xds::Sink`]): checks that need data-path builders
//! (listener runtimes with their TLS material, upstream TLS configs) and applying an assembled
//! configuration: clusters, RDS tables and snapshot through `ProxyState`, then listeners through
//! the [`ListenerManager`].
//!
//! Owns: that glue. Must not decide what is active (the xDS client does).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::ListenerManager;
use crate::listener::ListenerRuntime;
use crate::model::{Cluster, ConfigError, Listener, RouteTable, Snapshot};
use crate::state::ProxyState;

/// Upstream TLS material must build (certificates parse, keys match).
pub fn check_cluster_tls(c: &Cluster) -> Result<(), ConfigError> {
    if let Some(t) = &c.tls {
        crate::tls::client_config(t)
            .map_err(|e| ConfigError::new("cluster", &c.name, "transport_socket", e.to_string()))?;
    }
    Ok(())
}

pub struct ServerSink {
    state: Arc<ProxyState>,
    listeners: tokio::sync::Mutex<ListenerManager>,
    scratch: crate::telemetry::stats::Store,
}

impl ServerSink {
    pub fn new(state: Arc<ProxyState>, listeners: ListenerManager) -> Self {
        ServerSink { state, listeners: tokio::sync::Mutex::new(listeners), scratch: Default::default() }
    }
}

impl crate::xds::Sink for ServerSink {
    fn check_listener(&self, l: &Arc<Listener>) -> Result<(), ConfigError> {
        ListenerRuntime::build(l.clone(), &self.scratch).map(|_| ())
    }

    fn check_cluster(&self, c: &Cluster) -> Result<(), ConfigError> {
        check_cluster_tls(c)
    }

    fn apply(
        &self,
        snapshot: Snapshot,
        routes: HashMap<String, Arc<RouteTable>>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let listeners = snapshot.listeners.clone();
            self.state.apply_dynamic(snapshot, routes).await;
            let mut manager = self.listeners.lock().await;
            for e in manager.apply(&listeners).await {
                tracing::error!(listener = %e.name, address = %e.address, error = %e.error, "listener not started");
            }
            drop(manager);
            let started = std::time::Instant::now();
            super::trim_heap();
            tracing::debug!(elapsed = ?started.elapsed(), "heap trimmed after applying dynamic configuration");
        })
    }
}
