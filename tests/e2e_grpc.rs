//! End to end: gRPC through Remora. A real tonic server (tonic-health's `grpc.health.v1.Health`)
//! sits behind an HTTP/2 cluster; a tonic client connects to Remora over h2c. Unary `Check`,
//! server-streaming `Watch` across status changes, error statuses and `grpc-status` trailers all
//! cross the proxy; a gRPC call to a path with no route gets Envoy's trailers-only local reply
//! with `grpc-status: 12` (UNIMPLEMENTED).

mod support;
#[path = "e2e/util.rs"]
mod util;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{Request, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Body as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use serde_json::json;
use support::free_port;
use tonic_health::pb::health_check_response::ServingStatus as PbStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use util::{bootstrap, h2_cluster, h2_request, http_listener, local, route, Proxy};

const SERVICE: &str = "e2e.Greeter";

struct Setup {
    proxy: Proxy,
    port: u16,
    reporter: HealthReporter,
    _server: tokio::task::JoinHandle<()>,
}

async fn start_grpc_server() -> (SocketAddr, HealthReporter, tokio::task::JoinHandle<()>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status(SERVICE, ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC server");
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .expect("gRPC server");
    });
    (addr, reporter, server)
}

/// Only `/grpc.health.v1.Health/` is routed (to the h2 cluster `grpc`).
async fn setup() -> Setup {
    let (addr, reporter, server) = start_grpc_server().await;
    let (admin, port) = (free_port(), free_port());
    let vhosts = json!([{
        "name": "grpc",
        "domains": ["*"],
        "routes": [route("/grpc.health.v1.Health/", "grpc", json!({"timeout": "0s"}))]
    }]);
    let config = bootstrap(
        admin,
        vec![http_listener("main", port, "grpc_ingress", vhosts)],
        vec![h2_cluster("grpc", &[addr.port()])],
    );
    Setup { proxy: Proxy::start(&config, &[port]).await, port, reporter, _server: server }
}

async fn client(port: u16) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to the proxy over h2c");
    HealthClient::new(channel)
}

async fn next(stream: &mut tonic::Streaming<HealthCheckResponse>) -> HealthCheckResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a Watch message within 5 s")
        .expect("stream healthy")
        .expect("stream still open")
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest { service: service.to_string() }
}

#[tokio::test]
async fn unary_check_through_proxy() {
    let s = setup().await;
    let mut c = client(s.port).await;
    let resp = c.check(check(SERVICE)).await.expect("Check through the proxy");
    assert_eq!(resp.get_ref().status(), PbStatus::Serving);

    s.reporter.set_service_status(SERVICE, ServingStatus::NotServing).await;
    let resp = c.check(check(SERVICE)).await.expect("second Check on the same channel");
    assert_eq!(resp.get_ref().status(), PbStatus::NotServing);

    // An error status from the server (trailers-only response) reaches the client unchanged.
    let err = c.check(check("no.such.Service")).await.expect_err("unknown service");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    assert_eq!(s.proxy.stat("cluster.grpc.upstream_rq_total").await, Some(3));
}

#[tokio::test]
async fn server_streaming_watch_sees_status_changes() {
    let s = setup().await;
    let mut c = client(s.port).await;
    let mut stream = c.watch(check(SERVICE)).await.expect("Watch through the proxy").into_inner();
    assert_eq!(next(&mut stream).await.status(), PbStatus::Serving, "initial status");

    s.reporter.set_service_status(SERVICE, ServingStatus::NotServing).await;
    assert_eq!(next(&mut stream).await.status(), PbStatus::NotServing, "after the first change");

    s.reporter.set_service_status(SERVICE, ServingStatus::Serving).await;
    assert_eq!(next(&mut stream).await.status(), PbStatus::Serving, "after the second change");
}

/// A length-prefixed gRPC message (uncompressed).
fn grpc_frame(msg: &impl prost::Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(0);
    b.put_u32(body.len() as u32);
    b.put_slice(&body);
    b.freeze()
}

fn grpc_request(path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(format!("http://grpc.e2e{path}"))
        .version(Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .unwrap()
}

#[tokio::test]
async fn unary_response_carries_grpc_status_in_trailers() {
    let s = setup().await;
    let r = h2_request(local(s.port), grpc_request("/grpc.health.v1.Health/Check", grpc_frame(&check(SERVICE))))
        .await
        .expect("raw h2 gRPC call");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/grpc"));
    assert!(r.headers.get("grpc-status").is_none(), "grpc-status belongs in the trailers: {:?}", r.headers);
    let trailers = r.trailers.as_ref().expect("response trailers");
    assert_eq!(trailers.get("grpc-status").and_then(|v| v.to_str().ok()), Some("0"), "trailers: {trailers:?}");
    // One length-prefixed HealthCheckResponse{status: SERVING}.
    assert!(r.body.len() >= 5 && r.body[0] == 0, "body: {:?}", r.body);
    let len = u32::from_be_bytes([r.body[1], r.body[2], r.body[3], r.body[4]]) as usize;
    assert_eq!(r.body.len(), 5 + len);
    let msg = HealthCheckResponse::decode(&r.body[5..]).expect("HealthCheckResponse");
    assert_eq!(msg.status(), PbStatus::Serving);
}

#[tokio::test]
async fn unrouted_grpc_call_gets_trailers_only_unimplemented() {
    let s = setup().await;
    let stream = tokio::net::TcpStream::connect(local(s.port)).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2");
    tokio::spawn(conn);
    let resp =
        sender.send_request(grpc_request("/e2e.Nowhere/Method", grpc_frame(&check(SERVICE)))).await.expect("response");
    // Trailers-only: HTTP 200, grpc-status in the (only) HEADERS frame, which ends the stream.
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()), Some("12"), "{:?}", resp.headers());
    assert!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc")),
        "{:?}",
        resp.headers()
    );
    assert!(resp.body().is_end_stream(), "a trailers-only response has no DATA or trailer frames");
    assert_eq!(s.proxy.stat("http.grpc_ingress.no_route").await, Some(1));

    // The same through a tonic client: UNIMPLEMENTED.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", s.port))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let err = grpc
        .unary::<HealthCheckRequest, HealthCheckResponse, _>(
            tonic::Request::new(check(SERVICE)),
            http::uri::PathAndQuery::from_static("/e2e.Nowhere/Method"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("no route");
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
}
