//! The HTTP connection manager: codec, HCM header behaviour, timeouts, the route source and the
//! HTTP filter chain.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;

use super::error::{FieldError, FieldResult};
use super::route::RouteTable;
use super::{duration, Notes};

pub const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

#[derive(Debug)]
pub enum RouteSource {
    Inline,
    /// Route configuration by name from RDS (served by the xDS client).
    Rds(String),
}

/// A listener's `traffic_direction`, which some filters (Istio's Wasm metadata exchange) act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficDirection {
    Unspecified,
    Inbound,
    Outbound,
}

impl TrafficDirection {
    pub fn from_proto(v: i32) -> Self {
        match v {
            1 => TrafficDirection::Inbound,
            2 => TrafficDirection::Outbound,
            _ => TrafficDirection::Unspecified,
        }
    }
}

/// Istio's HTTP metadata exchange through `x-envoy-peer-metadata` / `x-envoy-peer-metadata-id`
/// (`istio.metadata_exchange`): which headers the filter takes off and which it adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerMetadataHeaders {
    /// Read and remove the downstream peer's headers from requests.
    pub strip_request: bool,
    /// Add this proxy's headers to requests.
    pub add_request: bool,
    /// Read and remove the upstream peer's headers from responses.
    pub strip_response: bool,
    /// Add this proxy's headers to responses, when the request carried the peer's.
    pub add_response: bool,
}

const WASM: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";
const PEER_METADATA: &str = "io.istio.http.peer_metadata.Config";

/// How an HTTP filter is handled.
#[derive(Debug, Clone)]
pub enum HttpFilter {
    Router(RouterConfig),
    /// Recognised but telemetry-only or otherwise without effect on requests.
    Harmless {
        name: String,
    },
    /// `istio.alpn`: the ALPN offered to TLS upstreams per request protocol.
    AlpnOverride(Arc<super::istio_alpn::AlpnOverride>),
    /// `istio.metadata_exchange` over HTTP headers.
    PeerMetadata(PeerMetadataHeaders),
    /// `envoy.filters.http.fault`, with the filter-level config (routes may override it).
    Fault(Arc<super::fault::FaultConfig>),
    /// `envoy.filters.http.cors`: applies the route's or virtual host's CORS policy.
    Cors,
    /// Not implemented: requests through this chain are refused (fail closed).
    Unimplemented {
        name: String,
        type_name: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct RouterConfig {
    pub suppress_envoy_headers: bool,
}

#[derive(Debug)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub route_source: RouteSource,
    pub inline_routes: Option<Arc<RouteTable>>,
    pub filters: Vec<HttpFilter>,
    pub server_name: String,
    pub server_header: ServerHeader,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    /// `internal_address_config.cidr_ranges`: which trusted client addresses are internal. Empty
    /// (Envoy 1.40's default) means no request is internal.
    pub internal_cidrs: Vec<super::listener::Cidr>,
    pub skip_xff_append: bool,
    pub via: Option<String>,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub max_request_headers_kb: u32,
    pub max_headers_count: u32,
    pub request_timeout: Option<Duration>,
    pub request_headers_timeout: Option<Duration>,
    pub stream_idle_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub websocket: bool,
    pub strip_matching_host_port: bool,
    pub strip_any_host_port: bool,
    pub proxy_100_continue: bool,
    pub forward_client_cert: ForwardClientCert,
    pub client_cert_details: ClientCertDetails,
}

/// `forward_client_cert_details`: what happens to `x-forwarded-client-cert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardClientCert {
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

/// `set_current_client_cert_details`: which peer-certificate facts go into the header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCertDetails {
    pub subject: bool,
    pub cert: bool,
    pub chain: bool,
    pub dns: bool,
    pub uri: bool,
}

impl HttpConnectionManager {
    /// The `istio.alpn` override of this connection manager, if it has the filter.
    pub fn alpn_override(&self) -> Option<&Arc<super::istio_alpn::AlpnOverride>> {
        self.filters.iter().find_map(|f| match f {
            HttpFilter::AlpnOverride(o) => Some(o),
            _ => None,
        })
    }

