//! End to end: WebSocket through Remora. With `upgrade_configs: [{upgrade_type: websocket}]` a
//! tokio-tungstenite client reaches a tokio-tungstenite upstream, text and binary messages flow
//! both ways, and the close handshake completes; without it the upgrade is refused with 403.

mod support;
#[path = "e2e/util.rs"]
mod util;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::free_port;
use tokio_tungstenite::tungstenite::{self, Message};
use util::{bootstrap, cluster, hcm, listener, route, vhost, Proxy};

/// A WebSocket server: greets with a text message, then answers text `t` with `echo:t` and binary
/// `b` with `b` reversed, and completes the close handshake.
async fn start_ws_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                if ws.send(Message::text("hello from upstream")).await.is_err() {
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) => Message::text(format!("echo:{}", t.as_str())),
                        Message::Binary(b) => Message::binary(b.iter().rev().copied().collect::<Vec<u8>>()),
                        Message::Close(_) => break, // tungstenite answers the close itself
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
                // Drive the close handshake to the end.
                while ws.next().await.is_some() {}
            });
        }
    });
    addr
}

/// Two listeners to the same upstream: `ws_port` allows websocket upgrades, `plain_port` does not.
async fn start() -> (Proxy, u16, u16) {
    let upstream = start_ws_upstream().await;
    let (admin, ws_port, plain_port) = (free_port(), free_port(), free_port());
    let routes = vhost(json!([route("/", "ws", json!({}))]));
    let config = bootstrap(
        admin,
        vec![
            listener(
                "ws",
                ws_port,
                hcm("ws", routes.clone(), json!({"upgrade_configs": [{"upgrade_type": "websocket"}]})),
                None,
            ),
            listener("plain", plain_port, hcm("plain", routes, json!({})), None),
        ],
        vec![cluster("ws", &[upstream.port()])],
    );
    (Proxy::start(&config, &[ws_port, plain_port]).await, ws_port, plain_port)
}

async fn next_message<S>(ws: &mut S) -> Message
where
    S: StreamExt<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("message within 5 s")
        .expect("stream open")
        .expect("valid frame")
}

#[tokio::test]
async fn websocket_messages_flow_both_ways_and_close_cleanly() {
    let (_proxy, ws_port, _) = start().await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{ws_port}/chat"))
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);

    assert_eq!(next_message(&mut ws).await, Message::text("hello from upstream"));
    for i in 0..5 {
        ws.send(Message::text(format!("text {i}"))).await.expect("send text");
        assert_eq!(next_message(&mut ws).await, Message::text(format!("echo:text {i}")));

        let payload: Vec<u8> = (0..(1000 + i * 5000)).map(|b| (b % 251) as u8).collect();
        ws.send(Message::binary(payload.clone())).await.expect("send binary");
        let reversed: Vec<u8> = payload.iter().rev().copied().collect();
        assert_eq!(next_message(&mut ws).await, Message::binary(reversed));
    }

    // Clean close: our Close is answered by the upstream's Close, then the stream ends.
    ws.close(None).await.expect("send close");
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut frames = Vec::new();
        while let Some(m) = ws.next().await {
            frames.push(m);
        }
        frames
    })
    .await
    .expect("close handshake within 5 s");
    assert!(rest.iter().all(|m| matches!(m, Ok(Message::Close(_)))), "only the peer's Close may follow ours: {rest:?}");
}

#[tokio::test]
async fn websocket_upgrade_without_upgrade_config_is_refused_with_403() {
    let (proxy, _, plain_port) = start().await;
    let err = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{plain_port}/chat"))
        .await
        .expect_err("the upgrade must be refused");
    match err {
        tungstenite::Error::Http(resp) => assert_eq!(resp.status(), http::StatusCode::FORBIDDEN),
        other => panic!("expected an HTTP 403 refusal, got {other:?}"),
    }
    // The refusal is a local reply: it is counted as a 4xx and nothing reached the upstream.
    assert_eq!(proxy.stat("http.plain.downstream_rq_4xx").await, Some(1));
    assert_eq!(proxy.stat("cluster.ws.upstream_rq_total").await.unwrap_or(0), 0);
}

/// Envoy counts a tunnelled upgrade like any request to its cluster (Envoy 1.40 after one
/// websocket session: `cluster.ws.upstream_rq_total: 1`, `cluster.ws.upstream_rq_101: 1`,
/// `http.ws.downstream_cx_upgrades_total: 1`).
#[tokio::test]
async fn websocket_upgrade_is_counted_in_cluster_and_hcm_stats() {
    let (proxy, ws_port, _) = start().await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{ws_port}/chat")).await.expect("websocket handshake");
    assert_eq!(next_message(&mut ws).await, Message::text("hello from upstream"));
    assert_eq!(proxy.stat("cluster.ws.upstream_rq_total").await, Some(1), "cluster.ws.upstream_rq_total");
    assert_eq!(proxy.stat("cluster.ws.upstream_rq_101").await, Some(1), "cluster.ws.upstream_rq_101");
    assert_eq!(proxy.stat("http.ws.downstream_cx_upgrades_total").await, Some(1), "downstream_cx_upgrades_total");
    ws.close(None).await.expect("close");
}
