//! The Istio CA client: `CreateCertificate` over gRPC, TLS to `host:port` with the CA root from
//! `root-cert.pem` and the host as server name (istiod's certificate names its service), or
//! plaintext for an `http://` address. Every call carries `authorization: Bearer <token>`, the
//! token re-read from its file each time (projected tokens rotate), and `clusterid`.
//!
//! Owns: the call and checking the response (leaf first, root last, the leaf for our key).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use super::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use super::pb::IstioCertificateRequest;
use super::{IdentityConfig, IdentityError};

/// A signed workload certificate with its key, as the TLS layer wants them.
#[derive(Debug, Clone)]
pub struct WorkloadCertificate {
    pub key_pem: String,
    /// Leaf first, then intermediates (not the root).
    pub chain_pem: String,
    pub root_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial: String,
}

#[derive(Clone)]
pub struct CaClient {
    addr: String,
    channel: Channel,
    token_path: std::path::PathBuf,
    cluster_id: String,
}

impl CaClient {
    pub fn new(cfg: &IdentityConfig) -> Result<CaClient, IdentityError> {
        let fail = |reason: String| IdentityError::Config { name: "CA_ADDR", reason };
        let (uri, tls) = match cfg.ca_addr.strip_prefix("http://") {
            Some(plain) => (format!("http://{plain}"), None),
            None => {
                let authority = cfg.ca_addr.strip_prefix("https://").unwrap_or(&cfg.ca_addr);
                let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).trim_matches(['[', ']']);
                let pem = std::fs::read(&cfg.root_cert_path).map_err(|source| IdentityError::Read {
                    what: "CA root",
                    path: cfg.root_cert_path.display().to_string(),
                    source,
                })?;
                let mut roots = rustls::RootCertStore::empty();
                use rustls::pki_types::pem::PemObject;
                for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                    let c = c.map_err(|e| fail(format!("CA root {}: {e}", cfg.root_cert_path.display())))?;
                    roots.add(c).map_err(|e| fail(format!("CA root {}: {e}", cfg.root_cert_path.display())))?;
                }
                let mut client =
                    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| fail(e.to_string()))?
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                client.alpn_protocols = vec![b"h2".to_vec()];
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| fail(format!("server name '{host}': {e}")))?;
                (format!("http://{authority}"), Some((Arc::new(client), name)))
            }
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| fail(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        let channel = match tls {
            None => endpoint.connect_lazy(),
            Some((client, name)) => {
                let authority = cfg.ca_addr.strip_prefix("https://").unwrap_or(&cfg.ca_addr).to_string();
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                    let (client, name, authority) = (client.clone(), name.clone(), authority.clone());
                    async move {
                        let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
                        let tls = tokio_rustls::TlsConnector::from(client).connect(name, tcp).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(tls))
                    }
                }))
            }
        };
        Ok(CaClient {
            addr: cfg.ca_addr.clone(),
            channel,
            token_path: cfg.token_path.clone(),
            cluster_id: cfg.cluster_id.clone(),
        })
    }

    /// Has `csr_pem` signed for `ttl`; the chain as the CA returned it (leaf first, root last).
    pub async fn create_certificate(&self, csr_pem: &str, ttl: Duration) -> Result<Vec<String>, IdentityError> {
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem.to_string(),
            validity_duration: ttl.as_secs() as i64,
            metadata: None,
        });
        // Re-read on every call: the kubelet rotates projected service-account tokens.
        match std::fs::read_to_string(&self.token_path) {
            Ok(token) => {
                let value = format!("Bearer {}", token.trim());
                let value = value.parse().map_err(|_| IdentityError::Config {
                    name: "istio-token",
                    reason: format!("{} is not a valid header value", self.token_path.display()),
                })?;
                req.metadata_mut().insert("authorization", value);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(path = %self.token_path.display(), "no token file; calling the CA without a bearer token");
            }
            Err(source) => {
                return Err(IdentityError::Read { what: "token", path: self.token_path.display().to_string(), source })
            }
        }
        if let Ok(v) = self.cluster_id.parse() {
            req.metadata_mut().insert("clusterid", v);
        }
        let mut client = IstioCertificateServiceClient::new(self.channel.clone());
        match client.create_certificate(req).await {
            Ok(resp) => Ok(resp.into_inner().cert_chain),
            Err(status) => Err(match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                    IdentityError::Unreachable { addr: self.addr.clone(), reason: status.message().to_string() }
                }
                code => {
                    IdentityError::Rejected { addr: self.addr.clone(), code, message: status.message().to_string() }
                }
            }),
        }
    }

    /// A new key, its CSR signed, and the response checked: at least leaf and root, PEM, and the
    /// leaf certifies our key.
    pub async fn issue(&self, cfg: &IdentityConfig) -> Result<WorkloadCertificate, IdentityError> {
        // RSA key generation takes a noticeable time: keep it off the runtime's threads.
        let (identity, algorithm) = (cfg.identity.clone(), cfg.key);
        let (key, csr) = tokio::task::spawn_blocking(move || super::csr::generate(&identity, algorithm))
            .await
            .map_err(|e| IdentityError::Csr(format!("key generation did not finish: {e}")))??;
        let chain = self.create_certificate(&csr, cfg.ttl).await?;
        let malformed = |reason: String| IdentityError::Malformed { addr: self.addr.clone(), reason };
        if chain.len() < 2 {
            return Err(malformed(format!(
                "cert_chain has {} element(s); the leaf and the root are required",
                chain.len()
            )));
        }
        let leaf_der = rustls::pki_types::CertificateDer::from_pem_slice(chain[0].as_bytes())
            .map_err(|e| malformed(format!("cert_chain[0] is not a PEM certificate: {e}")))?;
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der.as_ref())
            .map_err(|e| malformed(format!("cert_chain[0] does not parse: {e}")))?;
        if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(malformed("the leaf certificate is not for the key in our CSR".into()));
        }
        for (i, c) in chain.iter().enumerate().skip(1) {
            rustls::pki_types::CertificateDer::from_pem_slice(c.as_bytes())
                .map_err(|e| malformed(format!("cert_chain[{i}] is not a PEM certificate: {e}")))?;
        }
        let uris: Vec<String> = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .filter_map(|g| match g {
                        x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !uris.contains(&cfg.identity.to_string()) {
            tracing::warn!(expected = %cfg.identity, issued = ?uris, "the CA issued a certificate for another identity (it names the authenticated caller)");
        }
        let last = chain.len() - 1;
        let with_newline = |s: &str| if s.ends_with('\n') { s.to_string() } else { format!("{s}\n") };
        Ok(WorkloadCertificate {
            key_pem: key.serialize_pem(),
            chain_pem: chain[..last].iter().map(|c| with_newline(c)).collect(),
            root_pem: with_newline(&chain[last]),
            not_before: leaf.validity().not_before.to_datetime().into(),
            not_after: leaf.validity().not_after.to_datetime().into(),
            serial: leaf.raw_serial_as_string(),
        })
    }
}

use rustls::pki_types::pem::PemObject;
