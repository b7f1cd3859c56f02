//! End to end: `weighted_clusters` split traffic in proportion to their weights — 90/10 and
//! 1/2/7 over 5,000 requests each, every share within ±2 points of its weight.

mod support;
#[path = "e2e/util.rs"]
mod util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use support::{free_port, Upstream};
use util::{bootstrap, cluster, http_listener, vhost, Proxy};

const REQUESTS: usize = 5_000;
const CLIENTS: usize = 16;

/// Sends `REQUESTS` GETs for `path` over `CLIENTS` concurrent keep-alive connections and returns
/// how many answers came from each upstream (by the echo's `upstream` name).
async fn spread(port: u16, path: &str, names: &[&str]) -> Vec<usize> {
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(CLIENTS).build_http();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = client.clone();
        let next = next.clone();
        let uri: http::Uri = format!("http://127.0.0.1:{port}{path}").parse().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        tasks.push(tokio::spawn(async move {
            let mut counts = vec![0usize; names.len()];
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < REQUESTS {
                let resp = client.get(uri.clone()).await.expect("request through the proxy");
                assert_eq!(resp.status(), StatusCode::OK);
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&body).expect("echo JSON");
                let name = v["upstream"].as_str().expect("upstream name");
                let i = names.iter().position(|n| n == name).expect("known upstream");
                counts[i] += 1;
            }
            counts
        }));
    }
    let mut total = vec![0usize; names.len()];
    for t in tasks {
        for (i, c) in t.await.expect("client task").into_iter().enumerate() {
            total[i] += c;
        }
    }
    total
}

fn assert_shares(counts: &[usize], weights: &[u32]) {
    let n: usize = counts.iter().sum();
    assert_eq!(n, REQUESTS);
    let total_weight: u32 = weights.iter().sum();
    for (c, w) in counts.iter().zip(weights) {
        let observed = 100.0 * *c as f64 / n as f64;
        let expected = 100.0 * f64::from(*w) / f64::from(total_weight);
        assert!(
            (observed - expected).abs() <= 2.0,
            "share {observed:.2}% for weight {w}/{total_weight} (expected {expected:.2}% ± 2); counts {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_split_by_weight() {
    let a = Upstream::start("a").await.expect("upstream a");
    let b = Upstream::start("b").await.expect("upstream b");
    let c = Upstream::start("c").await.expect("upstream c");
    let (admin, port) = (free_port(), free_port());
    let weighted = |clusters: serde_json::Value| json!({"weighted_clusters": {"clusters": clusters}});
    let routes = json!([
        {"match": {"prefix": "/ninety-ten"},
         "route": weighted(json!([{"name": "a", "weight": 90}, {"name": "b", "weight": 10}]))},
        {"match": {"prefix": "/one-two-seven"},
         "route": weighted(json!([{"name": "a", "weight": 1}, {"name": "b", "weight": 2}, {"name": "c", "weight": 7}]))},
    ]);
    let config = bootstrap(
        admin,
        vec![http_listener("main", port, "ingress", vhost(routes))],
        vec![cluster("a", &[a.port()]), cluster("b", &[b.port()]), cluster("c", &[c.port()])],
    );
    let proxy = Proxy::start_with(&config, &[port], 2, &[]).await;

    let started = Instant::now();
    let counts = spread(port, "/ninety-ten", &["a", "b"]).await;
    assert_shares(&counts, &[90, 10]);

    let counts = spread(port, "/one-two-seven", &["a", "b", "c"]).await;
    assert_shares(&counts, &[1, 2, 7]);
    assert!(started.elapsed() < Duration::from_secs(15), "10,000 requests took {:?}", started.elapsed());

    // Every request was counted by exactly one of the clusters.
    let mut total = 0;
    for n in ["a", "b", "c"] {
        total += proxy.stat(&format!("cluster.{n}.upstream_rq_total")).await.unwrap_or(0);
    }
    assert_eq!(total, 2 * REQUESTS as i64);
}
