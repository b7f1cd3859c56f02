//! Header additions and removals (`request_headers_to_add`, `response_headers_to_remove`, …) with
//! Envoy's append semantics.

use envoy_types::pb::envoy::config::core::v3::{header_value_option::HeaderAppendAction, HeaderValueOption};
use http::header::{HeaderName, HeaderValue};

use super::error::{FieldError, FieldResult};
use super::format::{FormatContext, Formatter};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Clone)]
pub struct HeaderAdd {
    pub name: HeaderName,
    pub value: Formatter,
    pub action: AppendAction,
    pub keep_empty_value: bool,
}

/// One level's header changes (route configuration, virtual host, route or weighted cluster).
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    pub add: Vec<HeaderAdd>,
    pub remove: Vec<HeaderName>,
}

impl HeaderMutations {
    pub fn from_proto(
        add: &[HeaderValueOption],
        remove: &[String],
        add_field: &str,
        remove_field: &str,
    ) -> FieldResult<Self> {
        let add = add
            .iter()
            .enumerate()
            .map(|(i, h)| header_add(h).map_err(|e| e.within(&format!("{add_field}[{i}]"))))
            .collect::<FieldResult<Vec<_>>>()?;
        let remove = remove
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let name = HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                    FieldError::new(format!("{remove_field}[{i}]"), format!("invalid header name '{n}'"))
                })?;
                if n.starts_with(':') || name == http::header::HOST {
                    return Err(FieldError::new(format!("{remove_field}[{i}]"), format!("cannot remove header '{n}'")));
                }
                Ok(name)
            })
            .collect::<FieldResult<Vec<_>>>()?;
        Ok(HeaderMutations { add, remove })
    }

    /// Whether rendering needs the request (some value has `%…%` operators).
    pub fn needs_context(&self) -> bool {
        self.add.iter().any(|a| a.value.as_literal().is_none())
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies removals, then additions, as Envoy's `HeaderParser::evaluateHeaders` does. Values
    /// are rendered first (against `ctx`, which may read the same headers) and applied after.
    pub fn apply(&self, headers: &mut http::HeaderMap, ctx: &dyn FormatContext) {
        let rendered = self.render(ctx);
        self.apply_rendered(headers, rendered);
    }

    /// Renders the non-literal values; literal ones need no work per request.
    pub fn render(&self, ctx: &dyn FormatContext) -> Vec<Option<String>> {
        self.add.iter().map(|a| if a.value.as_literal().is_some() { None } else { Some(a.value.render(ctx)) }).collect()
    }

    pub fn apply_rendered(&self, headers: &mut http::HeaderMap, rendered: Vec<Option<String>>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (add, rendered) in self.add.iter().zip(rendered) {
            let text = match &rendered {
                Some(s) => s.as_str(),
                None => add.value.as_literal().unwrap_or_default(),
            };
            if text.is_empty() && !add.keep_empty_value {
                continue;
            }
            let Ok(value) = HeaderValue::from_str(text) else {
                continue;
            };
            match add.action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(add.name.clone(), value);
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(&add.name) {
                        headers.insert(add.name.clone(), value);
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(add.name.clone(), value);
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(&add.name) {
                        headers.insert(add.name.clone(), value);
                    }
                }
            }
        }
    }
}

fn header_add(h: &HeaderValueOption) -> FieldResult<HeaderAdd> {
    let header = h.header.as_ref().ok_or_else(|| FieldError::new("header", "value is required"))?;
    if header.key.is_empty() {
        return Err(FieldError::new("header.key", "value length must be at least 1 characters"));
    }
    let name = HeaderName::from_bytes(header.key.as_bytes())
        .map_err(|_| FieldError::new("header.key", format!("invalid header name '{}'", header.key)))?;
    let raw = if header.raw_value.is_empty() {
        header.value.clone()
    } else {
        String::from_utf8(header.raw_value.clone())
            .map_err(|_| FieldError::new("header.raw_value", "header values must be valid UTF-8"))?
    };
    let value = Formatter::parse(&raw).map_err(|e| e.within("header.value"))?;
    let action = match (h.append, HeaderAppendAction::try_from(h.append_action)) {
        (Some(_), Ok(a)) if a != HeaderAppendAction::AppendIfExistsOrAdd => {
            return Err(FieldError::new("append", "Both append and append_action are set and it's not allowed"))
        }
        (Some(append), _) => {
            if append.value {
                AppendAction::AppendIfExistsOrAdd
            } else {
                AppendAction::OverwriteIfExistsOrAdd
            }
        }
        (None, Ok(HeaderAppendAction::AppendIfExistsOrAdd)) => AppendAction::AppendIfExistsOrAdd,
        (None, Ok(HeaderAppendAction::AddIfAbsent)) => AppendAction::AddIfAbsent,
        (None, Ok(HeaderAppendAction::OverwriteIfExistsOrAdd)) => AppendAction::OverwriteIfExistsOrAdd,
        (None, Ok(HeaderAppendAction::OverwriteIfExists)) => AppendAction::OverwriteIfExists,
        (None, Err(_)) => return Err(FieldError::new("append_action", "value must be one of the defined enum values")),
    };
    Ok(HeaderAdd { name, value, action, keep_empty_value: h.keep_empty_value })
}
