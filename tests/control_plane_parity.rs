//! One control plane, two data planes: `remora control-plane` serves the same files to real Envoy
//! 1.40 and to the real Remora binary, both over delta ADS with the same kind of bootstrap. The
//! files are a registry of three services (ServiceEntries with inline endpoints, and one selecting
//! WorkloadEntries), DestinationRules with label subsets, VirtualServices using what the
//! translator supports (header exact / prefix / regex / absence, uri exact / prefix / regex,
//! ignoreUriCase, method, authority, query parameters, uri / regex / authority rewrites, redirect,
//! direct response, 100/0, 0/100 and 50/50 weights with per-destination headers, request and
//! response header operations, retries, a fixed timeout, fault aborts (HTTP and gRPC) and delays,
//! a CORS policy)
//! and a few plain Envoy
//! resources (a listener, route table, EDS cluster and endpoints of their own that also route to
//! clusters translated from the Istio files).
//!
//! Envoy must accept everything (no `update_rejected`, no `error_state`, no NACK in the control
//! plane's log), and a corpus of requests must be handled the same way by both: status, the
//! upstream that answered, the method, path and request headers the upstream saw, the response
//! headers and local-reply bodies. Each case also names the upstream it must reach (and, where it
//! matters, the path, headers or status), so agreement is agreement on the right answer. Every
//! difference is reported at once.
//!
//! The control plane serves every client the same listeners (there is no per-proxy scoping), so
//! the two proxies would bind the same ports: Envoy runs the corpus first, is stopped, then Remora
//! runs it against the same control plane and upstreams.
//!
//! Skipped (with the reason printed) only without an Envoy binary.

mod support;
#[path = "xds/common.rs"]
mod xds_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{envoy_binary, free_port, wait_for_port, TempDir, Upstream};
use xds_common::{http_client, send, write_atomic, ControlPlane, Envoy, HttpClient, Remora};

// ---------------------------------------------------------------------------------------------
// the files
// ---------------------------------------------------------------------------------------------

struct Backends {
    v1: Upstream,
    v2: Upstream,
    v3: Upstream,
    ratings_a: Upstream,
    ratings_b: Upstream,
    details: Upstream,
    plain: Upstream,
}

/// The registry: `reviews` (three versions, inline endpoints) and `details` on 9080 and 9081,
/// `ratings` from two WorkloadEntries its ServiceEntry selects.
fn registry(b: &Backends) -> String {
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
  ports: [{{number: 9080, name: http-web}}]
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-a, namespace: default}}
spec:
  address: 127.0.0.1
  ports: {{http-web: {ratings_a}}}
  labels: {{app: ratings, track: stable}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-b, namespace: default}}
spec:
  address: 127.0.0.1
  ports: {{http-web: {ratings_b}}}
  labels: {{app: ratings, track: next}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: details, namespace: default}}
spec:
  hosts: [details.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9081, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {details}}}, labels: {{app: details}}}}
"#,
        v1 = b.v1.port(),
        v2 = b.v2.port(),
        v3 = b.v3.port(),
        ratings_a = b.ratings_a.port(),
        ratings_b = b.ratings_b.port(),
        details = b.details.port(),
    )
}

const DESTINATION_RULES: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings.default.svc.cluster.local
  subsets:
  - {name: stable, labels: {track: stable}}
  - {name: next, labels: {track: next}}
"#;

