//! HTTP/2 upstream connections: one multiplexed connection per host, re-dialled when it closes.
//! Unlike hyper's pooled client, the request URI keeps the logical authority, so the upstream sees
//! the right `:authority` (Envoy sends the downstream host, not the endpoint address).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::connector::{AlpnChoice, ConnectError, Connector};
use super::manager::UpstreamBody;

#[derive(Debug)]
pub struct H2Pool {
    connector: Connector,
    conns: Mutex<HashMap<(SocketAddr, u8), SendRequest<UpstreamBody>>>,
}

impl H2Pool {
    pub fn new(connector: Connector) -> Self {
        H2Pool { connector, conns: Mutex::new(HashMap::new()) }
    }

    /// A ready sender to `addr`, dialling a new connection if there is none or it has closed.
    pub async fn sender(
        &self,
        addr: SocketAddr,
        host: Option<&str>,
        alpn: Option<AlpnChoice<'_>>,
    ) -> Result<SendRequest<UpstreamBody>, ConnectError> {
        let key = (addr, alpn.map_or(0, |a| a.key));
        if let Some(s) = self.lock().get(&key).filter(|s| !s.is_closed()).cloned() {
            return Ok(s);
        }
        let stream = self.connector.connect(addr, host, alpn).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(stream)
            .await
            .map_err(|e| ConnectError::Io(std::io::Error::other(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        self.lock().insert(key, sender.clone());
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, u8), SendRequest<UpstreamBody>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}
