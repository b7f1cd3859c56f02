//! PeerAuthentication through the local control plane, end to end: `remora control-plane` with
//! its CA serves two Remora sidecars over ADS. The `sleep` sidecar gets the outbound listeners;
//! the `httpbin` sidecar (its node names the WorkloadEntry's address, 127.0.0.2) also gets the
//! inbound listeners generated for that workload only, whose chains follow the PeerAuthentication
//! in force. Certificates come from the control plane's CA through each sidecar's identity
//! provider.
//!
//! Under STRICT: HTTP and TCP through the mesh work over mutual TLS (the application sees the
//! caller's SPIFFE ID in `x-forwarded-client-cert`; TCP carries Istio's metadata exchange), and a
//! plaintext connection to the workload is refused (`no_filter_chain_match`). Changing the file to
//! PERMISSIVE while everything runs lets plaintext in, and mutual TLS keeps working.

mod support;
#[path = "xds/common.rs"]
mod xds_common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::{free_port, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xds_common::{write_atomic, ControlPlane, Remora};

const WORKLOAD_IP: &str = "127.0.0.2";

fn registry(http_app: u16, tcp_app: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 8000, name: http, targetPort: {http_app}}}
  - {{number: 9000, name: tcp-echo, targetPort: {tcp_app}}}
  workloadSelector: {{labels: {{app: httpbin}}}}
  subjectAltNames: ["spiffe://cluster.local/ns/default/sa/httpbin"]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin-1, namespace: default}}
spec:
  address: {WORKLOAD_IP}
  labels: {{app: httpbin, security.istio.io/tlsMode: istio}}
  serviceAccount: httpbin
"#
    )
}

fn peer_authentication(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: default}}\nspec:\n  mtls: {{mode: {mode}}}\n"
    )
}

fn sidecar_args(cp: &ControlPlane, dir: &Path, sa: &str, ip: &str) -> Vec<String> {
    let token = dir.join(format!("{sa}.jwt"));
    std::fs::write(&token, format!("{sa}-token")).expect("token");
    let mut args = vec!["--service-node".to_string(), format!("sidecar~{ip}~{sa}-1.default~default.svc.cluster.local")];
    args.extend(xds_common::ca_args(cp, &token, sa, "24h"));
    args
}

/// One HTTP/1.1 GET through `addr`: status and the XFCC the application saw, or why it failed.
async fn get(addr: (&str, u16)) -> Result<(u16, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "httpbin.default.svc.cluster.local")
        .body(Full::<Bytes>::default())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .map_err(|_| "no response".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Ok((status, v["headers"]["x-forwarded-client-cert"][0].as_str().unwrap_or("").to_string()))
}

async fn until<T>(what: &str, logs: impl Fn() -> String, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_and_permissive_through_the_control_plane() {
    let dir = support::TempDir::new("remora-peer-authn").expect("dir");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "sleep-token: default/sleep\nhttpbin-token: default/httpbin\n").expect("tokens");

    let http_app = Upstream::start("httpbin").await.expect("app");
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("echo");
    let tcp_app = echo.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    write_atomic(&config, "registry.yaml", &registry(http_app.port(), tcp_app));
    write_atomic(&config, "peer-authentication.yaml", &peer_authentication("STRICT"));

    let (out_http, out_tcp) = (free_port(), free_port());
    let cp = ControlPlane::start(
        &config,
        ([127, 0, 0, 1], 0).into(),
        &[
            "--ca-dir".into(),
            dir.path().join("ca").display().to_string(),
            "--ca-tokens".into(),
            tokens.display().to_string(),
            "--listener-address".into(),
            "127.0.0.1".into(),
            "--listener-port".into(),
            format!("8000={out_http}"),
            "--listener-port".into(),
            format!("9000={out_tcp}"),
            "--metadata-exchange".into(),
        ],
    );
    // The client sidecar first: it binds the outbound listeners (the server sidecar is served the
    // same ones and cannot bind them again on this one loopback, which it logs and survives).
    let args = sidecar_args(&cp, dir.path(), "sleep", "127.0.0.3");
    let sleep = Remora::start(cp.addr, "DELTA_GRPC", &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    sleep.wait_live(Duration::from_secs(20)).await;
    let args = sidecar_args(&cp, dir.path(), "httpbin", WORKLOAD_IP);
    let httpbin = Remora::start(cp.addr, "DELTA_GRPC", &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    httpbin.wait_live(Duration::from_secs(20)).await;
    let logs = || format!("sleep:\n{}\nhttpbin:\n{}\ncontrol plane:\n{}", sleep.logs(), httpbin.logs(), cp.logs());

    // STRICT: through the mesh over mutual TLS, with the caller's identity.
    let xfcc = until("no request through the mesh", logs, async || match get(("127.0.0.1", out_http)).await {
        Ok((200, xfcc)) => Some(xfcc),
        _ => None,
    })
    .await;
    assert!(xfcc.contains("By=spiffe://cluster.local/ns/default/sa/httpbin;"), "{xfcc}");
    assert!(xfcc.ends_with("URI=spiffe://cluster.local/ns/default/sa/sleep"), "{xfcc}");
    // TCP over mutual TLS with Istio's metadata exchange between the two sidecars.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", out_tcp)).await.expect("connect");
    s.write_all(b"ping over mTLS").await.expect("write");
    let mut back = [0u8; 14];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await.expect("echo").expect("read");
    assert_eq!(&back, b"ping over mTLS");
    assert!(httpbin.stat("metadata_exchange.alpn_protocol_found").await >= 1, "{}", logs());
    // Plaintext straight to the workload is refused.
    let plaintext = get((WORKLOAD_IP, http_app.port())).await;
    assert!(plaintext.is_err(), "STRICT must refuse plaintext: {plaintext:?}");
    let no_chain = format!("listener.{WORKLOAD_IP}_{}.no_filter_chain_match", http_app.port());
    assert!(httpbin.stat(&no_chain).await >= 1, "{no_chain}\n{}", logs());

    // PERMISSIVE, applied live: plaintext gets in (no client certificate, so no XFCC), and the
    // mesh still speaks mutual TLS.
    write_atomic(&config, "peer-authentication.yaml", &peer_authentication("PERMISSIVE"));
    let xfcc = until("plaintext not accepted under PERMISSIVE", logs, async || {
        match get((WORKLOAD_IP, http_app.port())).await {
            Ok((200, xfcc)) => Some(xfcc),
            _ => None,
        }
    })
    .await;
    assert_eq!(xfcc, "", "a plaintext caller has no identity");
    let (status, xfcc) = get(("127.0.0.1", out_http)).await.expect("mesh request under PERMISSIVE");
    assert_eq!(status, 200);
    assert!(xfcc.ends_with("URI=spiffe://cluster.local/ns/default/sa/sleep"), "{xfcc}");
    // The workload's inbound configuration went to its own proxy only.
    assert_eq!(sleep.stat(&format!("listener.{WORKLOAD_IP}_{}.downstream_cx_total", http_app.port())).await, 0);
}
