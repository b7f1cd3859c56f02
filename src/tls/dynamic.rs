//! rustls hooks whose material can change under a live config: certificates and trust anchors
//! named by SDS are read from their [`Slot`] on every handshake, so a rotation reaches the next
//! handshake while established connections keep what they negotiated.
//!
//! Verification follows Envoy, not the web PKI: the peer's chain must lead to a trusted CA, and
//! its identity is checked by the context's SAN matchers (if any), never against the SNI or host
//! name (Istio's SNI is a cluster key such as `outbound_.9080_.v1_.reviews...`, and workload
//! certificates carry only a SPIFFE URI).
//!
//! Session caches (server) and resumption stores (client) are emptied when that material changes,
//! so a resumed session never outlives the certificate it was established with.
//!
//! Owns: certificate resolvers, verifiers and session stores. Must not parse config or fetch secrets.

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

/// The SDS slots a context's certificate and trust anchors come from; their summed generation
/// changes whenever any of them is replaced (generations only grow).
#[derive(Clone, Default)]
pub struct Material(Vec<Arc<Slot>>);

impl Material {
    pub fn of(cert: Option<&CertSource>, roots: Option<&RootsSource>) -> Self {
        let mut slots = Vec::new();
        if let Some(CertSource::Sds(s)) = cert {
            slots.push(s.clone());
        }
        if let Some(RootsSource::Sds(s)) = roots {
            slots.push(s.clone());
        }
        Material(slots)
    }

    fn generation(&self) -> u64 {
        self.0.iter().fold(0u64, |sum, s| sum.wrapping_add(s.generation()))
    }
}

/// Session state that is thrown away whenever the context's certificate or trust anchors change,
/// as Envoy drops a TLS context's sessions (and session-ticket keys) when SDS rotates its secret.
/// Without this a resumed session would carry the identity of the certificate it was first
/// established with: after a rotation the client would keep presenting the old certificate (a
/// TLS 1.3 resumption sends none) and the server would keep accepting it, past its expiry.
struct Generational<T: ?Sized> {
    material: Material,
    current: arc_swap::ArcSwap<(u64, Arc<T>)>,
    fresh: fn() -> Arc<T>,
}

impl<T: ?Sized> Generational<T> {
    fn new(material: Material, fresh: fn() -> Arc<T>) -> Self {
        let generation = material.generation();
        Generational { material, current: arc_swap::ArcSwap::from_pointee((generation, fresh())), fresh }
    }

    fn get(&self) -> Arc<T> {
        let generation = self.material.generation();
        let current = self.current.load();
        if current.0 == generation {
            return current.1.clone();
        }
        // Two handshakes racing here each start an empty store; one of them is kept. Harmless:
        // at worst a session is not cached.
        let store = (self.fresh)();
        self.current.store(Arc::new((generation, store.clone())));
        store
    }
}

/// How many sessions each store keeps (rustls's default).
const SESSION_CACHE_SIZE: usize = 256;

/// A server's session cache (TLS 1.2 session IDs, TLS 1.3 stateful tickets), emptied on rotation.
pub struct ServerSessions(Generational<dyn rustls::server::StoresServerSessions>);

impl ServerSessions {
    pub fn new(material: Material) -> Self {
        ServerSessions(Generational::new(material, || {
            rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)
        }))
    }
}

impl std::fmt::Debug for ServerSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSessions")
    }
}

impl rustls::server::StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.get().put(key, value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get().get(key)
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get().take(key)
    }
    fn can_cache(&self) -> bool {
        true
    }
}

/// A client's resumption store (tickets and session IDs per server name), emptied on rotation.
pub struct ClientSessions(Generational<dyn rustls::client::ClientSessionStore>);

impl ClientSessions {
    pub fn new(material: Material) -> Self {
        ClientSessions(Generational::new(material, || {
            Arc::new(rustls::client::ClientSessionMemoryCache::new(SESSION_CACHE_SIZE))
        }))
    }
}

impl std::fmt::Debug for ClientSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSessions")
    }
}

impl rustls::client::ClientSessionStore for ClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.0.get().set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.0.get().kx_hint(server_name)
    }
    fn set_tls12_session(&self, server_name: ServerName<'static>, value: rustls::client::Tls12ClientSessionValue) {
        self.0.get().set_tls12_session(server_name, value)
    }
    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.0.get().tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.0.get().remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        self.0.get().insert_tls13_ticket(server_name, value)
    }
    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.0.get().take_tls13_ticket(server_name)
    }
}

#[cfg(test)]
mod tests {
    use rustls::client::ClientSessionStore;
    use rustls::server::StoresServerSessions;

    use super::*;
    use crate::model::tls::{SdsRef, SdsSource};
    use crate::secrets::ValidationSecret;

    fn replace(name: &str) {
        crate::secrets::store().set(
            name,
            SecretValue::Validation(ValidationSecret {
                roots: Arc::new(RootCertStore::empty()),
                validation: Default::default(),
            }),
        );
    }

    #[test]
    fn sessions_are_dropped_when_the_material_changes() {
        let slot = |name: &str| {
            crate::secrets::store().slot(&SdsRef { name: name.into(), source: SdsSource::Static }).expect("slot")
        };
        let server = ServerSessions::new(Material::of(Some(&CertSource::Sds(slot("sessions-cert"))), None));
        assert!(server.put(b"id".to_vec(), b"session".to_vec()));
        assert_eq!(server.get(b"id").as_deref(), Some(&b"session"[..]));
        replace("sessions-cert");
        assert_eq!(server.get(b"id"), None, "a rotated certificate drops the server's sessions");
        assert!(server.put(b"id".to_vec(), b"new".to_vec()));
        assert_eq!(server.get(b"id").as_deref(), Some(&b"new"[..]), "sessions after the rotation are kept");

        let client = ClientSessions::new(Material::of(None, Some(&RootsSource::Sds(slot("sessions-roots")))));
        let name = ServerName::try_from("upstream").expect("name");
        client.set_kx_hint(name.clone(), rustls::NamedGroup::X25519);
        assert_eq!(client.kx_hint(&name), Some(rustls::NamedGroup::X25519));
        replace("sessions-roots");
        assert_eq!(client.kx_hint(&name), None, "new trust anchors drop the client's sessions");

        // Fixed material never changes: nothing is dropped.
        let fixed =
            ServerSessions::new(Material::of(None, Some(&RootsSource::Fixed(Arc::new(RootCertStore::empty())))));
        assert!(fixed.put(b"id".to_vec(), b"kept".to_vec()));
        replace("sessions-cert");
        assert_eq!(fixed.get(b"id").as_deref(), Some(&b"kept"[..]));
    }
}
