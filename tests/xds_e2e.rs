//! Remora's xDS client end to end, with real processes: `remora control-plane` serving a temp
//! config directory, the real `remora` binary as the client (bootstrap: only the xDS cluster and
//! `dynamic_resources`), real HTTP upstreams on loopback.
//!
//! * `ads_sotw_warms_and_serves` / `ads_delta_warms_and_serves`: listener (RDS), route, EDS
//!   cluster arrive; the cluster warms until its endpoints arrive and `/ready` stays 503 until
//!   then; traffic flows; stats and `/config_dump` show the dynamic resources with versions.
//! * `endpoint_updates_keep_pooled_connections`: EDS adds and removes an endpoint; the cluster's
//!   pool keeps the connection to the endpoint that stays.
//! * `updates_drop_no_connection`: a slow request started before an LDS + CDS + RDS change
//!   completes with 200; the listener is updated in place.
//! * `control_plane_outage`: the control plane is killed for 30 s and restarted on the same port
//!   while clients keep sending:
//!   no request fails, Remora reconnects and picks up a change made during the outage.
//! * `canary_under_load`: a VirtualService moves 100/0 → 90/10 → 50/50 → 0/100 under steady load
//!   from concurrent keep-alive clients (≥ 500 requests/s); each step's split is within ±3 points
//!   and not one request fails.

#[path = "xds/common.rs"]
mod common;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    eds_cluster, endpoints, get, http_client, rds_listener, route_config, upstream_of, write_atomic, ControlPlane,
    Remora,
};
use support::{free_port, wait_for_port, TempDir, Upstream};

fn any_port() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

