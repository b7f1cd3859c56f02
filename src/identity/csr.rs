//! The workload key and its certificate signing request: ECDSA P-256 with SHA-256 (what ztunnel
//! always uses and pilot-agent uses with `ECC_SIGNATURE_ALGORITHM=ECDSA`), or RSA 2048 with
//! SHA-256 on request; the SPIFFE ID as the only (URI) SAN and an empty subject, as pilot-agent
//! sends it. The CA takes only the public key from it; the identity in the certificate is the one
//! the CA authenticated.

use super::config::KeyAlgorithm;
use super::{Identity, IdentityError};

/// A fresh key and a PEM CSR for `identity`.
pub fn generate(identity: &Identity, algorithm: KeyAlgorithm) -> Result<(rcgen::KeyPair, String), IdentityError> {
    let key = match algorithm {
        KeyAlgorithm::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::Rsa2048 => rsa_key(2048)?,
    }
    .map_err(|e| IdentityError::Csr(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| IdentityError::Csr(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = identity.to_string().try_into().map_err(|e: rcgen::Error| IdentityError::Csr(e.to_string()))?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(|e| IdentityError::Csr(e.to_string()))?;
    let pem = csr.pem().map_err(|e| IdentityError::Csr(e.to_string()))?;
    Ok((key, pem))
}

/// ring signs with RSA but cannot make RSA keys: the `rsa` crate generates it, ring signs the CSR.
fn rsa_key(bits: usize) -> Result<Result<rcgen::KeyPair, rcgen::Error>, IdentityError> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|e| IdentityError::Csr(format!("RSA key generation: {e}")))?;
    let der = key.to_pkcs8_der().map_err(|e| IdentityError::Csr(format!("RSA key encoding: {e}")))?;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
    Ok(rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_carries_the_spiffe_id_and_our_key() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        let (key, pem) = generate(&id, KeyAlgorithm::EcdsaP256).unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(parsed.public_key.der_bytes(), key.public_key_raw());
        let sans = format!("{:?}", parsed.params.subject_alt_names);
        assert!(sans.contains("spiffe://cluster.local/ns/default/sa/web"), "{sans}");
    }

    #[test]
    fn rsa_2048_on_request() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        let (key, pem) = generate(&id, KeyAlgorithm::Rsa2048).unwrap();
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
        use x509_parser::prelude::FromDer;
        let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref()).unwrap();
        parsed.verify_signature().expect("the CSR is signed by its RSA key");
        let spki = &parsed.certification_request_info.subject_pki;
        match spki.parsed().unwrap() {
            x509_parser::public_key::PublicKey::RSA(rsa) => assert_eq!(rsa.key_size(), 2048),
            other => panic!("not an RSA key: {other:?}"),
        }
        assert!(key.serialize_pem().contains("BEGIN PRIVATE KEY"));
    }
}
