//! Remora and real Envoy 1.40 as the two sidecars of one mesh hop, configured the way istiod
//! configures them (../shared/reference/istio-sidecar-contract.md §7): certificates `default` and
//! `ROOTCA` from an SDS server over the `sds-grpc` cluster (one `remora control-plane` per sidecar,
//! as each pod has its own agent), outbound clusters with auto-mTLS `transport_socket_matches`
//! (`tlsMode: istio` endpoints, exact SPIFFE SAN, istiod's SNI and ALPN), inbound STRICT chains
//! (`transport_protocol: tls`, `require_client_certificate`, SAN prefix `spiffe://cluster.local/`,
//! istiod's TLS parameters) with `APPEND_FORWARD` XFCC. Each direction is checked over HTTP/1.1,
//! HTTP/2 and TCP: the application sees the client's SPIFFE identity in XFCC, and TCP bytes arrive
//! unchanged.
//!
//! Envoy from PyPI is upstream Envoy: it has none of istio-proxy's extensions (`istio.alpn`,
//! `istio.metadata_exchange`), so its side of each hop is what istiod generates with
//! `PILOT_DISABLE_MX_ALPN=true` and those filters left out. The metadata-exchange frame itself is
//! checked between two Remora sidecars and against an independent peer
//! (`tests/interop/mx_peer.py`, built on the `protobuf` package), in both directions.
//!
//! The Envoy tests are skipped (reason printed) only without an Envoy binary, the peer test only
//! without Python's protobuf; under CI (tests/run.sh installs both) either is a failure.

#[path = "e2e/pki.rs"]
mod pki;
mod support;
#[path = "e2e/util.rs"]
mod util;
#[path = "xds/common.rs"]
mod xds_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use support::{envoy_binary, free_port, remora_binary, start_proxy, ProxyKind, TempDir, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use util::{istio_sds, local, socket_address};
use xds_common::ControlPlane;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/httpbin";
const CLIENT_NODE: &str = "sidecar~127.0.0.1~sleep-7c8f.default~default.svc.cluster.local";
const SERVER_NODE: &str = "sidecar~127.0.0.1~httpbin-5d9b.default~default.svc.cluster.local";
const HTTP_HOST: &str = "httpbin.default.svc.cluster.local";
const TCP_HOST: &str = "tcp-echo.default.svc.cluster.local";

// ---------------------------------------------------------------------------------------------
// identities and the per-sidecar SDS server
// ---------------------------------------------------------------------------------------------

struct Identity {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

struct MeshPki {
    ca: rcgen::Certificate,
    client: Identity,
    server: Identity,
}

impl MeshPki {
    fn new() -> Self {
        let (ca, issuer) = pki::ca("cluster.local mesh root");
        let issue = |id: &str| {
            let (cert, key) = pki::workload(&issuer, id);
            Identity { cert, key }
        };
        MeshPki { client: issue(CLIENT_ID), server: issue(SERVER_ID), ca }
    }
}

/// A pod's agent: an SDS server holding the workload's `default` and the mesh `ROOTCA`.
struct Agent {
    sds: ControlPlane,
    _dir: TempDir,
}

impl Agent {
    fn start(id: &Identity, ca: &rcgen::Certificate) -> Agent {
        let dir = TempDir::new("remora-interop-sds").expect("dir");
        let secrets = json!([
            {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "name": "default",
             "tls_certificate": {"certificate_chain": {"inline_string": id.cert.pem()},
                                 "private_key": {"inline_string": id.key.serialize_pem()}}},
            {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "name": "ROOTCA",
             "validation_context": {"trusted_ca": {"inline_string": ca.pem()}}}
        ]);
        xds_common::write_atomic(dir.path(), "secrets.json", &secrets.to_string());
        let sds = ControlPlane::start(dir.path(), ([127, 0, 0, 1], 0).into(), &[]);
        Agent { sds, _dir: dir }
    }
}

// ---------------------------------------------------------------------------------------------
// istiod-shaped configuration
// ---------------------------------------------------------------------------------------------

fn node(id: &str, workload: &str) -> Value {
    json!({
        "id": id,
        "cluster": format!("{workload}.default"),
        "metadata": {
            "NAME": id.split('~').nth(2).and_then(|p| p.split('.').next()).unwrap_or(workload),
            "NAMESPACE": "default",
            "WORKLOAD_NAME": workload,
            "LABELS": {"app": workload, "security.istio.io/tlsMode": "istio"},
            "CLUSTER_ID": "Kubernetes",
            "MESH_ID": "cluster.local",
            "ISTIO_VERSION": "1.24.0",
            "INSTANCE_IPS": "127.0.0.1"
        }
    })
}

fn tls_params() -> Value {
    json!({
        "tls_minimum_protocol_version": "TLSv1_2",
        "tls_maximum_protocol_version": "TLSv1_3",
    })
}

/// The inbound side also carries istiod's cipher list (`ApplyToCommonTLSContext`).
fn inbound_tls_params() -> Value {
    let mut p = tls_params();
    p["cipher_suites"] = json!([
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-GCM-SHA256"
    ]);
    p
}

fn upstream_tls(alpn: &[&str], sni: &str) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_params": tls_params(),
                "alpn_protocols": alpn,
                "tls_certificate_sds_secret_configs": [istio_sds("default")],
                "combined_validation_context": {
                    "default_validation_context": {"match_subject_alt_names": [{"exact": SERVER_ID}]},
                    "validation_context_sds_secret_config": istio_sds("ROOTCA")
                }
            },
            "sni": sni
        }
    })
}

