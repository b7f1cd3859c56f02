//! Test certificates made with rcgen: a CA and leaves signed by it (DNS and URI SANs).
#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};

pub fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).expect("self-signed CA");
    (cert, Issuer::new(params, key))
}

pub fn leaf(issuer: &Issuer<'_, KeyPair>, cn: &str, dns: &[&str], uri: Option<&str>) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(uri) = uri {
        params.subject_alt_names.push(SanType::URI(uri.try_into().expect("URI SAN")));
    }
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (cert, key)
}

/// A workload certificate as istiod's CA issues it: no subject, the SPIFFE ID as the only SAN.
pub fn workload(issuer: &Issuer<'_, KeyPair>, spiffe_id: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("workload key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names.push(SanType::URI(spiffe_id.try_into().expect("SPIFFE URI")));
    let cert = params.signed_by(&key, issuer).expect("sign workload");
    (cert, key)
}
