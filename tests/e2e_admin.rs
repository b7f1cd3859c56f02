//! End to end: the admin API of a running `remora` — `/ready`, `/server_info`, `/config_dump`,
//! `/stats`, `/stats/prometheus`, `/clusters`, and `POST /quitquitquit` ending the process.

mod support;
#[path = "e2e/util.rs"]
mod util;

use std::time::Duration;

use http::StatusCode;
use serde_json::{json, Value};
use support::{free_port, Upstream};
use util::{bootstrap, cluster, get, http_listener, route, vhost, Proxy};

const LISTENER: &str = "e2e_admin_listener";
const CLUSTER: &str = "e2e_admin_backend";
const PREFIX: &str = "e2e_admin_ingress";

async fn start() -> (Proxy, Upstream, u16) {
    let upstream = Upstream::start("backend").await.expect("upstream");
    let (admin, port) = (free_port(), free_port());
    let config = bootstrap(
        admin,
        vec![http_listener(LISTENER, port, PREFIX, vhost(json!([route("/", CLUSTER, json!({}))])))],
        vec![cluster(CLUSTER, &[upstream.port()])],
    );
    (Proxy::start(&config, &[port]).await, upstream, port)
}

fn type_urls(dump: &Value) -> Vec<String> {
    dump["configs"]
        .as_array()
        .expect("configs array")
        .iter()
        .filter_map(|c| c["@type"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn ready_server_info_and_config_dump() {
    let (proxy, _upstream, _port) = start().await;

    let ready = proxy.admin_get("/ready").await.expect("/ready");
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.text(), "LIVE\n");

    let info = proxy.admin_get("/server_info").await.expect("/server_info");
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.json()["state"], "LIVE", "server_info: {}", info.text());

    let dump = proxy.admin_get("/config_dump").await.expect("/config_dump");
    assert_eq!(dump.status, StatusCode::OK);
    let json = dump.json();
    let types = type_urls(&json);
    for t in [
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
        "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
    ] {
        assert!(types.iter().any(|u| u == t), "config_dump lacks {t}; has {types:?}");
    }
    let clusters = json["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
        .unwrap();
    let names: Vec<&str> = clusters["static_clusters"]
        .as_array()
        .expect("static_clusters")
        .iter()
        .filter_map(|c| c["cluster"]["name"].as_str())
        .collect();
    assert!(names.contains(&CLUSTER), "static_clusters names: {names:?}");
    let listeners = json["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump")
        .unwrap();
    let names: Vec<&str> = listeners["static_listeners"]
        .as_array()
        .expect("static_listeners")
        .iter()
        .filter_map(|l| l["listener"]["name"].as_str())
        .collect();
    assert!(names.contains(&LISTENER), "static_listeners names: {names:?}");
    // The cluster's config round-trips with its @type.
    assert!(dump.text().contains("type.googleapis.com/envoy.config.cluster.v3.Cluster"));
}

#[tokio::test]
async fn stats_count_requests_in_text_and_prometheus() {
    let (proxy, _upstream, port) = start().await;
    const N: i64 = 7;
    for _ in 0..N {
        let r = get(port, "/counted", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let stats = proxy.stats().await;
    let text = proxy.admin_get("/stats").await.unwrap().text();
    assert!(
        text.lines().any(|l| l == format!("http.{PREFIX}.downstream_rq_total: {N}")),
        "no `http.{PREFIX}.downstream_rq_total: {N}` in /stats:\n{text}"
    );
    assert_eq!(stats.get(&format!("cluster.{CLUSTER}.upstream_rq_2xx")).map(String::as_str), Some("7"));
    assert_eq!(stats.get(&format!("cluster.{CLUSTER}.upstream_rq_total")).map(String::as_str), Some("7"));
    assert_eq!(stats.get(&format!("http.{PREFIX}.downstream_rq_2xx")).map(String::as_str), Some("7"));

    let prom = proxy.admin_get("/stats/prometheus").await.expect("/stats/prometheus");
    assert_eq!(prom.status, StatusCode::OK);
    let prom = prom.text();
    let sample = format!("envoy_cluster_upstream_rq_total{{envoy_cluster_name=\"{CLUSTER}\"}} {N}");
    assert!(prom.lines().any(|l| l == sample), "no `{sample}` in /stats/prometheus:\n{prom}");
    assert!(prom.contains("# TYPE envoy_cluster_upstream_rq_total counter"), "{prom}");
}

#[tokio::test]
async fn clusters_lists_thresholds_and_hosts() {
    let (proxy, upstream, _port) = start().await;
    let r = proxy.admin_get("/clusters").await.expect("/clusters");
    assert_eq!(r.status, StatusCode::OK);
    let text = r.text();
    for line in [
        format!("{CLUSTER}::default_priority::max_connections::1024"),
        format!("{CLUSTER}::default_priority::max_pending_requests::1024"),
        format!("{CLUSTER}::default_priority::max_requests::1024"),
        format!("{CLUSTER}::default_priority::max_retries::3"),
        format!("{CLUSTER}::127.0.0.1:{}::health_flags::healthy", upstream.port()),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in /clusters:\n{text}");
    }
}

#[tokio::test]
async fn quitquitquit_exits_the_process() {
    let (mut proxy, _upstream, port) = start().await;
    let get_quit = proxy.admin_get("/quitquitquit").await.expect("GET /quitquitquit");
    assert_eq!(get_quit.status, StatusCode::METHOD_NOT_ALLOWED, "GET must not quit");
    assert!(proxy.try_wait().is_none(), "GET /quitquitquit ended the process");

    let r = proxy.admin_post("/quitquitquit").await.expect("POST /quitquitquit");
    assert_eq!(r.status, StatusCode::OK);
    let status = proxy.wait_exit(Duration::from_secs(5)).await;
    let status = status.unwrap_or_else(|| panic!("still running 5 s after /quitquitquit; log:\n{}", proxy.logs()));
    assert!(status.success(), "exit status {status}; log:\n{}", proxy.logs());
    assert!(tokio::net::TcpStream::connect(util::local(port)).await.is_err(), "listener still accepts after exit");
}

/// Envoy names a listener's stat scope after its address with `:` replaced by `_`
/// (`listener.127.0.0.1_10000.downstream_cx_total`).
#[tokio::test]
async fn listener_stats_use_envoys_scope_name() {
    let (proxy, _upstream, port) = start().await;
    let r = get(port, "/", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let stats = proxy.stats().await;
    let name = format!("listener.127.0.0.1_{port}.downstream_cx_total");
    let v = stats.get(&name).and_then(|v| v.parse::<u64>().ok());
    assert!(
        v.is_some_and(|v| v >= 1),
        "no `{name}` >= 1 in /stats; listener stats: {:?}",
        stats.keys().filter(|k| k.starts_with("listener.")).collect::<Vec<_>>()
    );
}
