//! Route configurations: virtual hosts, routes, matchers and actions, validated and compiled.
//!
//! Matching is pure and lives here beside the types (`RouteTable::find_virtual_host`,
//! `Route::matches`), so the router only asks questions of an immutable table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as pb;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{PathRewriteSpecifier, SchemeRewriteSpecifier};
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, HostRewriteSpecifier};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use http::header::HeaderName;
use regex::Regex;

use super::error::{ConfigError, FieldError, FieldResult};
use super::headers::HeaderMutations;
use super::matcher::{compile_regex, compile_search_regex, full_match, StringMatcher};
use super::{duration, Notes};

/// A validated `RouteConfiguration`.
#[derive(Debug)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<Arc<VirtualHost>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` style, longest suffix first.
    suffix_wildcards: Vec<(String, usize)>,
    /// `example.*` style, longest prefix first.
    prefix_wildcards: Vec<(String, usize)>,
    catch_all: Option<usize>,
    pub ignore_port_in_host_matching: bool,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub most_specific_header_mutations_wins: bool,
    pub internal_only_headers: Vec<HeaderName>,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Route>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub retry_policy: Option<Arc<RetryPolicy>>,
    pub include_request_attempt_count: bool,
    pub include_attempt_count_in_response: bool,
    pub require_tls: RequireTls,
    pub per_filter: PerFilterConfig,
}

/// `typed_per_filter_config` of a route or virtual host, for the filters Remora implements (the
/// most specific level wins, as in Envoy).
#[derive(Debug, Clone, Default)]
pub struct PerFilterConfig {
    pub fault: Option<Arc<super::fault::FaultConfig>>,
    pub cors: Option<Arc<super::cors::CorsPolicy>>,
}

impl PerFilterConfig {
    fn from_proto(
        map: &std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any>,
        notes: &mut Notes,
    ) -> FieldResult<Self> {
        let mut out = PerFilterConfig::default();
        let mut names: Vec<&String> = map.keys().collect();
        names.sort();
        for name in names {
            let any = &map[name];
            let path = format!("typed_per_filter_config[{name}]");
            let type_name =
                super::decode::effective_type_name(any).map_err(|e| FieldError::new(&path, e.to_string()))?;
            match type_name.as_str() {
                super::fault::TYPE_NAME => {
                    let f: envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault =
                        super::unpack(any).map_err(|e| FieldError::new(&path, e))?;
                    out.fault = Some(Arc::new(super::fault::FaultConfig::from_proto(&f).map_err(|e| e.within(&path))?));
                }
                super::cors::TYPE_NAME => {
                    let c: envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy =
                        super::unpack(any).map_err(|e| FieldError::new(&path, e))?;
                    out.cors =
                        Some(Arc::new(super::cors::CorsPolicy::from_filter_proto(&c).map_err(|e| e.within(&path))?));
                }
                _ => notes.per_filter_config(std::iter::once(name)),
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequireTls {
    None,
    ExternalOnly,
    All,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub per_filter: PerFilterConfig,
}

#[derive(Debug)]
pub struct RouteMatch {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatcher>,
    query_parameters: Vec<QueryParameterMatcher>,
    grpc: bool,
    /// Per-million probability from `runtime_fraction.default_value` (Remora has no runtime layer,
    /// so the default value is the effective one).
    runtime_fraction: Option<u32>,
}

#[derive(Debug)]
enum PathMatch {
    Never,
    Prefix(String),
    Exact(String),
    Regex(Regex),
    SeparatedPrefix(String),
}

#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub name: MatchName,
    kind: HeaderMatchKind,
    invert: bool,
    treat_missing_as_empty: bool,
}

/// A header or one of the HTTP/2 pseudo-headers Envoy lets routes match on.
#[derive(Debug, Clone)]
pub enum MatchName {
    Header(HeaderName),
    Method,
    Path,
    Authority,
    Scheme,
}

#[derive(Debug, Clone)]
enum HeaderMatchKind {
    Present(bool),
    Range(i64, i64),
    String(StringMatcher),
}

#[derive(Debug)]
struct QueryParameterMatcher {
    name: String,
    matcher: Option<StringMatcher>,
    present: bool,
}

#[derive(Debug)]
pub enum RouteAction {
    Forward(Box<ForwardAction>),
    Redirect(RedirectAction),
    Direct(DirectResponse),
}

#[derive(Debug)]
pub struct ForwardAction {
    pub cluster: ClusterTarget,
    pub cluster_not_found_code: http::StatusCode,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: HostRewrite,
    /// `None`: no timeout (Envoy's `timeout: 0s`, or a route with `max_stream_duration`).
    pub timeout: Option<Duration>,
    /// The route's `max_stream_duration` (Envoy's "new timeouts", which istiod always uses): when
    /// set, the router has no timeout of its own and the connection manager bounds the stream.
    pub stream_duration: Option<StreamDuration>,
    pub idle_timeout: Option<Duration>,
    pub retry_policy: Option<Arc<RetryPolicy>>,
    pub hash_policy: Vec<HashPolicy>,
    pub websocket: Option<bool>,
    pub append_x_forwarded_host: bool,
}

/// `RouteAction.max_stream_duration`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamDuration {
    /// `max_stream_duration`: `None` unset, `Some(0)` no limit.
    pub max: Option<Duration>,
    /// `grpc_timeout_header_max`: when set, a gRPC request's `grpc-timeout` bounds the stream
    /// instead, capped by this value (0: uncapped).
    pub grpc_header_max: Option<Duration>,
    /// `grpc_timeout_header_offset`: subtracted from the `grpc-timeout` bound.
    pub grpc_header_offset: Option<Duration>,
}

#[derive(Debug)]
pub enum ClusterTarget {
    Named(String),
    Header(HeaderName),
    Weighted(WeightedClusters),
}

#[derive(Debug)]
pub struct WeightedClusters {
    pub clusters: Vec<WeightedCluster>,
    pub total_weight: u64,
}

#[derive(Debug)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u64,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub host_rewrite: Option<String>,
}

impl WeightedClusters {
    /// The cluster for a draw in `[0, total_weight)`: each is picked with probability w/Σw.
    pub fn pick(&self, draw: u64) -> Option<&WeightedCluster> {
        let mut acc = 0;
        for c in &self.clusters {
            acc += c.weight;
            if draw < acc {
                return Some(c);
            }
        }
        None
    }
}

#[derive(Debug, Clone)]
pub enum HostRewrite {
    None,
    Literal(String),
    Auto,
    Header(HeaderName),
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    pub avoid_previous_hosts: bool,
    pub host_selection_max_attempts: u32,
    pub base_interval: Duration,
    pub max_interval: Duration,
}

/// The `retry_on` conditions Remora evaluates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub retriable_4xx: bool,
    pub refused_stream: bool,
    pub retriable_status_codes: bool,
    pub reset_before_request: bool,
    pub grpc_cancelled: bool,
    pub grpc_deadline_exceeded: bool,
    pub grpc_internal: bool,
    pub grpc_resource_exhausted: bool,
    pub grpc_unavailable: bool,
}

