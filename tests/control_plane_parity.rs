//! One control plane, two data planes: `remora control-plane` serves the same Istio files (a
//! ServiceEntry registry, a DestinationRule with subsets and a VirtualService using most of what
//! the translator supports) to real Envoy 1.40 and then to Remora, both over delta ADS. Envoy
//! must accept everything (no `update_rejected`), and a request corpus must be routed the same
//! way by both: status, the upstream that answered, the path and the selected request headers the
//! upstream saw, selected response headers, and local-reply bodies. Each case also names the
//! upstream it expects, so agreement is agreement on the right answer.
//!
//! Skipped (with the reason printed) only without an Envoy binary.

mod support;
#[path = "xds/common.rs"]
mod xds_common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use support::{envoy_binary, free_port, wait_for_port, TempDir, Upstream};
use xds_common::{write_atomic, ControlPlane, Envoy, Remora};

fn service_entries(v1: u16, v2: u16, v3: u16, ratings: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {v1}}}, labels: {{app: reviews, version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {v2}}}, labels: {{app: reviews, version: v2}}}}
  - {{address: 127.0.0.1, ports: {{http: {v3}}}, labels: {{app: reviews, version: v3}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {ratings}}}, labels: {{app: ratings}}}}
"#
    )
}

const DESTINATION_RULE: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;

