//! VirtualServices → RouteConfigurations, as istiod builds them for a sidecar
//! (`pilot/pkg/networking/core/httproute.go`, `route/route.go`, `route/retry/retry.go`): one route
//! table per HTTP port, named by the port (`"9080"`); a virtual host `<host>:<port>` per service on
//! that port with the FQDN, its short aliases and VIPs as domains (no port variants: the table sets
//! `ignore_port_in_host_matching`); routes from the VirtualService for the host, else a default
//! route to `outbound|<port>||<host>`; istiod's default retry policy; and the `allow_any` catch-all
//! to `PassthroughCluster`.
//!
//! Owns: RouteConfiguration JSON. Must not build clusters or listeners.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use tracing::warn;

use super::clusters::{cluster_name, cluster_policy, find_dr, hash_policy, DrRef};
use super::registry::{protocol, resolve_host, Registry, Service};
use super::types::{
    envoy_duration, parse_duration, CorsPolicy, Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRetry,
    HttpRoute, HttpRouteDestination, Percent, StringMatch, VirtualServiceSpec,
};
use super::{Generated, Options};
use crate::control_plane::resource::Kind;

/// A mesh VirtualService with its hosts resolved.
pub struct VsRef<'a> {
    pub name: String,
    pub namespace: String,
    pub hosts: Vec<String>,
    pub spec: &'a VirtualServiceSpec,
}

/// Route tables, and the ports whose routes use fault injection (their listener needs the fault
/// filter).
pub struct Routes {
    pub resources: Vec<Generated>,
    pub fault_ports: BTreeSet<u32>,
}

const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// istiod's mesh default retry policy.
pub fn default_retry_policy() -> Value {
    json!({
        "retry_on": DEFAULT_RETRY_ON,
        "num_retries": 2,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
        }],
        "host_selection_retry_max_attempts": "5",
        "retriable_status_codes": [503],
    })
}

fn host_matches(pattern: &str, host: &str) -> bool {
    pattern == host || (pattern.starts_with('*') && host.ends_with(&pattern[1..]))
}

/// The VirtualService that owns `host` (first in file order wins, as the oldest wins in istiod).
fn find_vs<'a, 'b>(vss: &'b [VsRef<'a>], host: &str) -> Option<&'b VsRef<'a>> {
    vss.iter()
        .find(|v| v.hosts.iter().any(|h| h == host))
        .or_else(|| vss.iter().find(|v| v.hosts.iter().any(|h| host_matches(h, host))))
}

pub fn build(reg: &Registry, vss: &[VsRef<'_>], drs: &[DrRef<'_>], opts: &Options) -> Routes {
    let mut by_port: BTreeMap<u32, Vec<&Service>> = BTreeMap::new();
    for svc in reg.services.values() {
        for p in &svc.ports {
            if protocol(p).is_http() {
                by_port.entry(p.number).or_default().push(svc);
            }
        }
    }
    let mut resources = Vec::new();
    let mut fault_ports = BTreeSet::new();
    for (port, services) in by_port {
        let mut used = BTreeSet::new();
        let mut vhosts = Vec::new();
        for svc in services {
            let domains: Vec<String> = domains(svc, reg, opts)
                .into_iter()
                .filter(|d| {
                    let fresh = used.insert(d.clone());
                    if !fresh {
                        warn!(route = port, domain = %d, service = %svc.hostname, "domain already used by another virtual host; skipped");
                    }
                    fresh
                })
                .collect();
            if domains.is_empty() {
                continue;
            }
            let mut ctx = Ctx { reg, drs, opts, port, svc, fault: false };
            let routes = match find_vs(vss, &svc.hostname) {
                Some(vs) => ctx.vs_routes(vs),
                None => vec![ctx.default_route()],
            };
            if ctx.fault {
                fault_ports.insert(port);
            }
            vhosts.push(json!({
                "name": format!("{}:{}", svc.hostname, port),
                "domains": domains,
                "routes": routes,
                "include_request_attempt_count": true,
            }));
        }
        if !used.contains("*") {
            vhosts.push(json!({
                "name": "allow_any",
                "domains": ["*"],
                "routes": [{
                    "name": "allow_any",
                    "match": {"prefix": "/"},
                    "route": {"cluster": "PassthroughCluster", "timeout": "0s", "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"}},
                }],
                "include_request_attempt_count": true,
            }));
        }
        resources.push(Generated::new(
            Kind::Route,
            json!({
                "name": port.to_string(),
                "virtual_hosts": vhosts,
                "validate_clusters": false,
                "ignore_port_in_host_matching": true,
            }),
        ));
    }
    Routes { resources, fault_ports }
}

