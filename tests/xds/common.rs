//! Helpers for the xDS client tests (`tests/xds_*.rs`): the real `remora control-plane` as the
//! server, the real `remora` binary as the client (its bootstrap has only the xDS cluster and
//! `dynamic_resources`), admin and HTTP helpers, and plain Envoy resource files.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::{free_port, remora_binary, ChildGuard, TempDir};

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A running `remora control-plane` (killed on drop).
pub struct ControlPlane {
    guard: ChildGuard,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _log_dir: TempDir,
}

impl ControlPlane {
    /// Starts on `listen` (port 0 picks one) serving `config_dir`.
    pub fn start(config_dir: &Path, listen: SocketAddr, extra: &[String]) -> ControlPlane {
        let log_dir = TempDir::new("remora-xds-cp-log").expect("temp dir");
        let log = log_dir.path().join("control-plane.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(remora_binary())
            .arg("control-plane")
            .arg("--config-dir")
            .arg(config_dir)
            .args(["--listen", &listen.to_string(), "--log-level", "info"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn remora control-plane");
        let stdout = child.stdout.take().expect("stdout");
        let guard = ChildGuard::new("control-plane", child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let mut rest = String::new();
            while reader.read_line(&mut rest).map(|n| n > 0).unwrap_or(false) {
                rest.clear();
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("control plane did not print its address: {line:?}; log:\n{}", read(&log)));
        ControlPlane { guard, addr, log, _log_dir: log_dir }
    }

    pub fn kill(&mut self) {
        self.guard.kill();
    }

    pub fn logs(&self) -> String {
        read(&self.log)
    }
}

/// The xDS cluster (static, h2) pointing at `addr`.
pub fn xds_cluster(addr: SocketAddr) -> String {
    format!(
        r#"{{name: xds_cluster, type: STATIC, connect_timeout: 1s, typed_extension_protocol_options: {{envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {{"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {{http2_protocol_options: {{}}}}}}}}, load_assignment: {{cluster_name: xds_cluster, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}}}"#,
        port = addr.port()
    )
}

/// A running Remora whose configuration comes over ADS (killed on drop).
pub struct Remora {
    guard: ChildGuard,
    pub admin: u16,
    pub log: PathBuf,
    _dir: TempDir,
}

impl Remora {
    pub async fn start(xds: SocketAddr, api_type: &str, extra_args: &[&str]) -> Remora {
        let dir = TempDir::new("remora-xds-client").expect("temp dir");
        let admin = free_port();
        let bootstrap = format!(
            r#"node:
  id: "sidecar~127.0.0.1~app.default~default.svc.cluster.local"
  cluster: app.default
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds_cluster}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 0s}}
  cds_config: {{ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 0s}}
static_resources:
  clusters:
  - {cluster}
"#,
            cluster = xds_cluster(xds),
        );
        let config = dir.path().join("remora.yaml");
        std::fs::write(&config, bootstrap).expect("write bootstrap");
        let log = dir.path().join("remora.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(remora_binary())
            .arg("-c")
            .arg(&config)
            .args(["-l", "info"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone().expect("log file")))
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn remora");
        let r = Remora { guard: ChildGuard::new("remora", child), admin, log, _dir: dir };
        assert!(
            crate::support::wait_for_port(([127, 0, 0, 1], admin).into(), Duration::from_secs(20)).await,
            "remora admin did not come up; log:\n{}",
            read(&r.log)
        );
        r
    }

    pub fn logs(&self) -> String {
        read(&self.log)
    }

    pub fn kill(&mut self) {
        self.guard.kill();
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        get(&http_client(), self.admin, "localhost", path, &[]).await.unwrap_or((0, String::new()))
    }

    pub async fn stats(&self) -> BTreeMap<String, i64> {
        self.admin_get("/stats")
            .await
            .1
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
            .collect()
    }

    pub async fn stat(&self, name: &str) -> i64 {
        self.stats().await.get(name).copied().unwrap_or(0)
    }

    /// Waits (bounded) until `/ready` says LIVE.
    pub async fn wait_live(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.admin_get("/ready").await;
            if status == 200 && body.trim() == "LIVE" {
                return;
            }
            assert!(Instant::now() < deadline, "remora not LIVE within {timeout:?}; log:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until `name` reaches at least `value`.
    pub async fn wait_stat(&self, name: &str, value: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stat(name).await;
            if v >= value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} = {v}, wanted >= {value} within {timeout:?}; log:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build_http()
}

pub async fn get(
    client: &HttpClient,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    send(client, "GET", port, host, path, headers).await.map(|(status, _, body)| (status, body))
}

/// Sends a bodiless `method` request to 127.0.0.1:`port` (h1) with `host` and `headers`; returns
/// status, response headers and body.
pub async fn send(
    client: &HttpClient,
    method: &str,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, hyper::HeaderMap, String), String> {
    let mut b =
        hyper::Request::builder().method(method).uri(format!("http://127.0.0.1:{port}{path}")).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let resp_headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, resp_headers, String::from_utf8_lossy(&body).into_owned()))
}

/// Which upstream answered (the test upstream echoes its name as `upstream`).
pub fn upstream_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["upstream"].as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Replaces a file atomically (write a hidden temp file, rename), as editors and kubelet do.
pub fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, dir.join(name)).expect("rename into place");
}

