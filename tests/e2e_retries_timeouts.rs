//! End to end: the router's retries and timeouts against real upstreams — `retry_on: 5xx`,
//! route `timeout`, `per_try_timeout`, and a connect failure to a closed port.

mod support;
#[path = "e2e/util.rs"]
mod util;

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use support::{free_port, Upstream};
use util::{bootstrap, cluster, get, http_listener, route, vhost, Proxy};

struct Setup {
    proxy: Proxy,
    port: u16,
    _upstream: Upstream,
}

/// One listener with a route per scenario:
/// * `/retry`    → `backend`, `retry_on: 5xx`, `num_retries: 2`
/// * `/timeout`  → `backend`, `timeout: 0.2s`
/// * `/per-try`  → `backend`, `timeout: 5s`, `retry_on: 5xx`, `num_retries: 2`, `per_try_timeout: 0.2s`
/// * `/per-try-no-retry` → `backend`, `timeout: 5s`, `num_retries: 0`, `per_try_timeout: 0.2s`
/// * `/closed`   → `closed` (a cluster whose only endpoint is a port nobody listens on)
async fn setup() -> Setup {
    let upstream = Upstream::start("backend").await.expect("upstream");
    let (admin, port) = (free_port(), free_port());
    let closed_port = free_port();
    let routes = json!([
        route("/retry", "backend", json!({"retry_policy": {"retry_on": "5xx", "num_retries": 2}})),
        route("/timeout", "backend", json!({"timeout": "0.2s"})),
        route(
            "/per-try-no-retry",
            "backend",
            json!({
                "timeout": "5s",
                "retry_policy": {"retry_on": "5xx", "num_retries": 0, "per_try_timeout": "0.2s"}
            })
        ),
        route(
            "/per-try",
            "backend",
            json!({
                "timeout": "5s",
                "retry_policy": {"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.2s"}
            })
        ),
        route("/closed", "closed", json!({})),
    ]);
    let config = bootstrap(
        admin,
        vec![http_listener("main", port, "ingress", vhost(routes))],
        vec![cluster("backend", &[upstream.port()]), cluster("closed", &[closed_port])],
    );
    Setup { proxy: Proxy::start(&config, &[port]).await, port, _upstream: upstream }
}

#[tokio::test]
async fn retry_on_5xx_succeeds_on_the_third_attempt() {
    let s = setup().await;
    let r =
        get(s.port, "/retry", &[("x-case", "retry"), ("x-test-fail-first", "2"), ("x-test-fail-status", "503")]).await;
    assert_eq!(r.status, StatusCode::OK, "body: {}", r.text());
    assert_eq!(r.json()["upstream"], "backend");
    assert_eq!(s._upstream.hits("retry"), 3, "two failed attempts and the successful one reach the upstream");
    assert_eq!(s.proxy.stat("cluster.backend.upstream_rq_retry").await, Some(2));
    assert_eq!(s.proxy.stat("cluster.backend.upstream_rq_retry_success").await, Some(1));
    assert_eq!(s.proxy.stat("cluster.backend.upstream_rq_total").await, Some(3));
    assert_eq!(s.proxy.stat("cluster.backend.upstream_rq_2xx").await, Some(1));
}

