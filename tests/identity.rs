//! Workload identity end to end, with the real `remora control-plane --ca-dir` as Istio's CA and
//! real `remora` sidecars:
//!
//! * `two_sidecars_mtls_through_the_control_plane_ca`: a frontend and a backend sidecar each get
//!   their certificate from the CA (ECDSA key, CSR, bearer token → identity), configured with
//!   istiod's exact `sds-grpc` `default`/`ROOTCA` references. The frontend checks the backend's
//!   SPIFFE ID (`match_subject_alt_names`), the backend requires a client certificate from the
//!   mesh and forwards the caller's ID in `x-forwarded-client-cert`; a cluster expecting another
//!   identity is refused with `ssl.fail_verify_san`.
//! * `renewal_and_ca_outage`: with `--secret-ttl 10s` the backend's certificate is renewed at
//!   half-life; with the CA killed the current certificate keeps serving and the failures are
//!   logged; once the CA is back the next renewal happens.
//! * `ca_errors_are_clear`: an unknown token is rejected (Unauthenticated), an unreachable CA and
//!   a CA answering with a one-element chain or non-PEM give their own typed errors.
//! * `rsa_workload_key_on_request`: with `--ecc-signature-algorithm RSA` the backend's key is RSA
//!   2048, the CA signs it, and the mTLS exchange with an ECDSA frontend works.
//! * `rotation_every_30s_under_load`: both sidecars hold 60 s certificates, so each rotates about
//!   every 30 s, for 3 minutes (`REMORA_ROTATION_SECS` shortens it for local runs) under steady
//!   load through the mesh: no request fails, both sides present new certificates (new
//!   handshakes see new serials; the application sees new client-certificate hashes in XFCC),
//!   and connections opened before the first rotation are still the ones in use at the end.

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

use remora::identity::caclient::CaClient;
use remora::identity::config::{KeyAlgorithm, Overrides};
use remora::identity::{IdentityConfig, IdentityError};
use serde_json::json;
use support::{free_port, Upstream};
use util::{bootstrap, cluster, hcm, listener, route, vhost, Proxy};

const TD: &str = "cluster.local";

struct Mesh {
    _dir: support::TempDir,
    cp: xds_common::ControlPlane,
    cp_port: u16,
    config_dir: std::path::PathBuf,
    ca_dir: std::path::PathBuf,
    tokens: std::path::PathBuf,
    frontend_token: std::path::PathBuf,
    backend_token: std::path::PathBuf,
}

fn start_control_plane(config_dir: &Path, ca_dir: &Path, tokens: &Path, port: u16) -> xds_common::ControlPlane {
    xds_common::ControlPlane::start(
        config_dir,
        ([127, 0, 0, 1], port).into(),
        &["--ca-dir".into(), ca_dir.display().to_string(), "--ca-tokens".into(), tokens.display().to_string()],
    )
}

fn mesh() -> Mesh {
    let dir = support::TempDir::new("remora-identity").expect("dir");
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let ca_dir = dir.path().join("ca");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "frontend-token: default/frontend\nbackend-token: spiffe://cluster.local/ns/default/sa/backend\ntester-token: default/tester\n").unwrap();
    let frontend_token = dir.path().join("frontend.jwt");
    std::fs::write(&frontend_token, "frontend-token\n").unwrap();
    let backend_token = dir.path().join("backend.jwt");
    std::fs::write(&backend_token, "backend-token").unwrap();
    let cp_port = free_port();
    let cp = start_control_plane(&config_dir, &ca_dir, &tokens, cp_port);
    Mesh { _dir: dir, cp, cp_port, config_dir, ca_dir, tokens, frontend_token, backend_token }
}

/// The backend sidecar: an mTLS inbound listener (STRICT-like) in front of `app`.
async fn backend(m: &Mesh, app: &Upstream, ttl: &str) -> (Proxy, u16) {
    backend_with(m, app, ttl, &[]).await
}