impl RetryOn {
    pub fn union(self, o: RetryOn) -> RetryOn {
        RetryOn {
            five_xx: self.five_xx || o.five_xx,
            gateway_error: self.gateway_error || o.gateway_error,
            reset: self.reset || o.reset,
            connect_failure: self.connect_failure || o.connect_failure,
            retriable_4xx: self.retriable_4xx || o.retriable_4xx,
            refused_stream: self.refused_stream || o.refused_stream,
            retriable_status_codes: self.retriable_status_codes || o.retriable_status_codes,
            reset_before_request: self.reset_before_request || o.reset_before_request,
            grpc_cancelled: self.grpc_cancelled || o.grpc_cancelled,
            grpc_deadline_exceeded: self.grpc_deadline_exceeded || o.grpc_deadline_exceeded,
            grpc_internal: self.grpc_internal || o.grpc_internal,
            grpc_resource_exhausted: self.grpc_resource_exhausted || o.grpc_resource_exhausted,
            grpc_unavailable: self.grpc_unavailable || o.grpc_unavailable,
        }
    }

    pub fn parse(spec: &str, notes: &mut Notes) -> Self {
        let mut r = RetryOn::default();
        for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token {
                "5xx" => r.five_xx = true,
                "gateway-error" => r.gateway_error = true,
                "reset" => r.reset = true,
                "connect-failure" => r.connect_failure = true,
                "retriable-4xx" => r.retriable_4xx = true,
                "refused-stream" => r.refused_stream = true,
                "retriable-status-codes" => r.retriable_status_codes = true,
                "reset-before-request" => r.reset_before_request = true,
                "cancelled" => r.grpc_cancelled = true,
                "deadline-exceeded" => r.grpc_deadline_exceeded = true,
                "internal" => r.grpc_internal = true,
                "resource-exhausted" => r.grpc_resource_exhausted = true,
                "unavailable" => r.grpc_unavailable = true,
                // Envoy also ignores tokens it does not know (with a warning); these two depend on
                // features (rate-limit headers, HTTP/3) Remora does not have, so they never fire.
                other => notes.warn(format!("retry_on '{other}' is not supported and is ignored")),
            }
        }
        r
    }
}

#[derive(Debug, Clone)]
pub enum HashPolicy {
    Header { name: HeaderName, terminal: bool },
    Cookie { name: String, terminal: bool },
    SourceIp { terminal: bool },
    QueryParameter { name: String, terminal: bool },
}

#[derive(Debug)]
pub struct RedirectAction {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub path: RedirectPath,
    pub status: http::StatusCode,
    pub strip_query: bool,
}

#[derive(Debug)]
pub enum RedirectPath {
    Keep,
    Replace(String),
    PrefixRewrite(String),
    RegexRewrite(Regex, String),
}

#[derive(Debug)]
pub struct DirectResponse {
    pub status: http::StatusCode,
    pub body: Option<bytes::Bytes>,
}

/// What the router needs to know about a request to pick a route.
pub struct RequestView<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub method: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    /// Path and query as received (the value of `:path`).
    pub path_and_query: &'a str,
}

