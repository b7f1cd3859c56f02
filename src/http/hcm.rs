//! The per-request pipeline of the HTTP connection manager: Envoy's request header handling
//! (hop-by-hop removal, x-forwarded-*, x-request-id), route selection, direct responses and
//! redirects, the HTTP filter chain, and response header handling (`server`, header mutations).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use rand::Rng;

use super::body::{boxed, empty, ResponseBody};
use super::conn::{ConnInfo, HcmRuntime};
use super::local_reply;
use super::router;
use crate::model::format::{FormatContext, TlsField};
use crate::model::hcm::{HttpFilter, RouteSource, ServerHeader};
use crate::model::route::{
    is_grpc, RedirectAction, RedirectPath, RequestView, Route, RouteAction, RouteTable, StreamDuration, VirtualHost,
};
use crate::state::ProxyState;
use crate::telemetry::stats::GaugeGuard;

use super::request_headers::{X_FORWARDED_PROTO, X_REQUEST_ID};

/// Request facts the router and format strings need beyond the headers.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub conn: Arc<ConnInfo>,
    pub version: Version,
    pub start: Instant,
    pub start_time: SystemTime,
    pub grpc: bool,
    pub host: String,
    /// The trusted client address (Envoy's downstream remote address; may come from XFF).
    pub remote: std::net::SocketAddr,
    /// The request carried a body Remora may not read (a local reply then closes h1 connections).
    pub has_body: bool,
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
        Some(self.meta.remote)
    }
    fn downstream_direct_remote(&self) -> Option<std::net::SocketAddr> {
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
    fn tls(&self, field: TlsField) -> Option<String> {
        // Connection details are kept for mTLS connections only, so a server-only TLS connection
        // renders the local SANs empty too.
        let d = self.meta.conn.peer.as_ref()?.details();
        Some(match field {
            TlsField::PeerUriSan => d.uris.join(","),
            TlsField::PeerDnsSan => d.dns.join(","),
            TlsField::PeerSubject => d.subject.clone(),
            TlsField::PeerFingerprint256 => d.hash.clone(),
            TlsField::LocalUriSan => d.local_uris.join(","),
        })
    }
}

/// Handles one downstream request end to end.
pub async fn handle(
    mut req: Request<Incoming>,
    hcm: Arc<HcmRuntime>,
    conn: Arc<ConnInfo>,
    state: Arc<ProxyState>,
) -> Result<Response<ResponseBody>, StreamReset> {
    let cfg = &hcm.config;
    hcm.stats.rq_total.inc();
    let _active = GaugeGuard::new(&hcm.stats.rq_active);
    let version = req.version();
    if header_bytes(req.headers()) > (cfg.max_request_headers_kb as usize) * 1024 {
        if version == Version::HTTP_2 {
            // Envoy resets an h2 stream whose headers are too large; an error from the service
            // makes hyper send RST_STREAM.
            return Err(StreamReset);
        }
        // Envoy's codec refuses the request and closes the connection.
        hcm.stats.record_status(431);
        let mut resp =
            local_reply::reply(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "Request Header Fields Too Large", false);
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        if let Ok(v) = HeaderValue::from_str(&cfg.server_name) {
            resp.headers_mut().insert(header::SERVER, v);
        }
        return Ok(resp);
    }
    let scheme = if conn.tls { "https" } else { "http" };
    let websocket = is_websocket_upgrade(req.headers());
    let trust = super::request_headers::mutate(
        req.headers_mut(),
        cfg,
        conn.remote,
        scheme,
        version == Version::HTTP_2,
        websocket,
    );
    super::xfcc::apply(req.headers_mut(), cfg.forward_client_cert, cfg.client_cert_details, conn.peer.as_deref());
    let peer_metadata = hcm
        .peer_metadata
        .map(|p| (p, super::peer_metadata::on_request(req.headers_mut(), p, &state.metadata_exchange)));
    let host = request_host(&req);
    if !req.headers().contains_key(header::HOST) {
        // h2 carries the authority in `:authority`; h1 upstreams need a Host header.
        if let Ok(v) = HeaderValue::from_str(&host) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let meta = RequestMeta {
        host,
        conn,
        version,
        start: Instant::now(),
        start_time: SystemTime::now(),
        grpc: is_grpc(req.headers()),
        remote: trust.remote,
        has_body: !http_body::Body::is_end_stream(req.body()),
    };
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

    let local_reply_unread_body = meta.has_body && resp.extensions().get::<local_reply::Local>().is_some();
    let headers = resp.headers_mut();
    if let Some((p, received)) = peer_metadata {
        super::peer_metadata::on_response(headers, p, received, &state.metadata_exchange);
    }
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
    if (state.is_draining() || local_reply_unread_body) && meta.version < Version::HTTP_2 {
        // A local reply leaves the request body unread, so the h1 connection cannot be reused.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    hcm.stats.record_status(resp.status().as_u16());
    Ok(resp)
}

/// The stream must be reset instead of answered.
#[derive(Debug)]
pub struct StreamReset;

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream reset by the connection manager")
    }
}

