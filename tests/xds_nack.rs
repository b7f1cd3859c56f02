//! NACKs: a tiny ADS server inside the test (tonic, SotW) pushes chosen resources to the real
//! `remora` binary and captures each ACK/NACK. Every invalid resource (24 cases across CDS, LDS,
//! RDS and EDS) is NACKed with an `error_detail` naming the resource and the field, the NACK
//! carries the last accepted `version_info`, the valid rest of the update is applied, and the old
//! configuration keeps serving traffic throughout.

#[path = "xds/common.rs"]
mod common;
mod support;

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use remora::control_plane::resource::{encode, Kind};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use common::{get, http_client, upstream_of, Remora};
use support::{free_port, wait_for_port, Upstream};

type Conn = (mpsc::Sender<Result<DiscoveryResponse, Status>>, Streaming<DiscoveryRequest>);

struct Ads {
    conns: mpsc::Sender<Conn>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        self.conns.send((tx, request.into_inner())).await.map_err(|_| Status::internal("test gone"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("SotW only"))
    }
}

/// The test's end of one ADS stream.
struct Stream {
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    rx: Streaming<DiscoveryRequest>,
    n: u32,
}

impl Stream {
    /// Sends a response and returns the client's answer to it (its ACK or NACK), skipping
    /// subscription requests for other types.
    async fn push(&mut self, kind: Kind, version: &str, resources: Vec<Any>) -> DiscoveryRequest {
        self.n += 1;
        let nonce = format!("nonce-{}", self.n);
        let resp = DiscoveryResponse {
            version_info: version.into(),
            resources,
            type_url: kind.type_url().into(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        self.tx.send(Ok(resp)).await.expect("stream open");
        loop {
            let req = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
                .await
                .expect("an answer within 10 s")
                .expect("stream ok")
                .expect("stream open");
            if req.response_nonce == nonce {
                return req;
            }
        }
    }
}

fn any(kind: Kind, v: &Value) -> Any {
    encode(kind, v).unwrap_or_else(|e| panic!("test resource does not encode: {e}: {v}")).any
}

fn static_cluster(name: &str, port: u64) -> Value {
    json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}})
}

fn eds_cluster(name: &str) -> Value {
    json!({"name": name, "type": "EDS", "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}}})
}

fn cla(name: &str, port: u64) -> Value {
    json!({"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]})
}

fn hcm(stat_prefix: &str, routes: Value) -> Value {
    let mut h = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    });
    if let (Some(h), Some(r)) = (h.as_object_mut(), routes.as_object()) {
        h.extend(r.clone());
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": h})
}

fn inline_routes(cluster: &str) -> Value {
    json!({"route_config": {"name": "inline", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}})
}

fn rds(name: &str) -> Value {
    json!({"rds": {"route_config_name": name, "config_source": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}}})
}

fn listener(name: &str, port: u16, filter: Value) -> Value {
    json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [filter]}]})
}

fn route_config(name: &str, cluster: &str) -> Value {
    json!({"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]})
}

/// Sets (or adds) `pointer` in a copy of `v`.
fn with(v: &Value, pointer: &str, value: Value) -> Value {
    let mut v = v.clone();
    let shown = v.to_string();
    let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    match v.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(key.to_string(), value);
        }
        Some(Value::Array(a)) => {
            let i: usize = key.parse().unwrap_or_else(|_| panic!("bad index in {pointer}"));
            a[i] = value;
        }
        _ => panic!("no {parent} in {shown}"),
    }
    v
}

