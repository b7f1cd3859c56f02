//! HTTP/1.1 upstream connections: per-host stacks of idle keep-alive connections. A request takes
//! the most recently used idle connection (or dials one); the connection goes back to the stack
//! when its response body has been read to the end, unless it is closed, has served
//! `max_requests_per_connection`, or idled past the cluster's `idle_timeout`.
//!
//! This is what hyper's pooled client does, minus per-request URI parsing and pool-key hashing,
//! plus Envoy's per-connection request limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use super::connector::{AlpnChoice, Connector};
use super::manager::{SendError, UpstreamBody};

#[derive(Debug)]
struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
    served: u32,
}

/// Connections are pooled per endpoint and per ALPN override (a connection negotiated for one
/// override is not reused for another).
type PoolKey = (SocketAddr, u8);

#[derive(Debug)]
pub struct H1Pool {
    connector: Connector,
    idle_timeout: Duration,
    max_requests: Option<u32>,
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
}

impl H1Pool {
    pub fn new(connector: Connector, idle_timeout: Duration, max_requests: Option<u32>) -> Arc<Self> {
        Arc::new(H1Pool { connector, idle_timeout, max_requests, idle: Mutex::new(HashMap::new()) })
    }

    fn take_idle(&self, key: PoolKey) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let stack = idle.get_mut(&key)?;
        while let Some(c) = stack.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < self.idle_timeout {
                return Some(c);
            }
        }
        None
    }

    fn put_back(&self, key: PoolKey, sender: SendRequest<UpstreamBody>, served: u32) {
        if sender.is_closed() || self.max_requests.is_some_and(|m| served >= m) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.entry(key).or_default().push(Idle { sender, since: Instant::now(), served });
    }

    async fn dial(
        &self,
        addr: SocketAddr,
        alpn: Option<AlpnChoice<'_>>,
    ) -> Result<SendRequest<UpstreamBody>, SendError> {
        let stream =
            self.connector.connect(addr, None, alpn).await.map_err(|e| SendError::Connect(e.reset_reason()))?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(stream)
            .await
            .map_err(|_| SendError::Connect("remote connection failure"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends `req` (origin-form URI, `Host` header set) to `addr`.
    pub async fn send(
        self: &Arc<Self>,
        req: http::Request<UpstreamBody>,
        addr: SocketAddr,
        alpn: Option<AlpnChoice<'_>>,
    ) -> Result<http::Response<PooledBody>, SendError> {
        let key = (addr, alpn.map_or(0, |a| a.key));
        // A pooled connection may still be finishing its previous response; wait for it to be
        // ready rather than dropping a good connection, and dial if it turns out dead.
        let reused = match self.take_idle(key) {
            Some(mut idle) => idle.sender.ready().await.is_ok().then_some((idle.sender, idle.served)),
            None => None,
        };
        let (mut sender, served) = match reused {
            Some(x) => x,
            None => (self.dial(addr, alpn).await?, 0),
        };
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            // Canceled: the connection closed before the request was written (a keep-alive race).
            Err(e) if e.is_canceled() => return Err(SendError::Refused),
            Err(_) => return Err(SendError::Reset),
        };
        let keep_alive =
            !resp.headers().get(http::header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let (parts, body) = resp.into_parts();
        let mut slot = keep_alive.then(|| ReturnSlot { pool: self.clone(), key, sender, served: served + 1 });
        if http_body::Body::is_end_stream(&body) {
            // No body will be polled (204, HEAD, content-length 0): the connection is free now.
            if let Some(s) = slot.take() {
                self.put_back(s.key, s.sender, s.served);
            }
        }
        Ok(http::Response::from_parts(parts, PooledBody { inner: body, slot }))
    }
}

struct ReturnSlot {
    pool: Arc<H1Pool>,
    key: PoolKey,
    sender: SendRequest<UpstreamBody>,
    served: u32,
}

pin_project_lite::pin_project! {
    /// An upstream response body whose connection returns to the pool once the body ends.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        slot: Option<ReturnSlot>,
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let done = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => false,
        };
        if done {
            if let Some(slot) = this.slot.take() {
                slot.pool.put_back(slot.key, slot.sender, slot.served);
            }
        }
        if let Poll::Ready(Some(Err(_))) = &polled {
            // A broken body means a broken connection: never reuse it.
            this.slot.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// The body of an upstream response, from either pool.
    #[project = UpstreamResponseBodyProj]
    pub enum UpstreamResponseBody {
        H1 { #[pin] body: PooledBody },
        H2 { #[pin] body: Incoming },
    }
}

impl http_body::Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            UpstreamResponseBodyProj::H1 { body } => body.poll_frame(cx),
            UpstreamResponseBodyProj::H2 { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamResponseBody::H1 { body } => body.is_end_stream(),
            UpstreamResponseBody::H2 { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamResponseBody::H1 { body } => body.size_hint(),
            UpstreamResponseBody::H2 { body } => body.size_hint(),
        }
    }
}