fn downstream_tls(alpn: &[&str]) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_params": inbound_tls_params(),
                "alpn_protocols": alpn,
                "tls_certificate_sds_secret_configs": [istio_sds("default")],
                "combined_validation_context": {
                    "default_validation_context": {"match_subject_alt_names": [{"prefix": "spiffe://cluster.local/"}]},
                    "validation_context_sds_secret_config": istio_sds("ROOTCA")
                }
            }
        }
    })
}

fn metadata_exchange_filter() -> Value {
    json!({
        "name": "istio.metadata_exchange",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
            "protocol": "istio-peer-exchange"
        }
    })
}

fn istio_authn_filter() -> Value {
    json!({
        "name": "istio_authn",
        "typed_config": {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": "type.googleapis.com/io.istio.network.authn.Config"}
    })
}

/// istiod's outbound HTTP metadata exchange (the peer_metadata filter of newer releases).
fn peer_metadata_filter() -> Value {
    json!({
        "name": "istio.metadata_exchange",
        "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/io.istio.http.peer_metadata.Config",
            "value": {"upstream_discovery": [{"istio_headers": {}}], "upstream_propagation": [{"istio_headers": {}}]}
        }
    })
}

/// istiod's inbound HTTP metadata exchange in its older, Wasm null-VM form (the conformance dumps').
fn wasm_metadata_exchange_filter() -> Value {
    json!({
        "name": "istio.metadata_exchange",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "vm_config": {"runtime": "envoy.wasm.runtime.null", "code": {"local": {"inline_string": "envoy.wasm.metadata_exchange"}}},
                "configuration": {"@type": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange"}
            }
        }
    })
}

fn explicit_h2() -> Value {
    json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}
        }
    })
}

/// An outbound cluster as istiod writes it for a mesh service: auto-mTLS through
/// `transport_socket_matches` on an endpoint labelled `tlsMode: istio`.
fn outbound_cluster(port: u32, host: &str, endpoint: u16, alpn: &[&str], h2: bool, exchange: bool) -> Value {
    let name = format!("outbound|{port}||{host}");
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": socket_address(endpoint)},
            "metadata": {"filter_metadata": {
                "envoy.transport_socket_match": {"tlsMode": "istio"},
                "istio": {"workload": "httpbin;default;httpbin;;Kubernetes"}
            }}
        }]}]},
        "transport_socket_matches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
             "transport_socket": upstream_tls(alpn, &format!("outbound_.{port}_._.{host}"))},
            {"name": "tlsMode-disabled", "match": {},
             "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}
        ],
    });
    if h2 {
        c["typed_extension_protocol_options"] = explicit_h2();
    }
    if exchange {
        c["filters"] = json!([metadata_exchange_filter()]);
    }
    c
}

fn static_cluster(name: &str, port: u16) -> Value {
    util::cluster(name, &[port])
}

/// The application's cluster keeps the protocol the mesh hop used (istiod's inbound HTTP
/// clusters for sniffed ports), so the application sees which one that was.
fn inbound_http_cluster(port: u16) -> Value {
    let mut c = static_cluster("inbound|8000||", port);
    c["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}
        }
    });
    c
}

