//! The per-request pipeline of the HTTP connection manager: Envoy's request header handling
//! (hop-by-hop removal, x-forwarded-*, x-request-id), route selection, direct responses and
//! redirects, the HTTP filter chain, and response header handling (`server`, header mutations).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use rand::Rng;

use super::body::{empty, full, ResponseBody};
use super::conn::{ConnInfo, HcmRuntime};
use super::local_reply;
use super::router;
use crate::model::format::FormatContext;
use crate::model::hcm::{HttpFilter, RouteSource, ServerHeader};
use crate::model::route::{
    is_grpc, RedirectAction, RedirectPath, RequestView, Route, RouteAction, RouteTable, VirtualHost,
};
use crate::state::ProxyState;
use crate::telemetry::stats::GaugeGuard;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Request facts the router and format strings need beyond the headers.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub conn: Arc<ConnInfo>,
    pub version: Version,
    pub start: Instant,
    pub start_time: SystemTime,
    pub grpc: bool,
    pub host: String,
}

impl RequestMeta {
    pub fn protocol(&self) -> &'static str {
        match self.version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.conn.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// Format context over a request's headers (and, for responses, the response headers).
pub struct HeaderFormat<'a> {
    pub meta: &'a RequestMeta,
    pub request: &'a HeaderMap,
    pub response: Option<&'a HeaderMap>,
    pub cluster: Option<&'a str>,
    pub upstream: Option<std::net::SocketAddr>,
    pub route_name: Option<&'a str>,
    pub status: Option<u16>,
}

impl FormatContext for HeaderFormat<'_> {
    fn downstream_remote(&self) -> Option<std::net::SocketAddr> {
        Some(self.meta.conn.remote)
    }
    fn downstream_local(&self) -> Option<std::net::SocketAddr> {
        Some(self.meta.conn.local)
    }
    fn request_header(&self, name: &str) -> Option<String> {
        let value = match name {
            ":authority" => return Some(self.meta.host.clone()),
            ":scheme" => return Some(self.meta.scheme().to_string()),
            other => self.request.get(other)?,
        };
        value.to_str().ok().map(str::to_string)
    }
    fn response_header(&self, name: &str) -> Option<String> {
        self.response?.get(name)?.to_str().ok().map(str::to_string)
    }
    fn protocol(&self) -> &'static str {
        self.meta.protocol()
    }
    fn upstream_cluster(&self) -> Option<String> {
        self.cluster.map(str::to_string)
    }
    fn upstream_remote(&self) -> Option<std::net::SocketAddr> {
        self.upstream
    }
    fn route_name(&self) -> Option<String> {
        self.route_name.map(str::to_string)
    }
    fn response_code(&self) -> Option<u16> {
        self.status
    }
    fn start_time(&self) -> SystemTime {
        self.meta.start_time
    }
}

/// Handles one downstream request end to end.
pub async fn handle(
    mut req: Request<Incoming>,
    hcm: Arc<HcmRuntime>,
    conn: Arc<ConnInfo>,
    state: Arc<ProxyState>,
) -> Response<ResponseBody> {
    let cfg = &hcm.config;
    hcm.stats.rq_total.inc();
    let _active = GaugeGuard::new(&hcm.stats.rq_active);
    let meta = RequestMeta {
        host: request_host(&req),
        conn,
        version: req.version(),
        start: Instant::now(),
        start_time: SystemTime::now(),
        grpc: is_grpc(req.headers()),
    };
    mutate_request_headers(&mut req, &hcm, &meta);
    let request_id = req.headers().get(&X_REQUEST_ID).cloned();

    let mut resp = match cfg.request_timeout {
        // Envoy's request_timeout covers the whole stream; on expiry the client gets a 408.
        Some(t) => match tokio::time::timeout(t, route_and_forward(req, &hcm, &meta, &state)).await {
            Ok(r) => r,
            Err(_) => {
                hcm.stats.rq_timeout.inc();
                local_reply::reply(StatusCode::REQUEST_TIMEOUT, "request timeout", meta.grpc)
            }
        },
        None => route_and_forward(req, &hcm, &meta, &state).await,
    };

    let headers = resp.headers_mut();
    match cfg.server_header {
        ServerHeader::Overwrite => {
            if let Ok(v) = HeaderValue::from_str(&cfg.server_name) {
                headers.insert(header::SERVER, v);
            }
        }
        ServerHeader::AppendIfAbsent => {
            if !headers.contains_key(header::SERVER) {
                if let Ok(v) = HeaderValue::from_str(&cfg.server_name) {
                    headers.insert(header::SERVER, v);
                }
            }
        }
        ServerHeader::PassThrough => {}
    }
    if cfg.always_set_request_id_in_response {
        if let Some(id) = request_id {
            headers.insert(X_REQUEST_ID.clone(), id);
        }
    }
    if state.is_draining() && meta.version < Version::HTTP_2 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    hcm.stats.record_status(resp.status().as_u16());
    resp
}

