//! Envoy's JSON leniencies, applied to a JSON value before the strict proto3 mapping reads it.
//!
//! Envoy parses configuration with protobuf's JSON parser in a lenient mode and real configs rely
//! on it: enum names in any case (`codec_type: auto`), booleans written as strings (`"yes"`, `"t"`,
//! `"1"`), `Duration` written as `{seconds, nanos}`, and a single value where a list is expected.
//! This walk follows the message descriptors (through `Any` by its `@type`) and rewrites those
//! spellings into canonical proto3 JSON; anything else is left for the strict decoder to judge.

use prost_reflect::{Kind, MessageDescriptor};
use serde_json::{Map, Value};

use super::decode::{pool, type_name};

pub fn normalize(desc: &MessageDescriptor, v: &mut Value) {
    match desc.full_name() {
        "google.protobuf.Duration" => return duration_object(v),
        "google.protobuf.BoolValue" => return coerce_bool(v),
        "google.protobuf.Struct"
        | "google.protobuf.Value"
        | "google.protobuf.ListValue"
        | "google.protobuf.FieldMask"
        | "google.protobuf.Timestamp" => return,
        "google.protobuf.Any" => return normalize_any(v),
        _ => {}
    }
    let Value::Object(map) = v else { return };
    normalize_fields(desc, map);
}

fn normalize_fields(desc: &MessageDescriptor, map: &mut Map<String, Value>) {
    for (key, value) in map.iter_mut() {
        let Some(field) = desc.get_field_by_name(key).or_else(|| desc.get_field_by_json_name(key)) else { continue };
        if field.is_map() {
            if let (Value::Object(entries), Kind::Message(entry)) = (value, field.kind()) {
                if let Some(value_field) = entry.map_entry_value_field().kind().as_message().cloned() {
                    for item in entries.values_mut() {
                        normalize(&value_field, item);
                    }
                } else {
                    let kind = entry.map_entry_value_field().kind();
                    for item in entries.values_mut() {
                        normalize_single(&kind, item);
                    }
                }
            }
        } else if field.is_list() {
            if !value.is_array() && !value.is_null() {
                *value = Value::Array(vec![value.take()]);
            }
            if let Value::Array(items) = value {
                let kind = field.kind();
                for item in items {
                    normalize_single(&kind, item);
                }
            }
        } else {
            normalize_single(&field.kind(), value);
        }
    }
}

fn normalize_single(kind: &Kind, v: &mut Value) {
    match kind {
        Kind::Message(m) => normalize(m, v),
        Kind::Enum(e) => {
            if let Value::String(s) = v {
                if e.get_value_by_name(s).is_none() {
                    if let Some(canonical) = e.values().find(|ev| ev.name().eq_ignore_ascii_case(s)) {
                        *s = canonical.name().to_string();
                    }
                }
            }
        }
        Kind::Bool => coerce_bool(v),
        _ => {}
    }
}

fn normalize_any(v: &mut Value) {
    let Value::Object(map) = v else { return };
    let Some(url) = map.get("@type").and_then(Value::as_str) else { return };
    let Some(desc) = pool().get_message_by_name(type_name(url)) else { return };
    if desc.full_name().starts_with("google.protobuf.") {
        // Well-known types inside Any are written as {"@type", "value"}.
        if let Some(inner) = map.get_mut("value") {
            normalize(&desc, inner);
        }
        return;
    }
    normalize_fields(&desc, map);
}

/// Envoy accepts these strings for booleans (in any case); `on`/`off` only as unquoted YAML.
fn coerce_bool(v: &mut Value) {
    if let Value::String(s) = v {
        match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => *v = Value::Bool(true),
            "false" | "f" | "no" | "n" | "0" => *v = Value::Bool(false),
            _ => {}
        }
    }
}

/// `{seconds: 1, nanos: 500000000}` → `"1.500000000s"`.
fn duration_object(v: &mut Value) {
    let Value::Object(map) = v else { return };
    if map.keys().any(|k| k != "seconds" && k != "nanos") {
        return;
    }
    let as_i64 = |x: Option<&Value>| -> Option<i64> {
        match x {
            None => Some(0),
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.parse().ok(),
            _ => None,
        }
    };
    let (Some(seconds), Some(nanos)) = (as_i64(map.get("seconds")), as_i64(map.get("nanos"))) else { return };
    let sign = if seconds < 0 || nanos < 0 { "-" } else { "" };
    *v = Value::String(format!("{sign}{}.{:09}s", seconds.unsigned_abs(), nanos.unsigned_abs()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lenient_spellings() {
        let desc = pool().get_message_by_name("envoy.config.cluster.v3.Cluster").unwrap();
        let mut v = json!({"name": "c", "lbPolicy": "round_robin", "connect_timeout": {"seconds": 1, "nanos": 500000000},
                            "respect_dns_ttl": "yes", "dns_resolvers": {"pipe": {"path": "/x"}}});
        normalize(&desc, &mut v);
        assert_eq!(v["lbPolicy"], "ROUND_ROBIN");
        assert_eq!(v["connect_timeout"], "1.500000000s");
        assert_eq!(v["respect_dns_ttl"], true);
        assert!(v["dns_resolvers"].is_array());
    }
}
