//! `remora control-plane` end to end, with real processes: the control plane serving a temp
//! config directory, real Envoy 1.40 (and, for the istiod dumps, Remora) as the xDS client, real
//! HTTP upstreams on loopback. The launchers and HTTP helpers are the shared ones in
//! `tests/xds/common.rs`; Envoy and Remora routing the same files the same way is
//! `tests/control_plane_parity.rs`.
//!
//! * `istio_canary_sotw` / `istio_canary_delta`: ServiceEntry + DestinationRule + VirtualService
//!   100/0 → everything reaches v1; the file is edited to 50/50 → Envoy takes a new RDS version
//!   within 2 s and 1,000 requests split 50 % ± 5; a broken file is logged (file, field) and the
//!   old config keeps serving.
//! * `plain_envoy_resources`: Listener + RouteConfiguration + Cluster + ClusterLoadAssignment with
//!   `@type`, over both ADS flavours.
//! * `istiod_dumps_are_served`: every resource of the real istiod config dumps in
//!   `../shared/conformance/istio/` loads in the control plane and is served (checked with a gRPC
//!   ADS client, SotW and delta); Envoy ACKs all of them once the Istio-only extensions (which the
//!   upstream Envoy build does not have) are taken out.
//!
//! Envoy is found as `tests/support` finds it; without it the tests print SKIP (and fail under CI).

mod support;
#[path = "xds/common.rs"]
mod xds_common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use serde_json::{json, Value};
use support::{envoy_binary, free_port, wait_for_port, TempDir, Upstream};
use xds_common::{get, http_client, read, upstream_of, write_atomic, ControlPlane, Envoy, HttpClient};

fn any_port() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

const NODE_ID: &str = "sidecar~127.0.0.1~app.default~default.svc.cluster.local";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// Sends `n` requests for `host` through the listener on `port`; counts the upstream names.
async fn split(client: &HttpClient, port: u16, host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let (status, body) = get(client, port, host, "/", &[]).await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(status, 200, "request {i}: {body}");
        *counts.entry(upstream_of(&body)).or_insert(0) += 1;
    }
    counts
}

// ---------------------------------------------------------------------------------------------
// files
// ---------------------------------------------------------------------------------------------

fn service_entry(v1: u16, v2: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - number: 9080
    name: http
    protocol: HTTP
  endpoints:
  - address: 127.0.0.1
    ports: {{http: {v1}}}
    labels: {{app: reviews, version: v1}}
  - address: 127.0.0.1
    ports: {{http: {v2}}}
    labels: {{app: reviews, version: v2}}
"#
    )
}

const DESTINATION_RULE: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    connectionPool:
      http:
        http1MaxPendingRequests: 1000
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"#;

