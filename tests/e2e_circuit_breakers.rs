//! End to end: a cluster's circuit breakers (max_connections / max_pending_requests /
//! max_requests = 1) in front of a slow upstream shed concurrent requests with Envoy's 503
//! `x-envoy-overloaded: true`, count them in `upstream_rq_pending_overflow`, and show the
//! thresholds in admin `/clusters`.

mod support;
#[path = "e2e/util.rs"]
mod util;

use http::StatusCode;
use serde_json::json;
use support::{free_port, Upstream};
use util::{bootstrap, cluster, get, http_listener, route, vhost, Proxy};

const CLUSTER: &str = "guarded";

#[tokio::test]
async fn concurrent_requests_overflow_with_503_overloaded() {
    let upstream = Upstream::start("slow").await.expect("upstream");
    let (admin, port) = (free_port(), free_port());
    let mut c = cluster(CLUSTER, &[upstream.port()]);
    c["circuit_breakers"] = json!({"thresholds": [{
        "priority": "DEFAULT",
        "max_connections": 1,
        "max_pending_requests": 1,
        "max_requests": 1,
        "max_retries": 1
    }]});
    let config = bootstrap(
        admin,
        vec![http_listener("main", port, "ingress", vhost(json!([route("/", CLUSTER, json!({}))])))],
        vec![c],
    );
    let proxy = Proxy::start(&config, &[port]).await;

    // Ten clients at once, each on its own connection; the upstream holds each request 500 ms.
    let mut tasks = Vec::new();
    for i in 0..10 {
        tasks.push(tokio::spawn(async move {
            let id = i.to_string();
            get(port, "/slow", &[("x-test-delay-ms", "500"), ("x-case", "cb"), ("x-client", &id)]).await
        }));
    }
    let mut ok = 0;
    let mut overloaded = 0;
    for t in tasks {
        let r = t.await.expect("client task");
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.header("x-envoy-overloaded"), Some("true"), "503 without x-envoy-overloaded: {r:?}");
                assert_eq!(
                    r.text(),
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow"
                );
                overloaded += 1;
            }
            other => panic!("unexpected status {other}: {}", r.text()),
        }
    }
    assert!(ok >= 1, "no request got through (ok {ok}, overloaded {overloaded})");
    assert!(overloaded >= 1, "no request was shed (ok {ok}, overloaded {overloaded})");
    assert_eq!(ok + overloaded, 10);
    assert_eq!(upstream.hits("cb"), ok, "only admitted requests reach the upstream");

    let overflow = proxy.stat(&format!("cluster.{CLUSTER}.upstream_rq_pending_overflow")).await;
    assert!(overflow.is_some_and(|v| v > 0), "upstream_rq_pending_overflow: {overflow:?}");
    assert_eq!(overflow, Some(overloaded as i64), "every shed request is a pending overflow");

    let clusters = proxy.admin_get("/clusters").await.expect("/clusters").text();
    for line in [
        format!("{CLUSTER}::default_priority::max_connections::1"),
        format!("{CLUSTER}::default_priority::max_pending_requests::1"),
        format!("{CLUSTER}::default_priority::max_requests::1"),
        format!("{CLUSTER}::default_priority::max_retries::1"),
    ] {
        assert!(clusters.lines().any(|l| l == line), "no `{line}` in /clusters:\n{clusters}");
    }

    // Once the load is gone the breaker closes again.
    let r = get(port, "/after", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}