const VIRTUAL_SERVICE: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: admin
    match: [{uri: {prefix: /admin}, method: {exact: POST}}]
    route: [{destination: {host: reviews, subset: v3}}]
    headers:
      request: {set: {x-admin: "yes"}}
      response: {add: {x-served-by: admin-route}}
  - name: items
    match: [{uri: {regex: "/items/[0-9]+"}}]
    rewrite: {uri: /item}
    route: [{destination: {host: reviews, subset: v3}}]
  - name: debug
    match: [{queryParams: {debug: {exact: "1"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: old
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: reviews.example.com}
  - name: teapot
    match: [{uri: {prefix: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - name: authority
    match: [{uri: {prefix: /internal}}]
    rewrite: {authority: reviews-internal.default.svc.cluster.local}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: canary
    match: [{headers: {x-canary: {prefix: "tr"}}}]
    route:
    - {destination: {host: reviews, subset: v1}, weight: 0}
    - {destination: {host: reviews, subset: v3}, weight: 100}
  - name: default
    route:
    - {destination: {host: reviews, subset: v1}, weight: 100}
    - {destination: {host: reviews, subset: v2}, weight: 0}
    headers:
      request: {remove: [x-remove-me], add: {x-added: "1"}}
      response: {set: {x-default-route: "1"}}
"#;

/// One request of the corpus and the upstream it must reach ("" for a local reply).
struct Case {
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    upstream: &'static str,
}

const fn case(
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    upstream: &'static str,
) -> Case {
    Case { method, host, path, headers, upstream }
}

const CORPUS: &[Case] = &[
    case("GET", "reviews", "/", &[], "v1"),
    case("GET", "reviews:9080", "/products", &[], "v1"),
    case("GET", "reviews.default", "/", &[], "v1"),
    case("GET", "reviews.default.svc", "/", &[], "v1"),
    case("GET", "reviews.default.svc.cluster.local", "/a/b?c=d", &[], "v1"),
    case("GET", "reviews", "/", &[("end-user", "jason")], "v2"),
    case("GET", "reviews", "/", &[("end-user", "jasonx")], "v1"),
    case("GET", "reviews", "/", &[("End-User", "jason")], "v2"),
    case("POST", "reviews", "/admin/users", &[], "v3"),
    case("GET", "reviews", "/admin/users", &[], "v1"),
    case("POST", "reviews", "/administrator", &[], "v3"),
    case("GET", "reviews", "/items/42", &[], "v3"),
    case("GET", "reviews", "/items/42?x=1", &[], "v3"),
    case("GET", "reviews", "/items/abc", &[], "v1"),
    case("GET", "reviews", "/items/42/more", &[], "v1"),
    case("GET", "reviews", "/?debug=1", &[], "v2"),
    case("GET", "reviews", "/?debug=0", &[], "v1"),
    case("GET", "reviews", "/x?a=b&debug=1", &[], "v2"),
    case("GET", "reviews", "/old", &[], ""),
    case("GET", "reviews", "/old/", &[], "v1"),
    case("GET", "reviews", "/teapot", &[], ""),
    case("GET", "reviews", "/teapot/pot", &[], ""),
    case("GET", "reviews", "/internal/status", &[], "v1"),
    case("GET", "reviews", "/", &[("x-canary", "true")], "v3"),
    case("GET", "reviews", "/", &[("x-canary", "false")], "v1"),
    case("GET", "reviews", "/", &[("x-remove-me", "secret")], "v1"),
    case("DELETE", "reviews", "/thing", &[], "v1"),
    case("GET", "ratings", "/", &[], "ratings"),
    case("GET", "ratings.default.svc.cluster.local", "/r/1", &[("end-user", "jason")], "ratings"),
    case("GET", "ratings:9080", "/", &[], "ratings"),
];

/// What one data plane did with one request, as compared.
async fn observe(port: u16, c: &Case) -> BTreeMap<&'static str, String> {
    let client = xds_common::http_client();
    let mut b = hyper::Request::builder()
        .method(c.method)
        .uri(format!("http://127.0.0.1:{port}{}", c.path))
        .header("host", c.host);
    for (k, v) in c.headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("timeout")
        .expect("request failed");
    let mut out = BTreeMap::new();
    out.insert("status", resp.status().as_u16().to_string());
    for h in ["location", "x-served-by", "x-default-route", "content-type"] {
        if let Some(v) = resp.headers().get(h) {
            out.insert(h, String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
    }
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    match serde_json::from_str::<Value>(&text) {
        Ok(echo) if echo.get("upstream").is_some() => {
            out.insert("upstream", echo["upstream"].as_str().unwrap_or_default().to_string());
            out.insert("path", echo["path"].as_str().unwrap_or_default().to_string());
            out.insert("method", echo["method"].as_str().unwrap_or_default().to_string());
            for h in ["host", "x-admin", "x-remove-me", "x-added", "end-user", "x-envoy-original-path"] {
                if let Some(v) = echo["headers"].get(h) {
                    out.insert(h, v.to_string());
                }
            }
        }
        _ => {
            out.insert("body", text);
        }
    }
    out
}

async fn run_corpus(port: u16) -> Vec<BTreeMap<&'static str, String>> {
    let mut all = Vec::new();
    for c in CORPUS {
        all.push(observe(port, c).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_remora_route_the_same_from_the_same_files() {
    let Some(envoy_bin) = envoy_binary() else {
        println!("SKIPPED envoy_and_remora_route_the_same_from_the_same_files: no Envoy binary (set ENVOY_BIN or run tests/run.sh)");
        return;
    };
    let (v1, v2, v3) = (
        Upstream::start("v1").await.unwrap(),
        Upstream::start("v2").await.unwrap(),
        Upstream::start("v3").await.unwrap(),
    );
    let ratings = Upstream::start("ratings").await.unwrap();
    let config = TempDir::new("remora-parity").expect("dir");
    let dir = config.path();
    write_atomic(dir, "10-services.yaml", &service_entries(v1.port(), v2.port(), v3.port(), ratings.port()));
    write_atomic(dir, "20-reviews-dr.yaml", DESTINATION_RULE);
    write_atomic(dir, "30-reviews-vs.yaml", VIRTUAL_SERVICE);
    let port = free_port();
    let cp = ControlPlane::start(
        dir,
        ([127, 0, 0, 1], 0).into(),
        &["--listener-address".into(), "127.0.0.1".into(), "--listener-port".into(), format!("9080={port}")],
    );
    assert!(!cp.logs().contains("WARN"), "the control plane warned about the files:\n{}", cp.logs());

    // Envoy first (the listener port is the same for both, so one at a time).
    let envoy_seen = {
        let envoy = Envoy::start(&envoy_bin, cp.addr, "DELTA_GRPC").await;
        envoy.wait_live(Duration::from_secs(20)).await;
        envoy.assert_no_rejections(&cp).await;
        assert!(wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10)).await, "envoy listener");
        run_corpus(port).await
    };
    // Envoy is gone (killed on drop); wait for its listener to close before Remora binds it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(std::time::Instant::now() < deadline, "envoy's listener did not go away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let remora = Remora::start(cp.addr, "DELTA_GRPC", &[]).await;
    remora.wait_live(Duration::from_secs(20)).await;
    assert!(
        wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10)).await,
        "remora listener\n{}",
        remora.logs()
    );
    let stats = remora.stats().await;
    let rejected: Vec<_> = stats.iter().filter(|(k, v)| k.ends_with("update_rejected") && **v > 0).collect();
    assert!(rejected.is_empty(), "remora rejected: {rejected:?}\n{}", remora.logs());
    let remora_seen = run_corpus(port).await;

    let mut problems = Vec::new();
    for (i, c) in CORPUS.iter().enumerate() {
        let (e, r) = (&envoy_seen[i], &remora_seen[i]);
        let label = format!("{} {} {} {:?}", c.method, c.host, c.path, c.headers);
        if e != r {
            problems.push(format!("{label}\n  envoy:  {e:?}\n  remora: {r:?}"));
        }
        let reached = e.get("upstream").map(String::as_str).unwrap_or("");
        if reached != c.upstream {
            problems.push(format!("{label}: expected upstream '{}', Envoy reached '{reached}' ({e:?})", c.upstream));
        }
    }
    assert!(problems.is_empty(), "{} of {} cases differ:\n{}", problems.len(), CORPUS.len(), problems.join("\n"));
}
