//! The local control plane's CA: Istio's `IstioCertificateService/CreateCertificate` on the same
//! gRPC port as ADS, signing workload CSRs with a root kept in `--ca-dir` (generated there on
//! first start). As istiod does, the CSR only supplies the public key: the certificate names the
//! caller's identity — the one its bearer token maps to in `--ca-tokens`, or, without a token
//! file (local development, warned at start), the CSR's own SPIFFE ID if it is in the trust
//! domain. TTL ≤ 0 gets 24 h, more than 90 days is refused, `NotAfter` never passes the root's,
//! `NotBefore` is a minute early for clock skew; the leaf is a client and server certificate with
//! only its URI SAN; the response is leaf then root, one PEM each.
//!
//! Owns: the root and signing. Must not serve xDS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};

use crate::identity::pb::istio_certificate_service_server::IstioCertificateService;
use crate::identity::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::identity::Identity;

const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
const CLOCK_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA directory {path}: {reason}")]
    Root { path: String, reason: String },
    #[error("CA token file {path}: {reason}")]
    Tokens { path: String, reason: String },
}

pub struct CertificateAuthority {
    root_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    root_not_after: SystemTime,
    trust_domain: String,
    /// bearer token → identity; `None`: trust the CSR's SPIFFE ID (development only).
    tokens: Option<Arc<HashMap<String, Identity>>>,
}

