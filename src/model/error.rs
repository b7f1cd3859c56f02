//! The one error type of config validation: which resource, which field, why.

/// A resource that failed validation. Displayed as Envoy-style
/// `<kind> '<name>': <field path>: <reason>` so users can find the line to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} '{name}': {path}: {reason}")]
pub struct ConfigError {
    pub kind: &'static str,
    pub name: String,
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(kind: &'static str, name: &str, path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError { kind, name: name.to_string(), path: path.into(), reason: reason.into() }
    }

    /// Prefixes the field path with the path of the enclosing message.
    pub fn within(mut self, prefix: &str) -> Self {
        self.path = if self.path.is_empty() { prefix.to_string() } else { format!("{prefix}.{}", self.path) };
        self
    }
}

/// A field-level failure before the enclosing resource is known; `ConfigError` adds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError { path: path.into(), reason: reason.into() }
    }

    pub fn within(mut self, prefix: &str) -> Self {
        self.path = if self.path.is_empty() { prefix.to_string() } else { format!("{prefix}.{}", self.path) };
        self
    }

    pub fn for_resource(self, kind: &'static str, name: &str) -> ConfigError {
        ConfigError::new(kind, name, self.path, self.reason)
    }
}

pub type FieldResult<T> = Result<T, FieldError>;
