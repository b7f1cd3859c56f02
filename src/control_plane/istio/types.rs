//! Istio networking resources as users write them (`networking.istio.io/v1`, `v1beta1`,
//! `v1alpha3`): VirtualService, DestinationRule, ServiceEntry, WorkloadEntry. Field names are the
//! Kubernetes (camelCase) JSON of istio/api `networking/v1alpha3/*.proto`; unknown fields are
//! errors, as the Kubernetes API server's structural schema makes them.
//!
//! Owns: the serde model, semantic validation with field paths, Go-style durations. Must not
//! build Envoy resources.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

// ----------------------------------------------------------------------------------------------
// ServiceEntry / WorkloadEntry
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub location: Option<Location>,
    #[serde(default)]
    pub resolution: Option<Resolution>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub number: u32,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target_port: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub locality: Option<String>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub service_account: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

// ----------------------------------------------------------------------------------------------
// PeerAuthentication (security.istio.io)
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<PeerSelector>,
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// By workload port number.
    #[serde(default)]
    pub port_level_mtls: BTreeMap<String, MutualTls>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: Option<String>,
}

/// A PeerAuthentication mode; `Unset` inherits from the less specific policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl MutualTls {
    pub fn mode(&self) -> MtlsMode {
        match self.mode.as_deref() {
            Some("DISABLE") => MtlsMode::Disable,
            Some("PERMISSIVE") => MtlsMode::Permissive,
            Some("STRICT") => MtlsMode::Strict,
            _ => MtlsMode::Unset,
        }
    }
}

impl PeerAuthenticationSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        let check = |path: String, m: &MutualTls| match m.mode.as_deref() {
            None | Some("UNSET" | "DISABLE" | "PERMISSIVE" | "STRICT") => Ok(()),
            Some(other) => Err(err(path, format!("unknown mode '{other}' (UNSET, DISABLE, PERMISSIVE or STRICT)"))),
        };
        if let Some(m) = &self.mtls {
            check("spec.mtls.mode".into(), m)?;
        }
        for (port, m) in &self.port_level_mtls {
            if !port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p)) {
                return Err(err(format!("spec.portLevelMtls.{port}"), "not a port number"));
            }
            check(format!("spec.portLevelMtls.{port}.mode"), m)?;
        }
        if !self.port_level_mtls.is_empty() && self.selector.as_ref().is_none_or(|s| s.match_labels.is_empty()) {
            // istiod's validation: port-level settings need a workload selector.
            return Err(err("spec.portLevelMtls", "portLevelMtls requires a workload selector"));
        }
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------------
// DestinationRule
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Accepted, not translated (a warning is logged).
    #[serde(default)]
    pub tunnel: Option<serde_json::Value>,
    /// Accepted, not translated (a warning is logged).
    #[serde(default)]
    pub proxy_protocol: Option<serde_json::Value>,
    /// Accepted, not translated (a warning is logged).
    #[serde(default)]
    pub retry_budget: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    #[serde(default)]
    pub port: Option<PortSelector>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default)]
    pub number: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    #[serde(default)]
    pub simple: Option<SimpleLb>,
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Accepted, not translated (a warning is logged).
    #[serde(default)]
    pub locality_lb_setting: Option<serde_json::Value>,
    #[serde(default)]
    pub warmup_duration_secs: Option<String>,
    /// Accepted, not translated (a warning is logged).
    #[serde(default)]
    pub warmup: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    #[serde(default)]
    pub ring_hash: Option<RingHash>,
    #[serde(default)]
    pub maglev: Option<Maglev>,
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    #[serde(default)]
    pub table_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    #[serde(default)]
    pub max_connections: Option<i32>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default)]
    pub max_connection_duration: Option<String>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    #[serde(default)]
    pub probes: Option<u32>,
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub interval: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    #[serde(default)]
    pub http1_max_pending_requests: Option<i32>,
    #[serde(default)]
    pub http2_max_requests: Option<i32>,
    #[serde(default)]
    pub max_requests_per_connection: Option<i32>,
    #[serde(default)]
    pub max_retries: Option<i32>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    #[serde(default)]
    pub use_client_protocol: Option<bool>,
    #[serde(default)]
    pub max_concurrent_streams: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    Default,
    DoNotUpgrade,
    Upgrade,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default)]
    pub consecutive_errors: Option<i32>,
    #[serde(default)]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default)]
    pub split_external_local_origin_errors: Option<bool>,
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: Option<i32>,
    #[serde(default)]
    pub min_health_percent: Option<i32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    #[serde(default)]
    pub mode: Option<TlsMode>,
    #[serde(default)]
    pub client_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default)]
    pub ca_crl: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