impl CertificateAuthority {
    /// Loads `dir/root-cert.pem` and `dir/root-key.pem`, or creates them (a 10-year self-signed
    /// root for `trust_domain`).
    pub fn load_or_create(dir: &Path, trust_domain: &str, tokens: Option<&Path>) -> Result<Self, CaError> {
        let fail = |reason: String| CaError::Root { path: dir.display().to_string(), reason };
        let (cert_path, key_path) = (dir.join("root-cert.pem"), dir.join("root-key.pem"));
        let (root_pem, key) = if cert_path.exists() && key_path.exists() {
            let pem = std::fs::read_to_string(&cert_path).map_err(|e| fail(e.to_string()))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(|e| fail(e.to_string()))?;
            let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| fail(format!("root-key.pem: {e}")))?;
            (pem, key)
        } else {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| fail(e.to_string()))?;
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::OrganizationName, trust_domain);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::minutes(1);
            params.not_after = now + time::Duration::days(3650);
            let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
            std::fs::write(&cert_path, cert.pem()).map_err(|e| fail(e.to_string()))?;
            write_private(&key_path, &key.serialize_pem()).map_err(|e| fail(e.to_string()))?;
            tracing::info!(dir = %dir.display(), "generated a new CA root");
            (cert.pem(), key)
        };
        let der = rustls::pki_types::CertificateDer::from_pem_slice(root_pem.as_bytes())
            .map_err(|e| fail(format!("root-cert.pem: {e}")))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| fail(format!("root-cert.pem: {e}")))?;
        let root_not_after: SystemTime = parsed.validity().not_after.to_datetime().into();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&root_pem, key).map_err(|e| fail(e.to_string()))?;
        let tokens = tokens.map(|p| read_tokens(p, trust_domain)).transpose()?.map(Arc::new);
        if tokens.is_none() {
            tracing::warn!(
                "CA without --ca-tokens: any caller gets the SPIFFE ID its CSR asks for (local development only)"
            );
        }
        Ok(CertificateAuthority {
            root_pem: if root_pem.ends_with('\n') { root_pem } else { format!("{root_pem}\n") },
            issuer,
            root_not_after,
            trust_domain: trust_domain.to_string(),
            tokens,
        })
    }

    /// The token table, when callers must authenticate (xDS streams are checked against it too,
    /// as istiod checks them).
    pub fn tokens(&self) -> Option<Arc<HashMap<String, Identity>>> {
        self.tokens.clone()
    }

    fn caller<T>(&self, req: &Request<T>, csr: &rcgen::CertificateSigningRequestParams) -> Result<Identity, Status> {
        let token = bearer_token(req.metadata());
        match &self.tokens {
            Some(tokens) => {
                let token =
                    token.ok_or_else(|| Status::unauthenticated("request authenticate failure: no bearer token"))?;
                tokens
                    .get(token)
                    .cloned()
                    .ok_or_else(|| Status::unauthenticated("request authenticate failure: unknown token"))
            }
            None => {
                let uri = csr.params.subject_alt_names.iter().find_map(|s| match s {
                    rcgen::SanType::URI(u) => Some(u.as_str().to_string()),
                    _ => None,
                });
                let id: Identity = uri
                    .ok_or_else(|| Status::invalid_argument("the CSR has no SPIFFE URI SAN"))?
                    .parse()
                    .map_err(|e: crate::identity::IdentityError| Status::invalid_argument(e.to_string()))?;
                if id.trust_domain != self.trust_domain {
                    return Err(Status::permission_denied(format!(
                        "{id} is outside trust domain {}",
                        self.trust_domain
                    )));
                }
                Ok(id)
            }
        }
    }

    fn sign(&self, csr_pem: &str, identity: &Identity, ttl_secs: i64) -> Result<String, Status> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Status::invalid_argument(format!("CSR: {e}")))?;
        let ttl = match ttl_secs {
            s if s <= 0 => DEFAULT_TTL,
            s => Duration::from_secs(s as u64),
        };
        if ttl > MAX_TTL {
            return Err(Status::invalid_argument(format!(
                "requested TTL {}s is greater than the max allowed TTL {}s",
                ttl.as_secs(),
                MAX_TTL.as_secs()
            )));
        }
        let now = SystemTime::now();
        let not_after = (now + ttl).min(self.root_not_after);
        let uri = identity.to_string().try_into().map_err(|e: rcgen::Error| Status::internal(e.to_string()))?;
        let p = &mut csr.params;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
        p.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = (now - CLOCK_SKEW).into();
        p.not_after = not_after.into();
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        let cert = csr.signed_by(&self.issuer).map_err(|e| Status::internal(format!("signing: {e}")))?;
        Ok(cert.pem())
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CertificateAuthority {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&request.get_ref().csr)
            .map_err(|e| Status::invalid_argument(format!("CSR: {e}")))?;
        let identity = self.caller(&request, &csr)?;
        let leaf = self.sign(&request.get_ref().csr, &identity, request.get_ref().validity_duration)?;
        tracing::info!(%identity, "certificate issued");
        let leaf = if leaf.ends_with('\n') { leaf } else { format!("{leaf}\n") };
        Ok(Response::new(IstioCertificateResponse { cert_chain: vec![leaf, self.root_pem.clone()] }))
    }
}

/// The `authorization: Bearer <token>` of a call.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim)
}

/// `token: spiffe://td/ns/NS/sa/SA` (or `token: NS/SA`) per line; `#` comments.
fn read_tokens(path: &Path, trust_domain: &str) -> Result<HashMap<String, Identity>, CaError> {
    let fail = |reason: String| CaError::Tokens { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (token, who) =
            line.split_once(':').ok_or_else(|| fail(format!("line {}: expected 'token: identity'", i + 1)))?;
        let who = who.trim();
        let identity = if who.starts_with("spiffe://") {
            who.parse().map_err(|e: crate::identity::IdentityError| fail(format!("line {}: {e}", i + 1)))?
        } else {
            let (ns, sa) = who
                .split_once('/')
                .ok_or_else(|| fail(format!("line {}: expected NAMESPACE/SERVICE_ACCOUNT", i + 1)))?;
            Identity {
                trust_domain: trust_domain.to_string(),
                namespace: ns.to_string(),
                service_account: sa.to_string(),
            }
        };
        out.insert(token.trim().to_string(), identity);
    }
    Ok(out)
}

fn write_private(path: &PathBuf, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)?.write_all(text.as_bytes())
}

use rustls::pki_types::pem::PemObject;
