//! What a downstream TLS connection knows about the certificates on both ends: the peer's
//! chain as presented and, lazily (only a connection manager that forwards client-certificate
//! details asks), the facts Envoy exposes about it — SHA-256 hash, RFC 2253 subject, URI and DNS
//! SANs, URL-encoded PEM — and the URI SANs of the certificate this side served.
//!
//! Owns: extracting those facts. Must not decide what is forwarded (`http::xfcc` does).

use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::model::tls::DownstreamTls;

/// The certificates of one mTLS connection (built only when the peer presented one).
pub struct TlsPeer {
    chain: Vec<CertificateDer<'static>>,
    local: Arc<DownstreamTls>,
    details: OnceLock<PeerDetails>,
}

#[derive(Debug, Default, Clone)]
pub struct PeerDetails {
    /// Lowercase hex SHA-256 of the peer certificate's DER.
    pub hash: String,
    /// The peer certificate's subject in RFC 2253 form (`CN=a,O=b`), "" if empty.
    pub subject: String,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    /// The peer certificate, PEM, URL-encoded.
    pub cert: String,
    /// The peer chain, PEM, URL-encoded.
    pub chain: String,
    /// URI SANs of the certificate this side presented (XFCC `By`).
    pub local_uris: Vec<String>,
}

impl std::fmt::Debug for TlsPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPeer").field("certificates", &self.chain.len()).finish()
    }
}

impl TlsPeer {
    pub fn new(chain: Vec<CertificateDer<'static>>, local: Arc<DownstreamTls>) -> Option<Arc<Self>> {
        (!chain.is_empty()).then(|| Arc::new(TlsPeer { chain, local, details: OnceLock::new() }))
    }

    /// The peer's first URI SAN (its SPIFFE identity in a mesh).
    pub fn identity(&self) -> Option<String> {
        self.details().uris.first().cloned()
    }

    pub fn details(&self) -> &PeerDetails {
        self.details.get_or_init(|| {
            let Some(leaf) = self.chain.first() else { return PeerDetails::default() };
            let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
            let mut d = PeerDetails {
                hash: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
                cert: url_encode(&pem(leaf)),
                chain: url_encode(&self.chain.iter().map(pem).collect::<String>()),
                local_uris: super::current_certificate(&self.local).map(|c| sans(&c).0).unwrap_or_default(),
                ..Default::default()
            };
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) {
                d.subject = rfc2253(cert.subject());
                (d.uris, d.dns) = sans(leaf);
            }
            d
        })
    }
}

/// URI and DNS SANs of a certificate.
fn sans(der: &CertificateDer<'_>) -> (Vec<String>, Vec<String>) {
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) {
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for g in &san.value.general_names {
                match g {
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    _ => {}
                }
            }
        }
    }
    (uris, dns)
}

fn pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Percent-encoding as Envoy applies it to PEM in XFCC: unreserved characters stay.
fn url_encode(s: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(s, RESERVED).to_string()
}

/// RFC 2253: RDNs last-to-first, comma-separated, `TYPE=value` with special characters escaped.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut rdns: Vec<String> = Vec::new();
    for rdn in name.iter() {
        let parts: Vec<String> = rdn
            .iter()
            .map(|atv| {
                let oid = atv.attr_type();
                let key = x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
                    .map(str::to_string)
                    .unwrap_or_else(|_| oid.to_id_string());
                let value = atv.as_str().map(escape_rfc2253).unwrap_or_default();
                format!("{key}={value}")
            })
            .collect();
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    rdns.join(",")
}

fn escape_rfc2253(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let leading = i == 0 && (c == ' ' || c == '#');
        let trailing = i + 1 == v.chars().count() && c == ' ';
        if leading || trailing || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2253_escapes() {
        assert_eq!(escape_rfc2253("a,b"), "a\\,b");
        assert_eq!(escape_rfc2253(" x "), "\\ x\\ ");
    }
}