async fn route_and_forward(
    req: Request<Incoming>,
    hcm: &HcmRuntime,
    meta: &RequestMeta,
    state: &Arc<ProxyState>,
) -> Response<ResponseBody> {
    let cfg = &hcm.config;
    for f in &cfg.filters {
        if let HttpFilter::Unimplemented { name, type_name } = f {
            // Fail closed: a filter we cannot apply (auth, policy, …) must not be skipped.
            return local_reply::reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("remora: HTTP filter '{name}' ({type_name}) is not implemented"),
                meta.grpc,
            );
        }
    }
    let table: Option<Arc<RouteTable>> = match &cfg.route_source {
        RouteSource::Inline => cfg.inline_routes.clone(),
        RouteSource::Rds(_) => None,
    };
    let Some(table) = table else {
        hcm.stats.no_route.inc();
        return local_reply::reply(StatusCode::NOT_FOUND, "", meta.grpc);
    };
    let mut host = meta.host.as_str();
    if cfg.strip_any_host_port
        || (cfg.strip_matching_host_port
            && host.rsplit_once(':').is_some_and(|(_, p)| p == meta.conn.local.port().to_string()))
    {
        host = crate::model::route::strip_port(host);
    }
    let Some(vh) = table.find_virtual_host(host) else {
        hcm.stats.no_route.inc();
        return local_reply::reply(StatusCode::NOT_FOUND, "", meta.grpc);
    };
    let (path, query) = split_path(&req);
    let view = RequestView {
        path,
        query,
        headers: req.headers(),
        method: req.method().as_str(),
        authority: host,
        scheme: meta.scheme(),
        path_and_query: req.uri().path_and_query().map_or(path, |pq| pq.as_str()),
    };
    let random = rand::rng().random_range(0..1_000_000);
    let Some(route) = vh.find_route(&view, random) else {
        hcm.stats.no_route.inc();
        return local_reply::reply(StatusCode::NOT_FOUND, "", meta.grpc);
    };
    match &route.action {
        RouteAction::Direct(d) => {
            hcm.stats.rq_direct_response.inc();
            let mut resp = match &d.body {
                Some(b) if !b.is_empty() => {
                    let mut r = Response::new(full(b.clone()));
                    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                    r
                }
                _ => {
                    let mut r = Response::new(empty());
                    r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                    r
                }
            };
            *resp.status_mut() = d.status;
            apply_response_mutations(&mut resp, req.headers(), meta, route, vh, &table, None);
            resp
        }
        RouteAction::Redirect(r) => {
            hcm.stats.rq_redirect.inc();
            let mut resp = redirect(r, route, &req, meta);
            apply_response_mutations(&mut resp, req.headers(), meta, route, vh, &table, None);
            resp
        }
        RouteAction::Forward(action) => {
            router::forward(req, router::Selected { route, action, vh, table: &table }, hcm, meta, state).await
        }
    }
}

/// Route-level response header mutations: most specific first, so the route configuration's
/// additions are applied last (Envoy's default order).
pub fn apply_response_mutations(
    resp: &mut Response<ResponseBody>,
    req_headers: &HeaderMap,
    meta: &RequestMeta,
    route: &Route,
    vh: &VirtualHost,
    table: &RouteTable,
    weighted: Option<&crate::model::route::WeightedCluster>,
) {
    let levels = [
        weighted.map(|w| &w.response_headers),
        Some(&route.response_headers),
        Some(&vh.response_headers),
        Some(&table.response_headers),
    ];
    let status = resp.status().as_u16();
    for m in levels.into_iter().flatten() {
        if m.is_empty() {
            continue;
        }
        let rendered = {
            let ctx = HeaderFormat {
                meta,
                request: req_headers,
                response: Some(resp.headers()),
                cluster: None,
                upstream: None,
                route_name: Some(&route.name),
                status: Some(status),
            };
            m.render(&ctx)
        };
        m.apply_rendered(resp.headers_mut(), rendered);
    }
}

