//! Named TLS secrets (Envoy's SDS secrets): the current value of each name, swapped whole when a
//! source delivers a new one, so TLS contexts built on them pick up rotations on the next
//! handshake while established connections keep the certificate they started with.
//!
//! Sources: `static_resources.secrets` of the bootstrap, path-based SDS files (watched), and
//! anything that calls [`SecretStore::set`] (the workload identity provider for Istio's `default`
//! and `ROOTCA`, the xDS client for secrets delivered over ADS).
//!
//! Owns: the name → value table and parsing `Secret` protos into ready-to-use material. Must not
//! build rustls configs (`tls` does) or talk to a control plane.

mod file;
mod sds_client;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwapOption;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pb;

use crate::model::tls::{SdsRef, SdsSource, Validation};
use crate::tls::TlsError;

/// A certificate with its key, parsed and paired once.
pub struct CertificateSecret {
    pub certified: Arc<rustls::sign::CertifiedKey>,
    pub chain_pem: Vec<u8>,
    /// Where the chain came from (a file, or `<inline>`), for `/certs`.
    pub chain_path: String,
}

/// Trust anchors (and any SAN matchers the secret itself carries).
pub struct ValidationSecret {
    pub roots: Arc<rustls::RootCertStore>,
    pub validation: Validation,
}

pub enum SecretValue {
    Certificate(CertificateSecret),
    Validation(ValidationSecret),
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretValue::Certificate(_) => f.write_str("SecretValue::Certificate"),
            SecretValue::Validation(_) => f.write_str("SecretValue::Validation"),
        }
    }
}

impl SecretValue {
    /// Parses a `Secret` proto. Only the two kinds TLS contexts use are accepted.
    pub fn from_proto(s: &pb::Secret) -> Result<SecretValue, TlsError> {
        use pb::secret::Type;
        match &s.r#type {
            Some(Type::TlsCertificate(c)) => {
                let source = |ds: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>, what: &str| {
                    let ds = ds
                        .as_ref()
                        .ok_or_else(|| TlsError::Config(format!("secret '{}': {what} is required", s.name)))?;
                    crate::model::data_source(ds)
                        .map(|b| b.to_vec())
                        .map_err(|e| TlsError::Config(format!("secret '{}': {what}: {}", s.name, e.reason)))
                };
                let chain_pem = source(&c.certificate_chain, "tls_certificate.certificate_chain")?;
                let chain_path =
                    c.certificate_chain.as_ref().map_or_else(|| "<inline>".into(), crate::model::data_source_path);
                let key_pem = source(&c.private_key, "tls_certificate.private_key")?;
                let certified = crate::tls::certified_key_from_pem(&chain_pem, &key_pem)?;
                Ok(SecretValue::Certificate(CertificateSecret { certified, chain_pem, chain_path }))
            }
            Some(Type::ValidationContext(v)) => {
                let validation = crate::model::tls::validation(v).map_err(|e| {
                    TlsError::Config(format!("secret '{}': validation_context.{}: {}", s.name, e.path, e.reason))
                })?;
                let roots = crate::tls::root_store(&validation)?
                    .ok_or_else(|| TlsError::TrustedCa(format!("secret '{}' has no trusted_ca", s.name)))?;
                Ok(SecretValue::Validation(ValidationSecret { roots: Arc::new(roots), validation }))
            }
            _ => Err(TlsError::Config(format!(
                "secret '{}': only tls_certificate and validation_context secrets are supported",
                s.name
            ))),
        }
    }
}

/// One name's current value. Readers load it lock-free on every handshake.
#[derive(Default)]
pub struct Slot {
    value: ArcSwapOption<SecretValue>,
    generation: AtomicU64,
}

impl Slot {
    pub fn current(&self) -> Option<Arc<SecretValue>> {
        self.value.load_full()
    }

