//! TLS contexts of transport sockets (`DownstreamTlsContext`, `UpstreamTlsContext`), with
//! certificate material loaded from inline data or files. Building rustls configs is `tls`'s job.

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;

use super::error::{FieldError, FieldResult};
use super::matcher::StringMatcher;
use super::{data_source, unpack};

pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const RAW_BUFFER: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
const DOWNSTREAM: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

#[derive(Debug, Clone)]
pub struct CertificateKey {
    pub certificate_chain: Vec<u8>,
    pub private_key: Vec<u8>,
    /// Where the chain came from (a file, or `<inline>`), for `/certs`.
    pub chain_path: String,
}

/// Peer verification: trust anchors and subject-alt-name matchers.
#[derive(Debug, Clone, Default)]
pub struct Validation {
    pub trusted_ca: Option<Vec<u8>>,
    /// Where the trusted CA came from (a file, or `<inline>`), for `/certs`.
    pub trusted_ca_path: Option<String>,
    pub san_matchers: Vec<SanMatcher>,
    pub allow_expired: bool,
}

#[derive(Debug, Clone)]
pub enum SanType {
    Any,
    Dns,
    Uri,
    Email,
    IpAddress,
}

#[derive(Debug, Clone)]
pub struct SanMatcher {
    pub san_type: SanType,
    pub matcher: StringMatcher,
}

/// Certificates, validation and protocol parameters common to both directions.
#[derive(Debug, Clone, Default)]
pub struct CommonTls {
    pub certificates: Vec<CertificateKey>,
    /// SDS secrets for the certificate and the validation context (resolved by `secrets`).
    pub certificate_sds: Vec<SdsRef>,
    pub validation_sds: Option<SdsRef>,
    pub validation: Option<Validation>,
    pub alpn: Vec<String>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
    /// `tls_params.cipher_suites`, one BoringSSL name each (equal-preference groups flattened).
    /// Empty: the defaults.
    pub cipher_suites: Vec<String>,
    /// `tls_params.ecdh_curves` (BoringSSL names). Empty: the defaults.
    pub ecdh_curves: Vec<String>,
}

/// TLS 1.2 cipher suites BoringSSL (and so Envoy) knows by these names. Remora implements the
/// ECDHE AEAD ones; the rest are accepted in a list and not offered (see `tls::provider_for`).
pub const BORINGSSL_CIPHERS: [&str; 20] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-PSK-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-PSK-AES128-CBC-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "ECDHE-PSK-AES256-CBC-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "PSK-AES128-CBC-SHA",
    "AES256-SHA",
    "PSK-AES256-CBC-SHA",
    "DES-CBC3-SHA",
];

/// Key-exchange groups BoringSSL knows by these names (Remora implements X25519, P-256, P-384).
pub const BORINGSSL_CURVES: [&str; 5] = ["X25519", "P-256", "P-384", "P-521", "X25519MLKEM768"];

/// A secret named by an `SdsSecretConfig`, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdsRef {
    pub name: String,
    pub source: SdsSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdsSource {
    /// No `sds_config`: the bootstrap's `static_resources.secrets`.
    Static,
    /// Path-based SDS: a file with a `DiscoveryResponse` of secrets.
    File(std::path::PathBuf),
    /// Over the ADS stream.
    Ads,
    /// A `SecretDiscoveryService` reached through this cluster (Istio: `sds-grpc`).
    Grpc { cluster: String },
    /// A source Envoy accepts that Remora cannot fetch from (`google_grpc`, REST); the reason.
    Unsupported(String),
}