/// istiod's `generateVirtualHostDomains` for a proxy in the service's namespace: the FQDN, for
/// Kubernetes-style names `name.ns.svc`, `name.ns` and (when unambiguous) `name`, and the VIPs.
fn domains(svc: &Service, reg: &Registry, opts: &Options) -> Vec<String> {
    let mut out = vec![svc.hostname.clone()];
    let suffix = format!(".svc.{}", opts.domain_suffix);
    if let Some(stem) = svc.hostname.strip_suffix(&suffix) {
        if let Some((name, ns)) = stem.split_once('.') {
            if !ns.contains('.') {
                out.push(format!("{name}.{ns}.svc"));
                out.push(format!("{name}.{ns}"));
                let same_short = reg
                    .services
                    .keys()
                    .filter(|h| h.strip_suffix(&suffix).and_then(|s| s.split_once('.')).is_some_and(|(n, _)| n == name))
                    .count();
                if same_short == 1 {
                    out.push(name.to_string());
                }
            }
        }
    }
    out.extend(svc.addresses.iter().map(|a| a.split('/').next().unwrap_or(a).to_string()));
    let mut seen = BTreeSet::new();
    out.retain(|d| seen.insert(d.clone()));
    out
}

struct Ctx<'r, 'a> {
    reg: &'r Registry,
    drs: &'r [DrRef<'a>],
    opts: &'r Options,
    port: u32,
    svc: &'r Service,
    fault: bool,
}

impl Ctx<'_, '_> {
    fn operation(&self, suffix: &str) -> Value {
        json!({"operation": format!("{}:{}{}", self.svc.hostname, self.port, suffix)})
    }

    fn default_route(&self) -> Value {
        let cluster = cluster_name(self.port, "", &self.svc.hostname);
        let mut action = json!({
            "cluster": cluster,
            "timeout": "0s",
            "retry_policy": default_retry_policy(),
            "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
        });
        let policy = cluster_policy(find_dr(self.drs, &self.svc.hostname), self.port, "");
        if let Some(h) = hash_policy(&policy) {
            action["hash_policy"] = h;
        }
        json!({"name": "default", "match": {"prefix": "/"}, "route": action, "decorator": self.operation("/*")})
    }