#[tokio::test]
async fn retries_exhausted_return_the_last_upstream_response() {
    let s = setup().await;
    let r = get(s.port, "/retry", &[("x-case", "exhaust"), ("x-test-fail-first", "5")]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // The upstream's own 503 (its JSON echo), not a local reply.
    assert_eq!(r.json()["upstream"], "backend");
    assert_eq!(s._upstream.hits("exhaust"), 3, "1 try + num_retries 2");
    assert_eq!(s.proxy.stat("cluster.backend.upstream_rq_retry").await, Some(2));
    assert_eq!(s.proxy.stat("cluster.backend.upstream_rq_total").await, Some(3));
}

/// Envoy counts a request whose retries ran out on retriable responses in
/// `upstream_rq_retry_limit_exceeded` (checked against Envoy 1.40: 1 here).
#[tokio::test]
async fn retries_exhausted_count_retry_limit_exceeded() {
    let s = setup().await;
    let r = get(s.port, "/retry", &[("x-case", "limit"), ("x-test-fail-first", "5")]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s.proxy.stat("cluster.backend.upstream_rq_retry_limit_exceeded").await, Some(1));
}

/// Envoy charges the response codes of attempts it retries to `cluster.<c>.retry.upstream_rq_*`;
/// `upstream_rq_<code>`, `upstream_rq_<N>xx` and `upstream_rq_completed` count only the response
/// the client got (Envoy 1.40 after 503, 503, 200: `retry.upstream_rq_5xx: 2`,
/// `retry.upstream_rq_503: 2`, `upstream_rq_2xx: 1`, `upstream_rq_completed: 1`, no 5xx).
#[tokio::test]
async fn retried_responses_are_charged_to_the_retry_scope() {
    let s = setup().await;
    let r = get(s.port, "/retry", &[("x-case", "scope"), ("x-test-fail-first", "2")]).await;
    assert_eq!(r.status, StatusCode::OK, "body: {}", r.text());
    let stats = s.proxy.stats().await;
    let stat = |n: &str| stats.get(&format!("cluster.backend.{n}")).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    assert_eq!(stat("retry.upstream_rq_5xx"), 2, "retry.upstream_rq_5xx");
    assert_eq!(stat("retry.upstream_rq_503"), 2, "retry.upstream_rq_503");
    assert_eq!(stat("upstream_rq_5xx"), 0, "upstream_rq_5xx counts only the final response");
    assert_eq!(stat("upstream_rq_2xx"), 1, "upstream_rq_2xx");
    assert_eq!(stat("upstream_rq_completed"), 1, "upstream_rq_completed counts only the final response");
}

#[tokio::test]
async fn route_timeout_returns_504_upstream_request_timeout() {
    let s = setup().await;
    let started = Instant::now();
    let r = get(s.port, "/timeout", &[("x-test-delay-ms", "1000")]).await;
    let elapsed = started.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.text(), "upstream request timeout");
    assert!(elapsed >= Duration::from_millis(180), "answered before the timeout: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(900), "timeout not enforced: {elapsed:?}");
    assert_eq!(s.proxy.stat("cluster.backend.upstream_rq_timeout").await, Some(1));
    assert_eq!(s.proxy.stat("http.ingress.downstream_rq_5xx").await, Some(1));
}

#[tokio::test]
async fn per_try_timeout_is_retried_and_the_retry_succeeds() {
    let s = setup().await;
    let started = Instant::now();
    // The first attempt is answered only after 1 s (beyond the 200 ms per-try timeout); the
    // retry is answered at once.
    let r = get(
        s.port,
        "/per-try",
        &[
            ("x-case", "pertry"),
            ("x-test-fail-first", "1"),
            ("x-test-fail-status", "200"),
            ("x-test-fail-delay-ms", "1000"),
        ],
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(r.status, StatusCode::OK, "body: {}", r.text());
    assert!(elapsed < Duration::from_millis(900), "the slow first try was waited for: {elapsed:?}");
    assert_eq!(s._upstream.hits("pertry"), 2);
    assert_eq!(s.proxy.stat("cluster.backend.upstream_rq_per_try_timeout").await, Some(1));
    assert_eq!(s.proxy.stat("cluster.backend.upstream_rq_retry").await, Some(1));
}

#[tokio::test]
async fn per_try_timeout_without_retries_returns_504() {
    let s = setup().await;
    let started = Instant::now();
    let r = get(s.port, "/per-try-no-retry", &[("x-test-delay-ms", "1000")]).await;
    let elapsed = started.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.text(), "upstream request timeout");
    assert!(elapsed < Duration::from_millis(900), "per-try timeout not enforced: {elapsed:?}");
    assert_eq!(s.proxy.stat("cluster.backend.upstream_rq_per_try_timeout").await, Some(1));
}

const CONNECT_ERROR_PREFIX: &str = "upstream connect error or disconnect/reset before headers. reset reason: ";

#[tokio::test]
async fn connect_failure_returns_503_with_envoys_body() {
    let s = setup().await;
    let r = get(s.port, "/closed", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = r.text();
    // Envoy before 1.3x: "... reset reason: connection failure, transport failure reason: ...";
    // Envoy 1.40: "... reset reason: remote connection failure".
    assert!(body.starts_with(CONNECT_ERROR_PREFIX), "body: {body}");
    assert!(body[CONNECT_ERROR_PREFIX.len()..].contains("connection failure"), "body: {body}");
    assert!(s.proxy.stat("cluster.closed.upstream_cx_connect_fail").await.is_some_and(|v| v >= 1));
}

/// Envoy 1.40 tells a refused connection apart as a *remote* connection failure and adds no
/// transport failure reason for a plain TCP refusal.
#[tokio::test]
async fn connect_refused_body_matches_envoy_1_40() {
    let s = setup().await;
    let r = get(s.port, "/closed", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), format!("{CONNECT_ERROR_PREFIX}remote connection failure"));
}