impl std::error::Error for StreamReset {}

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
        RouteSource::Rds(name) => state.route_table(name),
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
    let _active_fault = match &hcm.fault {
        Some(fault) => {
            let per_route = route.per_filter.fault.as_deref().or(vh.per_filter.fault.as_deref());
            let cluster = match &route.action {
                RouteAction::Forward(a) => match &a.cluster {
                    crate::model::route::ClusterTarget::Named(c) => Some(c.as_str()),
                    // The weighted pick happens in the router; a fault bound to one cluster
                    // does not apply to a split route.
                    _ => None,
                },
                _ => None,
            };
            match fault.apply(per_route, &view, cluster, meta.grpc).await {
                super::fault::Fault::Continue(active) => active,
                super::fault::Fault::Abort(resp) => return resp,
            }
        }
        None => None,
    };
    let cors = if hcm.cors {
        let policies = [route.per_filter.cors.as_deref(), vh.per_filter.cors.as_deref()];
        match super::cors::on_request(&policies, req.method(), req.headers()) {
            super::cors::Cors::Preflight(resp) => return resp,
            other => other,
        }
    } else {
        super::cors::Cors::Pass
    };
    let mut resp = match &route.action {
        RouteAction::Direct(d) => {
            hcm.stats.rq_direct_response.inc();
            let body = d.body.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            let mut resp = local_reply::reply(d.status, &body, meta.grpc);
            if !meta.grpc {
                *resp.status_mut() = d.status;
            }
            apply_response_mutations(
                &mut resp,
                req.headers(),
                meta,
                &RouteLevels { route, vh, table: &table, weighted: None },
                None,
            );
            resp
        }
        RouteAction::Redirect(r) => {
            hcm.stats.rq_redirect.inc();
            let mut resp = redirect(r, route, &req, meta);
            apply_response_mutations(
                &mut resp,
                req.headers(),
                meta,
                &RouteLevels { route, vh, table: &table, weighted: None },
                None,
            );
            resp
        }
        RouteAction::Forward(action) => {
            let mut req = req;
            let limit =
                action.stream_duration.as_ref().and_then(|sd| stream_duration_limit(sd, req.headers_mut(), meta.grpc));
            let sel = router::Selected { cluster: "", route, action, vh, table: &table };
            let forward = router::forward(req, sel, hcm, meta, state);
            match limit {
                None => forward.await,
                // Envoy's max_stream_duration timer runs from the stream's start; the response
                // body is bounded by the same deadline.
                Some(limit) => {
                    let deadline = meta.start + limit;
                    match tokio::time::timeout_at(deadline.into(), forward).await {
                        Ok(resp) => resp.map(|b| boxed(super::idle::TimedBody::deadline(b, deadline))),
                        Err(_) => {
                            hcm.stats.rq_max_duration_reached.inc();
                            // Envoy answers 408 instead when the request body is still arriving;
                            // Remora does not track that here.
                            let mut r = local_reply::reply(
                                StatusCode::GATEWAY_TIMEOUT,
                                "downstream duration timeout",
                                meta.grpc,
                            );
                            if meta.grpc {
                                r.headers_mut().insert("grpc-status", HeaderValue::from(GRPC_DEADLINE_EXCEEDED));
                            }
                            r
                        }
                    }
                }
            }
        }
    };
    if let super::cors::Cors::Actual { origin, credentials, expose } = cors {
        super::cors::on_response(resp.headers_mut(), origin, credentials, expose);
    }
    resp
}

const GRPC_DEADLINE_EXCEEDED: u16 = 4;
static GRPC_TIMEOUT: header::HeaderName = header::HeaderName::from_static("grpc-timeout");

/// How long the stream may last under a route's `max_stream_duration` (Envoy's
/// `ActiveStream::refreshDurationTimeout`), counted from the stream's start; `None`: no limit.
/// A `grpc-timeout` header bounds it instead when the route sets `grpc_timeout_header_max`; a gRPC
/// request then carries the bound upstream in its `grpc-timeout`.
fn stream_duration_limit(sd: &StreamDuration, headers: &mut HeaderMap, grpc: bool) -> Option<Duration> {
    let grpc_timeout = headers.get(&GRPC_TIMEOUT).and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
    let limit = match (grpc_timeout, sd.grpc_header_max) {
        (Some(mut t), Some(max)) => {
            if !max.is_zero() && t > max {
                t = max;
            }
            if let Some(offset) = sd.grpc_header_offset.filter(|_| !t.is_zero()) {
                t = t.saturating_sub(offset);
            }
            t
        }
        // Explicitly 0: no limit. Unset: the HCM's own max_stream_duration, which Remora does
        // not model (Istio does not set it).
        _ => sd.max.filter(|d| !d.is_zero())?,
    };
    if grpc {
        if let Ok(v) = HeaderValue::from_str(&grpc_timeout_value(limit)) {
            headers.insert(GRPC_TIMEOUT.clone(), v);
        }
    }
    Some(limit)
}

/// gRPC's `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n); sub-millisecond values
/// round up to whole milliseconds, as Envoy's `Grpc::Common::getGrpcTimeout` does.
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_millis(n.div_ceil(1_000)),
        "n" => Duration::from_millis(n.div_ceil(1_000_000)),
        _ => return None,
    };
    Some(d)
}