    pub fn from_proto(
        h: &pb::HttpConnectionManager,
        direction: TrafficDirection,
        notes: &mut Notes,
    ) -> FieldResult<Self> {
        if h.stat_prefix.is_empty() {
            return Err(FieldError::new("stat_prefix", "value length must be at least 1 characters"));
        }
        let codec = match h.codec_type {
            0 => Codec::Auto,
            1 => Codec::Http1,
            2 => Codec::Http2,
            3 => return Err(FieldError::new("codec_type", "HTTP/3 is not supported")),
            other => {
                return Err(FieldError::new(
                    "codec_type",
                    format!("value must be one of the defined enum values, got {other}"),
                ))
            }
        };
        let (route_source, inline_routes) = match &h.route_specifier {
            Some(RouteSpecifier::RouteConfig(rc)) => {
                let table = RouteTable::from_proto(rc, notes)
                    .map_err(|e| FieldError::new(format!("route_config.{}", e.path), e.reason))?;
                (RouteSource::Inline, Some(Arc::new(table)))
            }
            Some(RouteSpecifier::Rds(rds)) => {
                if rds.route_config_name.is_empty() {
                    return Err(FieldError::new("rds.route_config_name", "value length must be at least 1 characters"));
                }
                (RouteSource::Rds(rds.route_config_name.clone()), None)
            }
            Some(RouteSpecifier::ScopedRoutes(_)) => {
                return Err(FieldError::new("scoped_routes", "scoped routes are not supported"))
            }
            None => return Err(FieldError::new("route_specifier", "one of route_config or rds is required")),
        };
        let filters = http_filters(&h.http_filters, direction, notes)?;
        let max_request_headers_kb = h.max_request_headers_kb.map_or(60, |v| v.value);
        if max_request_headers_kb == 0 || max_request_headers_kb > 8192 {
            return Err(FieldError::new("max_request_headers_kb", "value must be inside range (0, 8192]"));
        }
        let opt_duration = |d: &Option<envoy_types::pb::google::protobuf::Duration>,
                            field: &str,
                            default: Option<Duration>|
         -> FieldResult<Option<Duration>> {
            match d {
                None => Ok(default),
                Some(d) => Ok(Some(duration(d).map_err(|e| e.within(field))?).filter(|d| !d.is_zero())),
            }
        };
        let common = h.common_http_protocol_options.as_ref();
        let websocket = h
            .upgrade_configs
            .iter()
            .any(|u| u.upgrade_type.eq_ignore_ascii_case("websocket") && u.enabled.as_ref().is_none_or(|b| b.value));
        let forward_client_cert = match h.forward_client_cert_details {
            0 => ForwardClientCert::Sanitize,
            1 => ForwardClientCert::ForwardOnly,
            2 => ForwardClientCert::AppendForward,
            3 => ForwardClientCert::SanitizeSet,
            4 => ForwardClientCert::AlwaysForwardOnly,
            other => return Err(FieldError::new("forward_client_cert_details", format!("unknown value {other}"))),
        };
        let client_cert_details = h
            .set_current_client_cert_details
            .as_ref()
            .map(|d| ClientCertDetails {
                subject: d.subject.is_some_and(|b| b.value),
                cert: d.cert,
                chain: d.chain,
                dns: d.dns,
                uri: d.uri,
            })
            .unwrap_or_default();
        if !h.access_log.is_empty() {
            notes.warn("HTTP access logs are not implemented yet".into());
        }
        if h.tracing.is_some() {
            notes.warn("HTTP tracing is not implemented yet: no spans are reported".into());
        }
        Ok(HttpConnectionManager {
            stat_prefix: h.stat_prefix.clone(),
            codec,
            route_source,
            inline_routes,
            filters,
            server_name: if h.server_name.is_empty() { "envoy".to_string() } else { h.server_name.clone() },
            server_header: match h.server_header_transformation {
                1 => ServerHeader::AppendIfAbsent,
                2 => ServerHeader::PassThrough,
                _ => ServerHeader::Overwrite,
            },
            use_remote_address: h.use_remote_address.as_ref().is_some_and(|b| b.value),
            xff_num_trusted_hops: h.xff_num_trusted_hops,
            internal_cidrs: match &h.internal_address_config {
                Some(c) => super::listener::cidrs(&c.cidr_ranges, "internal_address_config.cidr_ranges")?,
                None => Vec::new(),
            },
            skip_xff_append: h.skip_xff_append,
            via: Some(h.via.clone()).filter(|v| !v.is_empty()),
            generate_request_id: h.generate_request_id.as_ref().is_none_or(|b| b.value),
            preserve_external_request_id: h.preserve_external_request_id,
            always_set_request_id_in_response: h.always_set_request_id_in_response,
            max_request_headers_kb,
            max_headers_count: common.and_then(|c| c.max_headers_count.map(|v| v.value)).unwrap_or(100),
            request_timeout: opt_duration(&h.request_timeout, "request_timeout", None)?,
            request_headers_timeout: opt_duration(&h.request_headers_timeout, "request_headers_timeout", None)?,
            stream_idle_timeout: opt_duration(
                &h.stream_idle_timeout,
                "stream_idle_timeout",
                Some(Duration::from_secs(300)),
            )?,
            idle_timeout: match common.and_then(|c| c.idle_timeout.as_ref()) {
                Some(d) => Some(duration(d).map_err(|e| e.within("common_http_protocol_options.idle_timeout"))?)
                    .filter(|d| !d.is_zero()),
                None => Some(Duration::from_secs(3600)),
            },
            websocket,
            strip_matching_host_port: h.strip_matching_host_port,
            strip_any_host_port: matches!(
                h.strip_port_mode,
                Some(pb::http_connection_manager::StripPortMode::StripAnyHostPort(true))
            ),
            proxy_100_continue: h.proxy_100_continue,
            forward_client_cert,
            client_cert_details,
        })
    }
}

