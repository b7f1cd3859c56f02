//! End to end: listener features a sidecar depends on — the http_inspector choosing filter chains
//! by detected protocol (Istio's inbound `application_protocols: [http/1.1, h2c]` chains), and an
//! ORIGINAL_DST cluster sending each request where it was originally going (Istio's
//! PassthroughCluster), here steered by `x-envoy-original-dst-host`.

mod support;
#[path = "e2e/util.rs"]
mod util;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use support::{free_port, Upstream};
use util::{bootstrap, h1_request, h2_request, hcm, local, vhost, Proxy};

fn direct_chain(protocols: &[&str], body: &str) -> serde_json::Value {
    let routes =
        json!([{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}]);
    json!({
        "filter_chain_match": {"application_protocols": protocols},
        "filters": [hcm(&format!("chain_{}", body.trim()), vhost(routes), json!({}))],
    })
}

#[tokio::test]
async fn http_inspector_selects_chains_by_detected_protocol() {
    let admin = free_port();
    let port = free_port();
    let listener = json!({
        "name": "inbound",
        "address": util::socket_address(port),
        "listener_filters": [{
            "name": "envoy.filters.listener.http_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}
        }],
        "filter_chains": [direct_chain(&["http/1.1", "http/1.0"], "h1\n"), direct_chain(&["h2c"], "h2c\n")],
    });
    let proxy = Proxy::start(&bootstrap(admin, vec![listener], vec![]), &[port]).await;
    let h1 = h1_request(local(port), Request::get("/").header("host", "x").body(Full::<Bytes>::default()).unwrap())
        .await
        .expect("h1 request");
    assert_eq!((h1.status.as_u16(), h1.text()), (200, "h1\n".to_string()), "HTTP/1.1 lands on the http/1.1 chain");
    let h2 = h2_request(local(port), Request::get("http://x/").body(Full::<Bytes>::default()).unwrap())
        .await
        .expect("h2c request");
    assert_eq!((h2.status.as_u16(), h2.text()), (200, "h2c\n".to_string()), "the h2c preface lands on the h2c chain");
    drop(proxy);
}

#[tokio::test]
async fn original_dst_cluster_forwards_to_the_requested_destination() {
    let a = Upstream::start("a").await.expect("upstream a");
    let b = Upstream::start("b").await.expect("upstream b");
    let admin = free_port();
    let port = free_port();
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "passthrough"}}]);
    let listener = util::http_listener("outbound", port, "outbound", vhost(routes));
    let cluster = json!({
        "name": "passthrough",
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s",
        "original_dst_lb_config": {"use_http_header": true},
    });
    let proxy = Proxy::start(&bootstrap(admin, vec![listener], vec![cluster]), &[port]).await;
    for up in [&a, &b] {
        let dst = up.addr.to_string();
        let resp = util::get(port, "/where", &[("x-envoy-original-dst-host", dst.as_str())]).await;
        assert_eq!(resp.status.as_u16(), 200, "{}", resp.text());
        assert_eq!(resp.json()["upstream"], up.name.as_str(), "request for {dst} reached {}", up.name);
    }
    drop(proxy);
}
