//! rustls configurations from validated TLS contexts, peer SAN verification, and ClientHello
//! inspection (SNI, ALPN) for filter-chain matching.
//!
//! Owns: building `rustls` server and client configs and checking peer identities. Must not fetch
//! certificates (`secrets` and `identity` do) or read config files.

pub mod client_hello;
mod dynamic;
pub mod peer;
pub mod stats;

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use dynamic::{
    CertSource, ClientSessions, ClientVerifier, Material, NoVerification, RootsSource, ServerSessions, ServerVerifier,
};

use crate::model::tls::{CommonTls, DownstreamTls, SanMatcher, SanType, TlsVersion, UpstreamTls, Validation};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("Failed to load certificate chain: {0}")]
    Certificate(String),
    #[error("Failed to load private key: {0}")]
    PrivateKey(String),
    #[error("Failed to load trusted CA certificates: {0}")]
    TrustedCa(String),
    #[error("TLS context: {0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The crypto provider narrowed to a context's `cipher_suites` and `ecdh_curves`. As in
/// BoringSSL, cipher suites restrict TLS 1.2 only (TLS 1.3 suites are not configurable). Suites
/// and curves BoringSSL knows but rustls does not implement (CBC, non-ECDHE, P-521, ...) are
/// not offered: the connection can only be narrower than configured, never wider.
fn provider_for(c: &CommonTls) -> Result<Arc<rustls::crypto::CryptoProvider>, TlsError> {
    use rustls::{CipherSuite as Cs, NamedGroup, SupportedCipherSuite};
    let mut p = rustls::crypto::ring::default_provider();
    if !c.cipher_suites.is_empty() {
        let name = |s: Cs| match s {
            Cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
            Cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
            Cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
            Cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
            Cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
            Cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
            _ => "",
        };
        p.cipher_suites.retain(|s| match s {
            SupportedCipherSuite::Tls13(_) => true,
            SupportedCipherSuite::Tls12(_) => c.cipher_suites.iter().any(|n| n == name(s.suite())),
        });
        let tls12_only = c.max_version.is_some_and(|v| v <= TlsVersion::Tls12);
        if tls12_only && !p.cipher_suites.iter().any(|s| matches!(s, SupportedCipherSuite::Tls12(_))) {
            return Err(TlsError::Config(format!(
                "none of the cipher suites {:?} is implemented by Remora (ECDHE with AES-GCM or ChaCha20-Poly1305)",
                c.cipher_suites
            )));
        }
    }
    if !c.ecdh_curves.is_empty() {
        let name = |g: NamedGroup| match g {
            NamedGroup::X25519 => "X25519",
            NamedGroup::secp256r1 => "P-256",
            NamedGroup::secp384r1 => "P-384",
            _ => "",
        };
        p.kx_groups.retain(|g| c.ecdh_curves.iter().any(|n| n == name(g.name())));
        if p.kx_groups.is_empty() {
            return Err(TlsError::Config(format!(
                "none of the ECDH curves {:?} is implemented by Remora (X25519, P-256, P-384)",
                c.ecdh_curves
            )));
        }
    }
    Ok(Arc::new(p))
}

fn versions(c: &CommonTls) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let min = c.min_version.unwrap_or(TlsVersion::Tls12);
    let max = c.max_version.unwrap_or(TlsVersion::Tls13);
    let mut v = Vec::new();
    if min <= TlsVersion::Tls12 && max >= TlsVersion::Tls12 {
        v.push(&rustls::version::TLS12);
    }
    if max >= TlsVersion::Tls13 {
        v.push(&rustls::version::TLS13);
    }
    if v.is_empty() {
        // TLS 1.0/1.1 only: rustls does not implement them; use 1.2, the closest safe version.
        v.push(&rustls::version::TLS12);
    }
    v
}

fn certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Certificate("no PEM certificate found".into()));
    }
    Ok(certs)
}

fn key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::PrivateKey(e.to_string()))
}

