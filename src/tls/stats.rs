//! Envoy's TLS stats of a listener or cluster scope (`<scope>.ssl.*`), and how a failed
//! handshake is charged to them: every failure is a `connection_error`; a missing client
//! certificate, a certificate that does not verify (unknown CA, expired, bad signature) and a
//! SAN that does not match are also counted on their own, as Envoy does.

use std::sync::Arc;

use rustls::CertificateError;

use crate::telemetry::stats::{Counter, Store};

#[derive(Debug)]
pub struct SslStats {
    pub handshake: Arc<Counter>,
    pub connection_error: Arc<Counter>,
    pub fail_verify_error: Arc<Counter>,
    pub fail_verify_no_cert: Arc<Counter>,
    pub fail_verify_san: Arc<Counter>,
    pub no_certificate: Arc<Counter>,
}

impl SslStats {
    /// Stats named `<scope>.ssl.*` (`listener.127.0.0.1_15006`, `cluster.outbound|80||a`).
    pub fn new(store: &Store, scope: &str) -> Self {
        let c = |name: &str| store.counter(&format!("{scope}.ssl.{name}"));
        SslStats {
            handshake: c("handshake"),
            connection_error: c("connection_error"),
            fail_verify_error: c("fail_verify_error"),
            fail_verify_no_cert: c("fail_verify_no_cert"),
            fail_verify_san: c("fail_verify_san"),
            no_certificate: c("no_certificate"),
        }
    }

    /// A completed handshake; `peer_cert` whether the peer presented a certificate.
    pub fn handshake_done(&self, peer_cert: bool) {
        self.handshake.inc();
        if !peer_cert {
            self.no_certificate.inc();
        }
    }

    /// A handshake that failed with `e` (the I/O error tokio-rustls returns, wrapping rustls's).
    pub fn handshake_failed(&self, e: &std::io::Error) {
        self.connection_error.inc();
        match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::NoCertificatesPresented) => self.fail_verify_no_cert.inc(),
            // Remora's verifiers report a SAN mismatch this way (see `tls::dynamic`).
            Some(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)) => {
                self.fail_verify_san.inc()
            }
            Some(rustls::Error::InvalidCertificate(_)) => self.fail_verify_error.inc(),
            _ => {}
        }
    }
}