async fn warms_and_serves(api_type: &str) {
    let upstream = Upstream::start("backend").await.expect("upstream");
    let config = TempDir::new("remora-xds-config").expect("temp dir");
    let dir = config.path();
    let port = free_port();
    write_atomic(dir, "listener.yaml", &rds_listener("web", port, "web_route"));
    write_atomic(dir, "route.yaml", &route_config("web_route", "backend", "15s"));
    write_atomic(dir, "cluster.yaml", &eds_cluster("backend", "1s"));
    let cp = ControlPlane::start(dir, any_port(), &[]);
    let remora = Remora::start(cp.addr, api_type, &[]).await;

    // CDS and LDS arrive; the EDS cluster has no endpoints yet, so it warms and Remora is not LIVE.
    remora.wait_stat("cluster_manager.cds.update_success", 1, Duration::from_secs(20)).await;
    remora.wait_stat("listener_manager.lds.update_success", 1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = remora.admin_get("/ready").await;
    assert_eq!((status, body.trim()), (503, "INITIALIZING"), "ready before endpoints arrived");
    assert_eq!(remora.stat("server.state").await, 3);
    assert_eq!(remora.stat("cluster_manager.warming_clusters").await, 1);
    let dump = remora.admin_get("/config_dump").await.1;
    let v: serde_json::Value = serde_json::from_str(&dump).expect("config_dump JSON");
    let warming = v["configs"][1]["dynamic_warming_clusters"].to_string();
    assert!(warming.contains("\"backend\""), "backend not warming: {dump}");

    // Endpoints arrive: the cluster warms, Remora goes LIVE and serves.
    write_atomic(dir, "endpoints.json", &endpoints("backend", &[upstream.port()]));
    remora.wait_live(Duration::from_secs(10)).await;
    assert!(wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(5)).await);
    let client = http_client();
    for i in 0..20 {
        let (status, body) = get(&client, port, "example.com", "/", &[]).await.expect("request");
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(upstream_of(&body), "backend");
    }
    let stats = remora.stats().await;
    let stat = |n: &str| stats.get(n).copied().unwrap_or(-1);
    assert_eq!(stat("control_plane.connected_state"), 1);
    assert!(stat("cluster_manager.cds.update_success") >= 1);
    assert!(stat("cluster_manager.cds.update_attempt") >= 1);
    assert_eq!(stat("cluster_manager.cds.update_rejected"), 0);
    assert!(stat("listener_manager.lds.update_success") >= 1);
    assert_eq!(stat("listener_manager.lds.update_rejected"), 0);
    assert!(stat("http.web.rds.web_route.update_success") >= 1, "{stats:?}");
    assert!(stat("cluster.backend.update_success") >= 1, "{stats:?}");
    assert_eq!(stat("listener_manager.workers_started"), 1);
    assert_eq!(stat("server.state"), 0);
    assert_eq!(stat("cluster_manager.warming_clusters"), 0);
    assert_eq!(stat("cluster_manager.active_clusters"), 1);
    assert_eq!(stat("listener_manager.total_listeners_active"), 1);

    let dump = remora.admin_get("/config_dump?include_eds").await.1;
    let v: serde_json::Value = serde_json::from_str(&dump).expect("config_dump JSON");
    let configs = v["configs"].as_array().expect("configs");
    let clusters = &configs[1];
    assert!(!clusters["version_info"].as_str().unwrap_or("").is_empty(), "{clusters}");
    assert_eq!(clusters["dynamic_active_clusters"][0]["cluster"]["name"], "backend");
    assert!(!clusters["dynamic_active_clusters"][0]["version_info"].as_str().unwrap_or("").is_empty());
    assert_eq!(clusters["static_clusters"][0]["cluster"]["name"], "xds_cluster");
    let listeners = &configs[2];
    assert_eq!(listeners["dynamic_listeners"][0]["name"], "web");
    assert_eq!(listeners["dynamic_listeners"][0]["active_state"]["listener"]["name"], "web");
    assert!(listeners["dynamic_listeners"][0].get("warming_state").is_none());
    assert_eq!(configs[3]["dynamic_route_configs"][0]["route_config"]["name"], "web_route");
    assert_eq!(configs[4]["dynamic_endpoint_configs"][0]["endpoint_config"]["cluster_name"], "backend");

    // Removing the listener file removes the listener (SotW complete set / delta removal).
    std::fs::remove_file(dir.join("listener.yaml")).expect("remove listener");
    let deadline = Instant::now() + Duration::from_secs(5);
    while remora.stat("listener_manager.total_listeners_active").await != 0 {
        assert!(Instant::now() < deadline, "listener not removed; log:\n{}", remora.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&http_client(), port, "example.com", "/", &[]).await.is_ok() {
        assert!(Instant::now() < deadline, "removed listener still accepts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_sotw_warms_and_serves() {
    warms_and_serves("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_delta_warms_and_serves() {
    warms_and_serves("DELTA_GRPC").await;
}

/// An EDS update that only changes endpoints keeps the cluster's pools, as Envoy does: the
/// connection to an endpoint that stays is reused, only a new endpoint gets a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_updates_keep_pooled_connections() {
    let a = Upstream::start("a").await.expect("upstream a");
    let b = Upstream::start("b").await.expect("upstream b");
    let config = TempDir::new("remora-xds-config").expect("temp dir");
    let dir = config.path();
    let port = free_port();
    write_atomic(dir, "listener.yaml", &rds_listener("web", port, "web_route"));
    write_atomic(dir, "route.yaml", &route_config("web_route", "backend", "15s"));
    write_atomic(dir, "cluster.yaml", &eds_cluster("backend", "1s"));
    write_atomic(dir, "endpoints.json", &endpoints("backend", &[a.port()]));
    let cp = ControlPlane::start(dir, any_port(), &[]);
    let remora = Remora::start(cp.addr, "DELTA_GRPC", &[]).await;
    remora.wait_live(Duration::from_secs(20)).await;
    assert!(wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(5)).await);
    let client = http_client();
    let send = |n: usize| {
        let client = client.clone();
        async move {
            let mut seen = std::collections::BTreeMap::<String, usize>::new();
            for i in 0..n {
                let (status, body) = get(&client, port, "example.com", "/", &[]).await.expect("request");
                assert_eq!(status, 200, "request {i}: {body}");
                *seen.entry(upstream_of(&body)).or_default() += 1;
            }
            seen
        }
    };
    assert_eq!(send(10).await.get("a"), Some(&10));
    assert_eq!(remora.stat("cluster.backend.upstream_cx_total").await, 1);

    // b joins: requests spread over both; a's connection is the one already open.
    let updates = remora.stat("cluster.backend.update_success").await;
    write_atomic(dir, "endpoints.json", &endpoints("backend", &[a.port(), b.port()]));
    remora.wait_stat("cluster.backend.update_success", updates + 1, Duration::from_secs(10)).await;
    let seen = send(20).await;
    assert!(seen.get("a").is_some_and(|n| *n > 0) && seen.get("b").is_some_and(|n| *n > 0), "{seen:?}");
    assert_eq!(remora.stat("cluster.backend.upstream_cx_total").await, 2, "a's connection was not reused");
    assert_eq!(remora.stat("cluster.backend.membership_total").await, 2);

    // b leaves: everything goes to a, still over its first connection.
    let updates = remora.stat("cluster.backend.update_success").await;
    write_atomic(dir, "endpoints.json", &endpoints("backend", &[a.port()]));
    remora.wait_stat("cluster.backend.update_success", updates + 1, Duration::from_secs(10)).await;
    assert_eq!(send(10).await.get("a"), Some(&10));
    assert_eq!(remora.stat("cluster.backend.upstream_cx_total").await, 2);
    assert_eq!(remora.stat("cluster.backend.membership_total").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_drop_no_connection() {
    let upstream = Upstream::start("backend").await.expect("upstream");
    let config = TempDir::new("remora-xds-config").expect("temp dir");
    let dir = config.path();
    let port = free_port();
    write_atomic(dir, "listener.yaml", &rds_listener("web", port, "web_route"));
    write_atomic(dir, "route.yaml", &route_config("web_route", "backend", "15s"));
    write_atomic(dir, "cluster.yaml", &eds_cluster("backend", "1s"));
    write_atomic(dir, "endpoints.json", &endpoints("backend", &[upstream.port()]));
    let cp = ControlPlane::start(dir, any_port(), &[]);
    let remora = Remora::start(cp.addr, "DELTA_GRPC", &["--drain-time-s", "10"]).await;
    remora.wait_live(Duration::from_secs(20)).await;
    assert!(wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(5)).await);

    let slow = tokio::spawn(async move {
        let client = http_client();
        let started = Instant::now();
        let r = get(&client, port, "example.com", "/slow", &[("x-test-delay-ms", "3000")]).await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lds = remora.stat("listener_manager.lds.update_success").await;
    let cds = remora.stat("cluster_manager.cds.update_success").await;
    // LDS: a changed HCM (stat prefix) on the same address: updated in place, no rebind.
    write_atomic(
        dir,
        "listener.yaml",
        &rds_listener("web", port, "web_route").replace("stat_prefix: web", "stat_prefix: web2"),
    );
    // CDS: a changed cluster (new connect timeout): new cluster state; RDS: a changed route.
    write_atomic(dir, "cluster.yaml", &eds_cluster("backend", "2s"));
    write_atomic(dir, "route.yaml", &route_config("web_route", "backend", "20s"));
    remora.wait_stat("listener_manager.lds.update_success", lds + 1, Duration::from_secs(5)).await;
    remora.wait_stat("cluster_manager.cds.update_success", cds + 1, Duration::from_secs(5)).await;
    assert_eq!(remora.stat("listener_manager.listener_modified").await, 1);
    let (result, took) = slow.await.expect("slow request task");
    let (status, body) = result.expect("the slow request completed");
    assert_eq!(status, 200, "{body}");
    assert!(took >= Duration::from_millis(2900), "{took:?}");
    // New requests use the new listener config.
    let (status, _) = get(&http_client(), port, "example.com", "/", &[]).await.expect("request");
    assert_eq!(status, 200);
    remora.wait_stat("http.web2.downstream_rq_total", 1, Duration::from_secs(2)).await;
    assert_eq!(remora.stat("listener_manager.lds.update_rejected").await, 0);
}

/// Clients that loop requests on their own keep-alive connections until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    /// (phase, status, upstream) per request.
    results: Arc<Mutex<Vec<(usize, u16, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, host: &'static str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let results = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, phase, results) = (stop.clone(), phase.clone(), results.clone());
                tokio::spawn(async move {
                    let client = http_client();
                    while !stop.load(Ordering::Relaxed) {
                        let p = phase.load(Ordering::Relaxed);
                        let r = get(&client, port, host, "/", &[]).await;
                        let entry = match r {
                            Ok((status, body)) => (p, status, upstream_of(&body)),
                            Err(e) => (p, 0, e),
                        };
                        results.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
                    }
                })
            })
            .collect();
        Load { stop, phase, results, tasks }
    }

    async fn stop(self) -> Vec<(usize, u16, String)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let r = self.results.lock().unwrap_or_else(|e| e.into_inner()).clone();
        r
    }

    fn failures(&self) -> Vec<(usize, u16, String)> {
        self.results.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|r| r.1 != 200).cloned().collect()
    }
}

