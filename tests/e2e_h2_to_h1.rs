//! End to end: an HTTP/2 prior-knowledge (h2c) client talks through Remora to an HTTP/1.1-only
//! upstream. The upstream must see HTTP/1.1 with `Host` equal to the client's `:authority`; a
//! 100 KB POST body arrives intact; a 1 MB chunked response streams back intact over h2.

mod support;
#[path = "e2e/util.rs"]
mod util;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::json;
use support::free_port;
use util::{bootstrap, cluster, h2_request, http_listener, local, route, vhost, Proxy};

const AUTHORITY: &str = "app.example.com:8443";
const UPLOAD_LEN: usize = 100 * 1024;
const DOWNLOAD_CHUNK: usize = 64 * 1024;
const DOWNLOAD_CHUNKS: usize = 16; // 1 MiB

/// Deterministic, position-dependent bytes (so a dropped, duplicated or reordered chunk shows).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 251) as u8).wrapping_add(seed)).collect()
}

type Body = BoxBody<Bytes, Infallible>;

/// An HTTP/1.1-only server (hyper `http1`, no h2 at all):
/// * `POST /upload` answers JSON `{version, host, len, intact}` about the body it read;
/// * `GET /download` streams `DOWNLOAD_CHUNKS` × 64 KiB of `pattern(_, 7)`, chunked;
/// * anything else answers JSON `{version, host, method, path}`.
async fn start_h1_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(handle(req).await)
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

async fn handle(req: Request<Incoming>) -> Response<Body> {
    let version = format!("{:?}", req.version());
    let hosts: Vec<String> =
        req.headers().get_all("host").iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let json_resp = |v: serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
        r.headers_mut().insert("content-type", "application/json".parse().unwrap());
        r
    };
    match path.as_str() {
        "/upload" => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let intact = body.as_ref() == pattern(UPLOAD_LEN, 3).as_slice();
            json_resp(json!({"version": version, "host": hosts, "len": body.len(), "intact": intact}))
        }
        "/download" => {
            let all = Bytes::from(pattern(DOWNLOAD_CHUNK * DOWNLOAD_CHUNKS, 7));
            let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..DOWNLOAD_CHUNKS)
                .map(|i| Ok(Frame::data(all.slice(i * DOWNLOAD_CHUNK..(i + 1) * DOWNLOAD_CHUNK))))
                .collect();
            // No content-length: hyper sends it chunked, so the proxy must stream it.
            Response::new(BodyExt::boxed(StreamBody::new(stream::iter(chunks))))
        }
        _ => json_resp(json!({"version": version, "host": hosts, "method": method, "path": path})),
    }
}

async fn start() -> (Proxy, u16) {
    let upstream = start_h1_upstream().await;
    let (admin, port) = (free_port(), free_port());
    let config = bootstrap(
        admin,
        vec![http_listener("main", port, "ingress", vhost(json!([route("/", "h1only", json!({}))])))],
        vec![cluster("h1only", &[upstream.port()])],
    );
    (Proxy::start(&config, &[port]).await, port)
}

fn h2_req(method: &str, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{AUTHORITY}{path}"))
        .version(Version::HTTP_2)
        .body(Full::new(body))
        .unwrap()
}

#[tokio::test]
async fn h2c_client_reaches_h1_upstream_with_host_from_authority() {
    let (_proxy, port) = start().await;
    let r = h2_request(local(port), h2_req("GET", "/info?x=1", Bytes::new())).await.expect("h2 request");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.version, Version::HTTP_2, "the downstream side stays HTTP/2");
    let v = r.json();
    assert_eq!(v["version"], "HTTP/1.1", "upstream saw {v}");
    assert_eq!(v["host"], json!([AUTHORITY]), "exactly one Host, equal to :authority: {v}");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/info");
}

#[tokio::test]
async fn h2c_post_body_of_100_kb_arrives_intact_at_h1_upstream() {
    let (_proxy, port) = start().await;
    let body = Bytes::from(pattern(UPLOAD_LEN, 3));
    let r = h2_request(local(port), h2_req("POST", "/upload", body)).await.expect("h2 POST");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["len"], UPLOAD_LEN, "{v}");
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["host"], json!([AUTHORITY]));
}

#[tokio::test]
async fn h1_upstream_chunked_1_mb_response_streams_intact_over_h2() {
    let (_proxy, port) = start().await;
    let r = h2_request(local(port), h2_req("GET", "/download", Bytes::new())).await.expect("h2 GET");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version, Version::HTTP_2);
    assert!(r.headers.get("transfer-encoding").is_none(), "h1 hop-by-hop header leaked into h2: {:?}", r.headers);
    assert_eq!(r.body.len(), DOWNLOAD_CHUNK * DOWNLOAD_CHUNKS);
    assert!(r.body.as_ref() == pattern(DOWNLOAD_CHUNK * DOWNLOAD_CHUNKS, 7).as_slice(), "1 MiB body corrupted");
}

/// Several streams multiplexed on one h2 connection, each answered by the h1 upstream.
#[tokio::test]
async fn concurrent_h2_streams_on_one_connection() {
    let (_proxy, port) = start().await;
    let stream = tokio::net::TcpStream::connect(local(port)).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let resp = sender.send_request(h2_req("GET", &format!("/stream/{i}"), Bytes::new())).await.expect("send");
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(v["path"], format!("/stream/{i}"));
            assert_eq!(v["version"], "HTTP/1.1");
        }));
    }
    for t in tasks {
        t.await.expect("stream task");
    }
}