    fn vs_routes(&mut self, vs: &VsRef<'_>) -> Vec<Value> {
        let mut out = Vec::new();
        let config =
            format!("/apis/networking.istio.io/v1alpha3/namespaces/{}/virtual-service/{}", vs.namespace, vs.name);
        for http in &vs.spec.http {
            if http.delegate.is_some() {
                warn!(virtual_service = %format!("{}/{}", vs.namespace, vs.name), "delegate is not supported by the local control plane; route skipped");
                continue;
            }
            let matches: Vec<Option<&HttpMatchRequest>> = if http.matches.is_empty() {
                vec![None]
            } else {
                http.matches
                    .iter()
                    .filter(|m| m.port.is_none_or(|p| p == self.port))
                    .filter(|m| m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
                    .map(Some)
                    .collect()
            };
            let mut catch_all = false;
            for m in matches {
                let mut route = self.route(http, m, &config);
                catch_all |= m.is_none_or(is_catch_all);
                if let Value::Object(r) = &mut route {
                    r.retain(|_, v| !v.is_null());
                }
                out.push(route);
            }
            if catch_all {
                // istiod stops at the first route that matches everything.
                break;
            }
        }
        out
    }

    fn route(&mut self, http: &HttpRoute, m: Option<&HttpMatchRequest>, config: &str) -> Value {
        let name = match (&http.name, m.and_then(|m| m.name.as_ref())) {
            (Some(r), Some(mn)) => format!("{r}.{mn}"),
            (Some(r), None) => r.clone(),
            (None, Some(mn)) => mn.clone(),
            (None, None) => String::new(),
        };
        let (matcher, op_suffix) = route_match(m);
        let mut r = Map::new();
        if !name.is_empty() {
            r.insert("name".into(), json!(name));
        }
        r.insert("match".into(), matcher);
        if let Some(redirect) = &http.redirect {
            let mut rd = Map::new();
            if let Some(u) = &redirect.uri {
                rd.insert("path_redirect".into(), json!(u));
            }
            if let Some(a) = &redirect.authority {
                rd.insert("host_redirect".into(), json!(a));
            }
            if let Some(p) = redirect.port {
                rd.insert("port_redirect".into(), json!(p));
            }
            if let Some(s) = &redirect.scheme {
                rd.insert("scheme_redirect".into(), json!(s));
            }
            let code = match redirect.redirect_code.unwrap_or(301) {
                302 => "FOUND",
                303 => "SEE_OTHER",
                307 => "TEMPORARY_REDIRECT",
                308 => "PERMANENT_REDIRECT",
                _ => "MOVED_PERMANENTLY",
            };
            rd.insert("response_code".into(), json!(code));
            r.insert("redirect".into(), Value::Object(rd));
        } else if let Some(dr) = &http.direct_response {
            let mut d = json!({"status": dr.status});
            if let Some(body) = &dr.body {
                if let Some(s) = &body.string {
                    d["body"] = json!({"inline_string": s});
                } else if let Some(b) = &body.bytes {
                    d["body"] = json!({"inline_bytes": b});
                }
            }
            r.insert("direct_response".into(), d);
        } else {
            r.insert("route".into(), self.action(http));
        }
        r.insert("metadata".into(), json!({"filter_metadata": {"istio": {"config": config}}}));
        r.insert("decorator".into(), self.operation(&op_suffix));
        if let Some(h) = &http.headers {
            add_headers(&mut r, h);
        }
        // A single destination's headers go on the route (several: on each weighted cluster), as
        // do those of the only destination left once zero weights are dropped (istiod's
        // "rewrite to a single cluster").
        if let [only] = live_destinations(http).as_slice() {
            if let Some(h) = &only.headers {
                add_headers(&mut r, h);
            }
        }
        let mut per_filter = serde_json::Map::new();
        if let Some(c) = &http.cors_policy {
            per_filter.insert("envoy.filters.http.cors".into(), cors_policy(c));
        }
        if !http.mirrors.is_empty() {
            warn!(route = %http.name.as_deref().unwrap_or(""), "mirrors are not translated by the local control plane (mirror is)");
        }
        if let Some(f) = &http.fault {
            self.fault = true;
            let mut fault = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"});
            if let Some(d) = &f.delay {
                let delay = d.fixed_delay.as_deref().and_then(|s| parse_duration(s).ok()).unwrap_or_default();
                let pct = d.percentage.map(|p| p.value).or(d.percent.map(f64::from)).unwrap_or(100.0);
                fault["delay"] = json!({"fixed_delay": envoy_duration(delay), "percentage": fraction(pct)});
            }
            if let Some(a) = &f.abort {
                let pct = a.percentage.map(|p| p.value).unwrap_or(100.0);
                let mut abort = json!({"percentage": fraction(pct)});
                if let Some(s) = a.http_status {
                    abort["http_status"] = json!(s);
                } else if let Some(g) = &a.grpc_status {
                    abort["grpc_status"] = json!(grpc_code(g));
                } else {
                    abort["http_status"] = json!(503);
                }
                fault["abort"] = abort;
            }
            per_filter.insert("envoy.filters.http.fault".into(), fault);
        }
        if !per_filter.is_empty() {
            r.insert("typed_per_filter_config".into(), Value::Object(per_filter));
        }
        Value::Object(r)
    }

    fn dest_cluster(&self, d: &Destination) -> (String, String, u32, String) {
        let host = resolve_host(&d.host, &self.svc.namespace, &self.opts.domain_suffix);
        let port = d.port.map(|p| p.number).filter(|p| *p != 0).unwrap_or_else(|| match self.reg.get(&host) {
            Some(s) if s.ports.len() == 1 => s.ports[0].number,
            _ => self.port,
        });
        let subset = d.subset.clone().unwrap_or_default();
        (cluster_name(port, &subset, &host), host, port, subset)
    }

    fn action(&self, http: &HttpRoute) -> Value {
        let timeout = http
            .timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .map(envoy_duration)
            .unwrap_or_else(|| "0s".into());
        let mut a = Map::new();
        let live = live_destinations(http);
        if live.len() == 1 {
            let (cluster, host, port, subset) = self.dest_cluster(&live[0].destination);
            a.insert("cluster".into(), json!(cluster));
            let policy = cluster_policy(find_dr(self.drs, &host), port, &subset);
            if let Some(h) = hash_policy(&policy) {
                a.insert("hash_policy".into(), h);
            }
        } else {
            let clusters: Vec<Value> = live
                .iter()
                .map(|d| {
                    let (cluster, ..) = self.dest_cluster(&d.destination);
                    let mut wc = Map::new();
                    wc.insert("name".into(), json!(cluster));
                    wc.insert("weight".into(), json!(d.weight.unwrap_or(0)));
                    if let Some(h) = &d.headers {
                        add_headers(&mut wc, h);
                    }
                    Value::Object(wc)
                })
                .collect();
            a.insert("weighted_clusters".into(), json!({"clusters": clusters}));
            if let Some(first) = live.first() {
                let (_, host, port, subset) = self.dest_cluster(&first.destination);
                if let Some(h) = hash_policy(&cluster_policy(find_dr(self.drs, &host), port, &subset)) {
                    a.insert("hash_policy".into(), h);
                }
            }
        }
        a.insert("timeout".into(), json!(timeout));
        if let Some(rp) = retry_policy(http.retries.as_ref()) {
            a.insert("retry_policy".into(), rp);
        }
        a.insert(
            "max_stream_duration".into(),
            json!({"max_stream_duration": timeout, "grpc_timeout_header_max": timeout}),
        );
        if let Some(rw) = &http.rewrite {
            if let Some(u) = &rw.uri {
                a.insert("prefix_rewrite".into(), json!(u));
            }
            if let Some(rr) = &rw.uri_regex_rewrite {
                a.insert("regex_rewrite".into(), json!({"pattern": {"regex": rr.pattern}, "substitution": rr.rewrite}));
            }
            if let Some(auth) = &rw.authority {
                a.insert("host_rewrite_literal".into(), json!(auth));
            }
        }
        if let Some(mirror) = &http.mirror {
            let (cluster, ..) = self.dest_cluster(mirror);
            let pct = http
                .mirror_percentage
                .map(|p: Percent| p.value)
                .or(http.mirror_percent.map(f64::from))
                .unwrap_or(100.0);
            a.insert(
                "request_mirror_policies".into(),
                json!([{"cluster": cluster, "runtime_fraction": {"default_value": fraction(pct)}}]),
            );
        }
        Value::Object(a)
    }
}

/// The destinations that get traffic: a lone destination whatever its weight, else those with a
/// weight (istiod drops zero-weight destinations when there are several).
fn live_destinations(http: &HttpRoute) -> Vec<&HttpRouteDestination> {
    if http.route.len() == 1 {
        http.route.iter().collect()
    } else {
        http.route.iter().filter(|d| d.weight.unwrap_or(0) > 0).collect()
    }
}

fn is_catch_all(m: &HttpMatchRequest) -> bool {
    let uri_all =
        m.uri.as_ref().is_none_or(|u| u.prefix.as_deref() == Some("/") && u.exact.is_none() && u.regex.is_none());
    uri_all
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
        && m.method.is_none()
        && m.authority.is_none()
        && m.scheme.is_none()
        && m.port.is_none()
        && m.source_labels.is_empty()
        && m.source_namespace.is_none()
}

/// A percentage (0–100) as Envoy's FractionalPercent per million.
fn fraction(pct: f64) -> Value {
    let n = (pct.clamp(0.0, 100.0) * 10_000.0).round() as u64;
    json!({"numerator": n, "denominator": "MILLION"})
}

fn grpc_code(name: &str) -> u32 {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .map(|p| p as u32)
        .or_else(|| name.parse().ok())
        .unwrap_or(14)
}

/// istiod's `TranslateCORSPolicy`: the CORS filter's per-route policy.
fn cors_policy(c: &CorsPolicy) -> Value {
    let origins: Vec<Value> = if c.allow_origins.is_empty() {
        c.allow_origin.iter().map(|o| json!({"exact": o})).collect()
    } else {
        c.allow_origins.iter().filter_map(string_match).collect()
    };
    let mut p = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": origins,
        "allow_methods": c.allow_methods.join(","),
        "allow_headers": c.allow_headers.join(","),
        "expose_headers": c.expose_headers.join(","),
        "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
    });
    if let Some(age) = c.max_age.as_deref().and_then(|a| parse_duration(a).ok()) {
        p["max_age"] = json!(age.as_secs().to_string());
    }
    if let Some(b) = c.allow_credentials {
        p["allow_credentials"] = json!(b);
    }
    match c.unmatched_preflights.as_deref() {
        Some("IGNORE") => p["forward_not_matching_preflights"] = json!(false),
        Some("FORWARD") => p["forward_not_matching_preflights"] = json!(true),
        _ => {}
    }
    p
}

