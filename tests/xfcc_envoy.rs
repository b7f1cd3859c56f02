//! `x-forwarded-client-cert` (and the `%DOWNSTREAM_PEER_*%` / `%DOWNSTREAM_LOCAL_URI_SAN%` format
//! operators, rendered into request headers) against the oracle: the same bootstrap (an mTLS listener per
//! `forward_client_cert_details` mode, plus a plaintext one) runs in real Envoy 1.40 and in
//! Remora, a client with a certificate (subject with a comma, URI and DNS SANs) sends requests
//! with and without an incoming XFCC header, and the header each upstream receives must be
//! byte-for-byte the same — `By`, `Hash`, URL-encoded `Cert` and `Chain`, RFC 2253 `Subject`,
//! `URI`, `DNS`, in Envoy's order. Skipped (with the reason printed) only without an Envoy binary.

#[path = "e2e/pki.rs"]
mod pki;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{envoy_binary, free_port, remora_binary, start_proxy, ProxyKind, Upstream};

const MODES: [&str; 5] = ["SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY"];

fn listener(name: &str, port: &str, mode: &str, tls: bool) -> String {
    let ts = if tls {
        r#"
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates: [{certificate_chain: {filename: "{{DIR}}/server.crt"}, private_key: {filename: "{{DIR}}/server.key"}}]
            validation_context: {trusted_ca: {filename: "{{DIR}}/ca.crt"}}"#
    } else {
        ""
    };
    let peer_headers: String = PEER_OPERATORS
        .iter()
        .map(|(h, op)| format!("\n            - {{header: {{key: {h}, value: \"%{op}%\"}}}}"))
        .collect();
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {{{{{port}}}}}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          forward_client_cert_details: {mode}
          set_current_client_cert_details: {{subject: true, cert: true, chain: true, dns: true, uri: true}}
          route_config:
            virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: echo}}}}]}}]
            request_headers_to_add:{peer_headers}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]{ts}"#
    )
}

/// The connection's certificates as format strings render them into request headers.
const PEER_OPERATORS: [(&str, &str); 5] = [
    ("x-peer-uri", "DOWNSTREAM_PEER_URI_SAN"),
    ("x-peer-dns", "DOWNSTREAM_PEER_DNS_SAN"),
    ("x-peer-subject", "DOWNSTREAM_PEER_SUBJECT"),
    ("x-peer-fingerprint", "DOWNSTREAM_PEER_FINGERPRINT_256"),
    ("x-local-uri", "DOWNSTREAM_LOCAL_URI_SAN"),
];

fn template() -> String {
    let mut t = String::from("admin: {address: {socket_address: {address: 127.0.0.1, port_value: {{ADMIN}}}}}\nstatic_resources:\n  listeners:");
    for (i, mode) in MODES.iter().enumerate() {
        t.push_str(&listener(&format!("mtls_{i}"), &format!("PORT_{i}"), mode, true));
    }
    t.push_str(&listener("plain", "PORT_PLAIN", "APPEND_FORWARD", false));
    t.push_str(
        r#"
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment: {cluster_name: echo, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {{UPSTREAM}}}}}}]}]}
"#,
    );
    t
}

fn client_config(dir: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(dir.join("ca.crt")).expect("ca")).expect("root");
    let chain = vec![CertificateDer::from_pem_file(dir.join("client.crt")).expect("cert")];
    let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).expect("key");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    Arc::new(cfg)
}