/// The request's authority: `:authority` (h2) or `Host` (h1).
fn request_host<B>(req: &Request<B>) -> String {
    if let Some(a) = req.uri().authority() {
        return a.as_str().to_string();
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_string()
}

pub fn split_path<B>(req: &Request<B>) -> (&str, Option<&str>) {
    let path = req.uri().path();
    let path = if path.is_empty() { "/" } else { path };
    (path, req.uri().query())
}

/// Envoy's `ConnectionManagerUtility::mutateRequestHeaders`, for the parts Remora implements.
fn mutate_request_headers(req: &mut Request<Incoming>, hcm: &HcmRuntime, meta: &RequestMeta) {
    let cfg = &hcm.config;
    let websocket = is_websocket_upgrade(req.headers());
    let headers = req.headers_mut();
    // Hop-by-hop headers never cross the proxy (an allowed upgrade keeps its two).
    if !websocket {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers.remove(&KEEP_ALIVE);
    // Envoy answers `Expect: 100-continue` itself (hyper sends the 100 when the body is read), so
    // the upstream never sees the expectation.
    headers.remove(header::EXPECT);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(te) = headers.get(header::TE) {
        if !te.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))) {
            headers.remove(header::TE);
        } else {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    let remote_ip = meta.conn.remote.ip();
    if cfg.use_remote_address {
        if !cfg.skip_xff_append {
            append_xff(headers, remote_ip);
        }
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(meta.scheme()));
        if is_internal(remote_ip) {
            headers.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
        } else {
            headers.remove(&X_ENVOY_INTERNAL);
        }
    } else if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(meta.scheme()));
    }
    if let Some(via) = &cfg.via {
        if let Ok(v) = HeaderValue::from_str(via) {
            headers.append(header::VIA, v);
        }
    }
    let edge = cfg.use_remote_address && !is_internal(remote_ip);
    let needs_id = !headers.contains_key(&X_REQUEST_ID) || (edge && !cfg.preserve_external_request_id);
    if cfg.generate_request_id && needs_id {
        let id = uuid::Uuid::new_v4();
        let mut buf = uuid::Uuid::encode_buffer();
        if let Ok(v) = HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf)) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
    // h2 requests carry the authority in the URI; keep a Host header so h1 upstreams see it.
    if !headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&meta.host) {
            headers.insert(header::HOST, v);
        }
    }
}

fn append_xff(headers: &mut HeaderMap, ip: IpAddr) {
    let ip = ip.to_canonical().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing},{ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// Envoy's default internal address test: RFC 1918, loopback, unique-local IPv6.
fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

pub fn is_websocket_upgrade(h: &HeaderMap) -> bool {
    h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && h.get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

fn redirect<B>(r: &RedirectAction, route: &Route, req: &Request<B>, meta: &RequestMeta) -> Response<ResponseBody> {
    let orig_scheme = req
        .headers()
        .get(&X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| meta.scheme().to_string());
    let scheme = r.scheme.clone().unwrap_or_else(|| orig_scheme.clone());
    let (orig_host, orig_port) = match meta.host.rsplit_once(':') {
        Some((h, p))
            if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']')
                || meta.host.starts_with('[') && meta.host.contains("]:") =>
        {
            (h.to_string(), Some(p.to_string()))
        }
        _ => (meta.host.clone(), None),
    };
    let host = r.host.clone().unwrap_or(orig_host);
    let port = match (r.port, r.host.as_ref(), &orig_port) {
        (Some(p), _, _) => Some(p.to_string()),
        // A new host without a port drops the original port, as does a scheme change whose
        // original port was the old scheme's default.
        (None, Some(_), _) => None,
        (None, None, Some(p)) if r.scheme.is_some() && scheme != orig_scheme => {
            if (orig_scheme == "http" && p == "80") || (orig_scheme == "https" && p == "443") {
                None
            } else {
                Some(p.clone())
            }
        }
        (None, None, p) => p.clone(),
    };
    let port = port.filter(|p| !((scheme == "https" && p == "443") || (scheme == "http" && p == "80")));
    let (path, query) = split_path(req);
    let new_path = match &r.path {
        RedirectPath::Keep => path.to_string(),
        RedirectPath::Replace(p) => p.clone(),
        RedirectPath::PrefixRewrite(prefix) => rewrite_prefix(path, route.matcher.rewrite_prefix(), prefix),
        RedirectPath::RegexRewrite(re, sub) => re.replace_all(path, sub.as_str()).into_owned(),
    };
    let mut location = format!("{scheme}://{host}");
    if let Some(p) = port {
        location.push(':');
        location.push_str(&p);
    }
    let (new_path, new_query) = match new_path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (new_path, None),
    };
    location.push_str(&new_path);
    if !r.strip_query {
        if let Some(q) = new_query.or(query.map(str::to_string)) {
            location.push('?');
            location.push_str(&q);
        }
    }
    let mut resp = Response::new(empty());
    *resp.status_mut() = r.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

/// Replaces the matched prefix of `path` (case-insensitively matched prefixes included).
pub fn rewrite_prefix(path: &str, matched: Option<&str>, replacement: &str) -> String {
    let cut = matched.map_or(0, |m| m.len().min(path.len()));
    let mut out = String::with_capacity(replacement.len() + path.len() - cut);
    out.push_str(replacement);
    out.push_str(&path[cut..]);
    out
}