// ----------------------------------------------------------------------------------------------
// VirtualService
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// Accepted, not translated (a warning is logged).
    #[serde(default)]
    pub tls: Vec<serde_json::Value>,
    /// Accepted, not translated (a warning is logged).
    #[serde(default)]
    pub tcp: Vec<serde_json::Value>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    #[serde(default)]
    pub direct_response: Option<HttpDirectResponse>,
    /// Accepted, not translated (a warning is logged).
    #[serde(default)]
    pub delegate: Option<serde_json::Value>,
    #[serde(default)]
    pub rewrite: Option<HttpRewrite>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<HttpRetry>,
    #[serde(default)]
    pub fault: Option<HttpFaultInjection>,
    #[serde(default)]
    pub mirror: Option<Destination>,
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    /// Accepted, not translated (a warning is logged).
    #[serde(default)]
    pub mirrors: Vec<serde_json::Value>,
    #[serde(default)]
    pub cors_policy: Option<CorsPolicy>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// A VirtualService route's `corsPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated exact origins (used when `allowOrigins` is empty).
    #[serde(default)]
    pub allow_origin: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    /// `UNSPECIFIED`, `FORWARD` or `IGNORE`.
    #[serde(default)]
    pub unmatched_preflights: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub ignore_uri_case: Option<bool>,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub source_namespace: Option<String>,
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

/// Exactly one of `exact`, `prefix`, `regex` (an empty object matches presence, as in Istio).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<i32>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(default, rename = "match")]
    pub pattern: String,
    #[serde(default)]
    pub rewrite: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    #[serde(default)]
    pub attempts: Option<i32>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpFaultInjection {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(default)]
    pub fixed_delay: Option<String>,
    #[serde(default)]
    pub exponential_delay: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
    #[serde(default)]
    pub percent: Option<i32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    #[serde(default)]
    pub http_status: Option<u32>,
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub http2_error: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub derive_port: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub redirect_code: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpDirectResponse {
    #[serde(default)]
    pub status: u32,
    #[serde(default)]
    pub body: Option<HttpBody>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBody {
    #[serde(default)]
    pub string: Option<String>,
    #[serde(default)]
    pub bytes: Option<String>,
}

// ----------------------------------------------------------------------------------------------
// durations and validation
// ----------------------------------------------------------------------------------------------

/// A Go `time.ParseDuration` string (`1h2m3.5s`, `100ms`, `0`) as Istio's protobuf Duration JSON
/// also accepts it (`1.5s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(format!("invalid duration '{s}'"));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration '{s}'"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| format!("invalid duration '{s}'"))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("missing unit in duration '{s}'")),
            u => return Err(format!("unknown unit '{u}' in duration '{s}'")),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// Envoy's JSON for a duration (`"1.500s"`).
pub fn envoy_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        let frac = format!("{:09}", d.subsec_nanos());
        format!("{}.{}s", d.as_secs(), frac.trim_end_matches('0'))
    }
}

/// A semantic error: the field path inside `spec` and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), reason: reason.into() }
}

fn check_duration(field: &str, v: &Option<String>) -> Result<(), FieldError> {
    match v {
        Some(s) => parse_duration(s).map(|_| ()).map_err(|e| err(field, e)),
        None => Ok(()),
    }
}