fn sds_ref(s: &pb::SdsSecretConfig) -> FieldResult<SdsRef> {
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
    use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
    if s.name.is_empty() {
        return Err(FieldError::new("name", "value length must be at least 1 characters"));
    }
    let source = match s.sds_config.as_ref().and_then(|c| c.config_source_specifier.as_ref()) {
        None => SdsSource::Static,
        Some(ConfigSourceSpecifier::Path(p)) => SdsSource::File(p.into()),
        Some(ConfigSourceSpecifier::PathConfigSource(p)) => SdsSource::File(p.path.clone().into()),
        Some(ConfigSourceSpecifier::Ads(_)) => SdsSource::Ads,
        Some(ConfigSourceSpecifier::ApiConfigSource(api)) => {
            match api.grpc_services.first().and_then(|g| g.target_specifier.as_ref()) {
                Some(TargetSpecifier::EnvoyGrpc(g)) => SdsSource::Grpc { cluster: g.cluster_name.clone() },
                _ => SdsSource::Unsupported("SDS over google_grpc or REST".into()),
            }
        }
        Some(_) => SdsSource::Unsupported("this kind of SDS config source".into()),
    };
    if let SdsSource::File(path) = &source {
        super::require_existing_path(&path.to_string_lossy()).map_err(|e| e.within("sds_config"))?;
    }
    Ok(SdsRef { name: s.name.clone(), source })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

#[derive(Debug, Clone)]
pub struct DownstreamTls {
    pub common: CommonTls,
    pub require_client_certificate: bool,
    /// `disable_stateful_session_resumption` (Remora issues no stateless tickets, so its server
    /// side resumes only from its session cache).
    pub disable_session_resumption: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub common: CommonTls,
    pub sni: Option<String>,
    pub auto_host_sni: bool,
    /// `max_session_keys`: sessions kept for resumption (Envoy's default 1; 0 disables it).
    pub max_session_keys: u32,
}

/// `None` for plaintext (no socket or raw_buffer).
pub fn downstream_from_transport_socket(ts: &TransportSocket) -> FieldResult<Option<DownstreamTls>> {
    let Some(any) = typed_config(ts)? else {
        return Ok(None);
    };
    let ctx: pb::DownstreamTlsContext = unpack(any).map_err(|e| FieldError::new("typed_config", e))?;
    let common = common(ctx.common_tls_context.as_ref()).map_err(|e| e.within("typed_config.common_tls_context"))?;
    if common.certificates.is_empty() && common.certificate_sds.is_empty() {
        return Err(FieldError::new("typed_config.common_tls_context", "No TLS certificates found for server context"));
    }
    Ok(Some(DownstreamTls {
        common,
        require_client_certificate: ctx.require_client_certificate.is_some_and(|b| b.value),
        disable_session_resumption: ctx.disable_stateful_session_resumption,
    }))
}

pub fn upstream_from_transport_socket(ts: &TransportSocket) -> FieldResult<Option<UpstreamTls>> {
    let Some(any) = typed_config(ts)? else {
        return Ok(None);
    };
    let ctx: pb::UpstreamTlsContext = unpack(any).map_err(|e| FieldError::new("typed_config", e))?;
    let common = common(ctx.common_tls_context.as_ref()).map_err(|e| e.within("typed_config.common_tls_context"))?;
    Ok(Some(UpstreamTls {
        common,
        sni: Some(ctx.sni).filter(|s| !s.is_empty()),
        auto_host_sni: ctx.auto_host_sni,
        max_session_keys: ctx.max_session_keys.map_or(1, |v| v.value),
    }))
}

fn typed_config(ts: &TransportSocket) -> FieldResult<Option<&envoy_types::pb::google::protobuf::Any>> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        if ts.name == "envoy.transport_sockets.raw_buffer" || ts.name == "raw_buffer" {
            return Ok(None);
        }
        return Err(FieldError::new("typed_config", format!("transport socket '{}' needs a typed_config", ts.name)));
    };
    let name = super::decode::effective_type_name(any).map_err(|e| FieldError::new("typed_config", e.to_string()))?;
    match name.as_str() {
        RAW_BUFFER => Ok(None),
        DOWNSTREAM | UPSTREAM => Ok(Some(any)),
        other => Err(FieldError::new("typed_config", format!("transport socket type {other} is not supported"))),
    }
}