/// The trusted CAs of a validation context, if it has any.
pub fn root_store(v: &Validation) -> Result<Option<RootCertStore>, TlsError> {
    let Some(ca) = &v.trusted_ca else {
        return Ok(None);
    };
    let mut store = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        let c = c.map_err(|e| TlsError::TrustedCa(e.to_string()))?;
        store.add(c).map_err(|e| TlsError::TrustedCa(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(TlsError::TrustedCa("no PEM certificate found".into()));
    }
    Ok(Some(store))
}

/// The context's certificate: inline/file material, or the SDS secret it names.
fn cert_source(c: &CommonTls) -> Result<Option<CertSource>, TlsError> {
    if let Some(ck) = c.certificates.first() {
        return Ok(Some(CertSource::Fixed(certified_key_from_pem(&ck.certificate_chain, &ck.private_key)?)));
    }
    match c.certificate_sds.first() {
        Some(r) => Ok(Some(CertSource::Sds(crate::secrets::store().slot(r)?))),
        None => Ok(None),
    }
}

/// The context's trust anchors: the SDS validation secret if one is named (a combined validation
/// context takes its CA from there), else `trusted_ca`.
fn roots_source(c: &CommonTls) -> Result<Option<RootsSource>, TlsError> {
    if let Some(r) = &c.validation_sds {
        return Ok(Some(RootsSource::Sds(crate::secrets::store().slot(r)?)));
    }
    Ok(c.validation.as_ref().map(root_store).transpose()?.flatten().map(|s| RootsSource::Fixed(Arc::new(s))))
}

/// The certificate a `DownstreamTlsContext` serves now (its first), for reporting it.
pub fn current_certificate(t: &DownstreamTls) -> Option<CertificateDer<'static>> {
    let source = cert_source(&t.common).ok().flatten()?;
    source.current_key().and_then(|k| k.cert.first().cloned())
}

/// A server config for a filter chain's `DownstreamTlsContext`.
pub fn server_config(t: &DownstreamTls) -> Result<Arc<ServerConfig>, TlsError> {
    let c = &t.common;
    let cert =
        cert_source(c)?.ok_or_else(|| TlsError::Config("No TLS certificates found for server context".into()))?;
    let builder = ServerConfig::builder_with_provider(provider_for(c)?)
        .with_protocol_versions(&versions(c))
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let roots = roots_source(c)?;
    let sessions = ServerSessions::new(Material::of(Some(&cert), roots.as_ref()));
    let builder = match roots {
        Some(roots) => {
            builder.with_client_cert_verifier(Arc::new(ClientVerifier::new(roots, t.require_client_certificate)))
        }
        None if t.require_client_certificate => {
            return Err(TlsError::Config(
                "require_client_certificate needs a validation context with trusted_ca".into(),
            ))
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(cert));
    cfg.session_storage = Arc::new(sessions);
    cfg.alpn_protocols = offered_alpn(&c.alpn);
    if t.disable_session_resumption {
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    }
    Ok(Arc::new(cfg))
}

/// Parses a PEM chain and key and pairs them. rustls's own pairing parses the leaf with webpki,
/// which refuses X.509 v1 certificates that BoringSSL (and so Envoy) serves; only a real key
/// mismatch is an error.
pub fn certified_key_from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs(chain_pem)?;
    let signing =
        provider().key_provider.load_private_key(key(key_pem)?).map_err(|e| TlsError::PrivateKey(e.to_string()))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::PrivateKey("the private key does not match the certificate".into()))
        }
        _ => Ok(Arc::new(ck)),
    }
}