/// [`backend`] with more command-line flags.
async fn backend_with(m: &Mesh, app: &Upstream, ttl: &str, more: &[&str]) -> (Proxy, u16) {
    let (admin, inbound) = (free_port(), free_port());
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificate_sds_secret_configs": [util::istio_sds("default")],
                "combined_validation_context": {
                    "default_validation_context": {"match_subject_alt_names": [{"prefix": format!("spiffe://{TD}/")}]},
                    "validation_context_sds_secret_config": util::istio_sds("ROOTCA")
                }
            }
        }
    });
    let extra = json!({"forward_client_cert_details": "APPEND_FORWARD", "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true}});
    let config = bootstrap(
        admin,
        vec![listener(
            "virtualInbound",
            inbound,
            hcm("inbound_0.0.0.0_80", vhost(json!([route("/", "inbound|80||", json!({}))])), extra),
            Some(tls),
        )],
        vec![cluster("inbound|80||", &[app.port()])],
    );
    let args = xds_common::ca_args(&m.cp, &m.backend_token, "backend", ttl);
    let args: Vec<&str> = args.iter().map(String::as_str).chain(more.iter().copied()).collect();
    (Proxy::start_with(&config, &[inbound], 1, &args).await, inbound)
}

/// The frontend sidecar: plaintext outbound listeners to the backend over mTLS, one expecting the
/// backend's identity and one expecting another.
async fn frontend(m: &Mesh, backend_port: u16, ttl: &str) -> (Proxy, u16, u16) {
    let (proxy, good, bad, _) = frontend_with_fresh(m, backend_port, ttl).await;
    (proxy, good, bad)
}

/// [`frontend`], plus a listener whose upstream connections serve one request each (so every
/// request shows the certificate the frontend holds now).
async fn frontend_with_fresh(m: &Mesh, backend_port: u16, ttl: &str) -> (Proxy, u16, u16, u16) {
    let (admin, good, bad, fresh) = (free_port(), free_port(), free_port(), free_port());
    let upstream_tls = |san: String| {
        json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "outbound_.80_._.backend.default.svc.cluster.local",
                "common_tls_context": {
                    "alpn_protocols": ["istio-peer-exchange", "istio"],
                    "tls_certificate_sds_secret_configs": [util::istio_sds("default")],
                    "combined_validation_context": {
                        "default_validation_context": {"match_subject_alt_names": [{"exact": san}]},
                        "validation_context_sds_secret_config": util::istio_sds("ROOTCA")
                    }
                }
            }
        })
    };
    let mut to_backend = cluster("outbound|80||backend.default.svc.cluster.local", &[backend_port]);
    to_backend["transport_socket"] = upstream_tls(format!("spiffe://{TD}/ns/default/sa/backend"));
    let mut to_impostor = cluster("outbound|80||impostor.default.svc.cluster.local", &[backend_port]);
    to_impostor["transport_socket"] = upstream_tls(format!("spiffe://{TD}/ns/default/sa/payments"));
    let mut one_shot = to_backend.clone();
    one_shot["name"] = json!("outbound|80|fresh|backend.default.svc.cluster.local");
    one_shot["load_assignment"]["cluster_name"] = one_shot["name"].clone();
    one_shot["max_requests_per_connection"] = json!(1);
    // No session resumption: a resumed session would carry the certificate of its first handshake.
    one_shot["transport_socket"]["typed_config"]["max_session_keys"] = json!(0);
    let config = bootstrap(
        admin,
        vec![
            listener(
                "out_good",
                good,
                hcm(
                    "out_good",
                    vhost(json!([route("/", "outbound|80||backend.default.svc.cluster.local", json!({}))])),
                    json!({}),
                ),
                None,
            ),
            listener(
                "out_bad",
                bad,
                hcm(
                    "out_bad",
                    vhost(json!([route("/", "outbound|80||impostor.default.svc.cluster.local", json!({}))])),
                    json!({}),
                ),
                None,
            ),
            listener(
                "out_fresh",
                fresh,
                hcm(
                    "out_fresh",
                    vhost(json!([route("/", "outbound|80|fresh|backend.default.svc.cluster.local", json!({}))])),
                    json!({}),
                ),
                None,
            ),
        ],
        vec![to_backend, to_impostor, one_shot],
    );
    let args = xds_common::ca_args(&m.cp, &m.frontend_token, "frontend", ttl);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Proxy::start_with(&config, &[good, bad, fresh], 1, &args).await, good, bad, fresh)
}

