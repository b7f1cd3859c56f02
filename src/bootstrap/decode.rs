//! Proto3-JSON (and binary `Any`) → envoy-types messages, through the Envoy API descriptor pool.
//!
//! JSON is decoded into a `prost_reflect::DynamicMessage` (which knows the proto3 JSON mapping,
//! `@type` inside `Any`, camelCase and snake_case names, durations as `"0.25s"`, 64-bit integers as
//! strings), re-encoded, and decoded as the concrete envoy-types struct, so the data path only ever
//! sees generated types. `Any` payloads wrapped in `TypedStruct` are unwrapped here too.
//!
//! Owns: the descriptor pool and message decoding. Must not interpret what a message means.

use std::sync::Mutex;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value;

static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/api_descriptor.bin"));

const TYPED_STRUCTS: [&str; 2] = ["xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct"];

/// A message that could not be decoded, with the path to the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{path}: {reason}")]
    Field { path: String, reason: String },
    #[error("unknown message type '{0}' (not part of the Envoy v3 API Remora knows)")]
    UnknownType(String),
    #[error("invalid {type_name} payload: {reason}")]
    Wire { type_name: String, reason: String },
}

/// How strictly unknown JSON fields are treated (Envoy's `--allow-unknown-static-fields`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeOptions {
    pub allow_unknown_fields: bool,
}

/// The Envoy v3 API (and Remora's own `proto/` types) as a reflection pool, decoded once.
///
/// The pool is only needed while reading JSON/YAML config (and for `/config_dump`); a running
/// proxy releases it with [`release_pool`] so its ~10 MB do not stay resident, and the next caller
/// decodes it again (30–50 ms).
pub fn pool() -> DescriptorPool {
    let mut slot = POOL.lock().unwrap_or_else(|p| p.into_inner());
    slot.get_or_insert_with(|| {
        // The descriptor set is produced by build.rs from the same protos envoy-types was generated
        // from; failing to decode it is a build defect, not something input can cause.
        DescriptorPool::decode(DESCRIPTOR_SET).expect("descriptor set built by build.rs is valid")
    })
    .clone()
}

static POOL: Mutex<Option<DescriptorPool>> = Mutex::new(None);

/// Drops the cached pool; it is freed once no descriptor obtained from it is alive.
pub fn release_pool() {
    POOL.lock().unwrap_or_else(|p| p.into_inner()).take();
}

/// The descriptor of a fully-qualified message name.
pub fn descriptor(full_name: &str) -> Result<MessageDescriptor, DecodeError> {
    pool().get_message_by_name(full_name).ok_or_else(|| DecodeError::UnknownType(full_name.to_string()))
}

/// The message name part of a type URL (`type.googleapis.com/x.y.Z` → `x.y.Z`).
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit_once('/').map_or(type_url, |(_, name)| name)
}

/// Decodes proto3 JSON into the message type `T`.
pub fn from_json<T: Message + prost::Name + Default>(value: &Value, opts: DecodeOptions) -> Result<T, DecodeError> {
    let dynamic = json_to_dynamic(&descriptor(&T::full_name())?, value, opts)?;
    decode_as(&dynamic.encode_to_vec())
}

/// Decodes proto3 JSON into a dynamic message of the given descriptor.
pub fn json_to_dynamic(
    desc: &MessageDescriptor,
    value: &Value,
    opts: DecodeOptions,
) -> Result<DynamicMessage, DecodeError> {
    let mut value = value.clone();
    super::normalize::normalize(desc, &mut value);
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(&value, &mut track);
    let options = DeserializeOptions::new().deny_unknown_fields(!opts.allow_unknown_fields);
    DynamicMessage::deserialize_with_options(desc.clone(), de, &options)
        .map_err(|e| DecodeError::Field { path: render_path(&track.path().to_string()), reason: e.to_string() })
}

