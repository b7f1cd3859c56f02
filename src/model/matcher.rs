//! String, header and regex matchers shared by routes, filter chains and SAN verification.

use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher as PbStringMatcher,
};
use regex::Regex;

use super::error::{FieldError, FieldResult};

/// Envoy's `StringMatcher`.
#[derive(Debug, Clone)]
pub struct StringMatcher {
    kind: StringMatchKind,
    ignore_case: bool,
}

#[derive(Debug, Clone)]
enum StringMatchKind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

impl StringMatcher {
    pub fn from_proto(pb: &PbStringMatcher) -> FieldResult<Self> {
        let ignore_case = pb.ignore_case;
        let fold = |s: &String| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        let kind = match &pb.match_pattern {
            Some(MatchPattern::Exact(s)) => StringMatchKind::Exact(fold(s)),
            Some(MatchPattern::Prefix(s)) => non_empty(s, "prefix").map(|_| StringMatchKind::Prefix(fold(s)))?,
            Some(MatchPattern::Suffix(s)) => non_empty(s, "suffix").map(|_| StringMatchKind::Suffix(fold(s)))?,
            Some(MatchPattern::Contains(s)) => non_empty(s, "contains").map(|_| StringMatchKind::Contains(fold(s)))?,
            Some(MatchPattern::SafeRegex(r)) => {
                StringMatchKind::Regex(compile_regex(r).map_err(|e| e.within("safe_regex"))?)
            }
            Some(MatchPattern::Custom(_)) => {
                return Err(FieldError::new("custom", "custom string matchers are not supported"))
            }
            None => return Err(FieldError::new("match_pattern", "a match pattern is required")),
        };
        Ok(StringMatcher { kind, ignore_case })
    }

    pub fn exact(value: &str) -> Self {
        StringMatcher { kind: StringMatchKind::Exact(value.to_string()), ignore_case: false }
    }

    pub fn matches(&self, value: &str) -> bool {
        let folded;
        let v = if self.ignore_case && !matches!(self.kind, StringMatchKind::Regex(_)) {
            folded = value.to_ascii_lowercase();
            folded.as_str()
        } else {
            value
        };
        match &self.kind {
            StringMatchKind::Exact(s) => v == s,
            StringMatchKind::Prefix(s) => v.starts_with(s.as_str()),
            StringMatchKind::Suffix(s) => v.ends_with(s.as_str()),
            StringMatchKind::Contains(s) => v.contains(s.as_str()),
            StringMatchKind::Regex(r) => full_match(r, v),
        }
    }
}

fn non_empty(s: &str, field: &str) -> FieldResult<()> {
    if s.is_empty() {
        Err(FieldError::new(field, "value length must be at least 1 characters"))
    } else {
        Ok(())
    }
}

/// Compiles an Envoy `RegexMatcher` (RE2 syntax; Rust's `regex` implements the same guarantees).
pub fn compile_regex(r: &RegexMatcher) -> FieldResult<Regex> {
    if r.regex.is_empty() {
        return Err(FieldError::new("regex", "value length must be at least 1 characters"));
    }
    // Envoy's regexes must match the whole input; anchoring here keeps `is_match` cheap.
    Regex::new(&format!("^(?:{})$", r.regex))
        .map_err(|e| FieldError::new("regex", format!("invalid regex '{}': {e}", r.regex)))
}

/// Compiles a regex used for search-and-replace (not anchored).
pub fn compile_search_regex(r: &RegexMatcher) -> FieldResult<Regex> {
    Regex::new(&r.regex).map_err(|e| FieldError::new("regex", format!("invalid regex '{}': {e}", r.regex)))
}

/// Whole-input match for a regex compiled by [`compile_regex`].
pub fn full_match(r: &Regex, v: &str) -> bool {
    r.is_match(v)
}
