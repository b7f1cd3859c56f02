//! The listener manager: binds listeners, swaps the runtime of a listener whose address did not
//! change in place (no rebind; new connections get the new runtime, open ones keep theirs), and
//! stops accepting on removed listeners and on listeners whose address moved. Connections already
//! accepted by a stopped listener finish on the runtime they started with.
//!
//! Owns: the set of bound listener sockets and their accept loops. Must not parse config.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::listener::{self, ListenerRuntime};
use crate::model::Listener;
use crate::state::ProxyState;

struct Running {
    config: Arc<Listener>,
    runtime: Arc<ArcSwap<ListenerRuntime>>,
    task: tokio::task::JoinHandle<()>,
}

/// A listener that could not be started.
#[derive(Debug)]
pub struct StartError {
    pub name: String,
    pub address: SocketAddr,
    pub error: String,
}

pub struct ListenerManager {
    state: Arc<ProxyState>,
    running: HashMap<String, Running>,
}

fn key(l: &Listener) -> String {
    if l.name.is_empty() {
        format!("<unnamed {}>", l.address)
    } else {
        l.name.clone()
    }
}

impl ListenerManager {
    pub fn new(state: Arc<ProxyState>) -> Self {
        ListenerManager { state, running: HashMap::new() }
    }

    /// Makes the bound listeners match `wanted` (those with `bind_to_port`).
    pub async fn apply(&mut self, wanted: &[Arc<Listener>]) -> Vec<StartError> {
        let wanted: HashMap<String, &Arc<Listener>> =
            wanted.iter().filter(|l| l.bind_to_port).map(|l| (key(l), l)).collect();
        let stats = &self.state.stats;
        // Stop first, so a listener moving onto a freed address can bind it.
        let stop: Vec<String> = self
            .running
            .iter()
            .filter(|(k, r)| wanted.get(*k).is_none_or(|w| w.address != r.config.address))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stop {
            if let Some(r) = self.running.remove(&k) {
                r.task.abort();
                let _ = r.task.await;
                stats.counter("listener_manager.listener_removed").inc();
                tracing::info!(name = %k, address = %r.config.address, "listener stopped accepting; open connections drain");
            }
        }
        let mut errors = Vec::new();
        for (k, l) in wanted {
            if let Some(r) = self.running.get_mut(&k) {
                if Arc::ptr_eq(&r.config, l) || r.config.proto == l.proto {
                    continue;
                }
                match ListenerRuntime::build((*l).clone(), stats) {
                    Ok(rt) => {
                        r.runtime.store(Arc::new(rt));
                        r.config = (*l).clone();
                        stats.counter("listener_manager.listener_modified").inc();
                        tracing::info!(name = %k, address = %l.address, "listener updated in place");
                    }
                    Err(e) => {
                        errors.push(StartError { name: k.clone(), address: l.address, error: e.to_string() });
                    }
                }
                continue;
            }
            let started = ListenerRuntime::build((*l).clone(), stats)
                .map_err(|e| e.to_string())
                .and_then(|rt| listener::bind(l.address).map(|s| (rt, s)).map_err(|e| e.to_string()));
            match started {
                Ok((rt, sock)) => {
                    let runtime = Arc::new(ArcSwap::from_pointee(rt));
                    let task = tokio::spawn(listener::run(sock, runtime.clone(), self.state.clone()));
                    stats.counter("listener_manager.listener_added").inc();
                    tracing::info!(name = %k, address = %l.address, "listener started");
                    self.running.insert(k, Running { config: (*l).clone(), runtime, task });
                }
                Err(error) => {
                    stats.counter("listener_manager.listener_create_failure").inc();
                    tracing::error!(name = %k, address = %l.address, %error, "listener could not start");
                    errors.push(StartError { name: k, address: l.address, error });
                }
            }
        }
        errors
    }
}
