//! End to end: the HCM's `stream_idle_timeout` resets a stream whose upstream body stalls, as
//! Envoy does, while a body that keeps flowing is unaffected.

mod support;
#[path = "e2e/util.rs"]
mod util;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::free_port;
use util::{bootstrap, cluster, hcm, listener, route, vhost, Proxy};

/// An upstream whose body sends "a", waits `gap`, then sends "b".
async fn stalling_upstream(gap: Duration) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
                    tokio::spawn(async move {
                        let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"a")))).await;
                        tokio::time::sleep(gap).await;
                        let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"b")))).await;
                    });
                    let body = StreamBody::new(tokio_stream_from(rx));
                    Ok::<_, Infallible>(hyper::Response::new(body))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    port
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn fetch(port: u16, path: &str) -> (u16, Result<Bytes, String>, Duration) {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "idle.test")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("response headers");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map(|c| c.to_bytes()).map_err(|e| e.to_string());
    (status, body, started.elapsed())
}

#[tokio::test]
async fn stalled_upstream_body_is_reset_after_the_idle_timeout() {
    let slow = stalling_upstream(Duration::from_secs(3)).await;
    let fast = stalling_upstream(Duration::from_millis(100)).await;
    let (admin, port) = (free_port(), free_port());
    let routes = json!([route("/fast", "fast", json!({})), route("/", "slow", json!({}))]);
    let manager = hcm("idle", vhost(routes), json!({"stream_idle_timeout": "0.5s"}));
    let config = bootstrap(
        admin,
        vec![listener("l", port, manager, None)],
        vec![cluster("slow", &[slow]), cluster("fast", &[fast])],
    );
    let proxy = Proxy::start(&config, &[port]).await;

    let (status, body, _) = fetch(port, "/fast").await;
    assert_eq!((status, body), (200, Ok(Bytes::from_static(b"ab"))), "a body with 100 ms gaps flows through");

    let (status, body, elapsed) = fetch(port, "/").await;
    assert_eq!(status, 200, "headers arrived before the stall");
    assert!(body.is_err(), "the stalled body must be cut, got {body:?}");
    assert!(elapsed < Duration::from_secs(2), "reset after ~0.5 s of silence, not after the 3 s stall ({elapsed:?})");
    drop(proxy);
}
