//! The Envoy v3 bootstrap: command line, file formats and decoding into envoy-types.
//!
//! Owns: reading the bootstrap (YAML/JSON, `--config-yaml` overlay, `--service-*` node overrides)
//! into an `envoy_types` `Bootstrap`. Must not know about sockets or build data-path objects; the
//! `model` module validates what this produces.

pub mod cli;
pub mod decode;
pub mod normalize;
pub mod yaml;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use serde_json::Value;

pub use cli::Options;
pub use decode::{DecodeError, DecodeOptions};

/// Why a bootstrap could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("unable to read file: {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("unable to parse JSON as proto ({path}): {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("unable to parse YAML ({path}): {source}")]
    Yaml { path: String, source: yaml::YamlError },
    #[error("{origin}: {source}")]
    Decode { origin: String, source: DecodeError },
    #[error("At least one of --config-path or --config-yaml or Options::configProto() should be non-empty")]
    NoConfig,
}

/// Loads the bootstrap the way Envoy does: the file (`-c`), then `--config-yaml` merged over it, then
/// the `--service-*` flags over `node`.
pub fn load(opts: &Options) -> Result<Bootstrap, BootstrapError> {
    let decode_opts = DecodeOptions { allow_unknown_fields: opts.allow_unknown_static_fields };
    let mut json = match &opts.config_path {
        Some(path) => read_document(path)?,
        None => Value::Object(Default::default()),
    };
    if let Some(overlay) = &opts.config_yaml {
        let overlay =
            yaml::to_json(overlay).map_err(|source| BootstrapError::Yaml { path: "--config-yaml".into(), source })?;
        merge_json(&mut json, overlay);
    } else if opts.config_path.is_none() {
        return Err(BootstrapError::NoConfig);
    }
    let origin = opts.config_path.clone().unwrap_or_else(|| "--config-yaml".into());
    let mut bootstrap: Bootstrap =
        decode::from_json(&json, decode_opts).map_err(|source| BootstrapError::Decode { origin, source })?;
    apply_node_flags(&mut bootstrap, opts);
    Ok(bootstrap)
}

/// Reads a YAML or JSON document the way Envoy chooses between them: by extension, `.json` strictly
/// as JSON, everything else as YAML (a superset of JSON).
pub fn read_document(path: &str) -> Result<Value, BootstrapError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| BootstrapError::Read { path: path.to_string(), source })?;
    parse_document(path, &text)
}

/// Parses document text; `name` picks the format (`.json` → JSON, otherwise YAML).
pub fn parse_document(name: &str, text: &str) -> Result<Value, BootstrapError> {
    if name.ends_with(".json") {
        serde_json::from_str(text).map_err(|source| BootstrapError::Json { path: name.to_string(), source })
    } else {
        yaml::to_json(text).map_err(|source| BootstrapError::Yaml { path: name.to_string(), source })
    }
}

/// Envoy's `MergeFrom` on JSON: objects merge key by key, arrays append, scalars replace.
fn merge_json(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_json(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => b.extend(o),
        (b, o) => *b = o,
    }
}

fn apply_node_flags(bootstrap: &mut Bootstrap, opts: &Options) {
    let node = bootstrap.node.get_or_insert_with(Default::default);
    if let Some(id) = &opts.service_node {
        node.id = id.clone();
    }
    if let Some(cluster) = &opts.service_cluster {
        node.cluster = cluster.clone();
    }
    if let Some(zone) = &opts.service_zone {
        node.locality.get_or_insert_with(Default::default).zone = zone.clone();
    }
}