const VIRTUAL_SERVICES: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: beta
    match: [{headers: {x-version: {regex: "v[0-9]+-beta"}}}]
    route: [{destination: {host: reviews, subset: v3}, headers: {request: {set: {x-dest: v3-beta}}}}]
  - name: admin
    match: [{uri: {prefix: /admin}, method: {exact: POST}}]
    route: [{destination: {host: reviews, subset: v3}}]
    headers:
      request: {set: {x-admin: "yes"}}
      response: {add: {x-served-by: admin-route}}
  - name: writes
    match: [{method: {regex: "PUT|PATCH"}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: items
    match: [{uri: {regex: "/items/[0-9]+"}}]
    rewrite: {uri: /item}
    route: [{destination: {host: reviews, subset: v3}}]
  - name: catalog
    match: [{uri: {prefix: /catalog/}}]
    rewrite: {uriRegexRewrite: {match: "^/catalog/([a-z]+)/([0-9]+)$", rewrite: "/c/\\2/\\1"}}
    route: [{destination: {host: reviews, subset: v2}}]
  - name: debug
    match:
    - {name: flag, queryParams: {debug: {exact: "1"}}}
    - {name: trace, queryParams: {trace: {regex: "on|yes"}}}
    route: [{destination: {host: reviews, subset: v2}}]
  - name: old
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: reviews.example.com}
  - name: teapot
    match: [{uri: {prefix: /teapot}}]
    directResponse: {status: 418, body: {string: "short and stout"}}
  - name: members
    match: [{uri: {prefix: /members}, withoutHeaders: {end-user: {}}}]
    directResponse: {status: 403, body: {string: "log in first"}}
  - name: internal
    match: [{uri: {prefix: /internal}}]
    rewrite: {uri: /private, authority: reviews-internal.default.svc.cluster.local}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: exact
    match: [{uri: {exact: /Exact/Path}, ignoreUriCase: true}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: fqdn
    match: [{authority: {prefix: reviews.default.svc}, uri: {prefix: /fqdn}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - name: split
    match: [{headers: {x-split: {exact: "yes"}}}]
    route:
    - {destination: {host: reviews, subset: v1}, weight: 50, headers: {request: {set: {x-dest: v1}}}}
    - {destination: {host: reviews, subset: v2}, weight: 50, headers: {request: {set: {x-dest: v2}}}}
  - name: canary
    match: [{headers: {x-canary: {prefix: "tr"}}}]
    route:
    - {destination: {host: reviews, subset: v1}, weight: 0}
    - destination: {host: reviews, subset: v3}
      weight: 100
      headers: {request: {set: {x-dest: v3-canary}}, response: {set: {x-canary-resp: "1"}}}
  - name: flaky
    match: [{uri: {prefix: /flaky}}]
    retries: {attempts: 0}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: default
    route:
    - {destination: {host: reviews, subset: v1}, weight: 100}
    - {destination: {host: reviews, subset: v2}, weight: 0}
    headers:
      request: {remove: [x-remove-me], add: {x-added: "1"}}
      response: {set: {x-default-route: "1"}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  http:
  - name: slow
    match: [{uri: {prefix: /slow}}]
    timeout: 0.5s
    route:
    - {destination: {host: ratings.default.svc.cluster.local, subset: stable}, weight: 0}
    - {destination: {host: ratings.default.svc.cluster.local, subset: next}, weight: 100}
  - name: default
    route: [{destination: {host: ratings.default.svc.cluster.local, subset: stable}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details, namespace: default}
spec:
  hosts: [details]
  http:
  - name: broken
    match: [{uri: {prefix: /fail}}]
    fault: {abort: {httpStatus: 429, percentage: {value: 100}}}
    route: [{destination: {host: details}}]
  - name: grpc-broken
    match: [{uri: {prefix: /grpcfail}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: details}}]
  - name: slow
    match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 150ms, percentage: {value: 100}}}
    route: [{destination: {host: details}}]
  - name: never
    match: [{uri: {prefix: /never}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 0}}}
    route: [{destination: {host: details}}]
  - name: default
    route: [{destination: {host: details}}]
    corsPolicy:
      allowOrigins: [{exact: "https://shop.example"}, {regex: "https://.*[.]partner[.]example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-trace]
      maxAge: 1h
      allowCredentials: true
"#;

/// Plain Envoy resources beside the Istio ones: a listener on its own port whose routes reach the
/// translated subset clusters as well as a plain EDS cluster.
fn plain_resources(port: u16, backend: u16) -> String {
    let routes = r#""@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
name: plain_route
response_headers_to_add: [{header: {key: x-plain, value: "1"}}]
virtual_hosts:
- name: plain
  domains: ["*"]
  request_headers_to_add:
  - {header: {key: x-vhost, value: plain}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
  routes:
  - match: {path_separated_prefix: /api}
    route:
      cluster: "outbound|9080|v2|reviews.default.svc.cluster.local"
      regex_rewrite: {pattern: {regex: "^/api/(.*)$"}, substitution: "/v2/\\1"}
  - match: {prefix: /, headers: [{name: x-cluster, present_match: true}]}
    route: {cluster_header: x-cluster}
  - match: {prefix: /}
    route: {cluster: plain_backend}
"#;
    [
        xds_common::rds_listener("plain", port, "plain_route"),
        routes.to_string(),
        xds_common::eds_cluster("plain_backend", "1s"),
        xds_common::endpoints("plain_backend", &[backend]),
    ]
    .join("---\n")
}

// ---------------------------------------------------------------------------------------------
// the corpus
// ---------------------------------------------------------------------------------------------

/// Which listener a case is sent to.
#[derive(Clone, Copy, Debug)]
enum Port {
    /// The translated listener of service port 9080 (reviews, ratings).
    Mesh,
    /// The translated listener of service port 9081 (details; its HCM has the fault filter).
    Fault,
    /// The plain Envoy listener.
    Plain,
}

#[derive(Clone, Copy)]
struct Ports {
    mesh: u16,
    fault: u16,
    plain: u16,
}

impl Ports {
    fn of(&self, p: Port) -> u16 {
        match p {
            Port::Mesh => self.mesh,
            Port::Fault => self.fault,
            Port::Plain => self.plain,
        }
    }
}

/// One request of the corpus, the upstream it must reach ("" for a local reply or an error) and
/// further observations it must produce (keys as in [`observe`]).
#[derive(Clone, Copy)]
struct Case {
    port: Port,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    upstream: &'static str,
    expect: &'static [(&'static str, &'static str)],
}

const fn case(
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    upstream: &'static str,
) -> Case {
    Case { port: Port::Mesh, method, host, path, headers, upstream, expect: &[] }
}

impl Case {
    const fn on(mut self, port: Port) -> Case {
        self.port = port;
        self
    }

    const fn expect(mut self, expect: &'static [(&'static str, &'static str)]) -> Case {
        self.expect = expect;
        self
    }
}

const CORPUS: &[Case] = &[
    // host forms and the 100/0 default route with its header operations
    case("GET", "reviews", "/", &[], "v1").expect(&[("req:x-added", "1"), ("resp:x-default-route", "1")]),
    case("GET", "reviews:9080", "/products", &[], "v1").expect(&[("path", "/products")]),
    case("GET", "reviews.default", "/", &[], "v1"),
    case("GET", "reviews.default.svc", "/", &[], "v1"),
    case("GET", "reviews.default.svc.cluster.local", "/a/b?c=d", &[], "v1").expect(&[("path", "/a/b?c=d")]),
    case("GET", "reviews", "/", &[("x-remove-me", "secret"), ("x-added", "0")], "v1")
        .expect(&[("req:x-added", "0, 1"), ("req:x-remove-me", ABSENT)]),
    case("DELETE", "reviews", "/thing", &[], "v1").expect(&[("method", "DELETE")]),
    // header exact (names are case-insensitive), regex (whole value), prefix
    case("GET", "reviews", "/", &[("end-user", "jason")], "v2"),
    case("GET", "reviews", "/", &[("End-User", "jason")], "v2"),
    case("GET", "reviews", "/", &[("end-user", "jasonx")], "v1"),
    case("GET", "reviews", "/", &[("x-version", "v12-beta")], "v3").expect(&[("req:x-dest", "v3-beta")]),
    case("GET", "reviews", "/", &[("x-version", "xv1-beta")], "v1"),
    case("GET", "reviews", "/", &[("x-version", "v1-beta-2")], "v1"),
    case("GET", "reviews", "/", &[("x-canary", "true")], "v3")
        .expect(&[("req:x-dest", "v3-canary"), ("resp:x-canary-resp", "1")]),
    case("GET", "reviews", "/", &[("x-canary", "false")], "v1"),
    // uri prefix + method (exact, regex)
    case("POST", "reviews", "/admin/users", &[], "v3")
        .expect(&[("req:x-admin", "yes"), ("resp:x-served-by", "admin-route")]),
    case("POST", "reviews", "/administrator", &[], "v3"),
    case("GET", "reviews", "/admin/users", &[], "v1"),
    case("PUT", "reviews", "/anything", &[], "v2"),
    case("PATCH", "reviews", "/anything", &[], "v2"),
    case("GET", "reviews", "/PUT", &[], "v1"),
    // uri regex (whole path, query excluded) with a prefix rewrite; regex rewrite
    case("GET", "reviews", "/items/42", &[], "v3")
        .expect(&[("path", "/item"), ("req:x-envoy-original-path", "/items/42")]),
    case("GET", "reviews", "/items/42?x=1", &[], "v3").expect(&[("path", "/item?x=1")]),
    case("GET", "reviews", "/items/abc", &[], "v1"),
    case("GET", "reviews", "/items/42/more", &[], "v1"),
    case("GET", "reviews", "/catalog/books/7", &[], "v2").expect(&[("path", "/c/7/books")]),
    case("GET", "reviews", "/catalog/books/7?page=2", &[], "v2").expect(&[("path", "/c/7/books?page=2")]),
    case("GET", "reviews", "/catalog/Books/x", &[], "v2").expect(&[("path", "/catalog/Books/x")]),
    // query parameters (two matches of one route)
    case("GET", "reviews", "/?debug=1", &[], "v2"),
    case("GET", "reviews", "/?debug=0", &[], "v1"),
    case("GET", "reviews", "/x?a=b&debug=1", &[], "v2"),
    case("GET", "reviews", "/?trace=yes", &[], "v2"),
    case("GET", "reviews", "/?trace=yesno", &[], "v1"),
    // uri exact: redirect; prefix: direct response; withoutHeaders
    case("GET", "reviews", "/old", &[], "")
        .expect(&[("status", "301"), ("resp:location", "http://reviews.example.com/new")]),
    case("GET", "reviews", "/old/", &[], "v1"),
    case("GET", "reviews", "/teapot", &[], "").expect(&[("status", "418"), ("body", "short and stout")]),
    case("GET", "reviews", "/teapot/pot", &[], "").expect(&[("status", "418")]),
    case("GET", "reviews", "/members/1", &[], "").expect(&[("status", "403"), ("body", "log in first")]),
    case("GET", "reviews", "/members/1", &[("end-user", "mary")], "v1"),
    // uri + authority rewrite
    case("GET", "reviews", "/internal/status", &[], "v1")
        .expect(&[("path", "/private/status"), ("req:host", "reviews-internal.default.svc.cluster.local")]),
    case("GET", "reviews", "/internalx", &[], "v1").expect(&[("path", "/privatex")]),
    // ignoreUriCase, authority match
    case("GET", "reviews", "/exact/PATH", &[], "v2"),
    case("GET", "reviews", "/exact/path/", &[], "v1"),
    case("GET", "reviews.default.svc.cluster.local", "/fqdn", &[], "v3"),
    case("GET", "reviews", "/fqdn", &[], "v1"),
    // retries: istiod's default policy retries a 503 (twice); `retries: {attempts: 0}` does not
    case("GET", "reviews", "/", &[("x-test-fail-first", "1")], "v1")
        .expect(&[("status", "200"), ("req:x-envoy-attempt-count", "2")]),
    case("GET", "reviews", "/", &[("x-test-fail-first", "5")], "v1")
        .expect(&[("status", "503"), ("req:x-envoy-attempt-count", "3")]),
    case("GET", "reviews", "/flaky", &[("x-test-fail-first", "1")], "v1").expect(&[("status", "503")]),
    // the WorkloadEntry-backed service: default subset; 0/100 with a 0.5 s timeout
    case("GET", "ratings", "/", &[], "ratings-a"),
    case("GET", "ratings.default.svc.cluster.local:9080", "/r/1", &[("end-user", "jason")], "ratings-a"),
    case("GET", "ratings", "/slow", &[("x-test-delay-ms", "50")], "ratings-b").expect(&[("status", "200")]),
    case("GET", "ratings", "/slow", &[("x-test-delay-ms", "2000")], "")
        .expect(&[("status", "504"), ("body", "downstream duration timeout")]),
    // gRPC deadlines: istiod sets grpc_timeout_header_max to the route timeout (0: uncapped)
    case("POST", "ratings", "/", GRPC_2S, "ratings-a").expect(&[("req:grpc-timeout", "2000m")]),
    case("POST", "ratings", "/slow", GRPC_10S, "ratings-b").expect(&[("req:grpc-timeout", "500m")]),
    case("POST", "ratings", "/", GRPC_200MS_SLOW, "").expect(&[("status", "200"), ("resp:grpc-status", "4")]),
    // unknown hosts go to PassthroughCluster (ORIGINAL_DST): a listener bound directly (no
    // use_original_dst) has no original destination to send them to
    case("GET", "unknown.example.com", "/", &[], "").expect(&[("status", "503"), ("body", "no healthy upstream")]),
    // the fault-injection port
    case("GET", "details", "/", &[], "details").on(Port::Fault),
    case("GET", "details", "/fail", &[], "")
        .on(Port::Fault)
        .expect(&[("status", "429"), ("body", "fault filter abort")]),
    case("POST", "details", "/grpcfail", GRPC_2S, "")
        .on(Port::Fault)
        .expect(&[("status", "200"), ("resp:grpc-status", "14")]),
    case("GET", "details", "/grpcfail", &[], "").on(Port::Fault),
    case("GET", "details", "/slow", &[], "details").on(Port::Fault),
    case("GET", "details", "/never", &[], "details").on(Port::Fault),
    // CORS (corsPolicy on the default route)
    case("GET", "details", "/", &[("origin", "https://shop.example")], "details")
        .on(Port::Fault)
        .expect(&[("resp:access-control-allow-origin", "https://shop.example")]),
    case("GET", "details", "/", &[("origin", "https://a.partner.example")], "details").on(Port::Fault),
    case("GET", "details", "/", &[("origin", "https://evil.example")], "details")
        .on(Port::Fault)
        .expect(&[("resp:access-control-allow-origin", ABSENT)]),
    case(
        "OPTIONS",
        "details",
        "/",
        &[("origin", "https://shop.example"), ("access-control-request-method", "POST")],
        "",
    )
    .on(Port::Fault)
    .expect(&[("status", "200"), ("resp:access-control-max-age", "3600")]),
    // plain Envoy resources
    case("GET", "anything", "/", &[], "plain")
        .on(Port::Plain)
        .expect(&[("req:x-vhost", "plain"), ("resp:x-plain", "1")]),
    case("GET", "anything", "/api/users", &[], "v2").on(Port::Plain).expect(&[("path", "/v2/users")]),
    case("GET", "anything", "/api", &[], "v2").on(Port::Plain).expect(&[("path", "/api")]),
    case("GET", "anything", "/apix", &[], "plain").on(Port::Plain),
    case("GET", "anything", "/", &[("x-cluster", "outbound|9080|v3|reviews.default.svc.cluster.local")], "v3")
        .on(Port::Plain),
    case("GET", "anything", "/", &[("x-cluster", "no-such-cluster")], "")
        .on(Port::Plain)
        .expect(&[("status", "503"), ("resp:x-plain", "1")]),
];

const GRPC_2S: &[(&str, &str)] = &[("content-type", "application/grpc"), ("grpc-timeout", "2S")];
const GRPC_10S: &[(&str, &str)] = &[("content-type", "application/grpc"), ("grpc-timeout", "10S")];
const GRPC_200MS_SLOW: &[(&str, &str)] =
    &[("content-type", "application/grpc"), ("grpc-timeout", "200m"), ("x-test-delay-ms", "2000")];

/// An expected value meaning "no such key".
const ABSENT: &str = "<absent>";

/// Request headers whose value is per request: compared by presence only.
const VOLATILE_REQUEST: &[&str] = &["x-request-id"];
/// Response headers whose value is per request or per timing: compared by presence only.
const VOLATILE_RESPONSE: &[&str] = &["date", "x-envoy-upstream-service-time"];

/// What one data plane did with one request: `status`; for an echo `upstream`, `method`, `path`
/// and `req:<name>` for every request header the upstream saw (values joined with ", "); else
/// `body`; and `resp:<name>` for every response header. `key` goes upstream as `x-case` (the echo
/// upstream keys its fail-first counters by it), so it is left out; keys of both proxies have the
/// same length, so the echo bodies do too.
async fn observe(client: &HttpClient, port: u16, c: &Case, key: &str) -> BTreeMap<String, String> {
    let mut headers: Vec<(&str, &str)> = c.headers.to_vec();
    headers.push(("x-case", key));
    let mut out = BTreeMap::new();
    let (status, resp_headers, body) = match send(client, c.method, port, c.host, c.path, &headers).await {
        Ok(r) => r,
        Err(e) => {
            out.insert("error".into(), e);
            return out;
        }
    };
    out.insert("status".into(), status.to_string());
    for name in resp_headers.keys() {
        let values: Vec<String> =
            resp_headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
        let value = if VOLATILE_RESPONSE.contains(&name.as_str()) { "<set>".into() } else { values.join(", ") };
        out.insert(format!("resp:{name}"), value);
    }
    match serde_json::from_str::<Value>(&body) {
        Ok(echo) if echo.get("upstream").is_some() => {
            for k in ["upstream", "method", "path"] {
                out.insert(k.into(), echo[k].as_str().unwrap_or_default().to_string());
            }
            for (name, values) in echo["headers"].as_object().into_iter().flatten() {
                if name == "x-case" {
                    continue;
                }
                let values: Vec<&str> = values.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                let value = if VOLATILE_REQUEST.contains(&name.as_str()) { "<set>".into() } else { values.join(", ") };
                out.insert(format!("req:{name}"), value);
            }
        }
        _ => {
            out.insert("body".into(), body);
        }
    }
    out
}

async fn run_corpus(ports: Ports, proxy: &str) -> Vec<BTreeMap<String, String>> {
    let client = http_client();
    let mut all = Vec::new();
    for (i, c) in CORPUS.iter().enumerate() {
        all.push(observe(&client, ports.of(c.port), c, &format!("{}-{i}", &proxy[..1])).await);
    }
    all
}

/// 400 requests on the 50/50 route: each half within 50 % ± 10 % (over 5 standard deviations),
/// and every upstream saw the `x-dest` header of its own destination.
async fn check_split(port: u16, proxy: &str, problems: &mut Vec<String>) {
    let client = http_client();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..400 {
        let key = format!("{}-split-{i}", &proxy[..1]);
        let c = case("GET", "reviews", "/split", &[("x-split", "yes")], "");
        let seen = observe(&client, port, &c, &key).await;
        let upstream = seen.get("upstream").cloned().unwrap_or_else(|| format!("{seen:?}"));
        if seen.get("req:x-dest") != Some(&upstream) {
            problems.push(format!("{proxy}: 50/50 split: {upstream} saw x-dest {:?}", seen.get("req:x-dest")));
            return;
        }
        *counts.entry(upstream).or_default() += 1;
    }
    let v1 = counts.get("v1").copied().unwrap_or(0);
    if counts.len() != 2 || !(160..=240).contains(&v1) {
        problems.push(format!("{proxy}: 50/50 split off: {counts:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// the test
// ---------------------------------------------------------------------------------------------

async fn wait_ports(ports: Ports, who: &str, logs: impl Fn() -> String) {
    for p in [ports.mesh, ports.fault, ports.plain] {
        assert!(
            wait_for_port(([127, 0, 0, 1], p).into(), Duration::from_secs(10)).await,
            "{who} listener {p}\n{}",
            logs()
        );
    }
}

async fn wait_ports_closed(ports: Ports) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in [ports.mesh, ports.fault, ports.plain] {
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_ok() {
            assert!(Instant::now() < deadline, "listener {p} did not go away");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn assert_no_nack(cp: &ControlPlane, who: &str) {
    let logs = cp.logs();
    assert!(!logs.contains("NACK"), "the control plane logged a NACK while serving {who}:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_remora_route_the_same_from_the_same_files() {
    let Some(envoy_bin) = envoy_binary() else {
        println!("SKIPPED envoy_and_remora_route_the_same_from_the_same_files: no Envoy binary (set ENVOY_BIN or run tests/run.sh)");
        return;
    };
    let up = |name: &'static str| async move { Upstream::start(name).await.expect(name) };
    let b = Backends {
        v1: up("v1").await,
        v2: up("v2").await,
        v3: up("v3").await,
        ratings_a: up("ratings-a").await,
        ratings_b: up("ratings-b").await,
        details: up("details").await,
        plain: up("plain").await,
    };
    let ports = Ports { mesh: free_port(), fault: free_port(), plain: free_port() };
    let config = TempDir::new("remora-parity").expect("dir");
    let dir = config.path();
    write_atomic(dir, "10-registry.yaml", &registry(&b));
    write_atomic(dir, "20-destination-rules.yaml", DESTINATION_RULES);
    write_atomic(dir, "30-virtual-services.yaml", VIRTUAL_SERVICES);
    write_atomic(dir, "40-plain.yaml", &plain_resources(ports.plain, b.plain.port()));
    let cp = ControlPlane::start(
        dir,
        ([127, 0, 0, 1], 0).into(),
        &[
            "--listener-address".into(),
            "127.0.0.1".into(),
            "--listener-port".into(),
            format!("9080={}", ports.mesh),
            "--listener-port".into(),
            format!("9081={}", ports.fault),
        ],
    );
    assert!(!cp.logs().contains("WARN"), "the control plane warned about the files:\n{}", cp.logs());

    let started = Instant::now();
    let mut problems = Vec::new();

    // Envoy: every type accepted, every listener up, then the corpus and the split.
    let envoy_seen = {
        let envoy = Envoy::start(&envoy_bin, cp.addr, "DELTA_GRPC").await;
        envoy.wait_live(Duration::from_secs(20)).await;
        wait_ports(ports, "envoy", || xds_common::read(&envoy.log)).await;
        let stats = envoy.stats().await;
        for s in [
            "cluster_manager.cds.update_success",
            "listener_manager.lds.update_success",
            "http.outbound_0.0.0.0_9080.rds.9080.update_success",
            "http.outbound_0.0.0.0_9081.rds.9081.update_success",
            "http.plain.rds.plain_route.update_success",
        ] {
            assert!(stats.get(s).copied().unwrap_or(0) >= 1, "envoy: {s} not >= 1: {stats:?}");
        }
        envoy.assert_no_rejections(&cp).await;
        let dump = envoy.admin_get("/config_dump?include_eds").await;
        assert!(!dump.contains("error_state"), "envoy holds a rejected resource:\n{dump}");
        assert_no_nack(&cp, "envoy");
        let seen = run_corpus(ports, "envoy").await;
        check_split(ports.mesh, "envoy", &mut problems).await;
        envoy.assert_no_rejections(&cp).await;
        seen
    };
    // Envoy is gone (killed on drop); its listeners must close before Remora binds the ports.
    wait_ports_closed(ports).await;

    let remora = Remora::start(cp.addr, "DELTA_GRPC", &[]).await;
    remora.wait_live(Duration::from_secs(20)).await;
    wait_ports(ports, "remora", || remora.logs()).await;
    let stats = remora.stats().await;
    let rejected: Vec<_> = stats.iter().filter(|(k, v)| k.ends_with("update_rejected") && **v > 0).collect();
    assert!(rejected.is_empty(), "remora rejected: {rejected:?}\n{}", remora.logs());
    assert_no_nack(&cp, "remora");
    let remora_seen = run_corpus(ports, "remora").await;
    check_split(ports.mesh, "remora", &mut problems).await;

    for (i, c) in CORPUS.iter().enumerate() {
        let (e, r) = (&envoy_seen[i], &remora_seen[i]);
        let label = format!("#{i} {:?} {} {} {} {:?}", c.port, c.method, c.host, c.path, c.headers);
        let reached = e.get("upstream").map(String::as_str).unwrap_or("");
        if reached != c.upstream {
            problems.push(format!("{label}: expected upstream '{}', Envoy reached '{reached}' ({e:?})", c.upstream));
        }
        for (k, want) in c.expect {
            if e.get(*k).map(String::as_str) != Some(*want).filter(|w| *w != ABSENT) {
                problems.push(format!("{label}: expected {k} = {want:?}, Envoy: {:?}", e.get(*k)));
            }
        }
        if e != r {
            problems.push(format!("{label}\n{}", diff(e, r)));
        }
    }
    println!("{} cases, 2 x 400 split requests, {:.1} s", CORPUS.len(), started.elapsed().as_secs_f64());
    assert_no_nack(&cp, "remora");
    assert!(problems.is_empty(), "{} problems over {} cases:\n{}", problems.len(), CORPUS.len(), problems.join("\n"));
}

/// The keys on which two observations differ.
fn diff(e: &BTreeMap<String, String>, r: &BTreeMap<String, String>) -> String {
    let keys: BTreeSet<&String> = e.keys().chain(r.keys()).collect();
    keys.into_iter()
        .filter(|k| e.get(*k) != r.get(*k))
        .map(|k| format!("  {k}: envoy {:?}, remora {:?}", e.get(k), r.get(k)))
        .collect::<Vec<_>>()
        .join("\n")
}