    /// Changes every time a new value is stored (verifiers rebuild their caches on a change).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn store(&self, v: Arc<SecretValue>) {
        self.value.store(Some(v));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
pub struct SecretStore {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    watched_files: Mutex<HashSet<PathBuf>>,
    grpc: Mutex<GrpcSources>,
}

/// SDS-over-gRPC streams, one per cluster, and the names each must subscribe to.
#[derive(Default)]
struct GrpcSources {
    /// The bootstrap's clusters and node, once the server runs (validation starts no stream).
    configured: Option<(HashMap<String, Arc<crate::model::Cluster>>, envoy_types::pb::envoy::config::core::v3::Node)>,
    wanted: HashMap<String, tokio::sync::watch::Sender<BTreeSet<String>>>,
    started: HashSet<String>,
    /// Clusters whose secrets an in-process provider serves (Istio's `sds-grpc` with a CA client).
    in_process: HashSet<String>,
}

/// The process's secrets. One table, as Envoy's secret manager is one per server: a sidecar has
/// one workload identity, and every listener and cluster that names `default` means the same one.
pub fn store() -> &'static SecretStore {
    static STORE: OnceLock<SecretStore> = OnceLock::new();
    STORE.get_or_init(SecretStore::default)
}

impl SecretStore {
    /// The slot for `r`, starting its source if this is the first use (a path-based SDS file is
    /// read now, so a bad file fails the config that names it, and then watched).
    pub fn slot(&self, r: &SdsRef) -> Result<Arc<Slot>, TlsError> {
        let slot = self.named(&r.name);
        match &r.source {
            SdsSource::Grpc { cluster } => self.want_from_grpc(cluster, &r.name),
            SdsSource::Unsupported(what) if slot.current().is_none() => {
                // Fail closed: a context without its certificate or CA refuses handshakes.
                tracing::warn!(secret = %r.name, "{what} is not fetched by Remora; TLS handshakes that need this secret fail until something provides it");
            }
            _ => {}
        }
        if let SdsSource::File(path) = &r.source {
            let first = self.watched_files.lock().unwrap_or_else(|p| p.into_inner()).insert(path.clone());
            if first || slot.current().is_none() {
                for s in file::read(path)? {
                    self.set(&s.name, SecretValue::from_proto(&s)?);
                }
            }
            if first {
                file::watch(path.clone());
            }
        }
        Ok(slot)
    }

    /// Starts the SDS streams: called once the server runs, with the bootstrap's clusters (an SDS
    /// cluster is a static cluster) and node.
    pub fn start_grpc_sources(
        &self,
        clusters: HashMap<String, Arc<crate::model::Cluster>>,
        node: envoy_types::pb::envoy::config::core::v3::Node,
    ) {
        let mut grpc = self.grpc.lock().unwrap_or_else(|p| p.into_inner());
        grpc.configured = Some((clusters, node));
        let pending: Vec<String> = grpc.wanted.keys().cloned().collect();
        for cluster in pending {
            Self::start_stream(&mut grpc, &cluster);
        }
    }

    /// Secrets named through `cluster` are provided in-process (by [`SecretStore::set`]); no
    /// stream is opened to it.
    pub fn serve_in_process(&self, cluster: &str) {
        self.grpc.lock().unwrap_or_else(|p| p.into_inner()).in_process.insert(cluster.to_string());
    }

    fn want_from_grpc(&self, cluster: &str, name: &str) {
        let mut grpc = self.grpc.lock().unwrap_or_else(|p| p.into_inner());
        if grpc.in_process.contains(cluster) {
            return;
        }
        grpc.wanted
            .entry(cluster.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(BTreeSet::new()).0)
            .send_if_modified(|names| names.insert(name.to_string()));
        Self::start_stream(&mut grpc, cluster);
    }

    fn start_stream(grpc: &mut GrpcSources, cluster: &str) {
        if grpc.started.contains(cluster) || grpc.in_process.contains(cluster) {
            return;
        }
        let Some((clusters, node)) = &grpc.configured else { return };
        let Some(names) = grpc.wanted.get(cluster).map(|tx| tx.subscribe()) else { return };
        let Some(c) = clusters.get(cluster) else {
            tracing::warn!(
                cluster,
                "SDS cluster is not a static cluster of the bootstrap; its secrets are not fetched"
            );
            return;
        };
        sds_client::spawn(c.clone(), node.clone(), names);
        grpc.started.insert(cluster.to_string());
    }

    pub fn set(&self, name: &str, value: SecretValue) {
        self.set_shared(name, Arc::new(value));
    }

    pub fn set_shared(&self, name: &str, value: Arc<SecretValue>) {
        tracing::info!(secret = name, kind = ?value, "secret updated");
        self.named(name).store(value);
    }

    /// The current value of a secret, if it has one (without starting to track the name).
    pub fn peek(&self, name: &str) -> Option<Arc<SecretValue>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.get(name).and_then(|s| s.current())
    }

    fn named(&self, name: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(name.to_string()).or_default().clone()
    }
}