fn check_string_match(field: &str, m: &StringMatch) -> Result<(), FieldError> {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()].iter().filter(|b| **b).count();
    if set > 1 {
        return Err(err(field, "only one of exact, prefix, regex may be set"));
    }
    if let Some(re) = &m.regex {
        regex::Regex::new(re).map_err(|e| err(format!("{field}.regex"), format!("invalid regex: {e}")))?;
    }
    Ok(())
}

impl ServiceEntrySpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.hosts.is_empty() {
            return Err(err("spec.hosts", "at least one host is required"));
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if h.is_empty() || h == "*" {
                return Err(err(format!("spec.hosts[{i}]"), format!("invalid host '{h}'")));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.number == 0 || p.number > 65535 {
                return Err(err(format!("spec.ports[{i}].number"), format!("port {} out of range", p.number)));
            }
            if !seen.insert(p.number) {
                return Err(err(format!("spec.ports[{i}].number"), format!("duplicate port {}", p.number)));
            }
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            e.validate(&format!("spec.endpoints[{i}]"))?;
        }
        if self.resolution == Some(Resolution::Static) {
            if let Some(i) = self.endpoints.iter().position(|e| e.address.parse::<std::net::IpAddr>().is_err()) {
                return Err(err(format!("spec.endpoints[{i}].address"), "resolution STATIC needs IP addresses"));
            }
        }
        Ok(())
    }
}

impl WorkloadEntrySpec {
    pub fn validate(&self, path: &str) -> Result<(), FieldError> {
        if self.address.is_empty() {
            return Err(err(format!("{path}.address"), "address is required"));
        }
        for (name, port) in &self.ports {
            if *port == 0 || *port > 65535 {
                return Err(err(format!("{path}.ports.{name}"), format!("port {port} out of range")));
            }
        }
        if self.weight == Some(0) {
            return Err(err(format!("{path}.weight"), "weight must be at least 1"));
        }
        Ok(())
    }
}

impl DestinationRuleSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.host.is_empty() {
            return Err(err("spec.host", "host is required"));
        }
        if let Some(tp) = &self.traffic_policy {
            tp.validate("spec.trafficPolicy")?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            if s.name.is_empty() {
                return Err(err(format!("spec.subsets[{i}].name"), "subset name is required"));
            }
            if !names.insert(&s.name) {
                return Err(err(format!("spec.subsets[{i}].name"), format!("duplicate subset '{}'", s.name)));
            }
            if let Some(tp) = &s.traffic_policy {
                tp.validate(&format!("spec.subsets[{i}].trafficPolicy"))?;
            }
        }
        Ok(())
    }
}

impl TrafficPolicy {
    fn validate(&self, path: &str) -> Result<(), FieldError> {
        validate_policy_parts(path, &self.load_balancer, &self.connection_pool, &self.outlier_detection, &self.tls)?;
        for (i, p) in self.port_level_settings.iter().enumerate() {
            let pp = format!("{path}.portLevelSettings[{i}]");
            if p.port.is_none_or(|s| s.number == 0) {
                return Err(err(format!("{pp}.port"), "port is required"));
            }
            validate_policy_parts(&pp, &p.load_balancer, &p.connection_pool, &p.outlier_detection, &p.tls)?;
        }
        Ok(())
    }
}

