//! `GET /certs`, in Envoy's shape (`admin.v3.Certificates`): for every TLS context of the listeners
//! (then the clusters), its trust anchor (`ca_cert`) and its certificates (`cert_chain`), each with
//! path (a file, or `<inline>`), serial number, SANs, validity and days until expiration. SDS
//! secrets are shown as they are now, so a rotation shows at once.
//!
//! Owns: that report. Must not load or change secrets.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::model::tls::CommonTls;
use crate::secrets::SecretValue;
use crate::state::ProxyState;

pub fn render(state: &ProxyState) -> Value {
    let snap = state.snapshot();
    let mut contexts: Vec<&CommonTls> = Vec::new();
    for l in &snap.listeners {
        for fc in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            if let Some(t) = &fc.tls {
                contexts.push(&t.common);
            }
        }
    }
    let mut clusters: Vec<_> = snap.clusters.values().collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    for c in clusters {
        contexts.extend(c.tls.iter().map(|t| &t.common));
        contexts.extend(c.socket_matches.iter().filter_map(|m| m.tls.as_ref()).map(|t| &t.common));
    }
    let now = SystemTime::now();
    let certificates: Vec<Value> = contexts.into_iter().map(|c| context(c, now)).collect();
    json!({ "certificates": certificates })
}

fn context(c: &CommonTls, now: SystemTime) -> Value {
    let store = crate::secrets::store();
    let mut ca = Vec::new();
    let validation_secret = c.validation_sds.as_ref().and_then(|r| store.peek(&r.name));
    let validation = match validation_secret.as_deref() {
        Some(SecretValue::Validation(v)) => Some(&v.validation),
        _ => c.validation.as_ref(),
    };
    if let Some(v) = validation {
        if let (Some(pem), path) = (&v.trusted_ca, v.trusted_ca_path.as_deref().unwrap_or("<inline>")) {
            // Every certificate of the trust bundle, as Envoy lists them.
            ca.extend(all_certificates(pem).iter().filter_map(|der| details(der, path, now)));
        }
    }
    let mut chain: Vec<Value> =
        c.certificates.iter().filter_map(|k| first_certificate(&k.certificate_chain, &k.chain_path, now)).collect();
    for r in &c.certificate_sds {
        if let Some(SecretValue::Certificate(s)) = store.peek(&r.name).as_deref() {
            chain.extend(first_certificate(&s.chain_pem, &s.chain_path, now));
        }
    }
    json!({"ca_cert": ca, "cert_chain": chain})
}

fn all_certificates(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect()
}

/// Envoy's `CertificateDetails` of the first certificate in `pem` (the leaf of a chain).
fn first_certificate(pem: &[u8], path: &str, now: SystemTime) -> Option<Value> {
    details(all_certificates(pem).first()?, path, now)
}

fn details(der: &rustls::pki_types::CertificateDer<'_>, path: &str, now: SystemTime) -> Option<Value> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        // Envoy lists DNS names, then URIs, then IP addresses.
        for kind in ["dns", "uri", "ip_address"] {
            for g in &ext.value.general_names {
                let value = match (kind, g) {
                    ("dns", GeneralName::DNSName(d)) => d.to_string(),
                    ("uri", GeneralName::URI(u)) => u.to_string(),
                    ("ip_address", GeneralName::IPAddress(ip)) => match ip.len() {
                        4 => std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string(),
                        16 => <[u8; 16]>::try_from(*ip).map(|b| std::net::Ipv6Addr::from(b).to_string()).ok()?,
                        _ => continue,
                    },
                    _ => continue,
                };
                sans.push(json!({ kind: value }));
            }
        }
    }
    let not_after = cert.validity().not_after.timestamp();
    let now_secs = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let days = ((not_after - now_secs).max(0)) / 86_400;
    let rfc3339 = |t: x509_parser::time::ASN1Time| {
        let d = t.to_datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        )
    };
    Some(json!({
        "path": path,
        "serial_number": serial_hex(cert.raw_serial()),
        "subject_alt_names": sans,
        "days_until_expiration": days.to_string(),
        "valid_from": rfc3339(cert.validity().not_before),
        "expiration_time": rfc3339(cert.validity().not_after),
    }))
}

/// The serial as Envoy prints it: two hex digits per byte of the integer (DER's leading zero byte,
/// which keeps a high first bit positive, is not part of it).
fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}
