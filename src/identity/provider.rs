//! Keeps a valid workload certificate: the first is requested at start, each is renewed at half
//! its life (± 1 % jitter, pilot-agent's `SECRET_GRACE_PERIOD_RATIO`), a failed request is retried
//! with jittered exponential backoff while the current certificate keeps serving until it
//! expires. Each certificate goes into the secret table as `default` (chain and key) and `ROOTCA`
//! (the root), the names istiod's TLS contexts ask `sds-grpc` for, which is therefore served
//! in-process instead of over a socket.
//!
//! Owns: the renewal schedule. Must not parse config or build TLS configs.

use std::time::{Duration, SystemTime};

use rand::Rng;

use super::caclient::{CaClient, WorkloadCertificate};
use super::{IdentityConfig, IdentityError};
use crate::secrets::{SecretValue, ValidationSecret};
use crate::xds::backoff::Backoff;

/// The SDS cluster istiod's TLS contexts name (pilot-agent's socket).
pub const SDS_CLUSTER: &str = "sds-grpc";

/// Starts the provider: marks `sds-grpc` as served in-process and spawns the renewal loop.
pub fn start(cfg: IdentityConfig) -> Result<(), IdentityError> {
    let client = CaClient::new(&cfg)?;
    crate::secrets::store().serve_in_process(SDS_CLUSTER);
    tracing::info!(identity = %cfg.identity, ca = %cfg.ca_addr, ttl = ?cfg.ttl, "workload identity provider starting");
    tokio::spawn(run(cfg, client));
    Ok(())
}

async fn run(cfg: IdentityConfig, client: CaClient) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut current: Option<WorkloadCertificate> = None;
    loop {
        match client.issue(&cfg).await {
            Ok(cert) => {
                backoff.reset();
                match install(&cert) {
                    Ok(()) => {
                        tracing::info!(identity = %cfg.identity, serial = %cert.serial, expires = ?cert.not_after, "workload certificate issued");
                        let wait = renew_in(&cert, SystemTime::now());
                        tracing::debug!(?wait, "next renewal");
                        current = Some(cert);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    Err(e) => tracing::error!(error = %e, "the issued certificate cannot be used"),
                }
            }
            Err(e) => {
                let serving = match &current {
                    Some(c) if c.not_after > SystemTime::now() => {
                        format!("the current certificate (serial {}) keeps serving until it expires", c.serial)
                    }
                    Some(_) => {
                        "the current certificate has expired; TLS handshakes fail until a new one is issued".into()
                    }
                    None => "no certificate yet; mTLS handshakes fail until one is issued".into(),
                };
                tracing::warn!(error = %e, "workload certificate request failed; {serving}");
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

fn install(cert: &WorkloadCertificate) -> Result<(), crate::tls::TlsError> {
    let certified = crate::tls::certified_key_from_pem(cert.chain_pem.as_bytes(), cert.key_pem.as_bytes())?;
    let validation = crate::model::tls::Validation {
        trusted_ca: Some(cert.root_pem.clone().into_bytes()),
        trusted_ca_path: Some("<inline>".into()),
        ..Default::default()
    };
    let roots =
        crate::tls::root_store(&validation)?.ok_or_else(|| crate::tls::TlsError::TrustedCa("empty root".into()))?;
    let store = crate::secrets::store();
    store.set("ROOTCA", SecretValue::Validation(ValidationSecret { roots: std::sync::Arc::new(roots), validation }));
    store.set(
        "default",
        SecretValue::Certificate(crate::secrets::CertificateSecret {
            certified,
            chain_pem: cert.chain_pem.clone().into_bytes(),
            chain_path: "<inline>".into(),
        }),
    );
    Ok(())
}

/// Half the time from issuance (`now`, as pilot-agent counts it: CAs back-date NotBefore for
/// clock skew) to expiry, ± 1 %, at least a second.
fn renew_in(cert: &WorkloadCertificate, now: SystemTime) -> Duration {
    let left = cert.not_after.duration_since(now).unwrap_or_default();
    let ratio = 0.5 + rand::rng().random_range(-0.01..=0.01);
    left.mul_f64(ratio).max(Duration::from_secs(1))
}