fn validate_policy_parts(
    path: &str,
    lb: &Option<LoadBalancerSettings>,
    pool: &Option<ConnectionPoolSettings>,
    outlier: &Option<OutlierDetection>,
    tls: &Option<ClientTlsSettings>,
) -> Result<(), FieldError> {
    if let Some(lb) = lb {
        if lb.simple.is_some() && lb.consistent_hash.is_some() {
            return Err(err(format!("{path}.loadBalancer"), "only one of simple, consistentHash may be set"));
        }
        check_duration(&format!("{path}.loadBalancer.warmupDurationSecs"), &lb.warmup_duration_secs)?;
        if let Some(ch) = &lb.consistent_hash {
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip == Some(true),
                ch.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|b| **b).count() != 1 {
                return Err(err(
                    format!("{path}.loadBalancer.consistentHash"),
                    "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName is required",
                ));
            }
            if let Some(c) = &ch.http_cookie {
                if c.name.is_empty() {
                    return Err(err(format!("{path}.loadBalancer.consistentHash.httpCookie.name"), "name is required"));
                }
                check_duration(&format!("{path}.loadBalancer.consistentHash.httpCookie.ttl"), &c.ttl)?;
            }
        }
    }
    if let Some(pool) = pool {
        if let Some(tcp) = &pool.tcp {
            let p = format!("{path}.connectionPool.tcp");
            check_duration(&format!("{p}.connectTimeout"), &tcp.connect_timeout)?;
            check_duration(&format!("{p}.maxConnectionDuration"), &tcp.max_connection_duration)?;
            check_duration(&format!("{p}.idleTimeout"), &tcp.idle_timeout)?;
            if let Some(k) = &tcp.tcp_keepalive {
                check_duration(&format!("{p}.tcpKeepalive.time"), &k.time)?;
                check_duration(&format!("{p}.tcpKeepalive.interval"), &k.interval)?;
            }
            if tcp.max_connections.is_some_and(|n| n < 0) {
                return Err(err(format!("{p}.maxConnections"), "must be non-negative"));
            }
        }
        if let Some(http) = &pool.http {
            let p = format!("{path}.connectionPool.http");
            check_duration(&format!("{p}.idleTimeout"), &http.idle_timeout)?;
            for (name, v) in [
                ("http1MaxPendingRequests", http.http1_max_pending_requests),
                ("http2MaxRequests", http.http2_max_requests),
                ("maxRequestsPerConnection", http.max_requests_per_connection),
                ("maxRetries", http.max_retries),
                ("maxConcurrentStreams", http.max_concurrent_streams),
            ] {
                if v.is_some_and(|n| n < 0) {
                    return Err(err(format!("{p}.{name}"), "must be non-negative"));
                }
            }
        }
    }
    if let Some(o) = outlier {
        let p = format!("{path}.outlierDetection");
        check_duration(&format!("{p}.interval"), &o.interval)?;
        check_duration(&format!("{p}.baseEjectionTime"), &o.base_ejection_time)?;
        for (name, v) in [("maxEjectionPercent", o.max_ejection_percent), ("minHealthPercent", o.min_health_percent)] {
            if v.is_some_and(|n| !(0..=100).contains(&n)) {
                return Err(err(format!("{p}.{name}"), "must be between 0 and 100"));
            }
        }
    }
    if let Some(tls) = tls {
        let p = format!("{path}.tls");
        if tls.mode == Some(TlsMode::Mutual)
            && tls.credential_name.is_none()
            && (tls.client_certificate.is_none() || tls.private_key.is_none())
        {
            return Err(err(p, "mode MUTUAL needs clientCertificate and privateKey (or credentialName)".to_string()));
        }
    }
    Ok(())
}

impl VirtualServiceSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.hosts.is_empty() {
            return Err(err("spec.hosts", "at least one host is required"));
        }
        for (i, r) in self.http.iter().enumerate() {
            r.validate(&format!("spec.http[{i}]"))?;
        }
        Ok(())
    }
}

