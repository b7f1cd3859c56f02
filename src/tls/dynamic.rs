//! rustls hooks whose material can change under a live config: certificates and trust anchors
//! named by SDS are read from their [`Slot`] on every handshake, so a rotation reaches the next
//! handshake while established connections keep what they negotiated.
//!
//! Verification follows Envoy, not the web PKI: the peer's chain must lead to a trusted CA, and
//! its identity is checked by the context's SAN matchers (if any), never against the SNI or host
//! name (Istio's SNI is a cluster key such as `outbound_.9080_.v1_.reviews...`, and workload
//! certificates carry only a SPIFFE URI).
//!
//! Owns: certificate resolvers and verifiers. Must not parse config or fetch secrets.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme};

use crate::model::tls::SanMatcher;
use crate::secrets::{SecretValue, Slot};

/// The signature checks of a verifier, done by its crypto provider (field `$p`): every verifier
/// here checks chains its own way but handshake signatures the same way.
macro_rules! provider_signature_checks {
    ($p:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.$p.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.$p.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.$p.signature_verification_algorithms.supported_schemes()
        }
    };
}

/// Where a certificate comes from.
#[derive(Clone)]
pub enum CertSource {
    Fixed(Arc<CertifiedKey>),
    Sds(Arc<Slot>),
}

impl CertSource {
    pub fn current_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        match self {
            CertSource::Fixed(k) => Some(k.clone()),
            CertSource::Sds(slot) => match slot.current().as_deref() {
                Some(SecretValue::Certificate(c)) => Some(c.certified.clone()),
                // Not delivered yet, or the name holds a validation context: no certificate, so
                // the handshake fails (fail closed) until a certificate arrives.
                _ => None,
            },
        }
    }
}

impl std::fmt::Debug for CertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertSource::Fixed(_) => "CertSource::Fixed",
            CertSource::Sds(_) => "CertSource::Sds",
        })
    }
}

impl rustls::server::ResolvesServerCert for CertSource {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for CertSource {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Where trust anchors come from.
#[derive(Clone)]
pub enum RootsSource {
    Fixed(Arc<RootCertStore>),
    Sds(Arc<Slot>),
}

impl RootsSource {
    fn current(&self) -> Option<(u64, Arc<RootCertStore>)> {
        match self {
            RootsSource::Fixed(r) => Some((0, r.clone())),
            RootsSource::Sds(slot) => {
                let generation = slot.generation();
                match slot.current().as_deref() {
                    Some(SecretValue::Validation(v)) => Some((generation, v.roots.clone())),
                    _ => None,
                }
            }
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies client certificates (downstream mTLS) against the current roots. The webpki verifier
/// for a set of roots is built once per roots generation and cached.
pub struct ClientVerifier {
    roots: RootsSource,
    mandatory: bool,
    cache: ArcSwapOption<(u64, Arc<dyn ClientCertVerifier>)>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier").field("mandatory", &self.mandatory).finish()
    }
}

impl ClientVerifier {
    pub fn new(roots: RootsSource, mandatory: bool) -> Self {
        ClientVerifier { roots, mandatory, cache: ArcSwapOption::empty(), provider: provider() }
    }

    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, Error> {
        let (generation, roots) =
            self.roots.current().ok_or_else(|| Error::General("trusted CA (SDS) not available yet".into()))?;
        if let Some(cached) = self.cache.load_full().filter(|c| c.0 == generation) {
            return Ok(cached.1.clone());
        }
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, self.provider.clone());
        let builder = if self.mandatory { builder } else { builder.allow_unauthenticated() };
        let verifier = builder.build().map_err(|e| Error::General(e.to_string()))?;
        self.cache.store(Some(Arc::new((generation, verifier.clone()))));
        Ok(verifier)
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; peers (Envoy, Remora) send their one workload certificate anyway.
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner()?.verify_client_cert(end_entity, intermediates, now)
    }
    provider_signature_checks!(provider);
}

/// Verifies an upstream's certificate as Envoy does: chain to the current roots, then the SAN
/// matchers; the server name is not compared.
pub struct ServerVerifier {
    roots: RootsSource,
    san_matchers: Vec<SanMatcher>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerVerifier").field("san_matchers", &self.san_matchers.len()).finish()
    }
}

impl ServerVerifier {
    pub fn new(roots: RootsSource, san_matchers: Vec<SanMatcher>) -> Self {
        ServerVerifier { roots, san_matchers, provider: provider() }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let (_, roots) =
            self.roots.current().ok_or_else(|| Error::General("trusted CA (SDS) not available yet".into()))?;
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !super::verify_san(end_entity, &self.san_matchers) {
            return Err(Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
        }
        Ok(ServerCertVerified::assertion())
    }
    provider_signature_checks!(provider);
}

/// Envoy's behaviour for an upstream TLS context without a validation context: encrypt, but do
/// not authenticate the server.
#[derive(Debug)]
pub struct NoVerification(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }
    provider_signature_checks!(0);
}