fn static_cluster(name: &str, port: u16) -> String {
    format!(
        r#""@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
name: {name}
type: STATIC
connect_timeout: 1s
load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_outage() {
    let v1 = Upstream::start("v1").await.expect("upstream v1");
    let v2 = Upstream::start("v2").await.expect("upstream v2");
    let config = TempDir::new("remora-xds-config").expect("temp dir");
    let dir = config.path();
    let port = free_port();
    write_atomic(dir, "listener.yaml", &rds_listener("web", port, "web_route"));
    write_atomic(dir, "route.yaml", &route_config("web_route", "v1", "15s"));
    write_atomic(
        dir,
        "clusters.yaml",
        &format!("{}---\n{}", static_cluster("v1", v1.port()), static_cluster("v2", v2.port())),
    );
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut cp = ControlPlane::start(dir, listen, &[]);
    let remora = Remora::start(cp.addr, "DELTA_GRPC", &[]).await;
    remora.wait_live(Duration::from_secs(20)).await;
    assert!(wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(5)).await);
    let load = Load::start(port, "example.com", 4);
    tokio::time::sleep(Duration::from_millis(500)).await;

    cp.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while remora.stat("control_plane.connected_state").await != 0 {
        assert!(Instant::now() < deadline, "connected_state did not drop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The 30 s outage, with a change made meanwhile.
    write_atomic(dir, "route.yaml", &route_config("web_route", "v2", "15s"));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(load.failures().is_empty(), "requests failed during the outage: {:?}", load.failures());
    let cp = ControlPlane::start(dir, listen, &[]);
    let deadline = Instant::now() + Duration::from_secs(40);
    while remora.stat("control_plane.connected_state").await != 1 {
        assert!(Instant::now() < deadline, "did not reconnect; log:\n{}", remora.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&http_client(), port, "example.com", "/", &[]).await.expect("request");
        assert_eq!(status, 200);
        if upstream_of(&body) == "v2" {
            break;
        }
        assert!(Instant::now() < deadline, "change made during the outage not applied; log:\n{}", remora.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let results = load.stop().await;
    let failed: Vec<_> = results.iter().filter(|r| r.1 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(results.len() > 100, "too little traffic: {}", results.len());
    assert_eq!(remora.stat("listener_manager.lds.update_rejected").await, 0);
    drop(cp);
}

fn service_entry(v1: u16, v2: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {v1}}}, labels: {{app: reviews, version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {v2}}}, labels: {{app: reviews, version: v2}}}}
"#
    )
}

const DESTINATION_RULE: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      http: {http1MaxPendingRequests: 1000}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn virtual_service(w1: u32, w2: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {w1}
    - destination: {{host: reviews, subset: v2}}
      weight: {w2}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_under_load() {
    let v1 = Upstream::start("v1").await.expect("upstream v1");
    let v2 = Upstream::start("v2").await.expect("upstream v2");
    let config = TempDir::new("remora-xds-canary").expect("temp dir");
    let dir = config.path();
    write_atomic(dir, "10-se.yaml", &service_entry(v1.port(), v2.port()));
    write_atomic(dir, "20-dr.yaml", DESTINATION_RULE);
    write_atomic(dir, "30-vs.yaml", &virtual_service(100, 0));
    let port = free_port();
    let cp = ControlPlane::start(
        dir,
        any_port(),
        &["--listener-address".into(), "127.0.0.1".into(), "--listener-port".into(), format!("9080={port}")],
    );
    let remora = Remora::start(cp.addr, "DELTA_GRPC", &[]).await;
    remora.wait_live(Duration::from_secs(20)).await;
    assert!(wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(5)).await);
    let rds = "http.outbound_0.0.0.0_9080.rds.9080.update_success";

    let load = Load::start(port, "reviews", 8);
    let started = Instant::now();
    let steps = [(100u32, 0u32), (90, 10), (50, 50), (0, 100)];
    let mut windows = Vec::new();
    for (i, (w1, w2)) in steps.iter().enumerate() {
        if i > 0 {
            let before = remora.stat(rds).await;
            write_atomic(dir, "30-vs.yaml", &virtual_service(*w1, *w2));
            remora.wait_stat(rds, before + 1, Duration::from_secs(5)).await;
        }
        // Requests already in flight finish on the table they started with; count from here.
        tokio::time::sleep(Duration::from_millis(200)).await;
        load.phase.store(i + 1, Ordering::Relaxed);
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        windows.push(t.elapsed());
        load.phase.store(0, Ordering::Relaxed);
    }
    let elapsed = started.elapsed();
    let results = load.stop().await;
    let failed: Vec<_> = results.iter().filter(|r| r.1 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)]
    );
    let rate = results.len() as f64 / elapsed.as_secs_f64();
    assert!(rate >= 500.0, "load too low: {rate:.0} requests/s");
    for (i, (w1, _)) in steps.iter().enumerate() {
        let phase: Vec<_> = results.iter().filter(|r| r.0 == i + 1).collect();
        let n = phase.len();
        let v1n = phase.iter().filter(|r| r.2 == "v1").count();
        let share = 100.0 * v1n as f64 / n.max(1) as f64;
        eprintln!("step {w1}/{}: {n} requests in {:?}, v1 {share:.1} %", 100 - w1, windows[i]);
        assert!(n >= 1000, "step {i}: only {n} requests");
        assert!((share - f64::from(*w1)).abs() <= 3.0, "step {w1}: v1 share {share:.1} %");
    }
    eprintln!("{} requests, {rate:.0} requests/s, none failed", results.len());
}