impl HttpRoute {
    fn validate(&self, path: &str) -> Result<(), FieldError> {
        let actions =
            [!self.route.is_empty(), self.redirect.is_some(), self.direct_response.is_some(), self.delegate.is_some()];
        match actions.iter().filter(|b| **b).count() {
            0 => {
                return Err(err(
                    format!("{path}.route"),
                    "one of route, redirect, directResponse, delegate is required",
                ))
            }
            1 => {}
            _ => return Err(err(path, "only one of route, redirect, directResponse, delegate may be set")),
        }
        for (i, m) in self.matches.iter().enumerate() {
            let mp = format!("{path}.match[{i}]");
            for (name, sm) in
                [("uri", &m.uri), ("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)]
            {
                if let Some(sm) = sm {
                    check_string_match(&format!("{mp}.{name}"), sm)?;
                }
            }
            for (k, sm) in m.headers.iter().chain(m.without_headers.iter()) {
                check_string_match(&format!("{mp}.headers.{k}"), sm)?;
            }
            for (k, sm) in &m.query_params {
                check_string_match(&format!("{mp}.queryParams.{k}"), sm)?;
            }
            if m.port.is_some_and(|p| p == 0 || p > 65535) {
                return Err(err(format!("{mp}.port"), "port out of range"));
            }
        }
        let mut total: i64 = 0;
        for (i, d) in self.route.iter().enumerate() {
            let dp = format!("{path}.route[{i}]");
            if d.destination.host.is_empty() {
                return Err(err(format!("{dp}.destination.host"), "host is required"));
            }
            if let Some(w) = d.weight {
                if w < 0 {
                    return Err(err(format!("{dp}.weight"), format!("weight {w} must be non-negative")));
                }
                total += i64::from(w);
            }
        }
        if self.route.len() > 1 && total == 0 {
            return Err(err(format!("{path}.route"), "total destination weight is 0"));
        }
        if self.route.len() > 1 && self.route.iter().any(|d| d.weight.is_none()) {
            return Err(err(format!("{path}.route"), "every destination needs a weight when there are several"));
        }
        check_duration(&format!("{path}.timeout"), &self.timeout)?;
        if let Some(r) = &self.retries {
            if r.attempts.is_some_and(|a| a < 0) {
                return Err(err(format!("{path}.retries.attempts"), "must be non-negative"));
            }
            check_duration(&format!("{path}.retries.perTryTimeout"), &r.per_try_timeout)?;
        }
        if let Some(c) = &self.cors_policy {
            for (i, sm) in c.allow_origins.iter().enumerate() {
                check_string_match(&format!("{path}.corsPolicy.allowOrigins[{i}]"), sm)?;
            }
            check_duration(&format!("{path}.corsPolicy.maxAge"), &c.max_age)?;
            if let Some(u) = &c.unmatched_preflights {
                if !["UNSPECIFIED", "FORWARD", "IGNORE"].contains(&u.as_str()) {
                    return Err(err(format!("{path}.corsPolicy.unmatchedPreflights"), format!("unknown value '{u}'")));
                }
            }
        }
        if let Some(f) = &self.fault {
            if f.delay.is_none() && f.abort.is_none() {
                return Err(err(format!("{path}.fault"), "one of delay, abort is required"));
            }
            if let Some(d) = &f.delay {
                check_duration(&format!("{path}.fault.delay.fixedDelay"), &d.fixed_delay)?;
                if d.fixed_delay.is_none() {
                    return Err(err(format!("{path}.fault.delay.fixedDelay"), "fixedDelay is required"));
                }
            }
            if let Some(a) = &f.abort {
                if a.http_status.is_none() && a.grpc_status.is_none() && a.http2_error.is_none() {
                    return Err(err(format!("{path}.fault.abort"), "httpStatus (or grpcStatus) is required"));
                }
                if a.http_status.is_some_and(|s| !(200..=599).contains(&s)) {
                    return Err(err(format!("{path}.fault.abort.httpStatus"), "must be between 200 and 599"));
                }
            }
        }
        if let Some(rw) = &self.rewrite {
            if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
                return Err(err(format!("{path}.rewrite"), "only one of uri, uriRegexRewrite may be set"));
            }
            if let Some(rr) = &rw.uri_regex_rewrite {
                regex::Regex::new(&rr.pattern)
                    .map_err(|e| err(format!("{path}.rewrite.uriRegexRewrite.match"), format!("invalid regex: {e}")))?;
            }
        }
        if let Some(dr) = &self.direct_response {
            if !(200..=599).contains(&dr.status) {
                return Err(err(format!("{path}.directResponse.status"), "must be between 200 and 599"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5x").is_err());
        assert_eq!(envoy_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(envoy_duration(Duration::from_secs(10)), "10s");
    }
}