/// A client config for a cluster's `UpstreamTlsContext`.
pub fn client_config(t: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsError> {
    let c = &t.common;
    let builder = ClientConfig::builder_with_provider(provider_for(c)?)
        .with_protocol_versions(&versions(c))
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let sans = c.validation.as_ref().map(|v| v.san_matchers.clone()).unwrap_or_default();
    let roots = roots_source(c)?;
    let cert = cert_source(c)?;
    let sessions = ClientSessions::new(Material::of(cert.as_ref(), roots.as_ref()));
    let builder = match roots {
        Some(roots) => builder.dangerous().with_custom_certificate_verifier(Arc::new(ServerVerifier::new(roots, sans))),
        // Envoy without a validation context does not verify the server at all.
        None => builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider()))),
    };
    let mut cfg = match cert {
        Some(cert) => builder.with_client_cert_resolver(Arc::new(cert)),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = offered_alpn(&c.alpn);
    // Envoy's `max_session_keys`: 0 turns resumption off; otherwise sessions are kept in a store
    // that is emptied whenever this context's certificate or roots rotate (a resumed session
    // carries the certificates of the handshake it came from).
    cfg.resumption = match t.max_session_keys {
        0 => rustls::client::Resumption::disabled(),
        _ => rustls::client::Resumption::store(Arc::new(sessions)),
    };
    Ok(Arc::new(cfg))
}

/// ALPN protocols as Remora offers or accepts them where no metadata exchange filter is on the
/// connection. `istio-peer-exchange` promises the peer an Istio metadata-exchange frame before any
/// application byte, which only the exchange filter writes and reads (`tcp::metadata_exchange`), so
/// elsewhere it stands in with `istio` (what Istio peers also accept, without the frame): an Envoy
/// client then negotiates `istio` and sends no frame, an Envoy server finds no common protocol and
/// proceeds without one, and no unexpected bytes reach either application.
pub fn offered_alpn(protocols: &[String]) -> Vec<Vec<u8>> {
    alpn_list(protocols, None)
}

/// The same protocols on a connection whose metadata exchange filter speaks `exchange`: that
/// protocol is offered as it is.
pub fn exchange_alpn(protocols: &[String], exchange: &str) -> Vec<Vec<u8>> {
    alpn_list(protocols, Some(exchange))
}

fn alpn_list(protocols: &[String], exchange: Option<&str>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(protocols.len());
    for p in protocols {
        let p = if p == "istio-peer-exchange" && exchange != Some(p) { "istio" } else { p.as_str() };
        if !out.iter().any(|o| o == p.as_bytes()) {
            out.push(p.as_bytes().to_vec());
        }
    }
    out
}

/// The SNI to send: the configured one, else the IP/host the connection is for is not sent
/// (Envoy sends no SNI unless configured or `auto_host_sni`).
pub fn server_name(t: &UpstreamTls, host: Option<&str>) -> ServerName<'static> {
    let name = t.sni.clone().or_else(|| if t.auto_host_sni { host.map(str::to_string) } else { None });
    name.and_then(|n| ServerName::try_from(n).ok())
        .unwrap_or_else(|| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
}

/// Envoy's SAN check: with no matchers any verified peer passes; otherwise one SAN must match.
pub fn verify_san(cert_der: &[u8], matchers: &[SanMatcher]) -> bool {
    if matchers.is_empty() {
        return true;
    }
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    use x509_parser::extensions::GeneralName;
    matchers.iter().any(|m| {
        san.value.general_names.iter().any(|g| {
            let (kind_ok, value) = match g {
                GeneralName::DNSName(d) => (matches!(m.san_type, SanType::Dns | SanType::Any), d.to_string()),
                GeneralName::URI(u) => (matches!(m.san_type, SanType::Uri | SanType::Any), u.to_string()),
                GeneralName::RFC822Name(e) => (matches!(m.san_type, SanType::Email | SanType::Any), e.to_string()),
                GeneralName::IPAddress(ip) => (
                    matches!(m.san_type, SanType::IpAddress | SanType::Any),
                    match ip.len() {
                        4 => std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string(),
                        16 => <[u8; 16]>::try_from(*ip)
                            .map(|b| std::net::Ipv6Addr::from(b).to_string())
                            .unwrap_or_default(),
                        _ => String::new(),
                    },
                ),
                _ => (false, String::new()),
            };
            kind_ok && m.matcher.matches(&value)
        })
    })
}