impl RouteTable {
    pub fn from_proto(rc: &pb::RouteConfiguration, notes: &mut Notes) -> Result<Self, ConfigError> {
        let err = |e: FieldError| e.for_resource("route configuration", &rc.name);
        let mut table = RouteTable {
            name: rc.name.clone(),
            virtual_hosts: Vec::with_capacity(rc.virtual_hosts.len()),
            exact: HashMap::new(),
            suffix_wildcards: Vec::new(),
            prefix_wildcards: Vec::new(),
            catch_all: None,
            ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
            request_headers: HeaderMutations::from_proto(
                &rc.request_headers_to_add,
                &rc.request_headers_to_remove,
                "request_headers_to_add",
                "request_headers_to_remove",
            )
            .map_err(err)?,
            response_headers: HeaderMutations::from_proto(
                &rc.response_headers_to_add,
                &rc.response_headers_to_remove,
                "response_headers_to_add",
                "response_headers_to_remove",
            )
            .map_err(err)?,
            most_specific_header_mutations_wins: rc.most_specific_header_mutations_wins,
            internal_only_headers: rc
                .internal_only_headers
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| err(FieldError::new(format!("internal_only_headers[{i}]"), "invalid header name")))
                })
                .collect::<Result<_, _>>()?,
        };
        if rc.vhds.is_some() {
            return Err(err(FieldError::new("vhds", "VHDS is not supported")));
        }
        let mut seen_names = std::collections::HashSet::new();
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            let path = format!("virtual_hosts[{i}]");
            if !seen_names.insert(vh.name.as_str()) {
                return Err(err(FieldError::new(
                    format!("{path}.name"),
                    format!("virtual host '{}' is defined more than once", vh.name),
                )));
            }
            let compiled = VirtualHost::from_proto(vh, notes).map_err(|e| err(e.within(&path)))?;
            let idx = table.virtual_hosts.len();
            table.virtual_hosts.push(Arc::new(compiled));
            for (j, domain) in vh.domains.iter().enumerate() {
                let domain = domain.to_ascii_lowercase();
                let dup = || {
                    err(FieldError::new(
                        format!("{path}.domains[{j}]"),
                        format!("Only unique values for domains are permitted. Duplicate entry of domain {domain} in route {}", rc.name),
                    ))
                };
                if domain == "*" {
                    if table.catch_all.replace(idx).is_some() {
                        return Err(dup());
                    }
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    if table.suffix_wildcards.iter().any(|(s, _)| s == suffix) {
                        return Err(dup());
                    }
                    table.suffix_wildcards.push((suffix.to_string(), idx));
                } else if let Some(prefix) = domain.strip_suffix('*') {
                    if table.prefix_wildcards.iter().any(|(p, _)| p == prefix) {
                        return Err(dup());
                    }
                    table.prefix_wildcards.push((prefix.to_string(), idx));
                } else if table.exact.insert(domain.clone(), idx).is_some() {
                    return Err(dup());
                }
            }
            if vh.domains.is_empty() {
                return Err(err(FieldError::new(format!("{path}.domains"), "value must contain at least 1 item(s)")));
            }
        }
        // Longest wildcard wins (Envoy's `findWildcardVirtualHost`).
        table.suffix_wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        table.prefix_wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        Ok(table)
    }

    /// Envoy's virtual host selection: exact, then longest suffix wildcard, then longest prefix
    /// wildcard, then `*`.
    pub fn find_virtual_host(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        let lowered;
        let mut host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if self.ignore_port_in_host_matching {
            host = strip_port(host);
        }
        let idx = self
            .exact
            .get(host)
            .copied()
            .or_else(|| {
                self.suffix_wildcards
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.prefix_wildcards
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|(_, i)| *i)
            })
            .or(self.catch_all)?;
        self.virtual_hosts.get(idx)
    }

    /// Every cluster name routes refer to directly (for static validation).
    pub fn referenced_clusters(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.virtual_hosts.iter().flat_map(|vh| {
            vh.routes.iter().flat_map(move |r| {
                let names: Vec<&str> = match &r.action {
                    RouteAction::Forward(f) => match &f.cluster {
                        ClusterTarget::Named(n) => vec![n.as_str()],
                        ClusterTarget::Weighted(w) => w.clusters.iter().map(|c| c.name.as_str()).collect(),
                        ClusterTarget::Header(_) => vec![],
                    },
                    _ => vec![],
                };
                names.into_iter().map(move |n| (vh.name.as_str(), n))
            })
        })
    }
}

/// `host:port` → `host` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

impl VirtualHost {
    fn from_proto(vh: &pb::VirtualHost, notes: &mut Notes) -> FieldResult<Self> {
        let retry_policy = vh
            .retry_policy
            .as_ref()
            .map(|r| RetryPolicy::from_proto(r, notes).map(Arc::new))
            .transpose()
            .map_err(|e| e.within("retry_policy"))?;
        let routes = vh
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Route::from_proto(r, retry_policy.as_ref(), notes).map_err(|e| e.within(&format!("routes[{i}]")))
            })
            .collect::<FieldResult<Vec<_>>>()?;
        let mut per_filter = PerFilterConfig::from_proto(&vh.typed_per_filter_config, notes)?;
        if let (None, Some(c)) = (&per_filter.cors, &vh.cors) {
            per_filter.cors =
                Some(Arc::new(super::cors::CorsPolicy::from_route_proto(c).map_err(|e| e.within("cors"))?));
        }
        Ok(VirtualHost {
            name: vh.name.clone(),
            routes,
            request_headers: HeaderMutations::from_proto(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                "request_headers_to_add",
                "request_headers_to_remove",
            )?,
            response_headers: HeaderMutations::from_proto(
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
                "response_headers_to_add",
                "response_headers_to_remove",
            )?,
            retry_policy,
            include_request_attempt_count: vh.include_request_attempt_count,
            include_attempt_count_in_response: vh.include_attempt_count_in_response,
            require_tls: match vh.require_tls {
                1 => RequireTls::ExternalOnly,
                2 => RequireTls::All,
                _ => RequireTls::None,
            },
            per_filter,
        })
    }

    /// The first route whose matcher accepts the request.
    pub fn find_route(&self, req: &RequestView<'_>, random: u32) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(req, random))
    }
}

