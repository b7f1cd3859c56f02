//! Opens upstream connections: TCP with the cluster's connect timeout and TCP_NODELAY, then TLS
//! when the cluster has an `UpstreamTlsContext`; every open connection is counted in the cluster's
//! `upstream_cx_active` gauge until it closes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::model::tls::UpstreamTls;
use crate::telemetry::stats::{Counter, Gauge, GaugeGuard};

/// Per-cluster connection stats shared by the connector and the cluster state.
#[derive(Debug, Clone)]
pub struct ConnStats {
    pub cx_total: Arc<Counter>,
    pub cx_active: Arc<Gauge>,
    pub cx_connect_fail: Arc<Counter>,
    pub cx_connect_timeout: Arc<Counter>,
    /// `cluster.<name>.ssl.*`, for clusters with a TLS socket.
    pub ssl: Option<Arc<crate::tls::stats::SslStats>>,
}

#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(std::io::Error),
    Tls(std::io::Error),
    BadAddress,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connection timeout"),
            ConnectError::Io(e) => write!(f, "delayed connect error: {}", e.raw_os_error().unwrap_or(0)),
            ConnectError::Tls(e) => write!(f, "TLS_error: {e}"),
            ConnectError::BadAddress => f.write_str("invalid upstream address"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl ConnectError {
    /// Envoy's stream reset reason for this failure, as local replies print it.
    pub fn reset_reason(&self) -> &'static str {
        match self {
            ConnectError::Timeout => "connection timeout",
            ConnectError::Io(_) | ConnectError::BadAddress => "remote connection failure",
            ConnectError::Tls(_) => "remote connection failure, transport failure reason: TLS_error",
        }
    }
}

/// The TLS side of a cluster: a client config built once, plus the context for SNI choice.
#[derive(Clone)]
pub struct UpstreamTlsConfig {
    pub client: Arc<rustls::ClientConfig>,
    /// For proxied TCP on a cluster with Istio's metadata exchange filter: the same config
    /// offering the exchange protocol as it is (`client` stands `istio` in for it).
    pub exchange_client: Option<Arc<rustls::ClientConfig>>,
    pub context: Arc<UpstreamTls>,
}

impl UpstreamTlsConfig {
    /// A TLS socket whose material did not build: every handshake fails, so the cluster refuses
    /// traffic instead of sending it in plaintext.
    pub fn unusable(context: UpstreamTls) -> Self {
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
            .map(Arc::new);
        match client {
            Ok(client) => UpstreamTlsConfig { client, exchange_client: None, context: Arc::new(context) },
            // The ring provider supports the default versions; this arm cannot be reached.
            Err(_) => UpstreamTlsConfig {
                client: Arc::new(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                ),
                exchange_client: None,
                context: Arc::new(context),
            },
        }
    }
}

impl std::fmt::Debug for UpstreamTlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTlsConfig").field("sni", &self.context.sni).finish()
    }
}

/// A cluster's transport sockets: its own and one per `transport_socket_matches` entry, with the
/// entry each endpoint uses (replaced when endpoints change). Istio's auto-mTLS is this: endpoints
/// labelled `tlsMode: istio` get the mTLS socket, the rest plaintext.
#[derive(Debug, Default)]
pub struct UpstreamSockets {
    pub default: Option<UpstreamTlsConfig>,
    pub matches: Vec<Option<UpstreamTlsConfig>>,
    by_address: arc_swap::ArcSwap<std::collections::HashMap<SocketAddr, usize>>,
}

impl UpstreamSockets {
    pub fn new(default: Option<UpstreamTlsConfig>, matches: Vec<Option<UpstreamTlsConfig>>) -> Self {
        UpstreamSockets { default, matches, by_address: Default::default() }
    }

    /// The TLS config for connections to `addr` (`None`: plaintext).
    pub fn for_address(&self, addr: SocketAddr) -> Option<&UpstreamTlsConfig> {
        match self.by_address.load().get(&addr).copied() {
            Some(i) => self.matches.get(i).and_then(Option::as_ref),
            None => self.default.as_ref(),
        }
    }

    /// Which `matches` entry each endpoint address uses; others use `default`.
    pub fn set_endpoints(&self, by_address: std::collections::HashMap<SocketAddr, usize>) {
        self.by_address.store(Arc::new(by_address));
    }
}

/// ALPN protocols replacing a TLS socket's own for one connection (`istio.alpn`), and the key
/// that keeps such connections apart in the pools (0 is "no override").
#[derive(Debug, Clone, Copy)]
pub struct AlpnChoice<'a> {
    pub key: u8,
    pub protocols: &'a [String],
}