/// The XFCC header the upstream saw (`<none>` if absent) for one request.
async fn xfcc(port: u16, tls: Option<Arc<rustls::ClientConfig>>, incoming: Option<&str>) -> String {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let mut req = Request::get("/").header("host", "localhost");
    if let Some(v) = incoming {
        req = req.header("x-forwarded-client-cert", v);
    }
    let req = req.body(Full::<Bytes>::default()).expect("request");
    let resp = match tls {
        Some(cfg) => {
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(ServerName::try_from("localhost").expect("name"), tcp)
                .await
                .expect("handshake");
            let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("h1");
            tokio::spawn(c);
            s.send_request(req).await.expect("request")
        }
        None => {
            let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("h1");
            tokio::spawn(c);
            s.send_request(req).await.expect("request")
        }
    };
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("echo JSON");
    let mut seen = v["headers"]["x-forwarded-client-cert"][0].as_str().unwrap_or("<none>").to_string();
    for (h, _) in PEER_OPERATORS {
        seen.push_str(&format!(" | {h}={}", v["headers"][h][0].as_str().unwrap_or("<none>")));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfcc_matches_envoy() {
    let Some(envoy) = envoy_binary() else {
        println!("SKIPPED xfcc_matches_envoy: no Envoy binary (set ENVOY_BIN or run tests/run.sh)");
        return;
    };
    let dir = support::TempDir::new("remora-xfcc").expect("dir");
    let (ca, issuer) = pki::ca("xfcc CA");
    std::fs::write(dir.path().join("ca.crt"), ca.pem()).unwrap();
    let (server, server_key) =
        pki::leaf(&issuer, "server", &["localhost"], Some("spiffe://cluster.local/ns/default/sa/server"));
    std::fs::write(dir.path().join("server.crt"), server.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["client.example.com".into(), "www.client.example.com".into()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CountryName, "US");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme, Inc.");
    params.distinguished_name.push(rcgen::DnType::CommonName, "Test Client");
    params
        .subject_alt_names
        .push(rcgen::SanType::URI("spiffe://cluster.local/ns/default/sa/client".try_into().unwrap()));
    let client = params.signed_by(&client_key, &issuer).unwrap();
    std::fs::write(dir.path().join("client.crt"), client.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();

    let upstream = Upstream::start("echo").await.expect("upstream");
    let template = template();
    let mut seen: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (kind, bin) in [(ProxyKind::Envoy, envoy.clone()), (ProxyKind::Remora, remora_binary())] {
        let mut vars = BTreeMap::new();
        vars.insert("DIR".to_string(), dir.path().display().to_string());
        vars.insert("ADMIN".to_string(), free_port().to_string());
        vars.insert("UPSTREAM".to_string(), upstream.port().to_string());
        let ports: Vec<u16> = (0..=MODES.len()).map(|_| free_port()).collect();
        for (i, p) in ports.iter().enumerate().take(MODES.len()) {
            vars.insert(format!("PORT_{i}"), p.to_string());
        }
        vars.insert("PORT_PLAIN".to_string(), ports[MODES.len()].to_string());
        let proxy = start_proxy(kind, &bin, &template, &vars, &ports, Duration::from_secs(20)).await.expect("proxy");
        let out = seen.entry(kind.name()).or_default();
        let cfg = client_config(dir.path());
        for (i, mode) in MODES.iter().enumerate() {
            for incoming in [None, Some("By=spiffe://upstream-hop;Hash=00")] {
                let v = xfcc(ports[i], Some(cfg.clone()), incoming).await;
                out.push(format!("{mode} incoming={incoming:?}: {v}"));
            }
        }
        let v = xfcc(ports[MODES.len()], None, Some("By=spoofed;URI=spiffe://cluster.local/ns/x/sa/admin")).await;
        out.push(format!("plaintext APPEND_FORWARD with a spoofed header: {v}"));
        drop(proxy);
    }
    let (envoy_seen, remora_seen) = (&seen["envoy"], &seen["remora"]);
    let diffs: Vec<String> = envoy_seen
        .iter()
        .zip(remora_seen)
        .filter(|(e, r)| e != r)
        .map(|(e, r)| format!("envoy:  {e}\nremora: {r}"))
        .collect();
    assert!(diffs.is_empty(), "XFCC differs from Envoy:\n{}", diffs.join("\n\n"));
    // And the oracle says what the cases are about.
    assert!(envoy_seen[0].contains(": <none> | "), "SANITIZE removes: {}", envoy_seen[0]);
    assert!(
        envoy_seen[0].contains("x-peer-uri=spiffe://cluster.local/ns/default/sa/client | "),
        "the peer identity in a header: {}",
        envoy_seen[0]
    );
    assert!(
        envoy_seen[5].contains("By=spiffe://upstream-hop;Hash=00,By=spiffe://cluster.local/ns/default/sa/server;Hash=")
    );
    assert!(envoy_seen[5].contains("Subject=\"O=Acme\\, Inc.,C=US,CN=Test Client\";URI=spiffe://cluster.local/ns/default/sa/client;DNS=client.example.com;DNS=www.client.example.com"), "{}", envoy_seen[5]);
    assert!(envoy_seen[10].contains(": <none> | "), "plaintext strips a spoofed header: {}", envoy_seen[10]);
}
