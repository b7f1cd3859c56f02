//! End to end: downstream TLS. Certificates are made with rcgen into temp files; a rustls client
//! talks HTTP/1.1 over TLS to Remora listeners with a `DownstreamTlsContext`:
//! * server TLS only — the handshake completes and the request is proxied (200);
//! * `require_client_certificate` + `trusted_ca` — no client certificate, or one from another
//!   CA, is refused; a certificate signed by the CA is accepted;
//! * plus `match_typed_subject_alt_names` (URI `spiffe://…`) — a certificate with another SPIFFE
//!   ID is refused and counted in `ssl.fail_verify_san`; the right one is accepted.

#[path = "e2e/pki.rs"]
mod pki;
mod support;
#[path = "e2e/util.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pki::{ca, leaf};
use rcgen::KeyPair;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use support::{free_port, Upstream};
use util::{bootstrap, cluster, hcm, listener, local, route, vhost, Proxy};

const ALLOWED_ID: &str = "spiffe://e2e.test/ns/default/sa/allowed";
const OTHER_ID: &str = "spiffe://e2e.test/ns/default/sa/intruder";

/// PEM files of one certificate and its key.
struct Pem {
    cert: PathBuf,
    key: PathBuf,
}

struct Pki {
    ca: PathBuf,
    server: Pem,
    allowed_client: Pem,
    other_client: Pem,
    foreign_client: Pem,
}

fn write(dir: &Path, name: &str, cert: &rcgen::Certificate, key: &KeyPair) -> Pem {
    let pem = Pem { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
    std::fs::write(&pem.cert, cert.pem()).expect("write cert");
    std::fs::write(&pem.key, key.serialize_pem()).expect("write key");
    pem
}

fn make_pki(dir: &Path) -> Pki {
    let (ca_cert, issuer) = ca("e2e test CA");
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, ca_cert.pem()).expect("write CA");
    let (c, k) = leaf(&issuer, "localhost", &["localhost"], None);
    let server = write(dir, "server", &c, &k);
    let (c, k) = leaf(&issuer, "allowed", &[], Some(ALLOWED_ID));
    let allowed_client = write(dir, "allowed", &c, &k);
    let (c, k) = leaf(&issuer, "intruder", &[], Some(OTHER_ID));
    let other_client = write(dir, "intruder", &c, &k);
    let (_, foreign_issuer) = ca("some other CA");
    let (c, k) = leaf(&foreign_issuer, "foreign", &[], Some(ALLOWED_ID));
    let foreign_client = write(dir, "foreign", &c, &k);
    Pki { ca: ca_path, server, allowed_client, other_client, foreign_client }
}

fn downstream_tls(pki: &Pki, require_client_cert: bool, san: Option<&str>) -> Value {
    let mut ctx = json!({
        "common_tls_context": {
            "tls_certificates": [{
                "certificate_chain": {"filename": pki.server.cert},
                "private_key": {"filename": pki.server.key}
            }]
        }
    });
    if require_client_cert {
        ctx["require_client_certificate"] = json!(true);
        let mut validation = json!({"trusted_ca": {"filename": pki.ca}});
        if let Some(san) = san {
            validation["match_typed_subject_alt_names"] = json!([{"san_type": "URI", "matcher": {"exact": san}}]);
        }
        ctx["common_tls_context"]["validation_context"] = validation;
    }
    ctx["@type"] = json!("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext");
    json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx})
}

struct Setup {
    proxy: Proxy,
    pki: Pki,
    tls_port: u16,
    mtls_port: u16,
    san_port: u16,
    _upstream: Upstream,
    _dir: support::TempDir,
}

async fn setup() -> Setup {
    let dir = support::TempDir::new("remora-e2e-pki").expect("pki dir");
    let pki = make_pki(dir.path());
    let upstream = Upstream::start("backend").await.expect("upstream");
    let (admin, tls_port, mtls_port, san_port) = (free_port(), free_port(), free_port(), free_port());
    let routes = vhost(json!([route("/", "backend", json!({}))]));
    let l = |name: &str, port: u16, ts: Value| listener(name, port, hcm(name, routes.clone(), json!({})), Some(ts));
    let config = bootstrap(
        admin,
        vec![
            l("tls", tls_port, downstream_tls(&pki, false, None)),
            l("mtls", mtls_port, downstream_tls(&pki, true, None)),
            l("mtls_san", san_port, downstream_tls(&pki, true, Some(ALLOWED_ID))),
        ],
        vec![cluster("backend", &[upstream.port()])],
    );
    let proxy = Proxy::start(&config, &[tls_port, mtls_port, san_port]).await;
    Setup { proxy, pki, tls_port, mtls_port, san_port, _upstream: upstream, _dir: dir }
}