#[derive(Debug, Clone)]
pub struct Connector {
    pub connect_timeout: Duration,
    pub stats: ConnStats,
    pub sockets: Arc<UpstreamSockets>,
}

/// An upstream connection, plaintext or TLS.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An upstream connection that keeps `upstream_cx_active` up while open.
pub struct CountedStream {
    io: hyper_util::rt::TokioIo<UpstreamStream>,
    _active: GaugeGuard,
}

impl CountedStream {
    /// The tokio stream and the guard that keeps the connection counted, for L4 proxying.
    pub fn into_parts(self) -> (UpstreamStream, GaugeGuard) {
        (self.io.into_inner(), self._active)
    }

    /// The ALPN protocol the upstream chose, if TLS.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self.io.inner() {
            UpstreamStream::Tls(t) => t.get_ref().1.alpn_protocol(),
            UpstreamStream::Plain(_) => None,
        }
    }
}

impl Connection for CountedStream {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.alpn() == Some(b"h2") {
            c.negotiated_h2()
        } else {
            c
        }
    }
}

impl hyper::rt::Read for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for CountedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            UpstreamStream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            UpstreamStream::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for UpstreamStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl Connector {
    /// TCP (and TLS, if configured) to `addr`; `host` is the logical name for auto SNI.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        host: Option<&str>,
        alpn: Option<AlpnChoice<'_>>,
    ) -> Result<CountedStream, ConnectError> {
        self.connect_with(addr, host, |t| match alpn {
            // A per-connection copy: the override is per request protocol, the socket's config is
            // shared (certificates, verifier and session cache come along).
            Some(a) => {
                let mut c = (*t.client).clone();
                c.alpn_protocols = crate::tls::offered_alpn(a.protocols);
                Arc::new(c)
            }
            None => t.client.clone(),
        })
        .await
    }

    /// A connection for the TCP proxy: where the cluster speaks Istio's metadata exchange, TLS
    /// offers the exchange protocol.
    pub async fn connect_for_tcp_proxy(&self, addr: SocketAddr) -> Result<CountedStream, ConnectError> {
        self.connect_with(addr, None, |t| t.exchange_client.clone().unwrap_or_else(|| t.client.clone())).await
    }

    async fn connect_with(
        &self,
        addr: SocketAddr,
        host: Option<&str>,
        client_config: impl FnOnce(&UpstreamTlsConfig) -> Arc<rustls::ClientConfig>,
    ) -> Result<CountedStream, ConnectError> {
        let tcp = self.connect_tcp(addr).await?;
        let io = match self.sockets.for_address(addr) {
            None => UpstreamStream::Plain(tcp),
            Some(t) => {
                let name = crate::tls::server_name(&t.context, host);
                let client = client_config(t);
                let connector = tokio_rustls::TlsConnector::from(client);
                match tokio::time::timeout(self.connect_timeout, connector.connect(name, tcp)).await {
                    Ok(Ok(s)) => {
                        if let Some(ssl) = &self.stats.ssl {
                            ssl.handshake_done(true);
                        }
                        UpstreamStream::Tls(Box::new(s))
                    }
                    Ok(Err(e)) => {
                        if let Some(ssl) = &self.stats.ssl {
                            ssl.handshake_failed(&e);
                        }
                        self.stats.cx_connect_fail.inc();
                        return Err(ConnectError::Tls(e));
                    }
                    Err(_) => {
                        self.stats.cx_connect_fail.inc();
                        self.stats.cx_connect_timeout.inc();
                        return Err(ConnectError::Timeout);
                    }
                }
            }
        };
        Ok(CountedStream { io: hyper_util::rt::TokioIo::new(io), _active: GaugeGuard::new(&self.stats.cx_active) })
    }

    /// A plain TCP connection within the connect timeout.
    pub async fn connect_tcp(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        self.stats.cx_total.inc();
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => {
                self.stats.cx_connect_fail.inc();
                Err(ConnectError::Io(e))
            }
            Err(_) => {
                self.stats.cx_connect_fail.inc();
                self.stats.cx_connect_timeout.inc();
                Err(ConnectError::Timeout)
            }
        }
    }
}

/// hyper's pooled HTTP/1.1 client dials through this: the URI authority is the endpoint address.
impl tower::Service<http::Uri> for Connector {
    type Response = CountedStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr: SocketAddr =
                uri.authority().and_then(|a| a.as_str().parse().ok()).ok_or(ConnectError::BadAddress)?;
            this.connect(addr, None, None).await
        })
    }
}