fn string_match(sm: &StringMatch) -> Option<Value> {
    if let Some(e) = &sm.exact {
        Some(json!({"exact": e}))
    } else if let Some(p) = &sm.prefix {
        Some(json!({"prefix": p}))
    } else {
        sm.regex.as_ref().map(|r| json!({"safe_regex": {"regex": r}}))
    }
}

fn header_matcher(name: &str, sm: &StringMatch, invert: bool) -> Value {
    let mut h = json!({"name": name});
    match string_match(sm) {
        Some(m) => h["string_match"] = m,
        None => h["present_match"] = json!(true),
    }
    if invert {
        h["invert_match"] = json!(true);
    }
    h
}

/// The Envoy RouteMatch for an Istio match, and the decorator's path suffix.
fn route_match(m: Option<&HttpMatchRequest>) -> (Value, String) {
    let Some(m) = m else { return (json!({"prefix": "/"}), "/*".into()) };
    let mut out = Map::new();
    let mut op = "/*".to_string();
    match &m.uri {
        Some(StringMatch { exact: Some(p), .. }) => {
            out.insert("path".into(), json!(p));
            op = p.clone();
        }
        Some(StringMatch { prefix: Some(p), .. }) => {
            out.insert("prefix".into(), json!(p));
            op = format!("{p}*");
        }
        Some(StringMatch { regex: Some(r), .. }) => {
            out.insert("safe_regex".into(), json!({"regex": r}));
        }
        _ => {
            out.insert("prefix".into(), json!("/"));
        }
    }
    if m.ignore_uri_case == Some(true) {
        out.insert("case_sensitive".into(), json!(false));
    }
    let mut headers = Vec::new();
    for (name, sm) in [(":method", &m.method), (":authority", &m.authority), (":scheme", &m.scheme)] {
        if let Some(sm) = sm {
            headers.push(header_matcher(name, sm, false));
        }
    }
    for (name, sm) in &m.headers {
        headers.push(header_matcher(name, sm, false));
    }
    for (name, sm) in &m.without_headers {
        headers.push(header_matcher(name, sm, true));
    }
    if !headers.is_empty() {
        out.insert("headers".into(), json!(headers));
    }
    if !m.query_params.is_empty() {
        let qps: Vec<Value> = m
            .query_params
            .iter()
            .map(|(name, sm)| match string_match(sm) {
                Some(s) => json!({"name": name, "string_match": s}),
                None => json!({"name": name, "present_match": true}),
            })
            .collect();
        out.insert("query_parameters".into(), json!(qps));
    }
    if !m.source_labels.is_empty() || m.source_namespace.is_some() {
        warn!("match.sourceLabels / sourceNamespace depend on the client workload; the local control plane serves every client the same routes and ignores them");
    }
    (Value::Object(out), op)
}