fn virtual_service(w1: u32, w2: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: {w1}
    - destination:
        host: reviews
        subset: v2
      weight: {w2}
"#
    )
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_canary_sotw() {
    istio_canary("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_canary_delta() {
    istio_canary("DELTA_GRPC").await;
}

async fn istio_canary(api_type: &str) {
    let Some(envoy_bin) = envoy_binary() else { return };
    let v1 = Upstream::start("v1").await.expect("upstream v1");
    let v2 = Upstream::start("v2").await.expect("upstream v2");
    let config = TempDir::new("remora-cp-config").expect("temp dir");
    let dir = config.path();
    write_atomic(dir, "10-reviews-se.yaml", &service_entry(v1.port(), v2.port()));
    write_atomic(dir, "20-reviews-dr.yaml", DESTINATION_RULE);
    write_atomic(dir, "30-reviews-vs.yaml", &virtual_service(100, 0));
    let listen_port = free_port();
    let cp = ControlPlane::start(
        dir,
        any_port(),
        &["--listener-address".into(), "127.0.0.1".into(), "--listener-port".into(), format!("9080={listen_port}")],
    );
    let envoy = Envoy::start(&envoy_bin, cp.addr, api_type).await;
    envoy.wait_live(Duration::from_secs(20)).await;

    // 1. everything arrived and was accepted, with istiod's names
    let stats = envoy.stats().await;
    assert!(stats.get("cluster_manager.cds.update_success").copied().unwrap_or(0) >= 1, "{stats:?}");
    assert!(stats.get("listener_manager.lds.update_success").copied().unwrap_or(0) >= 1, "{stats:?}");
    envoy.assert_no_rejections(&cp).await;
    let dump = envoy.admin_get("/config_dump?include_eds").await;
    for name in [
        "outbound|9080||reviews.default.svc.cluster.local",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        "outbound|9080|v2|reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local:9080",
        "\"0.0.0.0_9080\"",
        "\"route_config_name\": \"9080\"",
        "\"reviews.default\"",
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    ] {
        assert!(dump.contains(name), "config_dump lacks {name}:\n{dump}");
    }
    assert!(wait_for_port(([127, 0, 0, 1], listen_port).into(), Duration::from_secs(10)).await);

    // 2. 100/0: every request reaches v1
    let client = http_client();
    let counts = split(&client, listen_port, "reviews", 200).await;
    assert_eq!(counts.get("v1"), Some(&200), "{counts:?}");

    // 3. edit to 50/50: a new route version within 2 s, then a 50 % ± 5 split
    let rds = "http.outbound_0.0.0.0_9080.rds.9080.update_success";
    let before = envoy.stat(rds).await;
    let edited = Instant::now();
    write_atomic(dir, "30-reviews-vs.yaml", &virtual_service(50, 50));
    while envoy.stat(rds).await <= before {
        assert!(edited.elapsed() < Duration::from_secs(2), "no RDS update within 2 s; log:\n{}", cp.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = split(&client, listen_port, "reviews", 1000).await;
    let v1_share = counts.get("v1").copied().unwrap_or(0);
    assert!((450..=550).contains(&v1_share), "50/50 split off: {counts:?}");
    envoy.assert_no_rejections(&cp).await;

    // 4. a broken file: logged with file and field, the previous config keeps serving
    let broken = virtual_service(0, 100).replace("      weight: 100", "      wieght: 100");
    write_atomic(dir, "30-reviews-vs.yaml", &broken);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cp.logs().contains("wieght") {
        assert!(Instant::now() < deadline, "no error logged for the broken file; log:\n{}", cp.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = cp.logs();
    let line = logs.lines().find(|l| l.contains("wieght")).unwrap_or_default().to_string();
    assert!(line.contains("30-reviews-vs.yaml") && line.contains("spec.http[0].route[1]"), "{line}");
    assert!(line.contains("VirtualService 'default/reviews'"), "{line}");
    let counts = split(&client, listen_port, "reviews", 200).await;
    assert!(counts.get("v1").copied().unwrap_or(0) > 50 && counts.get("v2").copied().unwrap_or(0) > 50, "{counts:?}");

    // 5. a file that is not YAML at all, beside the good ones: reported, the rest unaffected
    write_atomic(dir, "40-garbage.yaml", "this: [is: not\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cp.logs().contains("40-garbage.yaml") {
        assert!(Instant::now() < deadline, "no error logged for the garbage file; log:\n{}", cp.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(split(&client, listen_port, "reviews.default.svc.cluster.local", 20).await.values().sum::<usize>(), 20);
    envoy.assert_no_rejections(&cp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_envoy_resources() {
    let Some(envoy_bin) = envoy_binary() else { return };
    for api_type in ["GRPC", "DELTA_GRPC"] {
        let upstream = Upstream::start("plain").await.expect("upstream");
        let config = TempDir::new("remora-cp-plain").expect("temp dir");
        let listen_port = free_port();
        let yaml = format!(
            r#"# a multi-document YAML file of plain Envoy resources
"@type": type.googleapis.com/envoy.config.listener.v3.Listener
name: plain_listener
address: {{socket_address: {{address: 127.0.0.1, port_value: {listen_port}}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: plain
      rds:
        route_config_name: plain_route
        config_source: {{ads: {{}}, resource_api_version: V3}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
---
"@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
name: plain_route
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {{prefix: /}}
    route: {{cluster: plain_backend}}
---
"@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
name: plain_backend
type: EDS
connect_timeout: 1s
eds_cluster_config:
  eds_config: {{ads: {{}}, resource_api_version: V3}}
"#
        );
        write_atomic(config.path(), "plain.yaml", &yaml);
        let cla = json!({
            "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            "cluster_name": "plain_backend",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream.port()}}}}]}],
        });
        write_atomic(config.path(), "endpoints.json", &cla.to_string());
        let cp = ControlPlane::start(config.path(), any_port(), &[]);
        let envoy = Envoy::start(&envoy_bin, cp.addr, api_type).await;
        envoy.wait_live(Duration::from_secs(20)).await;
        envoy.assert_no_rejections(&cp).await;
        assert!(wait_for_port(([127, 0, 0, 1], listen_port).into(), Duration::from_secs(10)).await);
        let counts = split(&http_client(), listen_port, "anything", 20).await;
        assert_eq!(counts.get("plain"), Some(&20), "{api_type}: {counts:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// the real istiod dumps
// ---------------------------------------------------------------------------------------------

fn conformance_dir() -> PathBuf {
    support::repo_root().join("../shared/conformance/istio")
}

/// The xDS resources of a config dump (`configs[]` of `envoy.admin.v3.*ConfigDump`).
fn dump_resources(dump: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        let pick = |list: &str, path: &[&str]| -> Vec<Value> {
            c[list]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|item| path.iter().try_fold(item, |v, k| v.get(*k)).cloned())
                .collect()
        };
        out.extend(pick("dynamic_listeners", &["active_state", "listener"]));
        out.extend(pick("dynamic_active_clusters", &["cluster"]));
        out.extend(pick("dynamic_route_configs", &["route_config"]));
        out.extend(pick("dynamic_endpoint_configs", &["endpoint_config"]));
    }
    out
}

fn all_dump_resources() -> Vec<Value> {
    let dir = conformance_dir();
    let yaml = std::fs::read_to_string(dir.join("sidecar_lds_full_configdump.yaml")).expect("LDS dump");
    let lds = remora::bootstrap::parse_document("dump.yaml", &yaml).expect("LDS dump parses");
    let mut out = dump_resources(&lds);
    for f in ["sidecar_subset_cluster_mtls_and_rds.json", "sidecar_eds_configdump.json"] {
        let text = std::fs::read_to_string(dir.join(f)).expect("dump");
        out.extend(dump_resources(&serde_json::from_str(&text).expect("dump JSON")));
    }
    out
}

fn type_of(r: &Value) -> &str {
    r["@type"].as_str().unwrap_or("")
}

fn name_of(r: &Value) -> String {
    r.get("name").or_else(|| r.get("cluster_name")).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The effective type of a `typed_config` (the wrapped type for a TypedStruct; Wasm null-VM
/// plugins are Istio's own code).
fn effective_type(tc: &Value) -> String {
    let t = tc["@type"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("").to_string();
    if t.ends_with("TypedStruct") {
        return tc["type_url"].as_str().unwrap_or("").rsplit('/').next().unwrap_or("").to_string();
    }
    if t == "envoy.extensions.filters.http.wasm.v3.Wasm"
        && tc["config"]["vm_config"]["runtime"] == "envoy.wasm.runtime.null"
    {
        return "istio.wasm_null_vm".into();
    }
    t
}

/// Extensions only Istio's proxy build has (istio/proxy), absent from upstream Envoy.
fn istio_only(tc: &Value) -> bool {
    let t = effective_type(tc);
    ["istio.", "io.istio.", "stats.", "envoy.tcp.metadataexchange."].iter().any(|p| t.starts_with(p))
}

/// Removes filters and per-route configs whose type is an Istio-only extension.
fn strip_istio_extensions(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("typed_per_filter_config", Value::Object(per)) => Value::Object(
                            per.iter().filter(|(_, c)| !istio_only(c)).map(|(k, c)| (k.clone(), c.clone())).collect(),
                        ),
                        _ => v.clone(),
                    };
                    (k.clone(), strip_istio_extensions(&v))
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().filter(|i| !istio_only(&i["typed_config"])).map(strip_istio_extensions).collect())
        }
        other => other.clone(),
    }
}

/// Listeners that bind (virtualOutbound 15001, virtualInbound 15006, ...) move to 127.0.0.1 on a
/// free port, so the test binds nothing else.
fn rebind_to_loopback(mut r: Value) -> Value {
    if type_of(&r).ends_with(".Listener") && r.get("bind_to_port") != Some(&json!(false)) {
        if let Some(sa) = r.pointer_mut("/address/socket_address") {
            sa["address"] = json!("127.0.0.1");
            sa["port_value"] = json!(free_port());
        }
    }
    r
}

/// Every string under a `cluster` key (route actions, tcp_proxy) and every weighted cluster name.
fn collect_cluster_refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("cluster", Value::String(s)) => {
                        out.insert(s.clone());
                    }
                    ("weighted_clusters", w) => {
                        for c in w["clusters"].as_array().into_iter().flatten() {
                            if let Some(n) = c["name"].as_str() {
                                out.insert(n.to_string());
                            }
                        }
                    }
                    _ => collect_cluster_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_cluster_refs(i, out)),
        _ => {}
    }
}

fn write_resources(dir: &Path, resources: &[Value]) {
    for (i, r) in resources.iter().enumerate() {
        write_atomic(dir, &format!("r{i:03}.json"), &r.to_string());
    }
}

fn names_by_type(resources: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in resources {
        out.entry(type_of(r).to_string()).or_default().insert(name_of(r));
    }
    out
}

/// What the control plane serves, fetched with a plain gRPC ADS client: SotW and delta.
async fn fetch_all(
    addr: SocketAddr,
    want: &BTreeMap<String, BTreeSet<String>>,
) -> [BTreeMap<String, BTreeSet<String>>; 2] {
    let node = Node { id: NODE_ID.into(), ..Default::default() };
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);
    let types = [CLUSTER, ENDPOINT, LISTENER, ROUTE];
    let names = |t: &str| -> Vec<String> {
        if t == CLUSTER || t == LISTENER {
            Vec::new()
        } else {
            want.get(t).map(|s| s.iter().cloned().collect()).unwrap_or_default()
        }
    };

    // state of the world: one request per type, one response each
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for t in types {
        tx.send(DiscoveryRequest {
            node: Some(node.clone()),
            type_url: t.into(),
            resource_names: names(t),
            ..Default::default()
        })
        .await
        .expect("queue");
    }
    let mut stream = client.stream_aggregated_resources(tokio_stream_from(rx)).await.expect("SotW stream").into_inner();
    let mut sotw: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for _ in types {
        let resp =
            tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("SotW response in time");
        let resp = resp.expect("SotW response").expect("stream open");
        let set = sotw.entry(resp.type_url.clone()).or_default();
        for any in resp.resources {
            set.insert(resource_name(&resp.type_url, &any.value));
        }
    }
    drop(tx);

    // delta
    let (dtx, drx) = tokio::sync::mpsc::channel(8);
    for t in types {
        dtx.send(DeltaDiscoveryRequest {
            node: Some(node.clone()),
            type_url: t.into(),
            resource_names_subscribe: names(t),
            ..Default::default()
        })
        .await
        .expect("queue");
    }
    let mut dstream =
        client.delta_aggregated_resources(tokio_stream_from(drx)).await.expect("delta stream").into_inner();
    let mut delta: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for _ in types {
        let resp =
            tokio::time::timeout(Duration::from_secs(10), dstream.message()).await.expect("delta response in time");
        let resp = resp.expect("delta response").expect("stream open");
        let set = delta.entry(resp.type_url.clone()).or_default();
        for r in resp.resources {
            set.insert(r.name);
        }
    }
    drop(dtx);
    [sotw, delta]
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

fn resource_name(type_url: &str, bytes: &[u8]) -> String {
    use prost::Message;
    match type_url {
        LISTENER => envoy_types::pb::envoy::config::listener::v3::Listener::decode(bytes).map(|m| m.name),
        CLUSTER => envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(bytes).map(|m| m.name),
        ROUTE => envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(bytes).map(|m| m.name),
        _ => envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(bytes).map(|m| m.cluster_name),
    }
    .unwrap_or_else(|e| format!("<undecodable: {e}>"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_dumps_are_served() {
    let resources: Vec<Value> = all_dump_resources().into_iter().map(rebind_to_loopback).collect();
    let want = names_by_type(&resources);
    assert_eq!(want.get(LISTENER).map(BTreeSet::len), Some(27), "{want:?}");
    assert_eq!(want.get(ENDPOINT).map(BTreeSet::len), Some(32), "{want:?}");

    // As istiod sent them: every resource loads (Istio's extension types decode through the
    // protos in proto/istio) and is served, SotW and delta.
    let config = TempDir::new("remora-cp-dumps").expect("temp dir");
    write_resources(config.path(), &resources);
    let cp = ControlPlane::start(config.path(), any_port(), &[]);
    let logs = cp.logs();
    assert!(!logs.contains("ERROR"), "control plane reported errors:\n{logs}");
    let [sotw, delta] = fetch_all(cp.addr, &want).await;
    assert_eq!(sotw, want, "SotW served set differs from the dumps");
    assert_eq!(delta, want, "delta served set differs from the dumps");

    // Remora as the client, with the resources exactly as istiod sent them (Istio's own filters
    // included): every type is ACKed — nothing rejected, nothing silently dropped.
    for api_type in ["GRPC", "DELTA_GRPC"] {
        let remora = xds_common::Remora::start(cp.addr, api_type, &[]).await;
        remora.wait_stat("cluster_manager.cds.update_success", 1, Duration::from_secs(20)).await;
        remora.wait_stat("listener_manager.lds.update_success", 1, Duration::from_secs(20)).await;
        let stats = remora.stats().await;
        for (name, value) in &stats {
            if name.ends_with("update_rejected") {
                assert_eq!(
                    *value,
                    0,
                    "{api_type}: Remora rejected istiod's resources ({name}); log:\n{}",
                    remora.logs()
                );
            }
        }
        // The update stats count a response when it is accepted; the dump follows once it is
        // published, so wait for the last wanted listener to show.
        let mut dump = remora.admin_get("/config_dump").await.1;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while want.get(LISTENER).into_iter().flatten().any(|n| !dump.contains(&format!("\"name\": \"{n}\"")))
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            dump = remora.admin_get("/config_dump").await.1;
        }
        for name in want.get(LISTENER).into_iter().flatten() {
            assert!(dump.contains(&format!("\"name\": \"{name}\"")), "{api_type}: Remora lacks listener {name}");
        }
        for name in want.get(CLUSTER).into_iter().flatten() {
            assert!(dump.contains(&format!("\"name\": \"{name}\"")), "{api_type}: Remora lacks cluster {name}");
        }
    }

    // Real Envoy: the upstream build lacks Istio's extensions (istio.alpn, istio.stats, metadata
    // exchange, istio_authn, Wasm null-VM plugins...), so they are taken out; everything else is
    // served as is and must be ACKed. The subset cluster in the RDS/CDS dump has no CLA in the EDS
    // dump (the dumps come from different proxies), so an empty one lets it warm; the `default`
    // and `ROOTCA` secrets its mTLS socket asks `sds-grpc` for are served by the control plane's
    // SDS service.
    let Some(envoy_bin) = envoy_binary() else { return };
    let config2 = TempDir::new("remora-cp-dumps-envoy").expect("temp dir");
    let mut stripped: Vec<Value> = resources.iter().map(strip_istio_extensions).collect();
    let served_clas: BTreeSet<String> = want.get(ENDPOINT).cloned().unwrap_or_default();
    for c in resources.iter().filter(|r| type_of(r) == CLUSTER) {
        let eds_name =
            c["eds_cluster_config"]["service_name"].as_str().map(str::to_string).unwrap_or_else(|| name_of(c));
        if c["type"] == "EDS" && !served_clas.contains(&eds_name) {
            stripped.push(json!({"@type": ENDPOINT, "cluster_name": eds_name}));
        }
    }
    // Clusters the listeners name that no dump defines (e.g. HBONE's `main_internal`) get an empty
    // placeholder, or Envoy rejects inline routes that name them.
    let defined: BTreeSet<String> = want.get(CLUSTER).cloned().unwrap_or_default();
    let mut referenced = BTreeSet::new();
    for l in resources.iter().filter(|r| type_of(r) == LISTENER) {
        collect_cluster_refs(l, &mut referenced);
    }
    for name in referenced.difference(&defined) {
        stripped.push(json!({"@type": CLUSTER, "name": name, "type": "STATIC", "connect_timeout": "1s"}));
    }
    let ca = rcgen::generate_simple_self_signed(vec!["istio-ca".to_string()]).expect("test CA");
    stripped.push(json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": "default",
        "tls_certificate": {
            "certificate_chain": {"inline_string": ca.cert.pem()},
            "private_key": {"inline_string": ca.signing_key.serialize_pem()},
        },
    }));
    stripped.push(json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": "ROOTCA",
        "validation_context": {"trusted_ca": {"inline_string": ca.cert.pem()}},
    }));
    write_resources(config2.path(), &stripped);
    let cp2 = ControlPlane::start(config2.path(), any_port(), &[]);
    for api_type in ["GRPC", "DELTA_GRPC"] {
        let envoy = Envoy::start(&envoy_bin, cp2.addr, api_type).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = envoy.stats().await;
            let ok = |k: &str| s.get(k).copied().unwrap_or(0) >= 1;
            if ok("cluster_manager.cds.update_success") && ok("listener_manager.lds.update_success") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{api_type}: no CDS+LDS update; log:\n{}\n{}",
                read(&envoy.log),
                cp2.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        envoy.assert_no_rejections(&cp2).await;
        // every listener is there (active, or warming on a route table the dumps do not have)
        let dump = envoy.admin_get("/config_dump?resource=dynamic_listeners").await;
        for name in want.get(LISTENER).into_iter().flatten() {
            assert!(dump.contains(&format!("\"name\": \"{name}\"")), "{api_type}: Envoy lacks listener {name}");
        }
    }
}
