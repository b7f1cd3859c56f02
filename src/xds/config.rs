//! `dynamic_resources` of the bootstrap → [`XdsConfig`]: which ADS flavour, which static cluster
//! carries it, the gRPC initial metadata, the node, and the initial fetch timeouts.
//!
//! Owns: reading and checking those fields (errors name the field). Must not connect.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::core::v3::{
    api_config_source::ApiType, config_source::ConfigSourceSpecifier, grpc_service::TargetSpecifier, ConfigSource, Node,
};

use crate::model::{duration, Cluster, ConfigError, Snapshot};

/// Envoy's default `initial_fetch_timeout`.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `GRPC` / `AGGREGATED_GRPC`: StreamAggregatedResources.
    Sotw,
    /// `DELTA_GRPC` / `AGGREGATED_DELTA_GRPC`: DeltaAggregatedResources.
    Delta,
}

/// How long a subscription waits for its first response before it stops holding up
/// initialization; `None` waits forever (`initial_fetch_timeout: 0s`, istiod's choice).
pub type FetchTimeout = Option<Duration>;

#[derive(Debug, Clone)]
pub struct XdsConfig {
    pub api: Api,
    /// The static cluster the ADS stream goes to.
    pub cluster: Arc<Cluster>,
    pub initial_metadata: Vec<(String, String)>,
    /// With a workload identity, each (re)connect also carries `authorization: Bearer <token>`
    /// (the token file read then) and `clusterid`, as pilot-agent's xDS proxy adds them for istiod.
    pub credentials: Option<XdsCredentials>,
    pub node: Node,
    pub node_on_first_message_only: bool,
    /// `Some` when CDS comes over ADS.
    pub cds: Option<FetchTimeout>,
    /// `Some` when LDS comes over ADS.
    pub lds: Option<FetchTimeout>,
}

#[derive(Debug, Clone)]
pub struct XdsCredentials {
    pub token_path: std::path::PathBuf,
    pub cluster_id: String,
}

fn err(path: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new("bootstrap", "dynamic_resources", path, reason)
}

/// The fetch timeout of an ADS config source, or `None` (outer) when the source is not ADS.
pub fn ads_source(cs: &ConfigSource, path: &str) -> Result<Option<FetchTimeout>, ConfigError> {
    let timeout = match &cs.initial_fetch_timeout {
        Some(d) => {
            let d = duration(d).map_err(|e| err(&format!("{path}.initial_fetch_timeout"), e.reason))?;
            (!d.is_zero()).then_some(d)
        }
        None => Some(DEFAULT_INITIAL_FETCH_TIMEOUT),
    };
    match &cs.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) => Ok(Some(timeout)),
        _ => Ok(None),
    }
}

impl XdsConfig {
    /// `Ok(None)` when the bootstrap has no ADS-driven dynamic resources.
    pub fn from_bootstrap(b: &Bootstrap, statics: &Snapshot) -> Result<Option<XdsConfig>, ConfigError> {
        let Some(dr) = &b.dynamic_resources else { return Ok(None) };
        let cds = dr.cds_config.as_ref().map(|c| ads_source(c, "dynamic_resources.cds_config")).transpose()?.flatten();
        let lds = dr.lds_config.as_ref().map(|c| ads_source(c, "dynamic_resources.lds_config")).transpose()?.flatten();
        for (field, cs) in [("lds_config", &dr.lds_config), ("cds_config", &dr.cds_config)] {
            if let Some(cs) = cs {
                if !matches!(cs.config_source_specifier, Some(ConfigSourceSpecifier::Ads(_))) {
                    tracing::warn!(
                        "dynamic_resources.{field}: only ADS config sources are implemented; this source is ignored"
                    );
                }
            }
        }
        let Some(ads) = &dr.ads_config else {
            if cds.is_some() || lds.is_some() {
                return Err(err(
                    "dynamic_resources.ads_config",
                    "ADS is used by lds_config/cds_config but ads_config is not set",
                ));
            }
            return Ok(None);
        };
        if cds.is_none() && lds.is_none() {
            tracing::warn!("dynamic_resources.ads_config is set but neither lds_config nor cds_config uses ADS");
        }
        let api = match ApiType::try_from(ads.api_type) {
            Ok(ApiType::Grpc | ApiType::AggregatedGrpc) => Api::Sotw,
            Ok(ApiType::DeltaGrpc | ApiType::AggregatedDeltaGrpc) => Api::Delta,
            _ => {
                return Err(err(
                    "dynamic_resources.ads_config.api_type",
                    format!("API type {} is not supported for ADS; use GRPC or DELTA_GRPC", ads.api_type),
                ))
            }
        };
        let svc = match ads.grpc_services.as_slice() {
            [one] => one,
            [] => {
                return Err(err("dynamic_resources.ads_config.grpc_services", "exactly one gRPC service is required"))
            }
            _ => {
                return Err(err(
                    "dynamic_resources.ads_config.grpc_services",
                    "only one gRPC service may be given for ADS",
                ))
            }
        };
        let cluster_name = match &svc.target_specifier {
            Some(TargetSpecifier::EnvoyGrpc(g)) => g.cluster_name.clone(),
            Some(TargetSpecifier::GoogleGrpc(_)) => {
                return Err(err(
                    "dynamic_resources.ads_config.grpc_services[0].google_grpc",
                    "google_grpc is not supported; use envoy_grpc with a static cluster",
                ))
            }
            None => return Err(err("dynamic_resources.ads_config.grpc_services[0]", "envoy_grpc is required")),
        };
        let cluster = statics.clusters.get(&cluster_name).cloned().ok_or_else(|| {
            err(
                "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                format!("unknown gRPC client cluster '{cluster_name}': it must be a static cluster"),
            )
        })?;
        let mut initial_metadata = Vec::with_capacity(svc.initial_metadata.len());
        for (i, h) in svc.initial_metadata.iter().enumerate() {
            let value =
                if h.value.is_empty() { String::from_utf8_lossy(&h.raw_value).into_owned() } else { h.value.clone() };
            let key = h.key.to_ascii_lowercase();
            if http::HeaderName::try_from(key.as_str()).is_err() || http::HeaderValue::try_from(value.as_str()).is_err()
            {
                return Err(err(
                    &format!("dynamic_resources.ads_config.grpc_services[0].initial_metadata[{i}]"),
                    format!("invalid header '{}'", h.key),
                ));
            }
            initial_metadata.push((key, value));
        }
        Ok(Some(XdsConfig {
            api,
            cluster,
            initial_metadata,
            credentials: None,
            node: b.node.clone().unwrap_or_default(),
            node_on_first_message_only: ads.set_node_on_first_message_only,
            cds,
            lds,
        }))
    }
}