/// Envoy's `Grpc::Common::toGrpcTimeout`: milliseconds, scaled to a coarser unit when the value
/// needs more than 8 digits.
fn grpc_timeout_value(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let mut t = d.as_millis();
    for (unit, next_divisor) in [("m", 1000), ("S", 60), ("M", 60)] {
        if t <= MAX {
            return format!("{t}{unit}");
        }
        t /= next_divisor;
    }
    format!("{}H", t.min(MAX))
}

/// The route-configuration levels whose header mutations apply, most specific first.
#[derive(Clone, Copy)]
pub struct RouteLevels<'a> {
    pub route: &'a Route,
    pub vh: &'a VirtualHost,
    pub table: &'a RouteTable,
    pub weighted: Option<&'a crate::model::route::WeightedCluster>,
}

/// The upstream a response came from (or was meant to), for `%UPSTREAM_*%` formats.
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    pub cluster: &'a str,
    pub address: Option<std::net::SocketAddr>,
}

/// Route-level response header mutations: most specific first, so the route configuration's
/// additions are applied last (Envoy's default order).
pub fn apply_response_mutations(
    resp: &mut Response<ResponseBody>,
    req_headers: &HeaderMap,
    meta: &RequestMeta,
    levels: &RouteLevels<'_>,
    upstream: Option<Upstream<'_>>,
) {
    let RouteLevels { route, vh, table, weighted } = *levels;
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
                cluster: upstream.map(|u| u.cluster),
                upstream: upstream.and_then(|u| u.address),
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
        RedirectPath::PrefixRewrite(prefix) => rewrite_prefix(path, route.matcher.rewritten_len(path), prefix),
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
    resp.extensions_mut().insert(local_reply::Local);
    resp
}

/// Replaces the first `cut` bytes of `path` (the matched prefix, case-insensitively matched
/// prefixes included, or all of it).
pub fn rewrite_prefix(path: &str, cut: usize, replacement: &str) -> String {
    let cut = cut.min(path.len());
    let mut out = String::with_capacity(replacement.len() + path.len() - cut);
    out.push_str(replacement);
    out.push_str(&path[cut..]);
    out
}

/// The size of a header block as Envoy counts it against `max_request_headers_kb`.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("200m"), Some(Duration::from_millis(200)));
        assert_eq!(parse_grpc_timeout("1500u"), Some(Duration::from_millis(2)));
        assert_eq!(parse_grpc_timeout("1n"), Some(Duration::from_millis(1)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
        assert_eq!(grpc_timeout_value(Duration::from_millis(500)), "500m");
        assert_eq!(grpc_timeout_value(Duration::from_secs(200_000)), "200000S");
        assert_eq!(grpc_timeout_value(Duration::from_secs(6_000_000_000)), "1666666H");
    }

    #[test]
    fn stream_duration_limits() {
        let sd = |max: Option<u64>, grpc_max: Option<u64>, offset: Option<u64>| StreamDuration {
            max: max.map(Duration::from_millis),
            grpc_header_max: grpc_max.map(Duration::from_millis),
            grpc_header_offset: offset.map(Duration::from_millis),
        };
        let limit = |s: &StreamDuration, grpc_timeout: Option<&str>, grpc: bool| {
            let mut h = HeaderMap::new();
            if let Some(t) = grpc_timeout {
                h.insert("grpc-timeout", HeaderValue::from_str(t).unwrap());
            }
            let l = stream_duration_limit(s, &mut h, grpc);
            (l.map(|d| d.as_millis() as u64), h.get("grpc-timeout").map(|v| v.to_str().unwrap().to_string()))
        };
        // istiod's default route: no limit for plain requests, the gRPC deadline for gRPC ones
        let istio_default = sd(Some(0), Some(0), None);
        assert_eq!(limit(&istio_default, None, false), (None, None));
        assert_eq!(limit(&istio_default, Some("2S"), true), (Some(2000), Some("2000m".into())));
        // a VirtualService timeout of 500 ms: caps the gRPC deadline too
        let vs = sd(Some(500), Some(500), None);
        assert_eq!(limit(&vs, None, false), (Some(500), None));
        assert_eq!(limit(&vs, Some("10S"), true), (Some(500), Some("500m".into())));
        assert_eq!(limit(&vs, Some("100m"), true), (Some(100), Some("100m".into())));
        assert_eq!(limit(&vs, None, true), (Some(500), Some("500m".into())));
        // without grpc_timeout_header_max the header is not consulted
        assert_eq!(limit(&sd(Some(500), None, None), Some("100m"), false), (Some(500), Some("100m".into())));
        // the offset comes off the header's bound
        assert_eq!(limit(&sd(None, Some(0), Some(50)), Some("100m"), true), (Some(50), Some("50m".into())));
        assert_eq!(limit(&sd(None, Some(0), Some(500)), Some("100m"), true), (Some(0), Some("0m".into())));
        // unset everywhere: no limit
        assert_eq!(limit(&sd(None, None, None), Some("100m"), true), (None, Some("100m".into())));
    }
}
