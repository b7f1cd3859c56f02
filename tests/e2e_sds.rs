//! End to end: TLS material from SDS, rotated live. A Remora listener takes its certificate and
//! its client-CA from path-based SDS (`sds_config.path_config_source`, the way file-mounted
//! secrets are delivered); an upstream cluster takes its client certificate from the bootstrap's
//! `static_resources.secrets`.
//!
//! * `listener_certificate_rotates_without_dropping_connections`: a keep-alive mTLS connection is
//!   opened, the SDS file is replaced with a new certificate; new handshakes get the new
//!   certificate within a second or so, and the connection opened before keeps serving requests.
//! * `grpc_sds_as_istio_configures_it`: the listener names `default` and `ROOTCA` through the
//!   `sds-grpc` cluster with istiod's exact `SdsSecretConfig`; `remora control-plane` serves them
//!   (StreamSecrets). A new certificate in the control plane's files reaches new handshakes; a
//!   broken secret is NACKed and the current certificate keeps serving.
//! * `ads_secret_as_credential_name`: a dynamic listener (LDS) names its certificate with an ADS
//!   `sds_config` (what istiod generates for a gateway's `credentialName`); the client subscribes
//!   to it over ADS (SotW and delta) and serves it; a new version of the secret is served to new
//!   handshakes.
//! * `transport_socket_matches_choose_per_endpoint`: Istio's auto-mTLS cluster shape: endpoints
//!   labelled `tlsMode: istio` are reached over mTLS (through a sidecar-like listener), the others
//!   in plaintext, within one cluster.
//! * `strict_mtls_refusals_are_counted`: a STRICT-shaped inbound port (only a `tls` filter chain,
//!   SPIFFE SAN prefix) refuses plaintext (`no_filter_chain_match`), no client certificate
//!   (`ssl.fail_verify_no_cert`), a foreign CA and an expired certificate
//!   (`ssl.fail_verify_error`), and a wrong identity (`ssl.fail_verify_san`).
//! * `istio_alpn_selects_the_peer_http_chain`: with the `istio.alpn` filter on the outbound HCM the
//!   mTLS connection offers `istio-http/1.1`, and the receiving side's filter chain for Istio's
//!   HTTP ALPNs serves it; without the filter the same request lands on the plain TLS (TCP) chain,
//!   as it would with Envoy sidecars.
//! * `static_secret_upstream_mtls`: Remora → an mTLS upstream (a second Remora listener) with the
//!   client certificate from a static secret and the upstream verified against its CA with a
//!   SPIFFE SAN matcher, not by host name; a wrong SAN is refused.

#[path = "e2e/pki.rs"]
mod pki;
mod support;
#[path = "e2e/util.rs"]
mod util;
#[path = "xds/common.rs"]
mod xds_common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use support::{free_port, Upstream};
use util::{bootstrap, cluster, hcm, listener, local, route, vhost, Proxy};

const CLIENT_ID: &str = "spiffe://e2e.test/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://e2e.test/ns/default/sa/server";

fn tls_secret(name: &str, cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"inline_string": cert.pem()},
            "private_key": {"inline_string": key.serialize_pem()}
        }
    })
}

fn ca_secret(name: &str, ca: &rcgen::Certificate) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        "name": name,
        "validation_context": {"trusted_ca": {"inline_string": ca.pem()}}
    })
}

/// `static_resources.secrets`: the same secrets without the `@type` an SDS response carries.
fn static_secrets(secrets: Vec<Value>) -> Value {
    secrets
        .into_iter()
        .map(|mut s| {
            if let Some(o) = s.as_object_mut() {
                o.remove("@type");
            }
            s
        })
        .collect()
}

/// Replaces the SDS file atomically, as secret-rotation tooling does.
fn write_sds(path: &Path, secrets: Vec<Value>) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string(&json!({ "resources": secrets })).expect("json")).expect("write sds");
    std::fs::rename(&tmp, path).expect("rename sds");
}

fn sds(name: &str, path: &Path) -> Value {
    json!({"name": name, "sds_config": {"path_config_source": {"path": path}, "resource_api_version": "V3"}})
}