/// An HTTP listener on 127.0.0.1:`port` whose routes come from RDS `route`.
pub fn rds_listener(name: &str, port: u16, route: &str) -> String {
    format!(
        r#""@type": type.googleapis.com/envoy.config.listener.v3.Listener
name: {name}
address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {name}
      rds:
        route_config_name: {route}
        config_source: {{ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 0s}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    )
}

/// A route configuration sending everything to `cluster` (with `timeout`).
pub fn route_config(name: &str, cluster: &str, timeout: &str) -> String {
    format!(
        r#""@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
name: {name}
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {{prefix: /}}
    route: {{cluster: {cluster}, timeout: {timeout}}}
"#
    )
}

/// An EDS cluster (endpoints from ADS).
pub fn eds_cluster(name: &str, connect_timeout: &str) -> String {
    format!(
        r#""@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
name: {name}
type: EDS
connect_timeout: {connect_timeout}
eds_cluster_config:
  eds_config: {{ads: {{}}, resource_api_version: V3, initial_fetch_timeout: 0s}}
"#
    )
}

/// The ClusterLoadAssignment of `cluster` with one endpoint per port.
pub fn endpoints(cluster: &str, ports: &[u16]) -> String {
    let eps: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                r#"{{"endpoint": {{"address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {p}}}}}}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", "cluster_name": "{cluster}", "endpoints": [{{"lb_endpoints": [{}]}}]}}"#,
        eps.join(",")
    )
}

/// A running Envoy whose LDS/CDS come over ADS from `xds` (killed on drop).
pub struct Envoy {
    _guard: ChildGuard,
    pub admin: u16,
    pub log: PathBuf,
    _dir: TempDir,
}

impl Envoy {
    pub async fn start(bin: &Path, xds: SocketAddr, api_type: &str) -> Envoy {
        let dir = TempDir::new("remora-cp-envoy").expect("temp dir");
        let admin = free_port();
        let bootstrap = format!(
            r#"node:
  id: "sidecar~127.0.0.1~app.default~default.svc.cluster.local"
  cluster: app.default
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds_cluster}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
static_resources:
  clusters:
  - {cluster}
  - {sds}
"#,
            cluster = grpc_cluster("xds_cluster", xds),
            sds = grpc_cluster("sds-grpc", xds),
        );
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap).expect("write bootstrap");
        let log = dir.path().join("envoy.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "-l", "warning", "--disable-hot-restart"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file.try_clone().expect("log file")))
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn envoy");
        let envoy = Envoy { _guard: ChildGuard::new("envoy", child), admin, log, _dir: dir };
        assert!(
            crate::support::wait_for_port(([127, 0, 0, 1], admin).into(), Duration::from_secs(20)).await,
            "envoy admin did not come up; log:\n{}",
            read(&envoy.log)
        );
        envoy
    }

    pub async fn admin_get(&self, path: &str) -> String {
        let client = http_client();
        get(&client, self.admin, "localhost", path, &[]).await.map(|(_, b)| b).unwrap_or_default()
    }

    pub async fn stats(&self) -> BTreeMap<String, u64> {
        self.admin_get("/stats")
            .await
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
            .collect()
    }

    pub async fn stat(&self, name: &str) -> u64 {
        self.stats().await.get(name).copied().unwrap_or(0)
    }

    /// Waits (bounded) until `/ready` says LIVE.
    pub async fn wait_live(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.admin_get("/ready").await.trim() == "LIVE" {
                return;
            }
            assert!(Instant::now() < deadline, "envoy not LIVE within {timeout:?}; log:\n{}", read(&self.log));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn assert_no_rejections(&self, cp: &ControlPlane) {
        let rejected: Vec<(String, u64)> =
            self.stats().await.into_iter().filter(|(k, v)| k.ends_with("update_rejected") && *v > 0).collect();
        assert!(
            rejected.is_empty(),
            "envoy rejected updates: {rejected:?}\nenvoy log:\n{}\ncontrol plane log:\n{}",
            read(&self.log),
            cp.logs()
        );
    }
}

/// A static h2 cluster to the control plane.
pub fn grpc_cluster(name: &str, addr: SocketAddr) -> String {
    format!(
        r#"{{name: {name}, type: STATIC, connect_timeout: 1s, typed_extension_protocol_options: {{envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {{"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {{http2_protocol_options: {{}}}}}}}}, load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}}}"#,
        port = addr.port()
    )
}

/// A sidecar's workload-identity flags: the control plane's CA, a token file, namespace
/// `default`, service account `sa`, certificate lifetime `ttl`.
pub fn ca_args(cp: &ControlPlane, token: &Path, sa: &str, ttl: &str) -> Vec<String> {
    [
        "--ca-addr",
        &format!("http://{}", cp.addr),
        "--ca-token-path",
        &token.display().to_string(),
        "--pod-namespace",
        "default",
        "--service-account",
        sa,
        "--secret-ttl",
        ttl,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