impl Route {
    fn from_proto(r: &pb::Route, vh_retry: Option<&Arc<RetryPolicy>>, notes: &mut Notes) -> FieldResult<Self> {
        let matcher =
            RouteMatch::from_proto(r.r#match.as_ref().ok_or_else(|| FieldError::new("match", "value is required"))?)
                .map_err(|e| e.within("match"))?;
        let action = match &r.action {
            Some(pb::route::Action::Route(a)) => RouteAction::Forward(Box::new(
                ForwardAction::from_proto(a, vh_retry, notes).map_err(|e| e.within("route"))?,
            )),
            Some(pb::route::Action::Redirect(a)) => {
                RouteAction::Redirect(RedirectAction::from_proto(a).map_err(|e| e.within("redirect"))?)
            }
            Some(pb::route::Action::DirectResponse(a)) => {
                RouteAction::Direct(DirectResponse::from_proto(a).map_err(|e| e.within("direct_response"))?)
            }
            Some(pb::route::Action::FilterAction(_)) => {
                return Err(FieldError::new("filter_action", "filter_action routes are not supported"))
            }
            Some(pb::route::Action::NonForwardingAction(_)) => {
                return Err(FieldError::new("non_forwarding_action", "non_forwarding_action routes are not supported"))
            }
            None => return Err(FieldError::new("action", "one of route, redirect or direct_response is required")),
        };
        let mut per_filter = PerFilterConfig::from_proto(&r.typed_per_filter_config, notes)?;
        if let (None, Some(pb::route::Action::Route(a))) = (&per_filter.cors, &r.action) {
            if let Some(c) = &a.cors {
                per_filter.cors =
                    Some(Arc::new(super::cors::CorsPolicy::from_route_proto(c).map_err(|e| e.within("route.cors"))?));
            }
        }
        Ok(Route {
            name: r.name.clone(),
            matcher,
            action,
            request_headers: HeaderMutations::from_proto(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                "request_headers_to_add",
                "request_headers_to_remove",
            )?,
            response_headers: HeaderMutations::from_proto(
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
                "response_headers_to_add",
                "response_headers_to_remove",
            )?,
            per_filter,
        })
    }
}

impl RouteMatch {
    fn from_proto(m: &pb::RouteMatch) -> FieldResult<Self> {
        let path = match &m.path_specifier {
            Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
            Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
            Some(PathSpecifier::SafeRegex(r)) => {
                PathMatch::Regex(compile_regex(r).map_err(|e| e.within("safe_regex"))?)
            }
            Some(PathSpecifier::PathSeparatedPrefix(p)) => {
                if p.contains(['?', '#']) || (p.ends_with('/') && p.len() > 1) {
                    return Err(FieldError::new(
                        "path_separated_prefix",
                        format!("invalid path_separated_prefix '{p}'"),
                    ));
                }
                PathMatch::SeparatedPrefix(p.clone())
            }
            // CONNECT tunnelling is not implemented: such a route never matches, so a CONNECT
            // request gets a 404 instead of being forwarded as if it were a plain request.
            Some(PathSpecifier::ConnectMatcher(_)) => PathMatch::Never,
            Some(PathSpecifier::PathMatchPolicy(_)) => {
                return Err(FieldError::new("path_match_policy", "path templates are not supported"))
            }
            None => {
                return Err(FieldError::new(
                    "path_specifier",
                    "one of prefix, path, safe_regex or path_separated_prefix is required",
                ))
            }
        };
        let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
        let path = if case_sensitive {
            path
        } else {
            match path {
                PathMatch::Prefix(p) => PathMatch::Prefix(p.to_ascii_lowercase()),
                PathMatch::Exact(p) => PathMatch::Exact(p.to_ascii_lowercase()),
                PathMatch::SeparatedPrefix(p) => PathMatch::SeparatedPrefix(p.to_ascii_lowercase()),
                // Envoy applies case_sensitive only to prefix and path.
                other => other,
            }
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderMatcher::from_proto(h).map_err(|e| e.within(&format!("headers[{i}]"))))
            .collect::<FieldResult<Vec<_>>>()?;
        let query_parameters = m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let matcher = match &q.query_parameter_match_specifier {
                    Some(QueryParameterMatchSpecifier::StringMatch(s)) => Some(StringMatcher::from_proto(s)?),
                    Some(QueryParameterMatchSpecifier::PresentMatch(_)) | None => None,
                };
                if q.name.is_empty() {
                    return Err(FieldError::new("name", "value length must be at least 1 characters"));
                }
                Ok(QueryParameterMatcher { name: q.name.clone(), matcher, present: true })
                    .map_err(|e: FieldError| e.within(&format!("query_parameters[{i}]")))
            })
            .collect::<FieldResult<Vec<_>>>()?;
        if !m.cookies.is_empty() {
            return Err(FieldError::new("cookies", "cookie matching is not supported"));
        }
        if !m.dynamic_metadata.is_empty() {
            return Err(FieldError::new("dynamic_metadata", "dynamic metadata matching is not supported"));
        }
        if m.tls_context.is_some() {
            return Err(FieldError::new("tls_context", "TLS context matching is not supported"));
        }
        let runtime_fraction = m.runtime_fraction.as_ref().and_then(|f| f.default_value.as_ref()).map(|p| {
            let per_million = match p.denominator {
                0 => p.numerator.saturating_mul(10_000),
                1 => p.numerator.saturating_mul(100),
                _ => p.numerator,
            };
            per_million.min(1_000_000)
        });
        Ok(RouteMatch { path, case_sensitive, headers, query_parameters, grpc: m.grpc.is_some(), runtime_fraction })
    }

    /// The part of the path a prefix rewrite replaces: the prefix (or whole path) matched.
    /// How much of `path` a `prefix_rewrite` replaces: the matched prefix, or the whole path for
    /// an exact or regex match (Envoy swaps "the matched prefix (or path)").
    pub fn rewritten_len(&self, path: &str) -> usize {
        match &self.path {
            PathMatch::Prefix(p) | PathMatch::Exact(p) | PathMatch::SeparatedPrefix(p) => p.len().min(path.len()),
            PathMatch::Regex(_) => path.len(),
            PathMatch::Never => 0,
        }
    }

    /// `random` is a uniform draw in `[0, 1_000_000)` used for `runtime_fraction`.
    pub fn matches(&self, req: &RequestView<'_>, random: u32) -> bool {
        let lowered;
        let path = if self.case_sensitive {
            req.path
        } else {
            lowered = req.path.to_ascii_lowercase();
            lowered.as_str()
        };
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(r) => full_match(r, req.path),
            PathMatch::Never => false,
            PathMatch::SeparatedPrefix(p) => {
                path.starts_with(p.as_str()) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
        };
        if !path_ok {
            return false;
        }
        if self.grpc && !is_grpc(req.headers) {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(req)) {
            return false;
        }
        if !self.query_parameters.is_empty() {
            let query = req.query.unwrap_or("");
            for qp in &self.query_parameters {
                let value = query_value(query, &qp.name);
                let ok = match (&qp.matcher, value) {
                    (None, v) => v.is_some() == qp.present,
                    (Some(m), Some(v)) => m.matches(&v),
                    (Some(_), None) => false,
                };
                if !ok {
                    return false;
                }
            }
        }
        self.runtime_fraction.is_none_or(|f| random < f)
    }
}

pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

impl HeaderMatcher {
    pub fn from_proto(h: &pb::HeaderMatcher) -> FieldResult<Self> {
        let name = match h.name.as_str() {
            ":method" => MatchName::Method,
            ":path" => MatchName::Path,
            ":authority" | "host" => MatchName::Authority,
            ":scheme" => MatchName::Scheme,
            other => MatchName::Header(
                HeaderName::from_bytes(other.as_bytes())
                    .map_err(|_| FieldError::new("name", format!("invalid header name '{other}'")))?,
            ),
        };
        let string = |m: StringMatcher| HeaderMatchKind::String(m);
        let nonempty = |s: &String, f: &str| {
            if s.is_empty() {
                Err(FieldError::new(f, "value length must be at least 1 characters"))
            } else {
                Ok(())
            }
        };
        let kind = match &h.header_match_specifier {
            None => HeaderMatchKind::Present(true),
            Some(HeaderMatchSpecifier::ExactMatch(s)) => string(StringMatcher::exact(s)),
            Some(HeaderMatchSpecifier::PrefixMatch(s)) => {
                nonempty(s, "prefix_match")?;
                string(StringMatcher::from_proto(&string_matcher_pb(Pattern::Prefix(s.clone())))?)
            }
            Some(HeaderMatchSpecifier::SuffixMatch(s)) => {
                nonempty(s, "suffix_match")?;
                string(StringMatcher::from_proto(&string_matcher_pb(Pattern::Suffix(s.clone())))?)
            }
            Some(HeaderMatchSpecifier::ContainsMatch(s)) => {
                nonempty(s, "contains_match")?;
                string(StringMatcher::from_proto(&string_matcher_pb(Pattern::Contains(s.clone())))?)
            }
            Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => string(
                StringMatcher::from_proto(&string_matcher_pb(Pattern::SafeRegex(r.clone())))
                    .map_err(|e| e.within("safe_regex_match"))?,
            ),
            Some(HeaderMatchSpecifier::RangeMatch(r)) => HeaderMatchKind::Range(r.start, r.end),
            Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderMatchKind::Present(*p),
            Some(HeaderMatchSpecifier::StringMatch(s)) => {
                string(StringMatcher::from_proto(s).map_err(|e| e.within("string_match"))?)
            }
        };
        Ok(HeaderMatcher {
            name,
            kind,
            invert: h.invert_match,
            treat_missing_as_empty: h.treat_missing_header_as_empty,
        })
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let pseudo = |v: &str| Some(v.to_string());
        let joined: Option<String> = match &self.name {
            MatchName::Method => pseudo(req.method),
            MatchName::Path => pseudo(req.path_and_query),
            MatchName::Authority => pseudo(req.authority),
            MatchName::Scheme => pseudo(req.scheme),
            MatchName::Header(name) => {
                let mut values = req.headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (None, _) => None,
                    (Some(one), None) => Some(String::from_utf8_lossy(one.as_bytes()).into_owned()),
                    (Some(first), Some(second)) => {
                        // Envoy matches multi-valued headers on their comma-joined value.
                        let mut s = String::from_utf8_lossy(first.as_bytes()).into_owned();
                        for v in std::iter::once(second).chain(values) {
                            s.push(',');
                            s.push_str(&String::from_utf8_lossy(v.as_bytes()));
                        }
                        Some(s)
                    }
                }
            }
        };
        let value = match joined {
            Some(v) => Some(v),
            None if self.treat_missing_as_empty => Some(String::new()),
            None => None,
        };
        let result = match (&self.kind, value) {
            (HeaderMatchKind::Present(want), v) => return v.is_some() == (*want != self.invert),
            (_, None) => return false,
            (HeaderMatchKind::Range(start, end), Some(v)) => v.parse::<i64>().is_ok_and(|n| n >= *start && n < *end),
            (HeaderMatchKind::String(m), Some(v)) => m.matches(&v),
        };
        result != self.invert
    }
}

