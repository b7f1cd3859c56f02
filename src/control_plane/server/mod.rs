//! The gRPC xDS server: `envoy.service.discovery.v3.AggregatedDiscoveryService`, state of the
//! world (`sotw`) and incremental (`delta`), both fed from the snapshot `cache`; and the same
//! protocol for Secrets alone on `envoy.service.secret.v3.SecretDiscoveryService` (what Istio's
//! `sds-grpc` cluster points at: pilot-agent's SDS server).
//!
//! Owns: the tonic service and its sockets. Must not read config files or translate resources.

pub mod cache;
pub mod delta;
pub mod sotw;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::control_plane::resource::SECRET;
use cache::Cache;

/// One stream's protocol state machine: state of the world or delta.
pub(crate) trait Protocol: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// For logs.
    const NAME: &'static str;
    fn new(conn: u64) -> Self;
    /// Fills an empty `type_url` (the single-type SDS service sends none).
    fn default_type_url(req: &mut Self::Request, default: &'static str);
    /// The node a request names (the first request of a stream always does).
    fn request_node(req: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    fn on_request(&mut self, req: Self::Request, snap: &cache::Snapshot) -> Vec<Self::Response>;
    fn on_snapshot(&mut self, snap: &cache::Snapshot) -> Vec<Self::Response>;
    fn node(&self) -> &str;
}

/// Runs one stream until the client goes away: requests and snapshot changes in, responses out.
pub(crate) async fn run_stream<P: Protocol>(
    conn: u64,
    default_type: &'static str,
    mut snapshots: tokio::sync::watch::Receiver<Arc<cache::Snapshot>>,
    mut requests: Streaming<P::Request>,
    tx: mpsc::Sender<Result<P::Response, Status>>,
) {
    let mut stream = P::new(conn);
    let mut shared = snapshots.borrow_and_update().clone();
    // The proxy's node IP picks its own resources out of each snapshot.
    let mut node_ip: Option<String> = None;
    let mut snap = shared.clone();
    loop {
        let responses = tokio::select! {
            msg = requests.message() => match msg {
                Ok(Some(mut req)) => {
                    P::default_type_url(&mut req, default_type);
                    if node_ip.is_none() {
                        node_ip = P::request_node(&req).and_then(node_ip_of);
                        snap = shared.for_node(node_ip.as_deref());
                    }
                    stream.on_request(req, &snap)
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(conn, %status, "stream error");
                    break;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                shared = snapshots.borrow_and_update().clone();
                snap = shared.for_node(node_ip.as_deref());
                stream.on_snapshot(&snap)
            }
            _ = tx.closed() => break,
        };
        for r in responses {
            if tx.send(Ok(r)).await.is_err() {
                return;
            }
        }
    }
    tracing::info!(conn, node = %stream.node(), "xDS client disconnected ({})", P::NAME);
}

/// A proxy's workload IP: the first of node metadata `INSTANCE_IPS` (what pilot-agent sets), else
/// the IP in an Istio node id (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.<domain>`).
fn node_ip_of(node: &envoy_types::pb::envoy::config::core::v3::Node) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let from_metadata = node.metadata.as_ref().and_then(|m| match m.fields.get("INSTANCE_IPS")?.kind.as_ref()? {
        Kind::StringValue(s) => s.split(',').next().map(|ip| ip.trim().to_string()).filter(|ip| !ip.is_empty()),
        _ => None,
    });
    from_metadata.or_else(|| {
        let mut parts = node.id.split('~');
        let (_, ip) = (parts.next()?, parts.next()?);
        ip.parse::<std::net::IpAddr>().ok().map(|ip| ip.to_string())
    })
}

/// Responses queued per stream before the stream task waits for the client.
const STREAM_BUFFER: usize = 16;

/// The ADS service: one task per stream.
pub struct Ads {
    cache: Arc<Cache>,
    connections: AtomicU64,
}

impl Ads {
    pub fn new(cache: Arc<Cache>) -> Self {
        Ads { cache, connections: AtomicU64::new(0) }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let conn = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run_stream::<sotw::SotwStream>(conn, "", self.cache.subscribe(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let conn = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run_stream::<delta::DeltaStream>(conn, "", self.cache.subscribe(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for Ads {
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let conn = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run_stream::<delta::DeltaStream>(conn, SECRET, self.cache.subscribe(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let conn = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run_stream::<sotw::SotwStream>(conn, SECRET, self.cache.subscribe(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(&self, request: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
        let req = request.into_inner();
        let snap = self.cache.current();
        let resources = snap
            .get(SECRET)
            .map(|t| req.resource_names.iter().filter_map(|n| t.resources.get(n)).map(|r| r.any.clone()).collect())
            .unwrap_or_default();
        Ok(Response::new(DiscoveryResponse {
            version_info: snap.version(SECRET),
            resources,
            type_url: SECRET.to_string(),
            ..Default::default()
        }))
    }
}

/// Serves ADS (and SDS) on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    cache: Arc<Cache>,
    ca: Option<super::ca::CertificateAuthority>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let ads = Arc::new(Ads::new(cache));
    // With a CA token table, xDS callers authenticate too (istiod: XDS auth on 15012).
    let tokens = ca.as_ref().and_then(|c| c.tokens());
    let authenticate = move |req: tonic::Request<()>| -> Result<tonic::Request<()>, Status> {
        let Some(tokens) = &tokens else { return Ok(req) };
        match super::ca::bearer_token(req.metadata()) {
            Some(t) if tokens.contains_key(t) => Ok(req),
            _ => Err(Status::unauthenticated("authentication failure: missing or unknown bearer token")),
        }
    };
    let service = tonic::service::interceptor::InterceptedService::new(
        AggregatedDiscoveryServiceServer::from_arc(ads.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(usize::MAX),
        authenticate.clone(),
    );
    let sds = tonic::service::interceptor::InterceptedService::new(
        SecretDiscoveryServiceServer::from_arc(ads).max_decoding_message_size(64 << 20),
        authenticate,
    );
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(service)
        .add_service(sds)
        .add_optional_service(
            ca.map(crate::identity::pb::istio_certificate_service_server::IstioCertificateServiceServer::new),
        )
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), shutdown)
        .await
}
