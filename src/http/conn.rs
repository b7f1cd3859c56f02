//! Serving one downstream connection with the HTTP connection manager: codec selection (h1, h2,
//! or auto-detected h2c prior knowledge), header limits, graceful drain, and per-request dispatch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::model::hcm::{Codec, HttpConnectionManager};
use crate::state::ProxyState;
use crate::telemetry::stats::{Counter, Gauge, GaugeGuard, Store};

/// What the data path knows about the downstream connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    /// The connection's destination: the original one when the listener restored it
    /// (`use_original_dst`), else the listener's own address.
    pub local: SocketAddr,
    /// `local` was restored from SO_ORIGINAL_DST (Envoy's `localAddressRestored()`): only then is
    /// it where an ORIGINAL_DST cluster sends the traffic; otherwise it is the listener itself.
    pub local_restored: bool,
    pub tls: bool,
    pub sni: Option<String>,
    /// The client's certificates, on mTLS connections.
    pub peer: Option<Arc<crate::tls::peer::TlsPeer>>,
}

/// Envoy's `http.<stat_prefix>.*` stats.
#[derive(Debug)]
pub struct HcmStats {
    pub rq_total: Arc<Counter>,
    pub rq_xx: [Arc<Counter>; 5],
    pub rq_active: Arc<Gauge>,
    pub cx_total: Arc<Counter>,
    pub cx_active: Arc<Gauge>,
    pub no_route: Arc<Counter>,
    pub no_cluster: Arc<Counter>,
    pub rq_direct_response: Arc<Counter>,
    pub rq_redirect: Arc<Counter>,
    pub rq_timeout: Arc<Counter>,
    pub rq_max_duration_reached: Arc<Counter>,
    pub cx_upgrades_total: Arc<Counter>,
}

impl HcmStats {
    pub fn new(store: &Store, prefix: &str) -> Self {
        let c = |s: &str| store.counter(&format!("http.{prefix}.{s}"));
        HcmStats {
            rq_total: c("downstream_rq_total"),
            rq_xx: [
                c("downstream_rq_1xx"),
                c("downstream_rq_2xx"),
                c("downstream_rq_3xx"),
                c("downstream_rq_4xx"),
                c("downstream_rq_5xx"),
            ],
            rq_active: store.gauge(&format!("http.{prefix}.downstream_rq_active")),
            cx_total: c("downstream_cx_total"),
            cx_active: store.gauge(&format!("http.{prefix}.downstream_cx_active")),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_direct_response: c("rq_direct_response"),
            rq_redirect: c("rq_redirect"),
            rq_timeout: c("downstream_rq_timeout"),
            rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
            cx_upgrades_total: c("downstream_cx_upgrades_total"),
        }
    }

    pub fn record_status(&self, status: u16) {
        if let Some(c) = self.rq_xx.get(usize::from(status / 100).wrapping_sub(1)) {
            c.inc();
        }
    }
}

/// An HTTP connection manager ready to serve: its config and resolved stat handles.
#[derive(Debug)]
pub struct HcmRuntime {
    pub config: Arc<HttpConnectionManager>,
    pub stats: HcmStats,
    pub fault: Option<super::fault::FaultFilter>,
    /// The CORS filter is in the chain.
    pub cors: bool,
    /// Istio's HTTP metadata exchange, if the chain has it.
    pub peer_metadata: Option<crate::model::hcm::PeerMetadataHeaders>,
}

impl HcmRuntime {
    pub fn new(config: Arc<HttpConnectionManager>, store: &Store) -> Arc<Self> {
        let stats = HcmStats::new(store, &config.stat_prefix);
        let fault = config.filters.iter().find_map(|f| match f {
            crate::model::hcm::HttpFilter::Fault(c) => {
                Some(super::fault::FaultFilter::new(c.clone(), store, &config.stat_prefix))
            }
            _ => None,
        });
        let cors = config.filters.iter().any(|f| matches!(f, crate::model::hcm::HttpFilter::Cors));
        let peer_metadata = config.filters.iter().find_map(|f| match f {
            crate::model::hcm::HttpFilter::PeerMetadata(p) => Some(*p),
            _ => None,
        });
        Arc::new(HcmRuntime { config, stats, fault, cors, peer_metadata })
    }
}

/// Serves HTTP on `io` until the peer closes, the connection idles out, or draining finishes.
pub async fn serve_connection<I>(io: I, hcm: Arc<HcmRuntime>, conn: Arc<ConnInfo>, state: Arc<ProxyState>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &hcm.config;
    hcm.stats.cx_total.inc();
    let _active = GaugeGuard::new(&hcm.stats.cx_active);
    let mut builder = Builder::new(TokioExecutor::new());
    let header_limit = (cfg.max_request_headers_kb as usize) * 1024;
    {
        let mut h1 = builder.http1();
        h1.timer(TokioTimer::new()).max_buf_size(header_limit.max(8192)).max_headers(cfg.max_headers_count as usize);
        // Always set: hyper's default (30 s, and its clock also runs while a keep-alive connection
        // waits for its next request) would close idle connections Envoy keeps; Envoy's
        // `request_headers_timeout` is off unless configured.
        h1.header_read_timeout(cfg.request_headers_timeout);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        // The HCM enforces the limit itself (Envoy resets such h2 streams); h2 only bounds memory.
        .max_header_list_size(u32::try_from(header_limit.saturating_add(64 * 1024)).unwrap_or(u32::MAX))
        .max_concurrent_streams(2_147_483_647u32)
        .enable_connect_protocol();
    let builder = match cfg.codec {
        Codec::Auto => builder,
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
    };
    let svc_state = state.clone();
    let svc_hcm = hcm.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let state = svc_state.clone();
        let hcm = svc_hcm.clone();
        let conn = conn.clone();
        async move { super::hcm::handle(req, hcm, conn, state).await }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut drain = state.draining();
    // When draining starts, responses at once carry `connection: close` (h1, see hcm.rs); only
    // after a grace period are connections shut down (GOAWAY for h2, closing idle h1). Closing an
    // "idle" h1 connection at once would race a request the client has already sent on it.
    let mut shutdown_at: Option<tokio::time::Instant> = None;
    loop {
        let shutdown_timer = async {
            match shutdown_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            res = connection.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "downstream connection ended with an error");
                }
                break;
            }
            changed = drain.changed(), if shutdown_at.is_none() => {
                if changed.is_ok() && *drain.borrow() {
                    shutdown_at = Some(tokio::time::Instant::now() + DRAIN_GRACE.min(state.drain_time));
                }
            }
            _ = shutdown_timer => {
                connection.as_mut().graceful_shutdown();
                shutdown_at = Some(tokio::time::Instant::now() + Duration::from_secs(86_400));
            }
        }
    }
}

/// How long connections keep serving (with `connection: close` on h1 responses) after draining
/// starts, before idle ones are closed and h2 peers get a GOAWAY.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
