//! Helpers for the end-to-end tests (`tests/e2e_*.rs`): each test builds an Envoy v3 bootstrap
//! (as JSON, which Envoy and Remora both read) with real ports, runs the real `remora` binary on it
//! and drives it over real sockets on 127.0.0.1.
//!
//! Use from a test file as
//!
//! ```ignore
//! mod support;
//! #[path = "e2e/util.rs"]
//! mod util;
//! ```
//!
//! What is here (and not in `tests/support/`, which other helpers own):
//! * [`Proxy`] — a running `remora` (or, with `REMORA_BIN`, any Envoy-compatible binary, which is
//!   how these tests are checked against real Envoy) started on a JSON bootstrap; waits for the
//!   listener ports and admin `/ready` = `200 LIVE`; kills the process on drop; admin helpers.
//! * bootstrap builders: [`bootstrap`], [`http_listener`], [`hcm`], [`cluster`], [`h2_cluster`],
//!   [`route`], [`vhost`].
//! * one-shot HTTP/1.1 and HTTP/2 (prior knowledge) requests: [`h1_request`], [`h2_request`],
//!   returning status, headers, body and trailers ([`Resp`]).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

use crate::support::{self, ChildGuard, TempDir};

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------------------------
// bootstrap builders (Envoy v3 JSON)
// ---------------------------------------------------------------------------------------------

pub fn socket_address(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

/// A static bootstrap with an admin listener on `admin_port`.
pub fn bootstrap(admin_port: u16, listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "node": {"id": "e2e-node", "cluster": "e2e"},
        "admin": {"address": socket_address(admin_port)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// The router filter, last in every HTTP filter chain.
pub fn router_filter() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    })
}

/// An `envoy.filters.network.http_connection_manager` network filter with an inline route config
/// holding `virtual_hosts`; `extra` fields (e.g. `upgrade_configs`) are merged into the HCM.
pub fn hcm(stat_prefix: &str, virtual_hosts: Value, extra: Value) -> Value {
    let mut typed = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": {"name": "local_route", "virtual_hosts": virtual_hosts},
        "http_filters": [router_filter()],
    });
    if let (Some(t), Value::Object(extra)) = (typed.as_object_mut(), extra) {
        t.extend(extra);
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": typed})
}

/// A listener on 127.0.0.1:`port` with one filter chain: `network_filter`, and an optional
/// `transport_socket` (TLS).
pub fn listener(name: &str, port: u16, network_filter: Value, transport_socket: Option<Value>) -> Value {
    let mut chain = json!({"filters": [network_filter]});
    if let Some(ts) = transport_socket {
        chain["transport_socket"] = ts;
    }
    json!({"name": name, "address": socket_address(port), "filter_chains": [chain]})
}

/// A plaintext HTTP listener (h1 and h2c) routing with `virtual_hosts`.
pub fn http_listener(name: &str, port: u16, stat_prefix: &str, virtual_hosts: Value) -> Value {
    listener(name, port, hcm(stat_prefix, virtual_hosts, json!({})), None)
}

/// istiod's `SdsSecretConfig` for the agent's SDS server (`sds-grpc`: `default`, `ROOTCA`).
pub fn istio_sds(name: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "api_config_source": {
                "api_type": "GRPC",
                "set_node_on_first_message_only": true,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "sds-grpc"}}]
            },
            "initial_fetch_timeout": "0s",
            "resource_api_version": "V3"
        }
    })
}

/// The `istio.alpn` HTTP filter exactly as istiod writes it on outbound connection managers.
pub fn istio_alpn_filter() -> Value {
    json!({
        "name": "istio.alpn",
        "typed_config": {
            "@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
            "alpn_override": [
                {"upstream_protocol": "HTTP10", "alpn_override": ["istio-http/1.0", "istio", "http/1.0"]},
                {"upstream_protocol": "HTTP11", "alpn_override": ["istio-http/1.1", "istio", "http/1.1"]},
                {"upstream_protocol": "HTTP2", "alpn_override": ["istio-h2", "istio", "h2"]}
            ]
        }
    })
}

/// A virtual host matching every domain.
pub fn vhost(routes: Value) -> Value {
    json!([{"name": "all", "domains": ["*"], "routes": routes}])
}

/// A prefix route to `cluster` with extra route-action fields (`timeout`, `retry_policy`, ...).
pub fn route(prefix: &str, cluster: &str, extra_action: Value) -> Value {
    let mut action = json!({"cluster": cluster});
    if let (Some(a), Value::Object(extra)) = (action.as_object_mut(), extra_action) {
        a.extend(extra);
    }
    json!({"match": {"prefix": prefix}, "route": action})
}