/// Polls `port` until a request is answered 200 (certificates arrive shortly after start).
async fn until_ok(port: u16, what: &str, logs: impl Fn() -> String) -> util::Resp {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = util::get(port, "/", &[]).await;
        if resp.status == 200 {
            return resp;
        }
        assert!(Instant::now() < deadline, "{what}: still {} — {}\n{}", resp.status, resp.text(), logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_mtls_through_the_control_plane_ca() {
    let m = mesh();
    let app = Upstream::start("backend-app").await.expect("app");
    let (back, back_port) = backend(&m, &app, "24h").await;
    let (front, good, bad) = frontend(&m, back_port, "24h").await;
    let resp = until_ok(good, "frontend → backend over mTLS", || {
        format!("{}\n{}\n{}", front.logs(), back.logs(), m.cp.logs())
    })
    .await;
    let xfcc = resp.json()["headers"]["x-forwarded-client-cert"][0].as_str().unwrap_or_default().to_string();
    assert!(xfcc.starts_with(&format!("By=spiffe://{TD}/ns/default/sa/backend;Hash=")), "{xfcc}");
    assert!(xfcc.ends_with(&format!("Subject=\"\";URI=spiffe://{TD}/ns/default/sa/frontend")), "{xfcc}");
    // The CA issued the token's identities, and the backend saw a handshake.
    assert!(m.cp.logs().contains("identity=spiffe://cluster.local/ns/default/sa/frontend"), "{}", m.cp.logs());
    assert!(m.ca_dir.join("root-cert.pem").exists() && m.ca_dir.join("root-key.pem").exists());

    let resp = util::get(bad, "/", &[]).await;
    assert_eq!(resp.status, 503, "a backend with another identity must be refused: {}", resp.text());
    let stat = front.stat("cluster.outbound|80||impostor.default.svc.cluster.local.ssl.fail_verify_san").await;
    assert!(stat.unwrap_or(0) >= 1, "{:?}", front.stats().await);
}

/// The serial of the certificate `port` serves, seen by a client with a mesh certificate.
async fn served_serial(port: u16, client: &Arc<rustls::ClientConfig>) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(rustls::pki_types::ServerName::try_from("backend").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let der = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?.clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    Ok(cert.raw_serial_as_string())
}

/// A client TLS config holding a certificate the CA issued for `tester`, trusting the CA's root.
async fn tester_client(m: &Mesh) -> Arc<rustls::ClientConfig> {
    let token = m.ca_dir.join("../tester.jwt");
    std::fs::write(&token, "tester-token").unwrap();
    let cfg = config_for(&m.cp.addr.to_string(), &token, "tester", "1h");
    let cert = CaClient::new(&cfg).unwrap().issue(&cfg).await.expect("tester certificate");
    let root = rustls::pki_types::CertificateDer::pem_slice_iter(cert.root_pem.as_bytes()).next().unwrap().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let chain: Vec<_> =
        rustls::pki_types::CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes()).map(|c| c.unwrap()).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    #[derive(Debug)]
    struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);
    impl rustls::client::danger::ServerCertVerifier for ChainOnly {
        fn verify_server_cert(
            &self,
            end_entity: &rustls::pki_types::CertificateDer<'_>,
            intermediates: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            ocsp: &[u8],
            now: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            // Workload certificates carry only a SPIFFE URI: check the chain, not a host name.
            match self.0.verify_server_cert(
                end_entity,
                intermediates,
                &rustls::pki_types::ServerName::try_from("x").unwrap(),
                ocsp,
                now,
            ) {
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
                | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
                    Ok(rustls::client::danger::ServerCertVerified::assertion())
                }
                other => other,
            }
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(m, c, d)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(m, c, d)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots)).build().unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

