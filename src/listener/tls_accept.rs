//! Accepting a downstream TLS connection with BoringSSL's (and so Envoy's) ALPN behaviour: when
//! the client offers protocols and none is in the context's `alpn_protocols`, the handshake goes
//! on without ALPN instead of failing. rustls refuses such a handshake, which would break Istio
//! peers (an Envoy sidecar offers `istio-peer-exchange, istio` on TCP clusters to ports whose HTTP
//! context lists `h2, http/1.1`), so the ClientHello is read first and a copy of the config without
//! ALPN serves those clients.
//!
//! Owns: that choice. Must not verify peers or count stats.

use std::sync::Arc;

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub struct DownstreamTls {
    config: Arc<ServerConfig>,
    /// The same config with no ALPN, for clients that share no protocol with it.
    without_alpn: Arc<ServerConfig>,
}

impl DownstreamTls {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        let mut plain = (*config).clone();
        plain.alpn_protocols.clear();
        DownstreamTls { config, without_alpn: Arc::new(plain) }
    }

    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        let hello = start.client_hello();
        let overlap = match hello.alpn() {
            None => true,
            Some(mut offered) => {
                self.config.alpn_protocols.is_empty()
                    || offered.any(|p| self.config.alpn_protocols.iter().any(|o| o == p))
            }
        };
        let config = if overlap { self.config.clone() } else { self.without_alpn.clone() };
        start.into_stream(config).await
    }
}