fn sds_cluster(agent: &Agent) -> Value {
    util::h2_cluster("sds-grpc", &[agent.sds.addr.port()])
}

/// What istio-proxy runs that upstream Envoy cannot: Remora gets istiod's full shape.
fn istio_extensions(kind: ProxyKind) -> bool {
    kind == ProxyKind::Remora
}

fn outbound_listener(name: &str, port: u16, filter: Value) -> Value {
    let mut l = util::listener(name, port, filter, None);
    l["traffic_direction"] = json!("OUTBOUND");
    l
}

struct ClientPorts {
    admin: u16,
    http: u16,
    tcp: u16,
}

/// The client pod's sidecar: outbound HTTP (`/h2` to the HTTP/2 port, the rest HTTP/1.1) and TCP.
fn client_config(kind: ProxyKind, p: &ClientPorts, agent: &Agent, http_port: u16, tcp_port: u16) -> Value {
    let ext = istio_extensions(kind);
    let mut http_filters = vec![];
    if ext {
        http_filters.push(peer_metadata_filter());
        http_filters.push(util::istio_alpn_filter());
    }
    http_filters.push(util::router_filter());
    let routes = json!([
        {"match": {"prefix": "/h2"}, "route": {"cluster": format!("outbound|8001||{HTTP_HOST}"), "timeout": "0s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": format!("outbound|8000||{HTTP_HOST}"), "timeout": "0s"}}
    ]);
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "outbound_0.0.0.0_8000",
            "route_config": {"name": "8000", "virtual_hosts": [{"name": format!("{HTTP_HOST}:8000"), "domains": ["*"], "routes": routes}]},
            "http_filters": http_filters,
            "use_remote_address": false
        }
    });
    let tcp = json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": format!("outbound|9000||{TCP_HOST}"),
            "cluster": format!("outbound|9000||{TCP_HOST}")
        }
    });
    // istiod's TCP ALPN; without the exchange filter (upstream Envoy) `PILOT_DISABLE_MX_ALPN`'s.
    let tcp_alpn: &[&str] = if ext { &["istio-peer-exchange", "istio"] } else { &["istio"] };
    json!({
        "node": node(CLIENT_NODE, "sleep"),
        "admin": {"address": socket_address(p.admin)},
        "static_resources": {
            "listeners": [outbound_listener("outbound_http", p.http, hcm), outbound_listener("outbound_tcp", p.tcp, tcp)],
            "clusters": [
                outbound_cluster(8000, HTTP_HOST, http_port, &["istio-peer-exchange", "istio"], false, false),
                outbound_cluster(8001, HTTP_HOST, http_port, &["istio-peer-exchange", "istio", "h2"], true, false),
                outbound_cluster(9000, TCP_HOST, tcp_port, tcp_alpn, false, ext),
                sds_cluster(agent)
            ]
        }
    })
}

struct ServerPorts {
    admin: u16,
    http: u16,
    tcp: u16,
}

/// The server pod's sidecar: STRICT inbound chains for an HTTP port and a TCP port.
fn server_config(kind: ProxyKind, p: &ServerPorts, agent: &Agent, http_app: u16, tcp_app: u16) -> Value {
    let ext = istio_extensions(kind);
    let network_filters = |terminal: Value| {
        let mut filters = vec![];
        if ext {
            filters.push(istio_authn_filter());
            filters.push(metadata_exchange_filter());
        }
        filters.push(terminal);
        filters
    };
    let inbound_http_filters =
        if ext { vec![wasm_metadata_exchange_filter(), util::router_filter()] } else { vec![util::router_filter()] };
    let hcm = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "inbound_0.0.0.0_8000",
            "route_config": {"name": "inbound|8000||", "virtual_hosts": [{"name": "inbound|http|8000", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "inbound|8000||", "timeout": "0s"}}]}]},
            "http_filters": inbound_http_filters,
            "forward_client_cert_details": "APPEND_FORWARD",
            "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true},
            "use_remote_address": false
        }
    });
    let tcp = json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "inbound|9000||",
            "cluster": "inbound|9000||"
        }
    });
    let tcp_alpn: &[&str] = if ext { &["istio-peer-exchange", "h2", "http/1.1"] } else { &["h2", "http/1.1"] };
    let inbound = |name: &str, port: u16, terminal: Value, alpn: &[&str]| {
        json!({
            "name": name,
            "address": socket_address(port),
            "traffic_direction": "INBOUND",
            "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
                                  "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
            "filter_chains": [{
                "name": name,
                "filter_chain_match": {"destination_port": port, "transport_protocol": "tls"},
                "filters": network_filters(terminal),
                "transport_socket": downstream_tls(alpn)
            }]
        })
    };
    json!({
        "node": node(SERVER_NODE, "httpbin"),
        "admin": {"address": socket_address(p.admin)},
        "static_resources": {
            "listeners": [inbound("inbound_8000", p.http, hcm, &["h2", "http/1.1"]), inbound("inbound_9000", p.tcp, tcp, tcp_alpn)],
            "clusters": [inbound_http_cluster(http_app), static_cluster("inbound|9000||", tcp_app), sds_cluster(agent)]
        }
    })
}

