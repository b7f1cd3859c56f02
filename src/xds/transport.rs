//! The gRPC channel to the xDS server over the xDS cluster: TCP or a Unix-socket `pipe` address,
//! the cluster's connect timeout, optional TLS from the cluster's `UpstreamTlsContext` (ALPN h2),
//! HTTP/2 keepalive as pilot-agent uses it.
//!
//! Owns: opening the connection (a tower connector for tonic). Must not speak xDS.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint};

use super::XdsError;
use crate::model::cluster::EndpointAddress;
use crate::model::Cluster;

/// A byte stream to the xDS server (TCP or Unix, plain or TLS).
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type BoxIo = Box<dyn Io>;

/// Where and how to connect, taken from the xDS cluster.
#[derive(Clone)]
struct Target {
    address: EndpointAddress,
    connect_timeout: Duration,
    tls: Option<(Arc<rustls::ClientConfig>, rustls_pki_types::ServerName<'static>)>,
}

impl Target {
    fn from_cluster(c: &Cluster) -> Result<Target, XdsError> {
        let fail = |reason: String| XdsError::Cluster { cluster: c.name.clone(), reason };
        let address = c
            .load_assignment
            .localities
            .iter()
            .flat_map(|l| l.endpoints.iter())
            .map(|e| e.address.clone())
            .next()
            .ok_or_else(|| fail("the cluster has no endpoint".into()))?;
        let tls = match &c.tls {
            Some(t) => {
                let mut ctx = (**t).clone();
                if ctx.common.alpn.is_empty() {
                    ctx.common.alpn = vec!["h2".into()];
                }
                let cfg = crate::tls::client_config(&ctx).map_err(|e| fail(format!("transport_socket: {e}")))?;
                let host = match &address {
                    EndpointAddress::Dns { host, .. } => Some(host.as_str()),
                    _ => None,
                };
                Some((cfg, crate::tls::server_name(&ctx, host)))
            }
            None => None,
        };
        Ok(Target { address, connect_timeout: c.connect_timeout, tls })
    }

    async fn connect(self) -> std::io::Result<TokioIo<BoxIo>> {
        let timeout = self.connect_timeout;
        let fut = async {
            let plain: BoxIo = match &self.address {
                EndpointAddress::Socket(a) => {
                    let s = tokio::net::TcpStream::connect(a).await?;
                    let _ = s.set_nodelay(true);
                    Box::new(s)
                }
                EndpointAddress::Dns { host, port } => {
                    let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    let _ = s.set_nodelay(true);
                    Box::new(s)
                }
                EndpointAddress::Pipe(path) => connect_pipe(path).await?,
            };
            match &self.tls {
                Some((cfg, name)) => {
                    let tls = tokio_rustls::TlsConnector::from(cfg.clone()).connect(name.clone(), plain).await?;
                    Ok(Box::new(tls) as BoxIo)
                }
                None => Ok(plain),
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.map(TokioIo::new),
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout")),
        }
    }
}

#[cfg(unix)]
async fn connect_pipe(path: &str) -> std::io::Result<BoxIo> {
    // `@name` is Linux's abstract namespace, as Envoy spells it.
    #[cfg(target_os = "linux")]
    if let Some(abstract_name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?;
        let std = std::os::unix::net::UnixStream::connect_addr(&addr)?;
        std.set_nonblocking(true)?;
        return Ok(Box::new(tokio::net::UnixStream::from_std(std)?));
    }
    Ok(Box::new(tokio::net::UnixStream::connect(path).await?))
}

#[cfg(not(unix))]
async fn connect_pipe(_path: &str) -> std::io::Result<BoxIo> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "pipe addresses need a Unix platform"))
}

/// Opens an HTTP/2 channel to the xDS cluster's first endpoint.
pub async fn connect(cluster: &Cluster) -> Result<Channel, XdsError> {
    let target = Target::from_cluster(cluster)?;
    // The authority Envoy sends is the cluster name; fall back when it is not a valid authority.
    let uri = format!("http://{}", cluster.name);
    let endpoint = Endpoint::from_shared(uri)
        .or_else(|_| Endpoint::from_shared("http://xds-grpc".to_string()))?
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(1 << 20);
    let connector = tower::service_fn(move |_uri: http::Uri| target.clone().connect());
    Ok(endpoint.connect_with_connector(connector).await?)
}