/// Classifies the HTTP filter chain; the router must be present and last.
fn http_filters(
    filters: &[pb::HttpFilter],
    direction: TrafficDirection,
    notes: &mut Notes,
) -> FieldResult<Vec<HttpFilter>> {
    use pb::http_filter::ConfigType;
    let mut out = Vec::with_capacity(filters.len());
    for (i, f) in filters.iter().enumerate() {
        let path = format!("http_filters[{i}]");
        if f.name.is_empty() {
            return Err(FieldError::new(format!("{path}.name"), "value length must be at least 1 characters"));
        }
        let any = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            Some(ConfigType::ConfigDiscovery(_)) => {
                return Err(FieldError::new(format!("{path}.config_discovery"), "ECDS is not supported"))
            }
            None => {
                return Err(FieldError::new(
                    &path,
                    format!("Didn't find a registered implementation for '{}' with type URL: ''", f.name),
                ));
            }
        };
        let type_name = super::decode::effective_type_name(any)
            .map_err(|e| FieldError::new(format!("{path}.typed_config"), e.to_string()))?;
        let filter = match type_name.as_str() {
            ROUTER => {
                let r: envoy_types::pb::envoy::extensions::filters::http::router::v3::Router =
                    super::unpack(any).map_err(|e| FieldError::new(format!("{path}.typed_config"), e))?;
                HttpFilter::Router(RouterConfig { suppress_envoy_headers: r.suppress_envoy_headers })
            }
            // Telemetry only: they count or label requests and never change one, so skipping them
            // changes no request or response (Remora's own stats cover the Envoy-named metrics).
            "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig" | "stats.PluginConfig" => {
                HttpFilter::Harmless { name: f.name.clone() }
            }
            super::fault::TYPE_NAME => {
                let f: envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault =
                    super::unpack(any).map_err(|e| FieldError::new(format!("{path}.typed_config"), e))?;
                HttpFilter::Fault(Arc::new(
                    super::fault::FaultConfig::from_proto(&f).map_err(|e| e.within(&format!("{path}.typed_config")))?,
                ))
            }
            // The filter's own config has no settings; policies come with routes.
            "envoy.extensions.filters.http.cors.v3.Cors" => HttpFilter::Cors,
            PEER_METADATA => {
                let c: super::istio_peer_metadata::Config =
                    super::unpack(any).map_err(|e| FieldError::new(format!("{path}.typed_config"), e))?;
                HttpFilter::PeerMetadata(c.headers())
            }
            WASM => match null_vm_plugin(any).map_err(|e| FieldError::new(format!("{path}.typed_config"), e))? {
                // istio-proxy's built-in (null VM) plugins.
                Some("envoy.wasm.metadata_exchange") => HttpFilter::PeerMetadata(PeerMetadataHeaders {
                    strip_request: true,
                    add_request: direction != TrafficDirection::Inbound,
                    strip_response: true,
                    add_response: direction != TrafficDirection::Outbound,
                }),
                Some("envoy.wasm.stats") => HttpFilter::Harmless { name: f.name.clone() },
                _ if f.is_optional => {
                    notes.warn(format!("optional Wasm HTTP filter '{}' is not implemented and is skipped", f.name));
                    continue;
                }
                _ => {
                    notes.warn(format!(
                        "Wasm HTTP filter '{}' is not implemented: requests through it are refused",
                        f.name
                    ));
                    HttpFilter::Unimplemented { name: f.name.clone(), type_name: WASM.to_string() }
                }
            },
            "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig" => {
                let c: super::istio_alpn::FilterConfig =
                    super::unpack(any).map_err(|e| FieldError::new(format!("{path}.typed_config"), e))?;
                let o = super::istio_alpn::AlpnOverride::from_config(&c)
                    .map_err(|e| FieldError::new(format!("{path}.typed_config"), e))?;
                HttpFilter::AlpnOverride(Arc::new(o))
            }
            other
                if other.starts_with("envoy.extensions.filters.http.")
                    || other.starts_with("istio.")
                    || other.starts_with("io.istio.") =>
            {
                if super::decode::descriptor(other).is_err() {
                    return Err(FieldError::new(
                        format!("{path}.typed_config"),
                        format!("unknown HTTP filter type '{other}'"),
                    ));
                }
                if f.is_optional {
                    notes
                        .warn(format!("optional HTTP filter '{}' ({other}) is not implemented and is skipped", f.name));
                    continue;
                }
                notes.warn(format!(
                    "HTTP filter '{}' ({other}) is not implemented: requests through it are refused",
                    f.name
                ));
                HttpFilter::Unimplemented { name: f.name.clone(), type_name: other.to_string() }
            }
            other => {
                return Err(FieldError::new(
                    format!("{path}.typed_config"),
                    format!("Didn't find a registered implementation for '{}' with type URL: '{}'", f.name, other),
                ));
            }
        };
        out.push(filter);
    }
    if let Some(pos) = out.iter().position(|f| matches!(f, HttpFilter::Router(_))) {
        if pos + 1 != out.len() {
            return Err(FieldError::new(
                format!("http_filters[{pos}]"),
                format!("Error: terminal filter named {} of type envoy.filters.http.router must be the last filter in a http filter chain.", filters[pos].name),
            ));
        }
    }
    match out.last() {
        Some(HttpFilter::Router(_)) => {}
        Some(_) => {
            let name = &filters[filters.len() - 1].name;
            return Err(FieldError::new(
                "http_filters",
                format!("Error: non-terminal filter named {name} is the last filter in a http filter chain."),
            ));
        }
        None => return Err(FieldError::new("http_filters", "no HTTP filters: the router filter is required")),
    }
    Ok(out)
}

/// The null-VM plugin a Wasm filter names (`vm_config.runtime: envoy.wasm.runtime.null`, the code
/// an inline string), if it is one.
fn null_vm_plugin(any: &envoy_types::pb::google::protobuf::Any) -> Result<Option<&'static str>, String> {
    use envoy_types::pb::envoy::config::core::v3::{async_data_source::Specifier, data_source};
    use envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm;
    let w: envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm = super::unpack(any)?;
    let Some(Vm::VmConfig(vm)) = w.config.and_then(|c| c.vm) else { return Ok(None) };
    if vm.runtime != "envoy.wasm.runtime.null" {
        return Ok(None);
    }
    let code = match vm.code.and_then(|c| c.specifier) {
        Some(Specifier::Local(ds)) => match ds.specifier {
            Some(data_source::Specifier::InlineString(s)) => s,
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(["envoy.wasm.metadata_exchange", "envoy.wasm.stats"].into_iter().find(|p| *p == code))
}
