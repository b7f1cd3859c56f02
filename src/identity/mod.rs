//! Workload identity: the SPIFFE ID this sidecar runs as, its key and CSR, the Istio CA client
//! that has the CSR signed (`istio.v1.auth.IstioCertificateService/CreateCertificate`, as
//! pilot-agent calls istiod), and the provider that keeps a valid certificate — renewed at half
//! its life — in the secret table as Istio's SDS names `default` and `ROOTCA`.
//!
//! Owns: identity configuration (pilot-agent's environment names), key/CSR generation, the CA
//! call and the renewal schedule. Must not build TLS configs (`tls`) or serve SDS.

pub mod caclient;
pub mod config;
pub mod csr;
pub mod provider;

/// Istio's CA API (`proto/istio/security/v1alpha1/ca.proto`).
#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("istio.v1.auth");
}

pub use config::IdentityConfig;

/// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl std::str::FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdentityError::BadSpiffeId(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => Ok(Identity {
                trust_domain: (*td).to_string(),
                namespace: (*ns).to_string(),
                service_account: (*sa).to_string(),
            }),
            _ => Err(bad()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("'{0}' is not a SPIFFE ID of the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>")]
    BadSpiffeId(String),
    #[error("{name}: {reason}")]
    Config { name: &'static str, reason: String },
    #[error("cannot generate the key or CSR: {0}")]
    Csr(String),
    #[error("CA {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("CA {addr} rejected the request ({code:?}): {message}")]
    Rejected { addr: String, code: tonic::Code, message: String },
    #[error("CA {addr} returned an unusable response: {reason}")]
    Malformed { addr: String, reason: String },
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: String, source: std::io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip_and_reject_other_shapes() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage".parse().unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/bookinfo-productpage");
        for bad in
            ["spiffe://cluster.local/ns/default", "http://x/ns/a/sa/b", "spiffe:///ns/a/sa/b", "spiffe://td/sa/b/ns/a"]
        {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }
}
