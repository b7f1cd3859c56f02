//! Envoy's YAML dialect → `serde_json::Value`.
//!
//! Envoy converts YAML with yaml-cpp's scalar rules (`source/common/protobuf/yaml_utility.cc`), not
//! YAML 1.2: a quoted scalar is always a string; an unquoted one is a boolean if yaml-cpp would read
//! it as one (`y`, `yes`, `on`, `true` and their negatives, in three casings), a number if it is an
//! integer that fits in 32 bits or a float, and otherwise a string (so a large integer stays a
//! string, which the proto3 JSON mapping accepts for 64-bit fields). This module reproduces that on
//! top of yaml-rust2's event parser, which reports whether each scalar was quoted.
//!
//! Owns: text → JSON value. Must not know about protobuf types.

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML document that Envoy would also refuse to read.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("YAML syntax error: {0}")]
    Syntax(#[from] yaml_rust2::ScanError),
    #[error("YAML error at line {line}: {reason}")]
    Structure { line: usize, reason: String },
    #[error("the YAML document is empty")]
    Empty,
}

/// Parses the first document of `text` with Envoy's scalar rules.
pub fn to_json(text: &str) -> Result<Value, YamlError> {
    let mut builder = Builder::default();
    Parser::new_from_str(text).load(&mut builder, false)?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    builder.root.ok_or(YamlError::Empty)
}

enum Frame {
    Seq { items: Vec<Value>, anchor: usize },
    Map { map: Map<String, Value>, key: Option<String>, anchor: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: std::collections::HashMap<usize, Value>,
    root: Option<Value>,
    error: Option<YamlError>,
}

impl Builder {
    fn push_value(&mut self, value: Value, line: usize) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(value);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, .. }) => match key.take() {
                None => match value {
                    // An alias used as a key.
                    Value::String(s) => *key = Some(s),
                    // A sequence or mapping cannot be a protobuf field name or a Struct key.
                    _ => {
                        self.error.get_or_insert(YamlError::Structure {
                            line,
                            reason: "mapping keys must be scalars".into(),
                        });
                    }
                },
                Some(k) => {
                    map.insert(k, value);
                }
            },
        }
    }

    fn remember(&mut self, anchor: usize, value: &Value) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                // Envoy reads mapping keys as their literal text (`as<std::string>()`), never as
                // booleans or numbers: `y:` is the key "y".
                if let Some(Frame::Map { key: key @ None, .. }) = self.stack.last_mut() {
                    if anchor > 0 {
                        self.anchors.insert(anchor, Value::String(text.clone()));
                    }
                    *key = Some(text);
                    return;
                }
                let explicit_string = tag.as_ref().is_some_and(|t| t.suffix == "str" || t.handle == "!");
                let value = if style != TScalarStyle::Plain || explicit_string {
                    Value::String(text)
                } else {
                    plain_scalar(text)
                };
                self.remember(anchor, &value);
                self.push_value(value, line);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq { items: Vec::new(), anchor }),
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, anchor }) = self.stack.pop() {
                    let v = Value::Array(items);
                    self.remember(anchor, &v);
                    self.push_value(v, line);
                }
            }
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map { map: Map::new(), key: None, anchor }),
            Event::MappingEnd => {
                if let Some(Frame::Map { map, anchor, .. }) = self.stack.pop() {
                    let v = Value::Object(map);
                    self.remember(anchor, &v);
                    self.push_value(v, line);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(v) => self.push_value(v, line),
                None => self.error = Some(YamlError::Structure { line, reason: "alias to an unknown anchor".into() }),
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart | Event::DocumentEnd => {}
        }
    }
}

/// yaml-cpp's reading of an unquoted scalar, as Envoy applies it.
fn plain_scalar(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => return Value::Bool(true),
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Value::Bool(false)
        }
        _ => {}
    }
    if let Some(i) = parse_int(&text) {
        // Envoy keeps integers outside int32 as strings so 64-bit fields keep their precision.
        return match i32::try_from(i) {
            Ok(small) => Value::Number(small.into()),
            Err(_) => Value::String(text),
        };
    }
    if looks_like_float(&text) {
        if let Ok(f) = text.parse::<f64>() {
            if let Some(n) = Number::from_f64(f) {
                return Value::Number(n);
            }
        }
    }
    Value::String(text)
}

fn parse_int(text: &str) -> Option<i64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() {
        return None;
    }
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit()) {
        i64::from_str_radix(&digits[1..], 8).ok()?
    } else if digits.bytes().all(|b| b.is_ascii_digit()) {
        match digits.parse::<i64>() {
            Ok(v) => v,
            // Beyond i64: still an integer, kept as a string by the caller's i32 check.
            Err(_) => return Some(i64::MAX),
        }
    } else {
        return None;
    };
    Some(if neg { -magnitude } else { magnitude })
}

fn looks_like_float(text: &str) -> bool {
    let t = text.trim_start_matches(['+', '-']);
    !t.is_empty()
        && t.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && t.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envoy_scalar_rules() {
        let v =
            to_json("a: yes\nb: 'yes'\nc: On\nd: 42\ne: 4294967296\nf: 0.25s\ng: 1.5\nh: \"7\"\ni: ~\nj: 127.0.0.1\n")
                .unwrap();
        assert_eq!(
            v,
            json!({"a": true, "b": "yes", "c": true, "d": 42, "e": "4294967296", "f": "0.25s", "g": 1.5,
                   "h": "7", "i": null, "j": "127.0.0.1"})
        );
    }

    #[test]
    fn anchors_and_flow_style() {
        let v = to_json("x: &a {p: 1}\ny: *a\nz: [1, two]\n").unwrap();
        assert_eq!(v, json!({"x": {"p": 1}, "y": {"p": 1}, "z": [1, "two"]}));
    }

    #[test]
    fn syntax_error_has_position() {
        let err = to_json("a: [1, 2\n").unwrap_err().to_string();
        assert!(err.contains("line"), "{err}");
    }
}
