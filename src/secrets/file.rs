//! Path-based SDS: a file holding a `DiscoveryResponse` whose resources are `Secret`s (Envoy's
//! `sds_config: {path_config_source: {path: ...}}`), read when first named and re-read when it
//! changes. Rotation tools replace such files atomically (rename), so the file is polled by
//! content rather than by inotify on the inode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use prost::{Message, Name};

use crate::tls::TlsError;

const POLL: Duration = Duration::from_millis(500);

/// The secrets in `path`.
pub fn read(path: &Path) -> Result<Vec<Secret>, TlsError> {
    let fail = |reason: String| TlsError::Config(format!("SDS file '{}': {reason}", path.display()));
    let name = path.to_string_lossy();
    let doc = crate::bootstrap::read_document(&name).map_err(|e| fail(e.to_string()))?;
    let response: DiscoveryResponse =
        crate::bootstrap::decode::from_json(&doc, Default::default()).map_err(|e| fail(e.to_string()))?;
    response
        .resources
        .iter()
        .enumerate()
        .map(|(i, any)| {
            if any.type_url != Secret::type_url() {
                return Err(fail(format!("resources[{i}]: expected {}, got {}", Secret::type_url(), any.type_url)));
            }
            Secret::decode(any.value.as_slice()).map_err(|e| fail(format!("resources[{i}]: {e}")))
        })
        .collect()
}

/// Re-reads `path` whenever its content changes, for the life of the process. A bad version is
/// logged and the previous secrets keep serving. Without a runtime (validate mode) nothing is
/// watched: the file was read once, which is all validation needs.
pub fn watch(path: PathBuf) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let mut last = tokio::fs::read(&path).await.ok();
        loop {
            tokio::time::sleep(POLL).await;
            let now = tokio::fs::read(&path).await.ok();
            if now.is_none() || now == last {
                continue;
            }
            last = now;
            match read(&path).and_then(|secrets| {
                secrets
                    .iter()
                    .map(|s| Ok((s.name.clone(), super::SecretValue::from_proto(s)?)))
                    .collect::<Result<Vec<_>, TlsError>>()
            }) {
                Ok(values) => {
                    for (name, value) in values {
                        super::store().set(&name, value);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "SDS file rejected; the previous secrets keep serving"),
            }
        }
    });
}