fn common(c: Option<&pb::CommonTlsContext>) -> FieldResult<CommonTls> {
    let Some(c) = c else {
        return Ok(CommonTls::default());
    };
    let mut out = CommonTls { alpn: c.alpn_protocols.clone(), ..Default::default() };
    for (i, cert) in c.tls_certificates.iter().enumerate() {
        let path = format!("tls_certificates[{i}]");
        let chain = cert
            .certificate_chain
            .as_ref()
            .ok_or_else(|| FieldError::new(format!("{path}.certificate_chain"), "value is required"))?;
        let key = cert
            .private_key
            .as_ref()
            .ok_or_else(|| FieldError::new(format!("{path}.private_key"), "value is required"))?;
        out.certificates.push(CertificateKey {
            certificate_chain: data_source(chain).map_err(|e| e.within(&format!("{path}.certificate_chain")))?.to_vec(),
            private_key: data_source(key).map_err(|e| e.within(&format!("{path}.private_key")))?.to_vec(),
            chain_path: super::data_source_path(chain),
        });
    }
    for (i, sds) in c.tls_certificate_sds_secret_configs.iter().enumerate() {
        out.certificate_sds
            .push(sds_ref(sds).map_err(|e| e.within(&format!("tls_certificate_sds_secret_configs[{i}]")))?);
    }
    match &c.validation_context_type {
        None => {}
        Some(ValidationContextType::ValidationContext(v)) => {
            out.validation = Some(validation(v).map_err(|e| e.within("validation_context"))?)
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            out.validation_sds = Some(sds_ref(s).map_err(|e| e.within("validation_context_sds_secret_config"))?)
        }
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            if let Some(d) = &cv.default_validation_context {
                out.validation = Some(
                    validation(d).map_err(|e| e.within("combined_validation_context.default_validation_context"))?,
                );
            }
            out.validation_sds = cv
                .validation_context_sds_secret_config
                .as_ref()
                .map(sds_ref)
                .transpose()
                .map_err(|e| e.within("combined_validation_context.validation_context_sds_secret_config"))?;
        }
        Some(_) => {
            return Err(FieldError::new(
                "validation_context_type",
                "certificate provider validation contexts are not supported",
            ))
        }
    }
    if let Some(p) = &c.tls_params {
        out.min_version = tls_version(p.tls_minimum_protocol_version);
        out.max_version = tls_version(p.tls_maximum_protocol_version);
        out.cipher_suites = cipher_suites(&p.cipher_suites).map_err(|e| e.within("tls_params"))?;
        for (i, curve) in p.ecdh_curves.iter().enumerate() {
            if !BORINGSSL_CURVES.contains(&curve.as_str()) {
                return Err(FieldError::new(
                    format!("tls_params.ecdh_curves[{i}]"),
                    format!("Failed to initialize ECDH curves {curve}"),
                ));
            }
        }
        out.ecdh_curves.clone_from(&p.ecdh_curves);
        // Narrowing the signature algorithms or a compliance policy cannot be honoured by
        // ignoring them; refuse rather than negotiate something the operator excluded.
        if !p.signature_algorithms.is_empty() {
            return Err(FieldError::new("tls_params.signature_algorithms", "not supported by Remora"));
        }
        if !p.compliance_policies.is_empty() {
            return Err(FieldError::new("tls_params.compliance_policies", "not supported by Remora"));
        }
    }
    Ok(out)
}

/// BoringSSL's cipher list syntax as Envoy passes it: one entry per suite or an equal-preference
/// group `[A|B]`; every name must be one BoringSSL knows.
fn cipher_suites(list: &[String]) -> FieldResult<Vec<String>> {
    let mut out = Vec::new();
    let mut rejected = Vec::new();
    for entry in list {
        let inner = entry.strip_prefix('[').and_then(|e| e.strip_suffix(']')).unwrap_or(entry);
        for name in inner.split('|') {
            if BORINGSSL_CIPHERS.contains(&name) {
                out.push(name.to_string());
            } else {
                rejected.push(name);
            }
        }
    }
    if !rejected.is_empty() {
        return Err(FieldError::new(
            "cipher_suites",
            format!(
                "Failed to initialize cipher suites {}. The following ciphers were rejected when tried individually: {}",
                list.join(":"),
                rejected.join(", ")
            ),
        ));
    }
    Ok(out)
}

pub fn validation(v: &pb::CertificateValidationContext) -> FieldResult<Validation> {
    let trusted_ca = v
        .trusted_ca
        .as_ref()
        .map(|ds| data_source(ds).map(|b| b.to_vec()).map_err(|e| e.within("trusted_ca")))
        .transpose()?;
    let mut san_matchers = Vec::new();
    for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
        let san_type = match m.san_type {
            1 => SanType::Email,
            2 => SanType::Dns,
            3 => SanType::Uri,
            4 => SanType::IpAddress,
            _ => {
                return Err(FieldError::new(
                    format!("match_typed_subject_alt_names[{i}].san_type"),
                    "value must be one of EMAIL, DNS, URI, IP_ADDRESS",
                ))
            }
        };
        let matcher = m.matcher.as_ref().ok_or_else(|| {
            FieldError::new(format!("match_typed_subject_alt_names[{i}].matcher"), "value is required")
        })?;
        san_matchers.push(SanMatcher {
            san_type,
            matcher: StringMatcher::from_proto(matcher)
                .map_err(|e| e.within(&format!("match_typed_subject_alt_names[{i}].matcher")))?,
        });
    }
    #[allow(deprecated)]
    for (i, m) in v.match_subject_alt_names.iter().enumerate() {
        san_matchers.push(SanMatcher {
            san_type: SanType::Any,
            matcher: StringMatcher::from_proto(m).map_err(|e| e.within(&format!("match_subject_alt_names[{i}]")))?,
        });
    }
    Ok(Validation {
        trusted_ca,
        trusted_ca_path: v.trusted_ca.as_ref().map(super::data_source_path),
        san_matchers,
        allow_expired: v.allow_expired_certificate,
    })
}

fn tls_version(v: i32) -> Option<TlsVersion> {
    match v {
        1 => Some(TlsVersion::Tls10),
        2 => Some(TlsVersion::Tls11),
        3 => Some(TlsVersion::Tls12),
        4 => Some(TlsVersion::Tls13),
        _ => None,
    }
}