fn client_config(
    ca: &rcgen::Certificate,
    cert: &rcgen::Certificate,
    key: &rcgen::KeyPair,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("CA")).expect("root");
    let chain = vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    // Every connection does a full handshake: a resumed session reports the certificate of the
    // session it resumed, not the one the listener serves now.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An mTLS keep-alive connection and the serial of the certificate the server presented.
async fn connect(port: u16, cfg: Arc<rustls::ClientConfig>) -> Result<(Sender, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(local(port)).await.map_err(|e| format!("connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let der = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).ok_or("no cert")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    let serial = parsed.raw_serial().to_vec();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("h1: {e}"))?;
    tokio::spawn(conn);
    Ok((sender, serial))
}

async fn get(sender: &mut Sender) -> Result<StatusCode, String> {
    sender.ready().await.map_err(|e| format!("ready: {e}"))?;
    let req = Request::get("/").header("host", "localhost").body(Full::<Bytes>::default()).expect("request");
    let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_certificate_rotates_without_dropping_connections() {
    let dir = support::TempDir::new("remora-e2e-sds").expect("dir");
    let (ca, issuer) = pki::ca("sds test CA");
    let (server_v1, server_v1_key) = pki::leaf(&issuer, "localhost", &["localhost"], Some(SERVER_ID));
    let (server_v2, server_v2_key) = pki::leaf(&issuer, "localhost", &["localhost"], Some(SERVER_ID));
    let (client, client_key) = pki::leaf(&issuer, "client", &[], Some(CLIENT_ID));
    let sds_path = dir.path().join("sds.json");
    write_sds(&sds_path, vec![tls_secret("server_cert", &server_v1, &server_v1_key), ca_secret("trust", &ca)]);

    let upstream = Upstream::start("backend").await.expect("upstream");
    let (admin, port) = (free_port(), free_port());
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [sds("server_cert", &sds_path)],
                "combined_validation_context": {
                    "default_validation_context": {"match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": CLIENT_ID}}]},
                    "validation_context_sds_secret_config": sds("trust", &sds_path)
                }
            }
        }
    });
    let routes = vhost(json!([route("/", "backend", json!({}))]));
    let config = bootstrap(
        admin,
        vec![listener("sds", port, hcm("sds", routes, json!({})), Some(tls))],
        vec![cluster("backend", &[upstream.port()])],
    );
    let proxy = Proxy::start(&config, &[port]).await;
    let cfg = client_config(&ca, &client, &client_key);

    let (mut before, serial_v1) = connect(port, cfg.clone()).await.expect("first connection");
    assert_eq!(get(&mut before).await, Ok(StatusCode::OK));
    let v1 = x509_parser::parse_x509_certificate(&CertificateDer::from_pem_slice(server_v1.pem().as_bytes()).unwrap())
        .unwrap()
        .1
        .raw_serial()
        .to_vec();
    assert_eq!(serial_v1, v1, "the listener serves the SDS certificate");

    write_sds(&sds_path, vec![tls_secret("server_cert", &server_v2, &server_v2_key), ca_secret("trust", &ca)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let serial_v2 = loop {
        let (mut fresh, serial) = connect(port, cfg.clone()).await.expect("connection during rotation");
        assert_eq!(get(&mut fresh).await, Ok(StatusCode::OK));
        if serial != serial_v1 {
            break serial;
        }
        assert!(Instant::now() < deadline, "the new certificate was not served; log:\n{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let v2 = x509_parser::parse_x509_certificate(&CertificateDer::from_pem_slice(server_v2.pem().as_bytes()).unwrap())
        .unwrap()
        .1
        .raw_serial()
        .to_vec();
    assert_eq!(serial_v2, v2);
    // The connection from before the rotation is untouched.
    for _ in 0..3 {
        assert_eq!(get(&mut before).await, Ok(StatusCode::OK));
    }

    // A broken file is rejected; the current certificate keeps serving.
    std::fs::write(&sds_path, "{\"resources\": [{\"@type\": \"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\", \"name\": \"server_cert\", \"tls_certificate\": {\"certificate_chain\": {\"inline_string\": \"garbage\"}, \"private_key\": {\"inline_string\": \"garbage\"}}}]}").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut after, serial) = connect(port, cfg.clone()).await.expect("connection after a bad file");
    assert_eq!(serial, v2);
    assert_eq!(get(&mut after).await, Ok(StatusCode::OK));
    assert!(proxy.logs().contains("SDS file rejected"), "{}", proxy.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_secret_upstream_mtls() {
    let (ca, issuer) = pki::ca("static secret CA");
    let (server, server_key) = pki::leaf(&issuer, "not-the-sni", &[], Some(SERVER_ID));
    let (client, client_key) = pki::leaf(&issuer, "client", &[], Some(CLIENT_ID));
    let upstream = Upstream::start("backend").await.expect("upstream");
    let (admin, front, back, wrong) = (free_port(), free_port(), free_port(), free_port());

    // The "upstream sidecar": an mTLS listener requiring the client's SPIFFE ID.
    let back_tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "server"}],
                "combined_validation_context": {
                    "default_validation_context": {"match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": CLIENT_ID}}]},
                    "validation_context_sds_secret_config": {"name": "trust"}
                }
            }
        }
    });
    let upstream_tls = |san: &str| {
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "outbound_.80_._.backend.default.svc.cluster.local",
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [{"name": "client"}],
                    "combined_validation_context": {
                        "default_validation_context": {"match_subject_alt_names": [{"exact": san}]},
                        "validation_context_sds_secret_config": {"name": "trust"}
                    }
                }
            }
        })
    };
    let mut via_mtls = cluster("via_mtls", &[back]);
    via_mtls["transport_socket"] = upstream_tls(SERVER_ID);
    let mut wrong_san = cluster("wrong_san", &[back]);
    wrong_san["transport_socket"] = upstream_tls("spiffe://e2e.test/ns/default/sa/someone-else");
    let mut config = bootstrap(
        admin,
        vec![
            listener("front", front, hcm("front", vhost(json!([route("/", "via_mtls", json!({}))])), json!({})), None),
            listener("wrong", wrong, hcm("wrong", vhost(json!([route("/", "wrong_san", json!({}))])), json!({})), None),
            listener(
                "back",
                back,
                hcm("back", vhost(json!([route("/", "backend", json!({}))])), json!({})),
                Some(back_tls),
            ),
        ],
        vec![via_mtls, wrong_san, cluster("backend", &[upstream.port()])],
    );
    config["static_resources"]["secrets"] = static_secrets(vec![
        tls_secret("server", &server, &server_key),
        tls_secret("client", &client, &client_key),
        ca_secret("trust", &ca),
    ]);
    let proxy = Proxy::start(&config, &[front, back, wrong]).await;

    let resp = util::get(front, "/", &[]).await;
    assert_eq!(resp.status, 200, "mTLS hop failed: {}\n{}", resp.text(), proxy.logs());
    assert!(resp.text().contains("\"upstream\":\"backend\""), "{}", resp.text());
    let resp = util::get(wrong, "/", &[]).await;
    assert_eq!(resp.status, 503, "an upstream with another SAN must be refused: {}", resp.text());
    assert!(proxy.stat("cluster.wrong_san.ssl.fail_verify_san").await.unwrap_or(0) >= 1, "{:?}", proxy.stats().await);
    assert!(proxy.stat("cluster.via_mtls.ssl.handshake").await.unwrap_or(0) >= 1, "{:?}", proxy.stats().await);
}

