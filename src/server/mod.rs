//! Process orchestration: load the bootstrap into a snapshot, validate it (validate mode stops
//! there), bind listeners and the admin API, start the xDS client when the bootstrap has ADS
//! `dynamic_resources`, serve, and drain on SIGTERM / SIGINT.
//!
//! Owns: the order of start-up and shutdown, and (in `listeners`, `sink`) applying configurations
//! to sockets. Must not implement any data-path behaviour.

mod listeners;
mod sink;

use std::sync::Arc;
use std::time::Duration;

use crate::bootstrap::{self, BootstrapError, Options};
use crate::listener::{self, ListenerRuntime};
use crate::model::{self, ConfigError, Snapshot};
use crate::state::{ProxyState, ServerState};

pub use listeners::ListenerManager;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("workload identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("cannot bind {what} to {addr}: {source}")]
    Bind { what: String, addr: std::net::SocketAddr, source: std::io::Error },
}

/// Loads and fully validates the configuration without opening sockets.
pub fn load(opts: &Options) -> Result<Snapshot, ServerError> {
    let bootstrap = bootstrap::load(opts)?;
    let snapshot = model::from_bootstrap(&bootstrap)?;
    // Building listener runtimes checks TLS material exactly as serving will.
    let scratch = crate::telemetry::stats::Store::default();
    for l in &snapshot.listeners {
        ListenerRuntime::build(l.clone(), &scratch)?;
    }
    for c in snapshot.clusters.values() {
        sink::check_cluster_tls(c)?;
    }
    crate::xds::XdsConfig::from_bootstrap(&bootstrap, &snapshot)?;
    Ok(snapshot)
}

/// Serves until shut down. Returns after draining completes.
pub async fn run(opts: &Options) -> Result<(), ServerError> {
    // Before any TLS context is built: with a CA, `sds-grpc` secrets are served in-process.
    let identity = crate::identity::IdentityConfig::from_env(&opts.identity_overrides())?;
    let credentials = identity.as_ref().map(|i| crate::xds::config::XdsCredentials {
        token_path: i.token_path.clone(),
        cluster_id: i.cluster_id.clone(),
    });
    if let Some(identity) = identity {
        crate::identity::provider::start(identity)?;
    }
    let snapshot = load(opts)?;
    for note in &snapshot.notes {
        tracing::warn!("{note}");
    }
    let node = snapshot.bootstrap.as_ref().and_then(|b| b.node.clone()).unwrap_or_default();
    let state = ProxyState::new(opts.drain_time(), &node);
    state.set_server_state(ServerState::Initializing);
    let admin_addr = snapshot.admin_address;
    let xds = match &snapshot.bootstrap {
        Some(b) => crate::xds::XdsConfig::from_bootstrap(b, &snapshot)?.map(|mut x| {
            x.credentials = credentials;
            x
        }),
        None => None,
    };
    crate::secrets::store().start_grpc_sources(snapshot.clusters.clone(), node);
    state.apply(snapshot).await;
    let base = state.snapshot();

    if let Some(addr) = admin_addr {
        let sock = listener::bind(addr).map_err(|source| ServerError::Bind { what: "admin".into(), addr, source })?;
        tracing::info!(%addr, "admin address");
        tokio::spawn(crate::admin::serve(sock, state.clone()));
    }
    let mut manager = ListenerManager::new(state.clone());
    if let Some(e) = manager.apply(&base.listeners).await.into_iter().next() {
        return Err(ServerError::Bind {
            what: format!("listener '{}'", e.name),
            addr: e.address,
            source: std::io::Error::other(e.error),
        });
    }
    match xds {
        Some(cfg) => {
            // LIVE (and workers_started) come from the xDS client once CDS and LDS are warm.
            tracing::info!(cluster = %cfg.cluster.name, api = ?cfg.api, "starting the xDS client");
            let sink = Arc::new(sink::ServerSink::new(state.clone(), manager));
            tokio::spawn(crate::xds::run(cfg, base, state.clone(), sink));
        }
        None => {
            state.stats.gauge("listener_manager.workers_started").set(1);
            state.set_server_state(ServerState::Live);
            tracing::info!("all listeners started; server is live");
        }
    }
    release_config_memory();

    wait_for_signal(&state).await;
    state.start_draining();
    drain(&state).await;
    Ok(())
}

async fn wait_for_signal(state: &ProxyState) {
    let mut shutdown = state.shutdown_signal();
    let mut drain = state.draining();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            let _ = shutdown.wait_for(|s| *s).await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
            _ = shutdown.wait_for(|s| *s) => tracing::info!("shutdown requested"),
            // `/drain_listeners` keeps the process up (as Envoy); only a signal or quit ends it.
            _ = async { let _ = drain.wait_for(|d| *d).await; std::future::pending::<()>().await } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = shutdown.wait_for(|s| *s).await;
    }
}

/// Waits for open downstream connections to finish, at most the drain time.
async fn drain(state: &ProxyState) {
    let deadline = tokio::time::Instant::now() + state.drain_time;
    // Let in-flight responses carry `connection: close` / GOAWAY before checking.
    tokio::time::sleep(Duration::from_millis(50)).await;
    while state.connections.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    state.shutdown();
}

/// After config is applied, the descriptor pool and parse buffers are garbage: free them and hand
/// the pages back to the OS so an idle sidecar stays small.
pub fn release_config_memory() {
    crate::bootstrap::decode::release_pool();
    trim_heap();
    #[cfg(target_os = "linux")]
    page_out_startup_code();
}

/// Hands free heap pages back to the OS. Applying a large xDS update decodes every resource of the
/// response before the models are built, so the heap's high-water mark is well above what the
/// configuration keeps; glibc holds such pages until asked (a few milliseconds for a 100 MB heap,
/// once per applied update, never per request).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Most of the binary's code is config parsing (the Envoy API's generated decoders, reflection,
/// YAML) that runs once at start-up. Its pages are clean and file-backed; asking the kernel to
/// reclaim them now (MADV_PAGEOUT) lets the data path's small working set fault back in on use
/// instead of keeping megabytes of start-up code resident for the life of the pod.
#[cfg(target_os = "linux")]
fn page_out_startup_code() {
    const MADV_PAGEOUT: libc::c_int = 21;
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        if perms.contains('w') || !line.ends_with(exe.to_string_lossy().as_ref()) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else { continue };
        // SAFETY: advisory call on a read-only, file-backed mapping of our own executable; the
        // kernel re-reads any page that is used again. Failure (old kernel) is harmless.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, MADV_PAGEOUT);
            // Without this, each fault maps a 64 KiB window around the faulting page; the data
            // path's code is scattered, so fault-around alone made ~4 MiB resident per process.
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM);
        }
    }
}
