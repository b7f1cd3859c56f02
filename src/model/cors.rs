//! CORS policies for Envoy's CORS filter (`envoy.filters.http.cors`): per route or virtual host,
//! from `typed_per_filter_config` (`envoy.extensions.filters.http.cors.v3.CorsPolicy`, where istiod
//! writes a VirtualService's `corsPolicy`) or the deprecated `cors` field of routes and virtual
//! hosts (`envoy.config.route.v3.CorsPolicy`), which carries the same settings.
//!
//! Owns: the validated policy. Must not answer requests (`http::cors` does).

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3 as route_pb;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors_pb;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher as PbStringMatcher;

use super::error::{FieldError, FieldResult};
use super::fault::PerMillion;
use super::matcher::StringMatcher;

pub const TYPE_NAME: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";

#[derive(Debug, Clone)]
pub struct CorsPolicy {
    pub allow_origin: Vec<StringMatcher>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: String,
    pub allow_credentials: Option<bool>,
    /// Share of requests the policy is enforced on (default all).
    pub enabled: PerMillion,
    pub allow_private_network_access: Option<bool>,
    /// A preflight from an origin that is not allowed goes upstream (default) or is answered.
    pub forward_not_matching_preflights: Option<bool>,
}

struct Fields<'a> {
    allow_origin: &'a [PbStringMatcher],
    allow_methods: &'a str,
    allow_headers: &'a str,
    expose_headers: &'a str,
    max_age: &'a str,
    allow_credentials: Option<bool>,
    enabled: Option<&'a RuntimeFractionalPercent>,
    allow_private_network_access: Option<bool>,
    forward_not_matching_preflights: Option<bool>,
}

impl CorsPolicy {
    pub fn from_filter_proto(p: &cors_pb::CorsPolicy) -> FieldResult<Self> {
        Self::build(Fields {
            allow_origin: &p.allow_origin_string_match,
            allow_methods: &p.allow_methods,
            allow_headers: &p.allow_headers,
            expose_headers: &p.expose_headers,
            max_age: &p.max_age,
            allow_credentials: p.allow_credentials.map(|b| b.value),
            enabled: p.filter_enabled.as_ref(),
            allow_private_network_access: p.allow_private_network_access.map(|b| b.value),
            forward_not_matching_preflights: p.forward_not_matching_preflights.map(|b| b.value),
        })
    }

    pub fn from_route_proto(p: &route_pb::CorsPolicy) -> FieldResult<Self> {
        let enabled = p.enabled_specifier.as_ref().map(|route_pb::cors_policy::EnabledSpecifier::FilterEnabled(f)| f);
        Self::build(Fields {
            allow_origin: &p.allow_origin_string_match,
            allow_methods: &p.allow_methods,
            allow_headers: &p.allow_headers,
            expose_headers: &p.expose_headers,
            max_age: &p.max_age,
            allow_credentials: p.allow_credentials.map(|b| b.value),
            enabled,
            allow_private_network_access: p.allow_private_network_access.map(|b| b.value),
            forward_not_matching_preflights: p.forward_not_matching_preflights.map(|b| b.value),
        })
    }

    fn build(f: Fields<'_>) -> FieldResult<Self> {
        let allow_origin = f
            .allow_origin
            .iter()
            .enumerate()
            .map(|(i, m)| {
                StringMatcher::from_proto(m).map_err(|e| e.within(&format!("allow_origin_string_match[{i}]")))
            })
            .collect::<FieldResult<Vec<_>>>()?;
        if f.max_age.parse::<u64>().is_err() && !f.max_age.is_empty() {
            return Err(FieldError::new("max_age", format!("'{}' is not a number of seconds", f.max_age)));
        }
        Ok(CorsPolicy {
            allow_origin,
            allow_methods: f.allow_methods.to_string(),
            allow_headers: f.allow_headers.to_string(),
            expose_headers: f.expose_headers.to_string(),
            max_age: f.max_age.to_string(),
            allow_credentials: f.allow_credentials,
            // Remora has no runtime layer: the default value is the effective one.
            enabled: f.enabled.map_or(PerMillion(1_000_000), |r| PerMillion::from_fraction(r.default_value.as_ref())),
            allow_private_network_access: f.allow_private_network_access,
            forward_not_matching_preflights: f.forward_not_matching_preflights,
        })
    }
}