fn write_cp_secrets(dir: &Path, secrets: Vec<Value>) {
    xds_common::write_atomic(dir, "secrets.json", &serde_json::to_string(&secrets).expect("json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_sds_as_istio_configures_it() {
    let (ca, issuer) = pki::ca("grpc sds CA");
    let (v1, v1_key) = pki::leaf(&issuer, "localhost", &["localhost"], Some(SERVER_ID));
    let (v2, v2_key) = pki::leaf(&issuer, "localhost", &["localhost"], Some(SERVER_ID));
    let (client, client_key) = pki::leaf(&issuer, "client", &[], Some(CLIENT_ID));
    let serial = |c: &rcgen::Certificate| {
        let der = CertificateDer::from_pem_slice(c.pem().as_bytes()).expect("pem");
        x509_parser::parse_x509_certificate(&der).expect("x509").1.raw_serial().to_vec()
    };
    let config_dir = support::TempDir::new("remora-sds-cp").expect("dir");
    write_cp_secrets(config_dir.path(), vec![tls_secret("default", &v1, &v1_key), ca_secret("ROOTCA", &ca)]);
    let cp = xds_common::ControlPlane::start(config_dir.path(), ([127, 0, 0, 1], 0).into(), &[]);

    let upstream = Upstream::start("backend").await.expect("upstream");
    let (admin, port) = (free_port(), free_port());
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [util::istio_sds("default")],
                "combined_validation_context": {
                    "default_validation_context": {"match_subject_alt_names": [{"prefix": "spiffe://e2e.test/"}]},
                    "validation_context_sds_secret_config": util::istio_sds("ROOTCA")
                }
            }
        }
    });
    let routes = vhost(json!([route("/", "backend", json!({}))]));
    let config = bootstrap(
        admin,
        vec![listener("inbound", port, hcm("inbound", routes, json!({})), Some(tls))],
        vec![cluster("backend", &[upstream.port()]), util::h2_cluster("sds-grpc", &[cp.addr.port()])],
    );
    let proxy = Proxy::start(&config, &[port]).await;
    let cfg = client_config(&ca, &client, &client_key);

    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut before, first) = loop {
        match connect(port, cfg.clone()).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "no TLS from SDS: {e}\n{}\n{}", proxy.logs(), cp.logs()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(first, serial(&v1));
    assert_eq!(get(&mut before).await, Ok(StatusCode::OK));

    write_cp_secrets(config_dir.path(), vec![tls_secret("default", &v2, &v2_key), ca_secret("ROOTCA", &ca)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mut fresh, s) = connect(port, cfg.clone()).await.expect("connection during rotation");
        assert_eq!(get(&mut fresh).await, Ok(StatusCode::OK));
        if s == serial(&v2) {
            break;
        }
        assert!(Instant::now() < deadline, "rotation not served\n{}\n{}", proxy.logs(), cp.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&mut before).await, Ok(StatusCode::OK), "the connection from before the rotation");

    let mut broken = tls_secret("default", &v1, &v1_key);
    broken["tls_certificate"]["certificate_chain"]["inline_string"] = json!("not a certificate");
    write_cp_secrets(config_dir.path(), vec![broken, ca_secret("ROOTCA", &ca)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.logs().contains("SDS response rejected") {
        assert!(Instant::now() < deadline, "broken secret not NACKed\n{}\n{}", proxy.logs(), cp.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut after, s) = connect(port, cfg.clone()).await.expect("connection after the NACK");
    assert_eq!(s, serial(&v2));
    assert_eq!(get(&mut after).await, Ok(StatusCode::OK));
}

async fn ads_secret(api_type: &str) {
    let (ca, issuer) = pki::ca("ads secret CA");
    let (v1, v1_key) = pki::leaf(&issuer, "localhost", &["localhost"], Some(SERVER_ID));
    let (v2, v2_key) = pki::leaf(&issuer, "localhost", &["localhost"], Some(SERVER_ID));
    let (client, client_key) = pki::leaf(&issuer, "client", &[], Some(CLIENT_ID));
    let serial = |c: &rcgen::Certificate| {
        let der = CertificateDer::from_pem_slice(c.pem().as_bytes()).expect("pem");
        x509_parser::parse_x509_certificate(&der).expect("x509").1.raw_serial().to_vec()
    };
    let upstream = Upstream::start("backend").await.expect("upstream");
    let port = free_port();
    let dir = support::TempDir::new("remora-ads-secret").expect("dir");
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    let listener = json!({
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "gateway",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": {
                        "tls_certificate_sds_secret_configs": [{"name": "kubernetes://gateway-cert", "sds_config": ads}]
                    }
                }
            },
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "gateway",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]
        }]
    });
    let mut backend = cluster("backend", &[upstream.port()]);
    backend["@type"] = json!("type.googleapis.com/envoy.config.cluster.v3.Cluster");
    xds_common::write_atomic(
        dir.path(),
        "resources.json",
        &serde_json::to_string(&json!([listener, backend])).unwrap(),
    );
    write_cp_secrets(dir.path(), vec![tls_secret("kubernetes://gateway-cert", &v1, &v1_key)]);
    let cp = xds_common::ControlPlane::start(dir.path(), ([127, 0, 0, 1], 0).into(), &[]);
    let remora = xds_common::Remora::start(cp.addr, api_type, &[]).await;
    remora.wait_live(Duration::from_secs(20)).await;
    let cfg = client_config(&ca, &client, &client_key);

    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut conn, first) = loop {
        match connect(port, cfg.clone()).await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "no TLS from the ADS secret: {e}\n{}", remora.logs()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(first, serial(&v1));
    assert_eq!(get(&mut conn).await, Ok(StatusCode::OK));

    write_cp_secrets(dir.path(), vec![tls_secret("kubernetes://gateway-cert", &v2, &v2_key)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mut fresh, s) = connect(port, cfg.clone()).await.expect("connection during rotation");
        assert_eq!(get(&mut fresh).await, Ok(StatusCode::OK));
        if s == serial(&v2) {
            break;
        }
        assert!(Instant::now() < deadline, "the new secret version was not served\n{}", remora.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&mut conn).await, Ok(StatusCode::OK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_secret_as_credential_name_sotw() {
    ads_secret("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_secret_as_credential_name_delta() {
    ads_secret("DELTA_GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_socket_matches_choose_per_endpoint() {
    let (ca, issuer) = pki::ca("auto mtls CA");
    let (server, server_key) = pki::leaf(&issuer, "sidecar", &[], Some(SERVER_ID));
    let (client, client_key) = pki::leaf(&issuer, "client", &[], Some(CLIENT_ID));
    let meshed = Upstream::start("meshed").await.expect("upstream");
    let legacy = Upstream::start("legacy").await.expect("upstream");
    let (admin, front, sidecar) = (free_port(), free_port(), free_port());
    let sidecar_tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "server"}],
                "validation_context_sds_secret_config": {"name": "trust"}
            }
        }
    });
    let mtls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "outbound_.80_._.svc.default.svc.cluster.local",
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "client"}],
                "combined_validation_context": {
                    "default_validation_context": {"match_subject_alt_names": [{"exact": SERVER_ID}]},
                    "validation_context_sds_secret_config": {"name": "trust"}
                }
            }
        }
    });
    let endpoint = |port: u16, istio: bool| {
        let mut e = json!({"endpoint": {"address": util::socket_address(port)}});
        if istio {
            e["metadata"] = json!({"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}});
        }
        e
    };
    let svc = json!({
        "name": "svc",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "svc", "endpoints": [{"lb_endpoints": [endpoint(sidecar, true), endpoint(legacy.port(), false)]}]},
        "transport_socket_matches": [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": mtls},
            {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer"}}
        ]
    });
    let mut config = bootstrap(
        admin,
        vec![
            listener("front", front, hcm("front", vhost(json!([route("/", "svc", json!({}))])), json!({})), None),
            listener(
                "sidecar",
                sidecar,
                hcm("sidecar", vhost(json!([route("/", "meshed", json!({}))])), json!({})),
                Some(sidecar_tls),
            ),
        ],
        vec![svc, cluster("meshed", &[meshed.port()])],
    );
    config["static_resources"]["secrets"] = static_secrets(vec![
        tls_secret("server", &server, &server_key),
        tls_secret("client", &client, &client_key),
        ca_secret("trust", &ca),
    ]);
    let proxy = Proxy::start(&config, &[front, sidecar]).await;
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..20 {
        let resp = util::get(front, "/", &[]).await;
        assert_eq!(resp.status, 200, "request {i}: {}\n{}", resp.text(), proxy.logs());
        let upstream = resp.json()["upstream"].as_str().unwrap_or_default().to_string();
        *seen.entry(upstream).or_default() += 1;
    }
    assert_eq!(seen.get("meshed"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("legacy"), Some(&10), "{seen:?}");
    // The meshed endpoint was reached over mTLS (the sidecar listener terminated it).
    let sidecar_scope = format!("listener.127.0.0.1_{sidecar}");
    assert!(proxy.stat(&format!("{sidecar_scope}.ssl.handshake")).await.unwrap_or(0) >= 1, "{:?}", proxy.stats().await);
}

/// A TLS client for the refusal cases: any server certificate accepted (the server is not what is
/// tested), this client certificate (if any) presented.
fn any_server_client(cert: Option<(&rcgen::Certificate, &rcgen::KeyPair)>) -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut cfg = match cert {
        Some((c, k)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.pem().as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(k.serialize_pem().as_bytes()).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_refusals_are_counted() {
    let (ca, issuer) = pki::ca("strict CA");
    let (server, server_key) = pki::leaf(&issuer, "sidecar", &[], Some(SERVER_ID));
    let (good, good_key) = pki::leaf(&issuer, "client", &[], Some(CLIENT_ID));
    let (stranger, stranger_key) = pki::leaf(&issuer, "stranger", &[], Some("spiffe://elsewhere.test/ns/x/sa/y"));
    let (_, foreign_issuer) = pki::ca("foreign CA");
    let (foreign, foreign_key) = pki::leaf(&foreign_issuer, "foreign", &[], Some(CLIENT_ID));
    let expired_key = rcgen::KeyPair::generate().expect("key");
    let mut expired_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    expired_params.subject_alt_names.push(rcgen::SanType::URI(CLIENT_ID.try_into().expect("uri")));
    expired_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    expired_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = expired_params.signed_by(&expired_key, &issuer).expect("expired cert");

    let upstream = Upstream::start("backend").await.expect("upstream");
    let (admin, port) = (free_port(), free_port());
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [{"name": "server"}],
                "combined_validation_context": {
                    "default_validation_context": {"match_subject_alt_names": [{"prefix": "spiffe://e2e.test/"}]},
                    "validation_context_sds_secret_config": {"name": "trust"}
                }
            }
        }
    });
    let mut inbound = listener(
        "inbound",
        port,
        hcm("inbound", vhost(json!([route("/", "backend", json!({}))])), json!({})),
        Some(tls),
    );
    inbound["filter_chains"][0]["filter_chain_match"] = json!({"transport_protocol": "tls"});
    inbound["listener_filters"] = json!([{
        "name": "envoy.filters.listener.tls_inspector",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}
    }]);
    let mut config = bootstrap(admin, vec![inbound], vec![cluster("backend", &[upstream.port()])]);
    config["static_resources"]["secrets"] =
        static_secrets(vec![tls_secret("server", &server, &server_key), ca_secret("trust", &ca)]);
    let proxy = Proxy::start(&config, &[port]).await;
    let scope = format!("listener.127.0.0.1_{port}");
    let stat = |name: &str| {
        let name = format!("{scope}.{name}");
        let proxy = &proxy;
        async move { proxy.stat(&name).await.unwrap_or(0) }
    };

    // The right identity passes.
    let (mut ok, _) = connect(port, any_server_client(Some((&good, &good_key)))).await.expect("good client");
    assert_eq!(get(&mut ok).await, Ok(StatusCode::OK));
    assert_eq!(stat("ssl.handshake").await, 1);

    // Plaintext: no filter chain takes it. (Start-up's port probe already counted as one.)
    let unmatched_before = stat("no_filter_chain_match").await;
    let resp =
        util::h1_request(local(port), Request::get("/").header("host", "x").body(Full::default()).unwrap()).await;
    assert!(resp.is_err(), "plaintext was served: {:?}", resp.map(|r| r.status));

    // Each refused handshake, by what is wrong with the client.
    let refused = |cfg| async move {
        match connect(port, cfg).await {
            Ok((mut s, _)) => get(&mut s).await.err().unwrap_or_else(|| "served".into()),
            Err(e) => e,
        }
    };
    assert_ne!(refused(any_server_client(None)).await, "served");
    assert_ne!(refused(any_server_client(Some((&foreign, &foreign_key)))).await, "served");
    assert_ne!(refused(any_server_client(Some((&expired, &expired_key)))).await, "served");
    assert_ne!(refused(any_server_client(Some((&stranger, &stranger_key)))).await, "served");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = proxy.stats().await;
    let n = |name: &str| stats.get(&format!("{scope}.{name}")).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    assert_eq!(n("no_filter_chain_match"), unmatched_before + 1, "{stats:?}");
    assert_eq!(n("ssl.fail_verify_no_cert"), 1, "{stats:?}");
    assert_eq!(n("ssl.fail_verify_error"), 2, "foreign CA and expired: {stats:?}");
    assert_eq!(n("ssl.fail_verify_san"), 1, "{stats:?}");
    assert_eq!(n("ssl.connection_error"), 4, "{stats:?}");
    assert_eq!(n("ssl.handshake"), 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_alpn_selects_the_peer_http_chain() {
    let (ca, issuer) = pki::ca("alpn CA");
    let (server, server_key) = pki::leaf(&issuer, "sidecar", &[], Some(SERVER_ID));
    let (client, client_key) = pki::leaf(&issuer, "client", &[], Some(CLIENT_ID));
    let http_app = Upstream::start("http-chain").await.expect("upstream");
    let tcp_app = Upstream::start("tcp-chain").await.expect("upstream");
    let (admin, with_alpn, without_alpn, inbound) = (free_port(), free_port(), free_port(), free_port());
    let server_tls = |alpn: Value| {
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": {
                    "alpn_protocols": alpn,
                    "tls_certificate_sds_secret_configs": [{"name": "server"}],
                    "validation_context_sds_secret_config": {"name": "trust"}
                }
            }
        })
    };
    // The receiving sidecar, shaped like istiod's PERMISSIVE/STRICT inbound chains for one port.
    let http_chain = json!({
        "filter_chain_match": {"transport_protocol": "tls", "application_protocols": ["istio-http/1.0", "istio-http/1.1", "istio-h2"]},
        "filters": [hcm("inbound_http", vhost(json!([route("/", "http_app", json!({}))])), json!({}))],
        "transport_socket": server_tls(json!(["h2", "http/1.1"]))
    });
    let tcp_chain = json!({
        "filter_chain_match": {"transport_protocol": "tls"},
        "filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "inbound_tcp", "cluster": "tcp_app"}
        }],
        "transport_socket": server_tls(json!(["istio-peer-exchange", "h2", "http/1.1"]))
    });
    let inbound_listener = json!({
        "name": "inbound",
        "address": util::socket_address(inbound),
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filter_chains": [http_chain, tcp_chain]
    });
    let mut outbound = cluster("outbound", &[inbound]);
    outbound["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["istio-peer-exchange", "istio"],
                "tls_certificate_sds_secret_configs": [{"name": "client"}],
                "combined_validation_context": {
                    "default_validation_context": {"match_subject_alt_names": [{"exact": SERVER_ID}]},
                    "validation_context_sds_secret_config": {"name": "trust"}
                }
            }
        }
    });
    let routes = vhost(json!([route("/", "outbound", json!({}))]));
    let mut config = bootstrap(
        admin,
        vec![
            listener(
                "with_alpn",
                with_alpn,
                hcm(
                    "with_alpn",
                    routes.clone(),
                    json!({"http_filters": [util::istio_alpn_filter(), util::router_filter()]}),
                ),
                None,
            ),
            listener("without_alpn", without_alpn, hcm("without_alpn", routes, json!({})), None),
            inbound_listener,
        ],
        vec![outbound, cluster("http_app", &[http_app.port()]), cluster("tcp_app", &[tcp_app.port()])],
    );
    config["static_resources"]["secrets"] = static_secrets(vec![
        tls_secret("server", &server, &server_key),
        tls_secret("client", &client, &client_key),
        ca_secret("trust", &ca),
    ]);
    let proxy = Proxy::start(&config, &[with_alpn, without_alpn, inbound]).await;
    let resp = util::get(with_alpn, "/", &[]).await;
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), proxy.logs());
    assert_eq!(resp.json()["upstream"], "http-chain", "istio.alpn must select the HTTP chain: {}", resp.text());
    let resp = util::get(without_alpn, "/", &[]).await;
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), proxy.logs());
    assert_eq!(resp.json()["upstream"], "tcp-chain", "{}", resp.text());
}
