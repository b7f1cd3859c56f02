//! The local control plane (`remora control-plane`): an xDS server that serves Envoy resources and
//! Istio VirtualService / DestinationRule / ServiceEntry / WorkloadEntry files from a directory,
//! translated the way istiod translates them for a sidecar, and pushes changes within a second.
//!
//! Layout: `source` (files → resources, watch), `istio` (translation), `resource` (JSON →
//! encoded resource through Remora's decoder), `server` (snapshot cache, SotW and delta ADS).
//!
//! Owns: the server side of xDS. Must not touch the data path (`listener`, `http`, `upstream`,
//! `model`) or the xDS client; it shares only the protos and the bootstrap decoder with them.

pub mod ca;
pub mod cli;
pub mod istio;
pub mod resource;
pub mod server;
pub mod source;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::info;

use server::cache::Cache;

/// `remora control-plane` settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub config_dir: PathBuf,
    pub listen: SocketAddr,
    pub translate: istio::Options,
    /// Serve Istio's CA API with the root in this directory.
    pub ca: Option<CaOptions>,
}

#[derive(Debug, Clone)]
pub struct CaOptions {
    pub dir: PathBuf,
    pub tokens: Option<PathBuf>,
    pub trust_domain: String,
}

/// Why the control plane could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("config directory {path}: {source}")]
    ConfigDir { path: String, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Loads the directory, listens (calling `on_listening` with the bound address), serves ADS and
/// follows the directory until `shutdown` completes.
pub async fn run(
    opts: Options,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ControlPlaneError> {
    let path = opts.config_dir.display().to_string();
    let mut source = source::Source::new(&opts.config_dir, opts.translate.clone())
        .map_err(|source| ControlPlaneError::ConfigDir { path: path.clone(), source })?;
    let ca = opts
        .ca
        .as_ref()
        .map(|c| ca::CertificateAuthority::load_or_create(&c.dir, &c.trust_domain, c.tokens.as_deref()))
        .transpose()?;
    let cache = Arc::new(Cache::default());
    cache.update(source.load());
    info!(dir = %path, resources = %cache.current().counts(), "config loaded");
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ControlPlaneError::Bind { addr: opts.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ControlPlaneError::Bind { addr: opts.listen, source })?;
    info!(%addr, "ADS server listening (StreamAggregatedResources and DeltaAggregatedResources)");
    on_listening(addr);
    let watcher = tokio::spawn(source::watch(source, cache.clone()));
    let result = server::serve(listener, cache, ca, shutdown).await;
    watcher.abort();
    Ok(result?)
}