const BAD_PEM: &str = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_resources_are_nacked_precisely() {
    let upstream = Upstream::start("backend").await.expect("upstream");
    let up = u64::from(upstream.port());
    let (conn_tx, mut conn_rx) = mpsc::channel(4);
    let server_sock = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = server_sock.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(Ads { conns: conn_tx }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(server_sock)),
    );
    let remora = Remora::start(addr, "GRPC", &[]).await;
    let (tx, rx) =
        tokio::time::timeout(Duration::from_secs(10), conn_rx.recv()).await.expect("remora connects").expect("conn");
    let mut s = Stream { tx, rx, n: 0 };

    // The good configuration: static + EDS clusters, an inline-route listener and an RDS one.
    let (p1, p2) = (free_port(), free_port());
    let good_clusters = [static_cluster("backend", up), eds_cluster("eds_backend")];
    let good_listeners =
        [listener("inline", p1, hcm("inline", inline_routes("backend"))), listener("rds", p2, hcm("rds", rds("r1")))];
    let clusters_any = |extra: Vec<Value>| -> Vec<Any> {
        good_clusters.iter().chain(extra.iter()).map(|c| any(Kind::Cluster, c)).collect()
    };
    let listeners_any = |extra: Vec<Value>| -> Vec<Any> {
        good_listeners.iter().chain(extra.iter()).map(|l| any(Kind::Listener, l)).collect()
    };
    let ack = s.push(Kind::Cluster, "c1", clusters_any(vec![])).await;
    assert!(ack.error_detail.is_none(), "{ack:?}");
    assert_eq!(ack.version_info, "c1");
    let ack = s.push(Kind::Endpoint, "e1", vec![any(Kind::Endpoint, &cla("eds_backend", up))]).await;
    assert!(ack.error_detail.is_none(), "{ack:?}");
    let ack = s.push(Kind::Listener, "l1", listeners_any(vec![])).await;
    assert!(ack.error_detail.is_none(), "{ack:?}");
    let ack = s.push(Kind::Route, "r1", vec![any(Kind::Route, &route_config("r1", "eds_backend"))]).await;
    assert!(ack.error_detail.is_none(), "{ack:?}");
    remora.wait_live(Duration::from_secs(10)).await;
    assert!(wait_for_port(([127, 0, 0, 1], p1).into(), Duration::from_secs(5)).await);
    let client = http_client();
    let serving = || async {
        for port in [p1, p2] {
            let (status, body) = get(&client, port, "x", "/", &[]).await.expect("request");
            assert_eq!((status, upstream_of(&body).as_str()), (200, "backend"), "port {port}: {body}");
        }
    };
    serving().await;

    let c = static_cluster("bad", up);
    let l = listener("bad_listener", free_port(), hcm("bad", inline_routes("backend")));
    let rc = route_config("r1", "eds_backend");
    let tls_socket = |ctx: &str, body: Value| json!({"name": "envoy.transport_sockets.tls", "typed_config": {"@type": format!("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{ctx}"), "common_tls_context": body}});
    let weighted_zero = json!({"weighted_clusters": {"clusters": [{"name": "backend", "weight": 0}, {"name": "eds_backend", "weight": 0}]}});
    // (kind, resources beyond the good set, resource named in the detail, field path in the detail)
    let cases: Vec<(Kind, Value, &str, &str)> = vec![
        (Kind::Cluster, with(&c, "/connect_timeout", json!("0s")), "cluster 'bad'", "connect_timeout"),
        (Kind::Cluster, with(&c, "/connect_timeout", json!("-1s")), "cluster 'bad'", "connect_timeout"),
        (Kind::Cluster, with(&c, "/type", json!("ORIGINAL_DST")), "cluster 'bad'", "lb_policy"),
        (
            Kind::Cluster,
            with(
                &c,
                "/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/port_value",
                json!(70000),
            ),
            "cluster 'bad'",
            "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value",
        ),
        (
            Kind::Cluster,
            with(&c, "/load_assignment/endpoints/0/lb_endpoints/0/load_balancing_weight", json!(0)),
            "cluster 'bad'",
            "load_balancing_weight",
        ),
        (Kind::Cluster, with(&c, "/lb_policy", json!("LOAD_BALANCING_POLICY_CONFIG")), "cluster 'bad'", "lb_policy"),
        (Kind::Cluster, with(&c, "/name", json!("xds_cluster")), "cluster 'xds_cluster'", "name"),
        (
            Kind::Cluster,
            {
                let mut v = with(&c, "/type", json!("LOGICAL_DNS"));
                v["load_assignment"]["endpoints"][0]["lb_endpoints"] = json!([{"endpoint": {"address": {"socket_address": {"address": "a.example", "port_value": 1}}}}, {"endpoint": {"address": {"socket_address": {"address": "b.example", "port_value": 1}}}}]);
                v
            },
            "cluster 'bad'",
            "load_assignment",
        ),
        (
            Kind::Cluster,
            {
                let mut v = c.clone();
                v["transport_socket"] = tls_socket(
                    "UpstreamTlsContext",
                    json!({"validation_context": {"trusted_ca": {"inline_string": BAD_PEM}}}),
                );
                v
            },
            "cluster 'bad'",
            "transport_socket",
        ),
        (
            Kind::Listener,
            with(&l, "/address/socket_address/port_value", json!(70000)),
            "listener 'bad_listener'",
            "address.socket_address.port_value",
        ),
        (
            Kind::Listener,
            with(&l, "/address/socket_address/port_value", json!(p1)),
            "listener 'bad_listener'",
            "address",
        ),
        (Kind::Listener, with(&l, "/filter_chains", json!([])), "listener 'bad_listener'", "filter_chains"),
        (
            Kind::Listener,
            with(
                &l,
                "/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes/0/match",
                json!({"safe_regex": {"regex": "(unclosed"}}),
            ),
            "listener 'bad_listener'",
            "safe_regex",
        ),
        (
            Kind::Listener,
            with(
                &l,
                "/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes/0/route",
                weighted_zero.clone(),
            ),
            "listener 'bad_listener'",
            "weighted_clusters",
        ),
        (
            Kind::Listener,
            with(&l, "/filter_chains/0/filters/0/typed_config/codec_type", json!("HTTP3")),
            "listener 'bad_listener'",
            "codec_type",
        ),
        (
            Kind::Listener,
            with(&l, "/filter_chains/0/filters/0/typed_config/stat_prefix", json!("")),
            "listener 'bad_listener'",
            "stat_prefix",
        ),
        (
            Kind::Listener,
            with(&l, "/filter_chains/0/filters/0/typed_config/max_request_headers_kb", json!(9000)),
            "listener 'bad_listener'",
            "max_request_headers_kb",
        ),
        (
            Kind::Listener,
            listener("bad_listener", free_port(), hcm("bad", rds(""))),
            "listener 'bad_listener'",
            "rds.route_config_name",
        ),
        (
            Kind::Listener,
            {
                let mut v = l.clone();
                v["filter_chains"] = json!([v["filter_chains"][0].clone(), v["filter_chains"][0].clone()]);
                v
            },
            "listener 'bad_listener'",
            "filter_chains[1].filter_chain_match",
        ),
        (
            Kind::Listener,
            {
                let mut v = l.clone();
                v["filter_chains"][0]["transport_socket"] = tls_socket(
                    "DownstreamTlsContext",
                    json!({"tls_certificates": [{"certificate_chain": {"inline_string": BAD_PEM}, "private_key": {"inline_string": "not a key"}}]}),
                );
                v
            },
            "listener 'bad_listener'",
            "transport_socket",
        ),
        (
            Kind::Listener,
            with(
                &l,
                "/filter_chains/0/filters/0",
                json!({"name": "acme.unknown", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct", "value": {}}}),
            ),
            "listener 'bad_listener'",
            "filter_chains[0].filters[0]",
        ),
        (
            Kind::Route,
            with(&rc, "/virtual_hosts/0/routes/0/match", json!({"safe_regex": {"regex": "[a-"}})),
            "route configuration 'r1'",
            "virtual_hosts[0].routes[0].match.safe_regex",
        ),
        (
            Kind::Route,
            with(&rc, "/virtual_hosts/0/routes/0/route", weighted_zero.clone()),
            "route configuration 'r1'",
            "weighted_clusters",
        ),
        (
            Kind::Route,
            with(&rc, "/virtual_hosts", json!([{"name": "a", "domains": ["x"]}, {"name": "b", "domains": ["x"]}])),
            "route configuration 'r1'",
            "virtual_hosts[1].domains",
        ),
        (
            Kind::Endpoint,
            with(
                &cla("eds_backend", up),
                "/endpoints/0/lb_endpoints/0/endpoint/address/socket_address/port_value",
                json!(70000),
            ),
            "cluster load assignment 'eds_backend'",
            "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value",
        ),
        (
            Kind::Endpoint,
            with(&cla("eds_backend", up), "/endpoints/0/lb_endpoints/0/load_balancing_weight", json!(0)),
            "cluster load assignment 'eds_backend'",
            "endpoints[0].lb_endpoints[0].load_balancing_weight",
        ),
    ];
    // The last accepted version per type (the control plane's Kind is not Hash: keyed by label).
    let mut versions: std::collections::HashMap<&str, String> =
        [(Kind::Cluster, "c1"), (Kind::Listener, "l1"), (Kind::Route, "r1"), (Kind::Endpoint, "e1")]
            .into_iter()
            .map(|(k, v)| (k.label(), v.to_string()))
            .collect();
    let mut failures = Vec::new();
    for (i, (kind, bad, resource, field)) in cases.iter().enumerate() {
        let resources = match kind {
            Kind::Cluster => clusters_any(vec![bad.clone()]),
            Kind::Listener => listeners_any(vec![bad.clone()]),
            _ => vec![any(*kind, bad)],
        };
        let version = format!("bad-{i}");
        let answer = s.push(*kind, &version, resources).await;
        let detail = answer.error_detail.as_ref().map(|d| d.message.clone()).unwrap_or_default();
        eprintln!("case {i} ({kind:?}): {detail}");
        if !(detail.contains(resource) && detail.contains(field)) {
            failures.push(format!("case {i} ({kind:?} {resource} {field}): error_detail = {detail:?}"));
        }
        if answer.version_info != versions[kind.label()] {
            failures.push(format!(
                "case {i}: NACK version_info {:?}, wanted the last good {:?}",
                answer.version_info,
                versions[kind.label()]
            ));
        }
        serving().await;
        // Envoy applies the valid rest of a partly bad update; restore the good set after each case.
        if matches!(kind, Kind::Route | Kind::Endpoint) {
            let good = if *kind == Kind::Route { route_config("r1", "eds_backend") } else { cla("eds_backend", up) };
            let v = format!("good-{i}");
            let ack = s.push(*kind, &v, vec![any(*kind, &good)]).await;
            assert!(ack.error_detail.is_none(), "{ack:?}");
            versions.insert(kind.label(), v);
        }
    }
    assert!(cases.len() >= 20);
    assert!(failures.is_empty(), "{} of {} cases wrong:\n{}", failures.len(), cases.len(), failures.join("\n"));

    // The valid rest of a partly bad update is applied: a new good cluster beside a bad one.
    let answer = s
        .push(
            Kind::Cluster,
            "c-mixed",
            clusters_any(vec![static_cluster("extra", up), with(&c, "/connect_timeout", json!("0s"))]),
        )
        .await;
    assert!(answer.error_detail.is_some());
    let dump = remora.admin_get("/config_dump").await.1;
    assert!(dump.contains("\"extra\""), "the good cluster of a NACKed update was not applied");
    let stats = remora.stats().await;
    assert!(stats.get("cluster_manager.cds.update_rejected").copied().unwrap_or(0) >= 10, "{stats:?}");
    assert!(stats.get("listener_manager.lds.update_rejected").copied().unwrap_or(0) >= 10, "{stats:?}");
    assert!(stats.get("http.rds.rds.r1.update_rejected").copied().unwrap_or(0) >= 3, "{stats:?}");
    assert!(stats.get("cluster.eds_backend.update_rejected").copied().unwrap_or(0) >= 2, "{stats:?}");
    serving().await;
}