fn client_config(pki: &Pki, client: Option<&Pem>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca).expect("read CA") {
        roots.add(c.expect("CA cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let cfg = match client {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(&pem.cert).expect("read cert").map(|c| c.expect("cert")).collect();
            let key = PrivateKeyDer::from_pem_file(&pem.key).expect("read key");
            builder.with_client_auth_cert(chain, key).expect("client cert")
        }
    };
    Arc::new(cfg)
}

/// GET / over TLS (SNI and verified name `localhost`) with an optional client certificate.
/// `Err` when the handshake or the request fails (the proxy refused the connection).
async fn tls_get(port: u16, pki: &Pki, client: Option<&Pem>) -> Result<(StatusCode, String), String> {
    let tcp = tokio::net::TcpStream::connect(local(port)).await.map_err(|e| format!("connect: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(client_config(pki, client));
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("h1: {e}"))?;
    tokio::spawn(conn);
    let req = Request::get("/secure").header("host", "localhost").body(Full::<Bytes>::default()).unwrap();
    let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn server_tls_handshake_and_proxied_request() {
    let s = setup().await;
    let (status, body) = tls_get(s.tls_port, &s.pki, None).await.expect("TLS request");
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(v["upstream"], "backend");
    // The upstream learns the client spoke TLS.
    assert_eq!(v["headers"]["x-forwarded-proto"], json!(["https"]), "{v}");
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_trusted_ca() {
    let s = setup().await;
    let no_cert = tls_get(s.mtls_port, &s.pki, None).await;
    assert!(no_cert.is_err(), "a client without a certificate got {no_cert:?}");

    let foreign = tls_get(s.mtls_port, &s.pki, Some(&s.pki.foreign_client)).await;
    assert!(foreign.is_err(), "a certificate from another CA got {foreign:?}");

    let (status, body) = tls_get(s.mtls_port, &s.pki, Some(&s.pki.allowed_client)).await.expect("mTLS request");
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Sum of every `…ssl.fail_verify_san` stat (Envoy scopes it per listener).
async fn fail_verify_san(proxy: &Proxy) -> i64 {
    proxy
        .stats()
        .await
        .iter()
        .filter(|(k, _)| k.ends_with("ssl.fail_verify_san"))
        .filter_map(|(_, v)| v.parse::<i64>().ok())
        .sum()
}

#[tokio::test]
async fn mtls_san_mismatch_is_refused_and_counted() {
    let s = setup().await;
    assert_eq!(fail_verify_san(&s.proxy).await, 0);

    let other = tls_get(s.san_port, &s.pki, Some(&s.pki.other_client)).await;
    assert!(other.is_err(), "a certificate with SAN {OTHER_ID} got {other:?}");
    assert_eq!(fail_verify_san(&s.proxy).await, 1, "ssl.fail_verify_san after one mismatch");

    let (status, body) = tls_get(s.san_port, &s.pki, Some(&s.pki.allowed_client)).await.expect("matching SAN");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fail_verify_san(&s.proxy).await, 1);
}

/// Envoy keeps downstream TLS stats in the listener's scope:
/// `listener.127.0.0.1_<port>.ssl.fail_verify_san`.
#[tokio::test]
async fn ssl_stats_are_scoped_to_the_listener() {
    let s = setup().await;
    let other = tls_get(s.san_port, &s.pki, Some(&s.pki.other_client)).await;
    assert!(other.is_err());
    let name = format!("listener.127.0.0.1_{}.ssl.fail_verify_san", s.san_port);
    let stats = s.proxy.stats().await;
    assert_eq!(
        stats.get(&name).map(String::as_str),
        Some("1"),
        "no `{name}: 1`; ssl stats: {:?}",
        stats.iter().filter(|(k, _)| k.contains("ssl.")).collect::<Vec<_>>()
    );
}

/// A TLS 1.2 client offering exactly `suites` and `groups`; the negotiated suite and group.
async fn tls12_handshake(
    port: u16,
    pki: &Pki,
    suites: &[rustls::SupportedCipherSuite],
    groups: &[rustls::NamedGroup],
) -> Result<(rustls::CipherSuite, Option<rustls::NamedGroup>), String> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = suites.to_vec();
    provider.kx_groups.retain(|g| groups.contains(&g.name()));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca).expect("read CA") {
        roots.add(c.expect("CA cert")).expect("add root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(local(port)).await.map_err(|e| format!("connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tls.get_ref().1;
    let suite = conn.negotiated_cipher_suite().ok_or("no suite")?.suite();
    Ok((suite, conn.negotiated_key_exchange_group().map(|g| g.name())))
}

#[tokio::test]
async fn tls_params_narrow_cipher_suites_and_curves() {
    use rustls::crypto::ring::cipher_suite as cs;
    let dir = support::TempDir::new("remora-e2e-ciphers").expect("pki dir");
    let pki = make_pki(dir.path());
    let upstream = Upstream::start("backend").await.expect("upstream");
    let (admin, port) = (free_port(), free_port());
    let mut ts = downstream_tls(&pki, false, None);
    // istiod's shape: an equal-preference group, and suites BoringSSL knows that Remora does not
    // implement (accepted, never offered).
    ts["typed_config"]["common_tls_context"]["tls_params"] = json!({
        "tls_minimum_protocol_version": "TLSv1_2",
        "tls_maximum_protocol_version": "TLSv1_2",
        "cipher_suites": ["[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-RSA-AES128-GCM-SHA256]", "AES256-GCM-SHA384"],
        "ecdh_curves": ["P-256"]
    });
    let routes = vhost(json!([route("/", "backend", json!({}))]));
    let config = bootstrap(
        admin,
        vec![listener("narrow", port, hcm("narrow", routes, json!({})), Some(ts))],
        vec![cluster("backend", &[upstream.port()])],
    );
    let _proxy = Proxy::start(&config, &[port]).await;

    let all_groups = [rustls::NamedGroup::X25519, rustls::NamedGroup::secp256r1];
    let ok = tls12_handshake(
        port,
        &pki,
        &[cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
        &all_groups,
    )
    .await
    .expect("a configured suite");
    assert_eq!(ok, (rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, Some(rustls::NamedGroup::secp256r1)));
    let refused = tls12_handshake(port, &pki, &[cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256], &all_groups).await;
    assert!(refused.is_err(), "ChaCha20 is not in the list: {refused:?}");
    let refused =
        tls12_handshake(port, &pki, &[cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256], &[rustls::NamedGroup::X25519])
            .await;
    assert!(refused.is_err(), "X25519 is not in the list: {refused:?}");
}

/// Admin `/certs` reports every TLS context's CA and certificate exactly as Envoy does (checked
/// against real Envoy with the same bootstrap when it is installed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_certs_matches_envoy() {
    let dir = support::TempDir::new("remora-e2e-certs").expect("pki dir");
    let pki = make_pki(dir.path());
    let ca_pem = std::fs::read_to_string(&pki.ca).expect("ca");
    // A trust bundle of two CAs: both are listed.
    let (other_ca, _) = ca("another trusted CA");
    std::fs::write(&pki.ca, format!("{ca_pem}{}", other_ca.pem())).expect("bundle");
    let (admin, port) = (free_port(), free_port());
    let mut upstream_cluster = cluster("backend", &[free_port()]);
    upstream_cluster["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {"validation_context": {"trusted_ca": {"inline_string": ca_pem}}}
        }
    });
    let routes = vhost(json!([route("/", "backend", json!({}))]));
    let config = bootstrap(
        admin,
        vec![listener("mtls", port, hcm("mtls", routes, json!({})), Some(downstream_tls(&pki, true, None)))],
        vec![upstream_cluster],
    );
    let fetch = |admin: u16| async move {
        let r = util::get(admin, "/certs", &[]).await;
        assert_eq!(r.status, 200);
        serde_json::from_str::<Value>(&r.text()).expect("JSON")
    };
    let remora = {
        let _proxy = Proxy::start(&config, &[port]).await;
        fetch(admin).await
    };
    let certs = remora["certificates"].as_array().expect("certificates");
    assert_eq!(certs.len(), 2, "{remora}");
    let listener_ctx = &certs[0];
    assert_eq!(listener_ctx["ca_cert"][0]["path"], json!(pki.ca.display().to_string()));
    assert_eq!(listener_ctx["ca_cert"].as_array().map(Vec::len), Some(2), "{listener_ctx}");
    assert_eq!(listener_ctx["cert_chain"][0]["path"], json!(pki.server.cert.display().to_string()));
    assert_eq!(listener_ctx["cert_chain"][0]["subject_alt_names"], json!([{"dns": "localhost"}]));
    assert_eq!(certs[1]["ca_cert"][0]["path"], "<inline>");
    assert_eq!(certs[1]["cert_chain"], json!([]));
    let der = CertificateDer::from_pem_file(&pki.server.cert).expect("server cert");
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    let raw = x509.raw_serial();
    let serial: String =
        raw[raw.iter().position(|b| *b != 0).unwrap_or(0)..].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(listener_ctx["cert_chain"][0]["serial_number"], json!(serial));

    let Some(envoy) = support::envoy_binary() else { return };
    let vars = std::collections::BTreeMap::new();
    let proxy = support::start_proxy(
        support::ProxyKind::Envoy,
        &envoy,
        &config.to_string(),
        &vars,
        &[port],
        std::time::Duration::from_secs(20),
    )
    .await
    .expect("envoy");
    let from_envoy = fetch(admin).await;
    drop(proxy);
    // Envoy lists the contexts in no fixed order (it varies from run to run): compare as sets.
    let contexts = |v: &Value| {
        let mut all: Vec<String> = v["certificates"].as_array().into_iter().flatten().map(Value::to_string).collect();
        all.sort();
        all
    };
    assert_eq!(contexts(&remora), contexts(&from_envoy), "/certs differs from Envoy's");
}
