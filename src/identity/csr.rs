//! The workload key and its certificate signing request: ECDSA P-256 with SHA-256 (what ztunnel
//! always uses and pilot-agent uses with `ECC_SIGNATURE_ALGORITHM=ECDSA`), the SPIFFE ID as the
//! only (URI) SAN and an empty subject, as pilot-agent sends it. The CA takes only the public key
//! from it; the identity in the certificate is the one the CA authenticated.

use super::config::KeyAlgorithm;
use super::{Identity, IdentityError};

/// A fresh key and a PEM CSR for `identity`.
pub fn generate(identity: &Identity, algorithm: KeyAlgorithm) -> Result<(rcgen::KeyPair, String), IdentityError> {
    let key = match algorithm {
        KeyAlgorithm::EcdsaP256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::Rsa2048 => {
            return Err(IdentityError::Csr(
                "RSA workload keys are not supported yet; unset ECC_SIGNATURE_ALGORITHM or set it to ECDSA".into(),
            ))
        }
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
}
