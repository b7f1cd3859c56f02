//! Opens upstream connections for hyper's pooled client: TCP with the cluster's connect timeout,
//! TCP_NODELAY, and a gauge of open connections.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::telemetry::stats::{Counter, Gauge, GaugeGuard};

/// Per-cluster connection stats shared by the connector and the cluster state.
#[derive(Debug, Clone)]
pub struct ConnStats {
    pub cx_total: Arc<Counter>,
    pub cx_active: Arc<Gauge>,
    pub cx_connect_fail: Arc<Counter>,
    pub cx_connect_timeout: Arc<Counter>,
}

#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(std::io::Error),
    BadAddress,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connection timeout"),
            ConnectError::Io(e) => write!(f, "delayed connect error: {}", e.raw_os_error().unwrap_or(0)),
            ConnectError::BadAddress => f.write_str("invalid upstream address"),
        }
    }
}

impl std::error::Error for ConnectError {}

#[derive(Debug, Clone)]
pub struct Connector {
    pub connect_timeout: Duration,
    pub stats: ConnStats,
}

/// A TCP stream that keeps the cluster's `upstream_cx_active` gauge up while open.
pub struct CountedStream {
    io: TokioIo<TcpStream>,
    _active: GaugeGuard,
}

impl Connection for CountedStream {
    fn connected(&self) -> Connected {
        Connected::new()
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

impl Connector {
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

impl tower::Service<http::Uri> for Connector {
    type Response = CountedStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<CountedStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr: SocketAddr =
                uri.authority().and_then(|a| a.as_str().parse().ok()).ok_or(ConnectError::BadAddress)?;
            let stream = this.connect_tcp(addr).await?;
            Ok(CountedStream { io: TokioIo::new(stream), _active: GaugeGuard::new(&this.stats.cx_active) })
        })
    }
}