enum Pattern {
    Prefix(String),
    Suffix(String),
    Contains(String),
    SafeRegex(envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher),
}

fn string_matcher_pb(p: Pattern) -> envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    let match_pattern = Some(match p {
        Pattern::Prefix(s) => MatchPattern::Prefix(s),
        Pattern::Suffix(s) => MatchPattern::Suffix(s),
        Pattern::Contains(s) => MatchPattern::Contains(s),
        Pattern::SafeRegex(r) => MatchPattern::SafeRegex(r),
    });
    envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher { match_pattern, ignore_case: false }
}

impl ForwardAction {
    fn from_proto(a: &pb::RouteAction, vh_retry: Option<&Arc<RetryPolicy>>, notes: &mut Notes) -> FieldResult<Self> {
        let cluster = match &a.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) => {
                if c.is_empty() {
                    return Err(FieldError::new("cluster", "value length must be at least 1 characters"));
                }
                ClusterTarget::Named(c.clone())
            }
            Some(ClusterSpecifier::ClusterHeader(h)) => ClusterTarget::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| FieldError::new("cluster_header", format!("invalid header name '{h}'")))?,
            ),
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                ClusterTarget::Weighted(weighted(w).map_err(|e| e.within("weighted_clusters"))?)
            }
            Some(ClusterSpecifier::ClusterSpecifierPlugin(_))
            | Some(ClusterSpecifier::InlineClusterSpecifierPlugin(_)) => {
                return Err(FieldError::new("cluster_specifier_plugin", "cluster specifier plugins are not supported"))
            }
            None => {
                return Err(FieldError::new(
                    "cluster_specifier",
                    "one of cluster, cluster_header or weighted_clusters is required",
                ))
            }
        };
        let regex_rewrite = a
            .regex_rewrite
            .as_ref()
            .map(|r| {
                let pattern =
                    r.pattern.as_ref().ok_or_else(|| FieldError::new("regex_rewrite.pattern", "value is required"))?;
                Ok::<_, FieldError>((
                    compile_search_regex(pattern).map_err(|e| e.within("regex_rewrite.pattern"))?,
                    rewrite_substitution(&r.substitution),
                ))
            })
            .transpose()?;
        if !a.prefix_rewrite.is_empty() && regex_rewrite.is_some() {
            return Err(FieldError::new("regex_rewrite", "Cannot specify both prefix_rewrite and regex_rewrite"));
        }
        if !a.path_rewrite.is_empty() || a.path_rewrite_policy.is_some() {
            return Err(FieldError::new("path_rewrite", "path template rewrites are not supported"));
        }
        let host_rewrite = match &a.host_rewrite_specifier {
            None => HostRewrite::None,
            Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => HostRewrite::Literal(h.clone()),
            Some(HostRewriteSpecifier::AutoHostRewrite(b)) if b.value => HostRewrite::Auto,
            Some(HostRewriteSpecifier::AutoHostRewrite(_)) => HostRewrite::None,
            Some(HostRewriteSpecifier::HostRewriteHeader(h)) => HostRewrite::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| FieldError::new("host_rewrite_header", format!("invalid header name '{h}'")))?,
            ),
            Some(_) => return Err(FieldError::new("host_rewrite_path_regex", "this host rewrite is not supported")),
        };
        // Envoy's default route timeout is 15 s; an explicit 0 disables it.
        let mut timeout = match &a.timeout {
            None => Some(Duration::from_secs(15)),
            Some(d) => Some(duration(d).map_err(|e| e.within("timeout"))?).filter(|d| !d.is_zero()),
        };
        let stream_duration = match &a.max_stream_duration {
            Some(m) => {
                let field = |d: &Option<envoy_types::pb::google::protobuf::Duration>, name: &str| {
                    d.as_ref().map(duration).transpose().map_err(|e| e.within(&format!("max_stream_duration.{name}")))
                };
                // `usingNewTimeouts()`: the router ignores `timeout` (FilterUtility::finalTimeout).
                timeout = None;
                Some(StreamDuration {
                    max: field(&m.max_stream_duration, "max_stream_duration")?,
                    grpc_header_max: field(&m.grpc_timeout_header_max, "grpc_timeout_header_max")?,
                    grpc_header_offset: field(&m.grpc_timeout_header_offset, "grpc_timeout_header_offset")?,
                })
            }
            None => None,
        };
        let idle_timeout = a
            .idle_timeout
            .as_ref()
            .map(duration)
            .transpose()
            .map_err(|e| e.within("idle_timeout"))?
            .filter(|d| !d.is_zero());
        let retry_policy = match &a.retry_policy {
            Some(r) => Some(Arc::new(RetryPolicy::from_proto(r, notes).map_err(|e| e.within("retry_policy"))?)),
            None => vh_retry.cloned(),
        };
        let hash_policy = a
            .hash_policy
            .iter()
            .enumerate()
            .map(|(i, h)| hash_policy(h).map_err(|e| e.within(&format!("hash_policy[{i}]"))))
            .collect::<FieldResult<_>>()?;
        let mut websocket = None;
        for u in &a.upgrade_configs {
            if u.upgrade_type.eq_ignore_ascii_case("websocket") {
                websocket = Some(u.enabled.as_ref().is_none_or(|b| b.value));
            }
        }
        let cluster_not_found_code = match a.cluster_not_found_response_code {
            1 => http::StatusCode::NOT_FOUND,
            2 => http::StatusCode::INTERNAL_SERVER_ERROR,
            _ => http::StatusCode::SERVICE_UNAVAILABLE,
        };
        if !a.request_mirror_policies.is_empty() {
            notes.warn("route request_mirror_policies are not implemented: requests are not mirrored".into());
        }
        if !a.rate_limits.is_empty() {
            notes.warn("route rate_limits have no effect: Remora has no global rate-limit filter".into());
        }
        if a.hedge_policy.is_some() {
            notes.warn("route hedge_policy is not implemented: requests are not hedged".into());
        }
        Ok(ForwardAction {
            cluster,
            cluster_not_found_code,
            prefix_rewrite: Some(a.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
            regex_rewrite,
            host_rewrite,
            timeout,
            stream_duration,
            idle_timeout,
            retry_policy,
            hash_policy,
            websocket,
            append_x_forwarded_host: a.append_x_forwarded_host,
        })
    }
}