// ---------------------------------------------------------------------------------------------
// applications and drivers
// ---------------------------------------------------------------------------------------------

/// A TCP echo application that also keeps every byte it received.
struct EchoApp {
    port: u16,
    received: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoApp {
    async fn start() -> EchoApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let port = listener.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let seen = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        seen.lock().expect("echo log").extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        EchoApp { port, received, task }
    }

    fn take_received(&self) -> Vec<u8> {
        std::mem::take(&mut *self.received.lock().expect("echo log"))
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_sidecar(kind: ProxyKind, bin: &Path, config: &Value, ports: &[u16]) -> support::Proxy {
    let vars = BTreeMap::new();
    start_proxy(kind, bin, &config.to_string(), &vars, ports, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{} did not start: {e}", kind.name()))
}

fn binary(kind: ProxyKind, envoy: Option<&Path>) -> PathBuf {
    match kind {
        ProxyKind::Envoy => envoy.expect("an Envoy binary for an Envoy sidecar").to_path_buf(),
        ProxyKind::Remora => remora_binary(),
    }
}

/// A TCP round trip through the client sidecar; retried while the sidecars fetch their secrets.
async fn tcp_round_trip(port: u16, payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = tokio::net::TcpStream::connect(local(port)).await.map_err(|e| e.to_string())?;
    s.write_all(payload).await.map_err(|e| e.to_string())?;
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .map_err(|_| "no echo within 5s".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(back)
}

/// What a client application might send in the metadata-exchange headers itself.
const SPOOFED_ID: &str = "sidecar~10.9.9.9~spoofed.default~default.svc.cluster.local";

async fn http_get(port: u16, path: &str, h2: bool) -> Result<util::Resp, String> {
    let req = Request::get(format!("http://{HTTP_HOST}{path}"))
        .header("host", HTTP_HOST)
        .header("x-envoy-peer-metadata-id", SPOOFED_ID)
        .header("x-envoy-peer-metadata", "CgsKBE5BTUUSAxoBeA==")
        .body(Full::<Bytes>::default())
        .map_err(|e| e.to_string())?;
    if h2 {
        util::h2_request(local(port), req).await
    } else {
        util::h1_request(local(port), req).await
    }
}

async fn admin_stat(admin: u16, name: &str) -> i64 {
    let resp = util::get(admin, "/stats", &[]).await;
    resp.text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// One mesh hop with `client` and `server` sidecars, checked over HTTP/1.1, HTTP/2 and TCP.
struct Hop {
    client: support::Proxy,
    server: support::Proxy,
    client_ports: ClientPorts,
    server_ports: ServerPorts,
    tcp_app: EchoApp,
    _http_app: Upstream,
    _agents: (Agent, Agent),
}

async fn mesh_hop(client_kind: ProxyKind, server_kind: ProxyKind, envoy: Option<&Path>, pki: &MeshPki) -> Hop {
    let (client_agent, server_agent) = (Agent::start(&pki.client, &pki.ca), Agent::start(&pki.server, &pki.ca));
    let http_app = Upstream::start("httpbin").await.expect("http app");
    let tcp_app = EchoApp::start().await;

    let sp = ServerPorts { admin: free_port(), http: free_port(), tcp: free_port() };
    let server_cfg = server_config(server_kind, &sp, &server_agent, http_app.port(), tcp_app.port);
    let server = start_sidecar(server_kind, &binary(server_kind, envoy), &server_cfg, &[sp.http, sp.tcp]).await;
    let cp = ClientPorts { admin: free_port(), http: free_port(), tcp: free_port() };
    let client_cfg = client_config(client_kind, &cp, &client_agent, sp.http, sp.tcp);
    let client = start_sidecar(client_kind, &binary(client_kind, envoy), &client_cfg, &[cp.http, cp.tcp]).await;
    let hop = Hop {
        client,
        server,
        client_ports: cp,
        server_ports: sp,
        tcp_app,
        _http_app: http_app,
        _agents: (client_agent, server_agent),
    };
    let what = format!("{} -> {}", client_kind.name(), server_kind.name());

    // Secrets arrive over SDS after start: wait for the first request to make it through.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match http_get(hop.client_ports.http, "/h1", false).await {
            Ok(r) if r.status == 200 => break,
            other => {
                if std::time::Instant::now() > deadline {
                    panic!(
                        "{what}: no request through the mesh: {:?}\nclient log:\n{}\nserver log:\n{}",
                        other.map(|r| (r.status, r.text())),
                        hop.client.logs(),
                        hop.server.logs()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Istio's HTTP metadata exchange: an inbound Remora takes the peer's headers off and answers
    // with its own; an outbound Remora writes its own and takes the peer's off the response.
    let (app_sees, client_app_sees) = match (client_kind, server_kind) {
        (_, ProxyKind::Remora) if client_kind == ProxyKind::Envoy => (None, Some((SERVER_NODE, "httpbin"))),
        (_, ProxyKind::Remora) => (None, None),
        (ProxyKind::Remora, ProxyKind::Envoy) => (Some((CLIENT_NODE, "sleep")), None),
        (ProxyKind::Envoy, ProxyKind::Envoy) => unreachable!("a hop has at least one Remora"),
    };
    for (path, h2, version) in [("/h1", false, "HTTP/1.1"), ("/h2", true, "HTTP/2.0")] {
        let r = http_get(hop.client_ports.http, path, h2).await.unwrap_or_else(|e| panic!("{what} {path}: {e}"));
        assert_eq!(r.status, 200, "{what} {path}: {}", r.text());
        let got = |id: Option<&str>, md: Option<&str>| (id.map(str::to_string), md.map(decode_peer_metadata));
        let expected = |who: Option<(&str, &str)>| match who {
            Some((id, workload)) => (Some(id.to_string()), Some(expected_frame(id, workload)["metadata"].clone())),
            None => (None, None),
        };
        assert_eq!(
            got(r.header("x-envoy-peer-metadata-id"), r.header("x-envoy-peer-metadata")),
            expected(client_app_sees),
            "{what} {path}: metadata-exchange headers on the client application's response"
        );
        let body = r.json();
        let app_header = |name: &str| body["headers"][name][0].as_str().map(str::to_string);
        assert_eq!(
            got(app_header("x-envoy-peer-metadata-id").as_deref(), app_header("x-envoy-peer-metadata").as_deref()),
            expected(app_sees),
            "{what} {path}: metadata-exchange headers at the server application"
        );
        assert_eq!(body["upstream"], "httpbin", "{what} {path}");
        assert_eq!(body["version"], version, "{what} {path}: the protocol on the second hop");
        let xfcc = body["headers"]["x-forwarded-client-cert"][0].as_str().unwrap_or_default().to_string();
        assert!(xfcc.starts_with(&format!("By={SERVER_ID};Hash=")), "{what} {path}: XFCC {xfcc}");
        assert!(xfcc.ends_with(&format!(";URI={CLIENT_ID}")), "{what} {path}: XFCC {xfcc}");
    }

    let payload = format!("tcp through the mesh, {what}").into_bytes();
    let echoed = tcp_round_trip(hop.client_ports.tcp, &payload).await.unwrap_or_else(|e| panic!("{what} tcp: {e}"));
    assert_eq!(echoed, payload, "{what}: the bytes the client application got back");
    assert_eq!(hop.tcp_app.take_received(), payload, "{what}: the bytes the server application received");
    hop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sidecar_to_remora_sidecar() {
    let Some(envoy) = envoy_binary() else { return };
    let hop = mesh_hop(ProxyKind::Envoy, ProxyKind::Remora, Some(&envoy), &MeshPki::new()).await;
    let server_scope = format!("listener.127.0.0.1_{}", hop.server_ports.http);
    assert!(admin_stat(hop.server_ports.admin, &format!("{server_scope}.ssl.handshake")).await >= 2);
    // Envoy offered no exchange protocol, so Remora's inbound TCP chain passed the bytes through.
    assert!(admin_stat(hop.server_ports.admin, "metadata_exchange.alpn_protocol_not_found").await >= 1);
    assert_eq!(admin_stat(hop.server_ports.admin, "metadata_exchange.alpn_protocol_found").await, 0);
    drop(hop.client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remora_sidecar_to_envoy_sidecar() {
    let Some(envoy) = envoy_binary() else { return };
    let hop = mesh_hop(ProxyKind::Remora, ProxyKind::Envoy, Some(&envoy), &MeshPki::new()).await;
    let admin = hop.client_ports.admin;
    assert!(admin_stat(admin, &format!("cluster.outbound|8000||{HTTP_HOST}.ssl.handshake")).await >= 1);
    assert!(admin_stat(admin, &format!("cluster.outbound|8001||{HTTP_HOST}.ssl.handshake")).await >= 1);
    // Envoy's TCP context did not take `istio-peer-exchange`: no frame was written.
    assert!(admin_stat(admin, "metadata_exchange.alpn_protocol_not_found").await >= 1);
    assert_eq!(admin_stat(admin, "metadata_exchange.metadata_added").await, 0);
    drop(hop.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remora_sidecars_exchange_metadata_over_tcp() {
    let hop = mesh_hop(ProxyKind::Remora, ProxyKind::Remora, None, &MeshPki::new()).await;
    // At least the checked round trip (the harness's port probes through the client sidecar may
    // add exchanges); every exchange wrote our frame and found the peer's.
    for (side, admin) in [("client", hop.client_ports.admin), ("server", hop.server_ports.admin)] {
        let found = admin_stat(admin, "metadata_exchange.alpn_protocol_found").await;
        assert!(found >= 1, "{side}");
        assert_eq!(admin_stat(admin, "metadata_exchange.metadata_added").await, found, "{side}");
        assert_eq!(admin_stat(admin, "metadata_exchange.initial_header_not_found").await, 0, "{side}");
        assert_eq!(admin_stat(admin, "metadata_exchange.header_not_found").await, 0, "{side}");
    }
    drop((hop.client, hop.server));
}

// ---------------------------------------------------------------------------------------------
// the independent peer
// ---------------------------------------------------------------------------------------------

/// A Python with the `protobuf` package: `$REMORA_TEST_PYTHON`, else the repository's `.venv`.
fn python_with_protobuf() -> Option<PathBuf> {
    let candidate = std::env::var_os("REMORA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| support::repo_root().join(".venv/bin/python3"));
    let ok = std::process::Command::new(&candidate)
        .args(["-c", "import google.protobuf"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(candidate);
    }
    let reason = format!("{} cannot import google.protobuf (tests/run.sh installs it)", candidate.display());
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but the metadata-exchange peer cannot run: {reason}");
    }
    eprintln!("SKIP: {reason}");
    None
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, pem).expect("write pem");
    p.display().to_string()
}

/// `x-envoy-peer-metadata`: base64 of a serialized `google.protobuf.Struct`, as JSON.
fn decode_peer_metadata(value: &str) -> Value {
    use base64::Engine;
    use prost::Message;
    let bytes = base64::engine::general_purpose::STANDARD.decode(value).expect("base64");
    struct_json(&prost_types::Struct::decode(bytes.as_slice()).expect("Struct"))
}

fn struct_json(s: &prost_types::Struct) -> Value {
    use prost_types::value::Kind;
    let value = |v: &prost_types::Value| match &v.kind {
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::StructValue(s)) => struct_json(s),
        other => json!(format!("{other:?}")),
    };
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value(v))).collect())
}

/// What Remora's frame must carry for a node built by [`node`]: istio-proxy's FlatNode subset
/// (no `INSTANCE_IPS`) and the node id.
fn expected_frame(id: &str, workload: &str) -> Value {
    let mut metadata = node(id, workload)["metadata"].clone();
    metadata.as_object_mut().expect("metadata").remove("INSTANCE_IPS");
    json!({"magic_ok": true, "type_url": "type.googleapis.com/google.protobuf.Struct", "deterministic": true, "id": id,
           "metadata": metadata, "keys": ["x-envoy-peer-metadata", "x-envoy-peer-metadata-id"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_exchange_with_an_independent_istio_peer() {
    let Some(python) = python_with_protobuf() else { return };
    let pki = MeshPki::new();
    let hop = mesh_hop(ProxyKind::Remora, ProxyKind::Remora, None, &pki).await;
    let script = support::repo_root().join("tests/interop/mx_peer.py");
    let dir = TempDir::new("remora-mx-peer").expect("dir");
    let ca = write_pem(dir.path(), "ca.pem", &pki.ca.pem());
    let pem_pair = |name: &str, id: &Identity| {
        (
            write_pem(dir.path(), &format!("{name}.pem"), &id.cert.pem()),
            write_pem(dir.path(), &format!("{name}.key"), &id.key.serialize_pem()),
        )
    };
    let (client_cert, client_key) = pem_pair("client", &pki.client);
    let (server_cert, server_key) = pem_pair("server", &pki.server);

    // The peer as a client pod's istio-proxy, into Remora's inbound TCP chain.
    let admin = hop.server_ports.admin;
    let found_before = admin_stat(admin, "metadata_exchange.alpn_protocol_found").await;
    let payload = "from the python peer";
    let args = vec![
        script.display().to_string(),
        "client".into(),
        "--port".into(),
        hop.server_ports.tcp.to_string(),
        "--cert".into(),
        client_cert.clone(),
        "--key".into(),
        client_key.clone(),
        "--ca".into(),
        ca.clone(),
        "--payload".into(),
        payload.into(),
    ];
    let py = python.clone();
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(py).args(args).output())
        .await
        .expect("join")
        .expect("run the python peer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python client: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(result["alpn"], "istio-peer-exchange");
    assert_eq!(result["peer"], expected_frame(SERVER_NODE, "httpbin"), "Remora's inbound frame");
    assert_eq!(result["echo"], payload);
    assert_eq!(hop.tcp_app.take_received(), payload.as_bytes(), "the peer's frame must not reach the application");
    assert!(admin_stat(admin, "metadata_exchange.alpn_protocol_found").await > found_before);
    assert_eq!(admin_stat(admin, "metadata_exchange.initial_header_not_found").await, 0);

    // The peer as a server pod's istio-proxy, behind Remora's outbound TCP cluster.
    let record = dir.path().join("record.jsonl");
    let mut server = std::process::Command::new(&python)
        .arg(&script)
        .args(["server", "--cert", &server_cert, "--key", &server_key, "--ca", &ca, "--record"])
        .arg(&record)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn the python server");
    let stdout = server.stdout.take().expect("stdout");
    let server = support::ChildGuard::new("mx-peer", server);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("read the peer's port");
    let peer_port: u16 = line.trim().strip_prefix("listening on ").and_then(|p| p.parse().ok()).expect("peer port");

    let cp = ClientPorts { admin: free_port(), http: free_port(), tcp: free_port() };
    let cfg = client_config(ProxyKind::Remora, &cp, &hop._agents.0, hop.server_ports.http, peer_port);
    let client = start_sidecar(ProxyKind::Remora, &remora_binary(), &cfg, &[cp.http, cp.tcp]).await;
    let payload = b"to the python peer";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let echoed = loop {
        match tcp_round_trip(cp.tcp, payload).await {
            Ok(b) => break b,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}\n{}", client.logs()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(echoed, payload, "the peer's frame must not reach the client application");
    drop(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let recorded = loop {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        let ok: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        // The harness's port probe through the sidecar is a connection without data: skip it.
        if let Some(r) = ok.iter().find(|r| r["received"].as_str().is_some_and(|s| !s.is_empty())) {
            break r.clone();
        }
        assert!(std::time::Instant::now() < deadline, "the peer recorded no connection: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(recorded["alpn"], "istio-peer-exchange");
    assert_eq!(recorded["peer"], expected_frame(CLIENT_NODE, "sleep"), "Remora's outbound frame");
    assert_eq!(recorded["received"], std::str::from_utf8(payload).expect("utf8"));
    drop(server);
}
