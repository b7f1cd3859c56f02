//! End to end: the fault injection filter (`envoy.filters.http.fault`) against a real upstream —
//! a route's own fault (`typed_per_filter_config`, where istiod writes a VirtualService's `fault`)
//! overrides the filter's, fixed delays really delay, header-controlled aborts and delays follow
//! the request's `x-envoy-fault-*` headers, header matchers limit who is faulted, and the
//! `http.<prefix>.fault.*` stats count it. (Envoy agreement on aborts and delays is checked by
//! tests/control_plane_parity.rs.)

mod support;
#[path = "e2e/util.rs"]
mod util;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{free_port, Upstream};
use util::{bootstrap, cluster, get, hcm, listener, route, vhost, Proxy};

#[tokio::test]
async fn fault_filter_delays_and_aborts() {
    let upstream = Upstream::start("backend").await.expect("upstream");
    let (admin, port) = (free_port(), free_port());
    let fault = |v: serde_json::Value| {
        let mut f = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"});
        if let (Some(f), serde_json::Value::Object(v)) = (f.as_object_mut(), v) {
            f.extend(v);
        }
        f
    };
    let mut delayed = route("/delayed", "backend", json!({}));
    delayed["typed_per_filter_config"] = json!({"envoy.filters.http.fault": fault(json!({
        "delay": {"fixed_delay": "0.3s", "percentage": {"numerator": 100}}
    }))});
    let mut only_testers = route("/testers", "backend", json!({}));
    only_testers["typed_per_filter_config"] = json!({"envoy.filters.http.fault": fault(json!({
        "abort": {"http_status": 503, "percentage": {"numerator": 100}},
        "headers": [{"name": "x-user", "string_match": {"exact": "tester"}}]
    }))});
    let routes = vhost(json!([delayed, only_testers, route("/", "backend", json!({}))]));
    // The filter's own config: faults chosen by the request's headers.
    let filter = json!({"name": "envoy.filters.http.fault", "typed_config": fault(json!({
        "abort": {"header_abort": {}, "percentage": {"numerator": 100}},
        "delay": {"header_delay": {}, "percentage": {"numerator": 100}}
    }))});
    let manager = hcm("faulty", routes, json!({"http_filters": [filter, util::router_filter()]}));
    let config =
        bootstrap(admin, vec![listener("faulty", port, manager, None)], vec![cluster("backend", &[upstream.port()])]);
    let proxy = Proxy::start(&config, &[port]).await;

    let timed = |path: &'static str, headers: &'static [(&'static str, &'static str)]| async move {
        let started = Instant::now();
        let r = get(port, path, headers).await;
        (r, started.elapsed())
    };

    let (r, took) = timed("/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(took < Duration::from_millis(250), "no fault configured for this request: {took:?}");

    let (r, took) = timed("/delayed", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(took >= Duration::from_millis(300), "the route's fixed delay: {took:?}");

    let (r, _) = timed("/", &[("x-envoy-fault-abort-request", "418")]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (418, "fault filter abort"));

    let (r, took) = timed("/", &[("x-envoy-fault-delay-request", "200")]).await;
    assert_eq!(r.status, 200);
    assert!(took >= Duration::from_millis(200), "the header's delay: {took:?}");

    // The route's config replaces the filter's: header-controlled faults do not apply there.
    let (r, _) = timed("/testers", &[("x-envoy-fault-abort-request", "418")]).await;
    assert_eq!(r.status, 200, "only x-user: tester is faulted on /testers: {}", r.text());
    let (r, _) = timed("/testers", &[("x-user", "tester")]).await;
    assert_eq!(r.status, 503);

    assert_eq!(proxy.stat("http.faulty.fault.delays_injected").await, Some(2));
    assert_eq!(proxy.stat("http.faulty.fault.aborts_injected").await, Some(2));
}