/// Envoy substitutions use `\1`; Rust's regex uses `${1}`.
fn rewrite_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|n| n.is_ascii_digit()) => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                out.push_str(&format!("${{{digits}}}"));
            }
            '$' => out.push_str("$$"),
            other => out.push(other),
        }
    }
    out
}

fn weighted(w: &pb::WeightedCluster) -> FieldResult<WeightedClusters> {
    if w.clusters.is_empty() {
        return Err(FieldError::new("clusters", "value must contain at least 1 item(s)"));
    }
    let mut clusters = Vec::with_capacity(w.clusters.len());
    let mut total: u64 = 0;
    for (i, c) in w.clusters.iter().enumerate() {
        let path = format!("clusters[{i}]");
        if c.name.is_empty() {
            return Err(FieldError::new(
                format!("{path}.name"),
                if c.cluster_header.is_empty() {
                    "value length must be at least 1 characters"
                } else {
                    "cluster_header in weighted clusters is not supported"
                },
            ));
        }
        let weight = u64::from(c.weight.as_ref().map_or(0, |w| w.value));
        total += weight;
        let host_rewrite = c
            .host_rewrite_specifier
            .as_ref()
            .map(|pb::weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(h)| h.clone());
        clusters.push(WeightedCluster {
            name: c.name.clone(),
            weight,
            request_headers: HeaderMutations::from_proto(
                &c.request_headers_to_add,
                &c.request_headers_to_remove,
                "request_headers_to_add",
                "request_headers_to_remove",
            )
            .map_err(|e| e.within(&path))?,
            response_headers: HeaderMutations::from_proto(
                &c.response_headers_to_add,
                &c.response_headers_to_remove,
                "response_headers_to_add",
                "response_headers_to_remove",
            )
            .map_err(|e| e.within(&path))?,
            host_rewrite,
        });
    }
    if total == 0 {
        return Err(FieldError::new("clusters", "Sum of weights in the weighted_cluster must be greater than 0"));
    }
    Ok(WeightedClusters { clusters, total_weight: total })
}

fn hash_policy(h: &pb::route_action::HashPolicy) -> FieldResult<HashPolicy> {
    use pb::route_action::hash_policy::PolicySpecifier;
    let terminal = h.terminal;
    Ok(match &h.policy_specifier {
        Some(PolicySpecifier::Header(hd)) => HashPolicy::Header {
            name: HeaderName::from_bytes(hd.header_name.as_bytes())
                .map_err(|_| FieldError::new("header.header_name", "invalid header name"))?,
            terminal,
        },
        Some(PolicySpecifier::Cookie(c)) => HashPolicy::Cookie { name: c.name.clone(), terminal },
        Some(PolicySpecifier::ConnectionProperties(c)) if c.source_ip => HashPolicy::SourceIp { terminal },
        Some(PolicySpecifier::ConnectionProperties(_)) => HashPolicy::SourceIp { terminal: false },
        Some(PolicySpecifier::QueryParameter(q)) => HashPolicy::QueryParameter { name: q.name.clone(), terminal },
        Some(PolicySpecifier::FilterState(_)) => {
            return Err(FieldError::new("filter_state", "filter-state hashing is not supported"))
        }
        None => return Err(FieldError::new("policy_specifier", "a hash policy specifier is required")),
    })
}

impl RetryPolicy {
    /// The route's policy as modified by an internal request's `x-envoy-retry-on` /
    /// `x-envoy-max-retries` headers (Envoy's defaults when the route has none).
    pub fn with_overrides(base: Option<&RetryPolicy>, retry_on: Option<&str>, max_retries: Option<u32>) -> RetryPolicy {
        let mut p = base.cloned().unwrap_or(RetryPolicy {
            retry_on: RetryOn::default(),
            num_retries: 1,
            per_try_timeout: None,
            retriable_status_codes: Vec::new(),
            avoid_previous_hosts: false,
            host_selection_max_attempts: 1,
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
        });
        if let Some(spec) = retry_on {
            let extra = RetryOn::parse(spec, &mut Notes::default());
            p.retry_on = p.retry_on.union(extra);
        }
        if let Some(n) = max_retries {
            p.num_retries = n;
        }
        p
    }