fn retry_policy(r: Option<&HttpRetry>) -> Option<Value> {
    let Some(r) = r else { return Some(default_retry_policy()) };
    let attempts = r.attempts.unwrap_or(0);
    if attempts <= 0 {
        return None;
    }
    let mut p = default_retry_policy();
    p["num_retries"] = json!(attempts);
    if let Some(on) = &r.retry_on {
        let mut policies = Vec::new();
        let mut codes = Vec::new();
        for part in on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match part.parse::<u32>() {
                Ok(code) => codes.push(code),
                Err(_) => policies.push(part.to_string()),
            }
        }
        if !codes.is_empty() && !policies.iter().any(|p| p == "retriable-status-codes") {
            policies.push("retriable-status-codes".into());
        }
        p["retry_on"] = json!(policies.join(","));
        match codes.is_empty() {
            true => {
                if let Value::Object(m) = &mut p {
                    m.remove("retriable_status_codes");
                }
            }
            false => p["retriable_status_codes"] = json!(codes),
        }
    }
    if let Some(d) = r.per_try_timeout.as_deref().and_then(|d| parse_duration(d).ok()) {
        p["per_try_timeout"] = json!(envoy_duration(d));
    }
    Some(p)
}

fn header_ops(ops: &HeaderOperations) -> (Vec<Value>, Vec<String>) {
    let mut add = Vec::new();
    for (k, v) in &ops.set {
        add.push(json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}));
    }
    for (k, v) in &ops.add {
        add.push(json!({"header": {"key": k, "value": v}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}));
    }
    (add, ops.remove.clone())
}