fn config_for(cp_addr: &str, token: &Path, sa: &str, ttl: &str) -> IdentityConfig {
    let o = Overrides {
        ca_addr: Some(format!("http://{cp_addr}")),
        namespace: Some("default".into()),
        service_account: Some(sa.into()),
        secret_ttl: Some(ttl.into()),
        token_path: Some(token.to_path_buf()),
        ..Default::default()
    };
    let cfg = IdentityConfig::from_lookup(&o, |_| None).unwrap().unwrap();
    assert_eq!(cfg.key, KeyAlgorithm::EcdsaP256);
    cfg
}

use rustls::pki_types::pem::PemObject;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_and_ca_outage() {
    let mut m = mesh();
    let app = Upstream::start("backend-app").await.expect("app");
    let (back, back_port) = backend(&m, &app, "10s").await;
    let client = tester_client(&m).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        match served_serial(back_port, &client).await {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < deadline, "no certificate served: {e}\n{}", back.logs()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Renewed at about half of the 10 s from issuance.
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        let s = served_serial(back_port, &client).await.expect("handshake during renewal");
        if s != first {
            break s;
        }
        assert!(Instant::now() < deadline, "not renewed\n{}", back.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The CA goes away: the current certificate keeps serving, the failures are logged.
    m.cp.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !back.logs().contains("workload certificate request failed") {
        assert!(Instant::now() < deadline, "no failed renewal logged\n{}", back.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let during = served_serial(back_port, &client).await.expect("handshake with the CA down");
    assert_eq!(during, second, "the current certificate keeps serving while the CA is down");
    assert!(back.logs().contains("keeps serving until it expires"), "{}", back.logs());
    // Back on the same port: renewals resume.
    m.cp = start_control_plane(&m.config_dir, &m.ca_dir, &m.tokens, m.cp_port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = served_serial(back_port, &client).await.expect("handshake after the CA returned");
        if s != first && s != second {
            break;
        }
        assert!(Instant::now() < deadline, "no renewal after the CA returned\n{}", back.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A CA that answers every request with `chain`.
struct FixedCa(Vec<String>);

#[tonic::async_trait]
impl remora::identity::pb::istio_certificate_service_server::IstioCertificateService for FixedCa {
    async fn create_certificate(
        &self,
        _: tonic::Request<remora::identity::pb::IstioCertificateRequest>,
    ) -> Result<tonic::Response<remora::identity::pb::IstioCertificateResponse>, tonic::Status> {
        Ok(tonic::Response::new(remora::identity::pb::IstioCertificateResponse { cert_chain: self.0.clone() }))
    }
}

async fn serve_fixed(chain: Vec<String>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(remora::identity::pb::istio_certificate_service_server::IstioCertificateServiceServer::new(
                FixedCa(chain),
            ))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_errors_are_clear() {
    let m = mesh();
    let bad_token = m.ca_dir.join("../bad.jwt");
    std::fs::write(&bad_token, "not-a-known-token").unwrap();
    let cfg = config_for(&m.cp.addr.to_string(), &bad_token, "frontend", "1h");
    match CaClient::new(&cfg).unwrap().issue(&cfg).await {
        Err(IdentityError::Rejected { code: tonic::Code::Unauthenticated, .. }) => {}
        other => panic!("wrong token: {other:?}"),
    }
    let cfg = config_for(&m.cp.addr.to_string(), &m.frontend_token, "frontend", "1h");
    let ok = CaClient::new(&cfg).unwrap().issue(&cfg).await.expect("issued");
    assert!(ok.not_after > ok.not_before);

    let nowhere = config_for(&format!("127.0.0.1:{}", free_port()), &m.frontend_token, "frontend", "1h");
    match CaClient::new(&nowhere).unwrap().issue(&nowhere).await {
        Err(e @ IdentityError::Unreachable { .. }) => assert!(e.to_string().contains("unreachable"), "{e}"),
        other => panic!("unreachable CA: {other:?}"),
    }
    for (chain, what) in [
        (vec![ok.chain_pem.clone()], "one element"),
        (vec!["garbage".to_string(), ok.root_pem.clone()], "not PEM"),
        (vec![ok.chain_pem.clone(), ok.root_pem.clone()], "another key"),
    ] {
        let addr = serve_fixed(chain).await;
        let cfg = config_for(&addr.to_string(), &m.frontend_token, "frontend", "1h");
        match CaClient::new(&cfg).unwrap().issue(&cfg).await {
            Err(e @ IdentityError::Malformed { .. }) => println!("{what}: {e}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_stream_carries_the_workload_token() {
    let m = mesh();
    // Something to serve, so LIVE means the stream really delivered.
    write_atomic_listener(&m.config_dir);
    let args = xds_common::ca_args(&m.cp, &m.frontend_token, "frontend", "1h");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let with_token = xds_common::Remora::start(m.cp.addr, "DELTA_GRPC", &args).await;
    with_token.wait_live(Duration::from_secs(20)).await;
    assert_eq!(with_token.stat("control_plane.connected_state").await, 1);
    assert_eq!(with_token.stat("listener_manager.lds.update_success").await, 1, "{}", with_token.logs());

    // Without a workload identity there is no token: the control plane refuses the stream.
    let without = xds_common::Remora::start(m.cp.addr, "DELTA_GRPC", &[]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !without.logs().contains("authentication failure") {
        assert!(Instant::now() < deadline, "stream without a token not refused:\n{}", without.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(without.stat("control_plane.connected_state").await, 0);
}

fn write_atomic_listener(dir: &Path) {
    let port = free_port();
    let listener = format!(
        r#"{{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "l", "address": {{"socket_address": {{"address": "127.0.0.1", "port_value": {port}}}}},
 "filter_chains": [{{"filters": [{{"name": "envoy.filters.network.tcp_proxy", "typed_config": {{"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "t", "cluster": "nowhere"}}}}]}}]}}"#
    );
    xds_common::write_atomic(dir, "listener.json", &listener);
}

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// A keep-alive HTTP/1.1 connection to 127.0.0.1:`port`, plaintext or over `tls`.
async fn keep_alive(port: u16, tls: Option<&Arc<rustls::ClientConfig>>) -> Sender {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    match tls {
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from("backend").expect("name");
            let tls = tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, tcp).await.expect("mTLS handshake");
            http1_on(tls).await
        }
        None => http1_on(tcp).await,
    }
}

async fn http1_on<I>(io: I) -> Sender
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.expect("h1");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// One GET on a kept-alive connection; the status and the XFCC the application saw.
async fn get_on(sender: &mut Sender) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    sender.ready().await.map_err(|e| format!("connection closed: {e}"))?;
    let req = http::Request::get("/").header("host", "backend").body(Default::default()).unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Ok((status, v["headers"]["x-forwarded-client-cert"][0].as_str().unwrap_or_default().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_every_30s_under_load() {
    let secs: u64 = std::env::var("REMORA_ROTATION_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(180);
    let m = mesh();
    let app = Upstream::start("backend-app").await.expect("app");
    let (back, back_port) = backend(&m, &app, "60s").await;
    let (front, good, _, fresh) = frontend_with_fresh(&m, back_port, "60s").await;
    until_ok(good, "frontend → backend", || format!("{}\n{}", front.logs(), back.logs())).await;
    let tester = tester_client(&m).await;
    let backend_cx = format!("listener.127.0.0.1_{back_port}.downstream_cx_total");

    // Connections opened before any rotation: through the mesh, and straight to the backend.
    let mut through_mesh = keep_alive(good, None).await;
    let mut direct = keep_alive(back_port, Some(&tester)).await;
    assert_eq!(get_on(&mut through_mesh).await.map(|r| r.0), Ok(200));
    assert_eq!(get_on(&mut direct).await.map(|r| r.0), Ok(200));
    let first_serial = served_serial(back_port, &tester).await.expect("serial");

    // Steady load: workers on kept-alive connections; every response must be a 200.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut sender = keep_alive(good, None).await;
                let (mut ok, mut failed) = (0u64, Vec::new());
                while Instant::now() < deadline {
                    match get_on(&mut sender).await {
                        Ok((200, _)) => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (ok, failed)
            })
        })
        .collect();
    // Meanwhile: the certificates new handshakes show on both sides (the backend's serial; the
    // frontend's through a one-request upstream connection, as the hash in XFCC), and the early
    // connections kept in use.
    let mut serials = std::collections::BTreeSet::from([first_serial]);
    let mut client_certs = std::collections::BTreeSet::new();
    let mut fresh_conn = keep_alive(fresh, None).await;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        serials.insert(served_serial(back_port, &tester).await.expect("a new handshake during rotation"));
        let (status, xfcc) = get_on(&mut fresh_conn).await.expect("a request on a fresh upstream connection");
        assert_eq!(status, 200);
        if let Some(h) = xfcc.split(';').find_map(|p| p.strip_prefix("Hash=")) {
            client_certs.insert(h.to_string());
        }
        assert_eq!(get_on(&mut through_mesh).await.map(|r| r.0), Ok(200), "the early mesh connection");
        assert_eq!(get_on(&mut direct).await.map(|r| r.0), Ok(200), "the early direct mTLS connection");
    }
    let (mut ok, mut failed) = (0, Vec::new());
    for w in workers {
        let (o, f) = w.await.expect("worker");
        ok += o;
        failed.extend(f);
    }
    let rotations = secs / 30;
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > secs * 20, "the load was not steady: {ok} requests in {secs} s");
    assert!(serials.len() as u64 >= rotations, "backend certificates seen: {serials:?}\n{}", back.logs());
    assert!(
        client_certs.len() as u64 >= rotations,
        "frontend certificates seen: {client_certs:?}, backend connections {:?}\n{}",
        back.stat(&backend_cx).await,
        front.logs()
    );
    // The mesh kept its connections: the backend accepted only the early ones, the workers' pool
    // and the monitoring ones (a serial probe and a one-request connection every 2 s), not a new
    // connection per request or per rotation.
    let accepted = back.stat(&backend_cx).await.unwrap_or(0);
    let probes = 2 * (secs / 2 + 3) as i64;
    assert!(accepted <= probes + 12, "{accepted} connections accepted by the backend ({probes} were probes)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_workload_key_on_request() {
    let m = mesh();
    let app = Upstream::start("backend-app").await.expect("app");
    let (back, back_port) = backend_with(&m, &app, "24h", &["--ecc-signature-algorithm", "RSA"]).await;
    let (front, good, _) = frontend(&m, back_port, "24h").await;
    let resp = until_ok(good, "frontend → RSA backend", || format!("{}\n{}", front.logs(), back.logs())).await;
    let xfcc = resp.json()["headers"]["x-forwarded-client-cert"][0].as_str().unwrap_or_default().to_string();
    assert!(xfcc.ends_with(&format!("URI=spiffe://{TD}/ns/default/sa/frontend")), "{xfcc}");
    // The certificate the backend serves certifies an RSA 2048 key for its identity.
    let tester = tester_client(&m).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", back_port)).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(tester)
        .connect(rustls::pki_types::ServerName::try_from("backend").unwrap(), tcp)
        .await
        .expect("handshake with the RSA certificate");
    let der = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("certificate").clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    match cert.public_key().parsed().expect("public key") {
        x509_parser::public_key::PublicKey::RSA(k) => assert_eq!(k.key_size(), 2048),
        other => panic!("the backend's key is not RSA: {other:?}"),
    }
    let san = format!("{:?}", cert.subject_alternative_name());
    assert!(san.contains(&format!("spiffe://{TD}/ns/default/sa/backend")), "{san}");
}