    fn from_proto(r: &pb::RetryPolicy, notes: &mut Notes) -> FieldResult<Self> {
        let per_try_timeout = r
            .per_try_timeout
            .as_ref()
            .map(duration)
            .transpose()
            .map_err(|e| e.within("per_try_timeout"))?
            .filter(|d| !d.is_zero());
        let (base_interval, max_interval) = match &r.retry_back_off {
            Some(b) => {
                let base = b
                    .base_interval
                    .as_ref()
                    .map(duration)
                    .transpose()
                    .map_err(|e| e.within("retry_back_off.base_interval"))?
                    .unwrap_or(Duration::from_millis(25));
                if base.is_zero() {
                    return Err(FieldError::new("retry_back_off.base_interval", "value must be greater than 0s"));
                }
                let max = b
                    .max_interval
                    .as_ref()
                    .map(duration)
                    .transpose()
                    .map_err(|e| e.within("retry_back_off.max_interval"))?
                    .unwrap_or(base * 10);
                if max < base {
                    return Err(FieldError::new(
                        "retry_back_off.max_interval",
                        "max_interval must be greater than or equal to the base_interval",
                    ));
                }
                (base, max)
            }
            None => (Duration::from_millis(25), Duration::from_millis(250)),
        };
        let mut avoid_previous_hosts = false;
        for p in &r.retry_host_predicate {
            if p.name == "envoy.retry_host_predicates.previous_hosts" || p.name.ends_with("previous_hosts") {
                avoid_previous_hosts = true;
            } else {
                notes.warn(format!("retry host predicate '{}' is not supported and is ignored", p.name));
            }
        }
        if r.retry_priority.is_some() {
            notes.warn("retry_priority is not implemented: retries use the normal priority order".into());
        }
        Ok(RetryPolicy {
            retry_on: RetryOn::parse(&r.retry_on, notes),
            num_retries: r.num_retries.as_ref().map_or(1, |n| n.value),
            per_try_timeout,
            retriable_status_codes: r.retriable_status_codes.iter().filter_map(|c| u16::try_from(*c).ok()).collect(),
            avoid_previous_hosts,
            host_selection_max_attempts: u32::try_from(r.host_selection_retry_max_attempts.max(1)).unwrap_or(1),
            base_interval,
            max_interval,
        })
    }
}

impl RedirectAction {
    fn from_proto(r: &pb::RedirectAction) -> FieldResult<Self> {
        let scheme = match &r.scheme_rewrite_specifier {
            Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_string()),
            Some(SchemeRewriteSpecifier::HttpsRedirect(false)) | None => None,
            Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
        };
        let path = match &r.path_rewrite_specifier {
            None => RedirectPath::Keep,
            Some(PathRewriteSpecifier::PathRedirect(p)) => RedirectPath::Replace(p.clone()),
            Some(PathRewriteSpecifier::PrefixRewrite(p)) => RedirectPath::PrefixRewrite(p.clone()),
            Some(PathRewriteSpecifier::RegexRewrite(rr)) => {
                let pattern =
                    rr.pattern.as_ref().ok_or_else(|| FieldError::new("regex_rewrite.pattern", "value is required"))?;
                RedirectPath::RegexRewrite(
                    compile_search_regex(pattern).map_err(|e| e.within("regex_rewrite.pattern"))?,
                    rewrite_substitution(&rr.substitution),
                )
            }
            Some(PathRewriteSpecifier::PathRewrite(_)) => {
                return Err(FieldError::new("path_rewrite", "path templates are not supported"))
            }
        };
        let status = match r.response_code {
            0 => http::StatusCode::MOVED_PERMANENTLY,
            1 => http::StatusCode::FOUND,
            2 => http::StatusCode::SEE_OTHER,
            3 => http::StatusCode::TEMPORARY_REDIRECT,
            4 => http::StatusCode::PERMANENT_REDIRECT,
            other => {
                return Err(FieldError::new(
                    "response_code",
                    format!("value must be one of the defined enum values, got {other}"),
                ))
            }
        };
        Ok(RedirectAction {
            scheme,
            host: Some(r.host_redirect.clone()).filter(|h| !h.is_empty()),
            port: Some(r.port_redirect).filter(|p| *p != 0),
            path,
            status,
            strip_query: r.strip_query,
        })
    }
}

impl DirectResponse {
    fn from_proto(d: &pb::DirectResponseAction) -> FieldResult<Self> {
        if !(200..600).contains(&d.status) {
            return Err(FieldError::new("status", format!("value must be inside range [200, 600), got {}", d.status)));
        }
        let status =
            http::StatusCode::from_u16(d.status as u16).map_err(|_| FieldError::new("status", "invalid status"))?;
        let body = d.body.as_ref().map(|b| super::data_source(b).map_err(|e| e.within("body"))).transpose()?;
        Ok(DirectResponse { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_syntax() {
        assert_eq!(rewrite_substitution(r"/v2/\1/x$"), "/v2/${1}/x$$");
    }

    #[test]
    fn strip_ports() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.com"), "a.com");
    }
}