fn add_headers(target: &mut Map<String, Value>, h: &Headers) {
    for (ops, add_key, remove_key) in [
        (&h.request, "request_headers_to_add", "request_headers_to_remove"),
        (&h.response, "response_headers_to_add", "response_headers_to_remove"),
    ] {
        let Some(ops) = ops else { continue };
        let (add, remove) = header_ops(ops);
        if !add.is_empty() {
            let list = target.entry(add_key).or_insert_with(|| json!([]));
            if let Value::Array(l) = list {
                l.extend(add);
            }
        }
        if !remove.is_empty() {
            let list = target.entry(remove_key).or_insert_with(|| json!([]));
            if let Value::Array(l) = list {
                l.extend(remove.into_iter().map(Value::String));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_with_codes() {
        let p = retry_policy(Some(&HttpRetry {
            attempts: Some(3),
            per_try_timeout: Some("2s".into()),
            retry_on: Some("gateway-error,503".into()),
            retry_remote_localities: None,
        }))
        .unwrap();
        assert_eq!(p["retry_on"], "gateway-error,retriable-status-codes");
        assert_eq!(p["retriable_status_codes"], json!([503]));
        assert_eq!(p["num_retries"], 3);
        assert_eq!(p["per_try_timeout"], "2s");
        assert!(retry_policy(Some(&HttpRetry { attempts: Some(0), ..Default::default() })).is_none());
        assert_eq!(retry_policy(None).unwrap()["num_retries"], 2);
    }

    #[test]
    fn fractions() {
        assert_eq!(fraction(50.0)["numerator"], 500_000);
        assert_eq!(grpc_code("UNAVAILABLE"), 14);
    }
}