/// A STATIC round-robin cluster over 127.0.0.1 ports.
pub fn cluster(name: &str, ports: &[u16]) -> Value {
    let endpoints: Vec<Value> = ports.iter().map(|p| json!({"endpoint": {"address": socket_address(*p)}})).collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    })
}

/// [`cluster`] speaking HTTP/2 (h2c prior knowledge) to its endpoints.
pub fn h2_cluster(name: &str, ports: &[u16]) -> Value {
    let mut c = cluster(name, ports);
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }
    });
    c
}

// ---------------------------------------------------------------------------------------------
// the proxy process
// ---------------------------------------------------------------------------------------------

/// A running proxy. Dropping it kills (SIGKILL) and reaps the process and removes its directory.
pub struct Proxy {
    // field order: kill the process before removing its directory
    guard: ChildGuard,
    dir: TempDir,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Proxy {
    /// Starts the proxy on `config` with `--concurrency 1`, waits (≤ 15 s) for every port in
    /// `wait_ports` to accept and for admin `/ready` to answer `200 LIVE`. Panics with the
    /// proxy's log on failure.
    pub async fn start(config: &Value, wait_ports: &[u16]) -> Proxy {
        Self::start_with(config, wait_ports, 1, &[]).await
    }

    /// [`Proxy::start`] with a worker count and extra command-line flags (e.g. `--drain-time-s`).
    pub async fn start_with(config: &Value, wait_ports: &[u16], concurrency: u32, extra: &[&str]) -> Proxy {
        let admin_port = config["admin"]["address"]["socket_address"]["port_value"]
            .as_u64()
            .expect("bootstrap has an admin port") as u16;
        let dir = TempDir::new("remora-e2e").expect("temp dir");
        let config_path = dir.path().join("bootstrap.json");
        std::fs::write(&config_path, serde_json::to_string_pretty(config).expect("json")).expect("write config");
        let log_path = dir.path().join("proxy.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let log2 = log.try_clone().expect("log file");
        let bin = support::remora_binary();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &concurrency.to_string(), "-l", "warning", "--disable-hot-restart"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut proxy =
            Proxy { guard: ChildGuard::new("remora", child), dir, admin: local(admin_port), config_path, log_path };
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut ports = wait_ports.to_vec();
        ports.push(admin_port);
        for port in ports {
            loop {
                if let Some(status) = proxy.try_wait() {
                    panic!("proxy exited ({status}) before listening on {port}; log:\n{}", proxy.logs());
                }
                if support::wait_for_port(local(port), Duration::from_millis(200)).await {
                    break;
                }
                assert!(Instant::now() < deadline, "proxy did not listen on {port}; log:\n{}", proxy.logs());
            }
        }
        loop {
            if let Ok(r) = proxy.admin_get("/ready").await {
                if r.status == StatusCode::OK && r.text().trim() == "LIVE" {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "admin /ready never became 200 LIVE; log:\n{}", proxy.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        proxy
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.guard.id().expect("proxy running")
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.guard.try_wait()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) on a pid this guard owns (not yet reaped, so not reused).
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn admin_get(&self, path: &str) -> Result<Resp, String> {
        h1_request(self.admin, Request::get(path).header("host", "admin").body(Full::default()).unwrap()).await
    }

    pub async fn admin_post(&self, path: &str) -> Result<Resp, String> {
        h1_request(self.admin, Request::post(path).header("host", "admin").body(Full::default()).unwrap()).await
    }

    /// Admin `/stats` as `name → value` (text format, `name: value` per line).
    pub async fn stats(&self) -> BTreeMap<String, String> {
        let r = self.admin_get("/stats").await.expect("GET /stats");
        assert_eq!(r.status, StatusCode::OK, "/stats status");
        r.text()
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    /// A counter or gauge from `/stats`; `None` when absent.
    pub async fn stat(&self, name: &str) -> Option<i64> {
        self.stats().await.get(name).and_then(|v| v.parse().ok())
    }
}

// ---------------------------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------------------------

/// A complete response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }
}

async fn collect<B>(resp: http::Response<B>) -> Result<Resp, String>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok(Resp { status: parts.status, version: parts.version, headers: parts.headers, body: data.into(), trailers })
}

/// One HTTP/1.1 request on a fresh connection to `addr`.
pub async fn h1_request(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Resp, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    collect(resp).await
}

/// One HTTP/2 (prior knowledge, h2c) request on a fresh connection to `addr`. The request URI
/// should be absolute (`http://authority/path`) so `:authority` is set.
pub async fn h2_request(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Resp, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    collect(resp).await
}

/// A simple GET `path` over HTTP/1.1 to 127.0.0.1:`port` with extra request headers.
pub async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(path).header("host", "e2e.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    h1_request(local(port), b.body(Full::default()).unwrap()).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
}