/// The proto3 JSON of a message, as Envoy's admin `/config_dump` prints it (proto field names,
/// inline `@type`, enum names).
pub fn to_json<T: Message + prost::Name>(msg: &T) -> Result<Value, DecodeError> {
    let desc = descriptor(&T::full_name())?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| DecodeError::Wire { type_name: T::full_name(), reason: e.to_string() })?;
    let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| DecodeError::Wire { type_name: T::full_name(), reason: e.to_string() })
}

/// Unpacks an `Any` as `T`, accepting `T` itself or a `TypedStruct` whose `type_url` names `T`.
pub fn unpack<T: Message + prost::Name + Default>(any: &Any, opts: DecodeOptions) -> Result<T, DecodeError> {
    let wanted = T::full_name();
    let name = type_name(&any.type_url);
    if name == wanted {
        return decode_as(&any.value);
    }
    if TYPED_STRUCTS.contains(&name) {
        let (inner_url, json) = typed_struct_payload(name, &any.value)?;
        if type_name(&inner_url) != wanted {
            return Err(DecodeError::Field {
                path: "typed_config.type_url".into(),
                reason: format!("expected {wanted}, got '{inner_url}'"),
            });
        }
        return from_json(&json, opts);
    }
    Err(DecodeError::Field {
        path: "typed_config".into(),
        reason: format!("expected {wanted}, got '{}'", any.type_url),
    })
}

/// The effective type name of an `Any`: the wrapped type for a `TypedStruct`.
pub fn effective_type_name(any: &Any) -> Result<String, DecodeError> {
    let name = type_name(&any.type_url);
    if TYPED_STRUCTS.contains(&name) {
        let (inner_url, _) = typed_struct_payload(name, &any.value)?;
        return Ok(type_name(&inner_url).to_string());
    }
    Ok(name.to_string())
}

/// The `type_url` and the `value` (as JSON) of an encoded TypedStruct.
fn typed_struct_payload(struct_type: &str, bytes: &[u8]) -> Result<(String, Value), DecodeError> {
    let desc = descriptor(struct_type)?;
    let dynamic = DynamicMessage::decode(desc, bytes)
        .map_err(|e| DecodeError::Wire { type_name: struct_type.into(), reason: e.to_string() })?;
    let json = dynamic
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new().use_proto_field_name(true))
        .map_err(|e| DecodeError::Wire { type_name: struct_type.into(), reason: e.to_string() })?;
    let url = json.get("type_url").and_then(Value::as_str).unwrap_or_default().to_string();
    let value = json.get("value").cloned().unwrap_or_else(|| Value::Object(Default::default()));
    Ok((url, value))
}

fn decode_as<T: Message + prost::Name + Default>(bytes: &[u8]) -> Result<T, DecodeError> {
    T::decode(bytes).map_err(|e| DecodeError::Wire { type_name: T::full_name(), reason: e.to_string() })
}

/// serde_path_to_error prints `a.b[0].c`; an empty path means the document root.
fn render_path(path: &str) -> String {
    if path.is_empty() || path == "." {
        "(root)".to_string()
    } else {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
    use serde_json::json;

    #[test]
    fn unknown_field_names_its_path() {
        let v = json!({"static_resources": {"listeners": [{"name": "l", "bogus_field": 1}]}});
        let err = from_json::<Bootstrap>(&v, DecodeOptions::default()).unwrap_err().to_string();
        assert!(err.contains("static_resources.listeners[0]"), "{err}");
        assert!(err.contains("bogus_field"), "{err}");
    }

    #[test]
    fn camel_case_and_durations() {
        let v = json!({"staticResources": {"clusters": [{"name": "c", "connectTimeout": "0.25s"}]}});
        let b: Bootstrap = from_json(&v, DecodeOptions::default()).unwrap();
        let ct = b.static_resources.unwrap().clusters[0].connect_timeout.unwrap();
        assert_eq!((ct.seconds, ct.nanos), (0, 250_000_000));
    }
}
