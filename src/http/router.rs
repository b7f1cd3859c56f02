//! The router filter: picks the cluster (weighted clusters included), rewrites path and host,
//! applies route header mutations, enforces circuit breakers, and sends the request with Envoy's
//! timeout and retry semantics. WebSocket upgrades are tunnelled here too.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rand::Rng;

use super::body::{boxed, BoxError, ResponseBody};
use super::conn::HcmRuntime;
use super::hcm::{
    apply_response_mutations, is_websocket_upgrade, rewrite_prefix, HeaderFormat, RequestMeta, RouteLevels, Upstream,
};
use super::local_reply;
use crate::model::route::{
    ClusterTarget, ForwardAction, HostRewrite, RetryPolicy, Route, RouteTable, VirtualHost, WeightedCluster,
};
use crate::state::ProxyState;
use crate::upstream::lb::LbContext;
use crate::upstream::manager::{ClusterState, HostRequestGuard, SendError};

static X_ENVOY_EXPECTED_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
static X_ENVOY_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Request bodies up to this size are buffered so a retry can resend them (Envoy's default
/// per-request buffer limit); larger ones stream and are not retried.
const RETRY_BUFFER_LIMIT: usize = 1024 * 1024;

/// The route the HCM matched.
pub struct Selected<'a> {
    /// The cluster the route names (for weighted clusters, the picked one is in `weighted`).
    pub cluster: &'a str,
    pub route: &'a Route,
    pub action: &'a ForwardAction,
    pub vh: &'a Arc<VirtualHost>,
    pub table: &'a Arc<RouteTable>,
}

enum AttemptError {
    Connect(&'static str),
    Reset,
    Refused,
    PerTryTimeout,
}

pub async fn forward(
    req: Request<Incoming>,
    sel: Selected<'_>,
    hcm: &HcmRuntime,
    meta: &RequestMeta,
    state: &Arc<ProxyState>,
) -> Response<ResponseBody> {
    let action = sel.action;
    // Borrowed from the route (or the request); no per-request allocation for the name.
    let cluster_header;
    let (cluster_name, weighted): (&str, Option<&WeightedCluster>) = match &action.cluster {
        ClusterTarget::Named(n) => (n.as_str(), None),
        ClusterTarget::Header(h) => {
            cluster_header = req.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string);
            (cluster_header.as_deref().unwrap_or(""), None)
        }
        ClusterTarget::Weighted(w) => {
            let draw = rand::rng().random_range(0..w.total_weight);
            match w.pick(draw) {
                Some(c) => (c.name.as_str(), Some(c)),
                None => ("", None),
            }
        }
    };
    let sel = Selected { cluster: cluster_name, ..sel };
    let Some(cluster) = state.clusters.get(cluster_name) else {
        hcm.stats.no_cluster.inc();
        // Envoy's router answers through its `modify_headers`: the route's response headers apply.
        let mut r = local_reply::reply(action.cluster_not_found_code, "", meta.grpc);
        let levels = RouteLevels { route: sel.route, vh: sel.vh, table: sel.table, weighted };
        let upstream = Upstream { cluster: cluster_name, address: None };
        apply_response_mutations(&mut r, req.headers(), meta, &levels, Some(upstream));
        return r;
    };
    if is_websocket_upgrade(req.headers()) {
        if !action.websocket.unwrap_or(hcm.config.websocket) {
            return local_reply::reply(StatusCode::FORBIDDEN, "", meta.grpc);
        }
        let resp = super::router_upgrade::tunnel(req, &cluster, meta).await;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            hcm.stats.cx_upgrades_total.inc();
        }
        return resp;
    }
    let suppress = hcm
        .config
        .filters
        .iter()
        .any(|f| matches!(f, crate::model::hcm::HttpFilter::Router(r) if r.suppress_envoy_headers));
    let (mut parts, body) = req.into_parts();
    rewrite_request(&mut parts, &sel, weighted, action, meta, cluster_name);
    // Response header formats (`%REQ(...)%`) read the request as sent upstream; keep a copy only
    // when some response mutation needs it.
    let response_levels = [
        weighted.map(|w| &w.response_headers),
        Some(&sel.route.response_headers),
        Some(&sel.vh.response_headers),
        Some(&sel.table.response_headers),
    ];
    let original_headers = if response_levels.iter().flatten().any(|m| m.needs_context()) {
        parts.headers.clone()
    } else {
        http::HeaderMap::new()
    };
    let local = LocalReplies { meta, sel: &sel, req_headers: &original_headers, weighted };

    // Control headers: only internal requests still carry them (the HCM strips them from external
    // ones); they override the route, and never travel upstream.
    let header_timeout = take_millis(&mut parts.headers, "x-envoy-upstream-rq-timeout-ms");
    let header_per_try = take_millis(&mut parts.headers, "x-envoy-upstream-rq-per-try-timeout-ms");
    let header_retry_on = take_header(&mut parts.headers, "x-envoy-retry-on");
    let header_max_retries = take_header(&mut parts.headers, "x-envoy-max-retries").and_then(|v| v.parse::<u32>().ok());
    let overridden_retry = (header_retry_on.is_some() || header_max_retries.is_some()).then(|| {
        RetryPolicy::with_overrides(action.retry_policy.as_deref(), header_retry_on.as_deref(), header_max_retries)
    });
    let retry = overridden_retry.as_ref().or(action.retry_policy.as_deref());
    let timeout = match header_timeout {
        Some(t) if t.is_zero() => None,
        Some(t) => Some(t),
        None => action.timeout,
    };
    let per_try = header_per_try.filter(|t| !t.is_zero()).or(retry.and_then(|r| r.per_try_timeout));
    let expected = match (per_try, timeout) {
        (Some(p), Some(t)) => Some(p.min(t)),
        (p, t) => p.or(t),
    };
    if !suppress {
        if let Some(t) = expected {
            parts.headers.insert(X_ENVOY_EXPECTED_TIMEOUT.clone(), HeaderValue::from(t.as_millis() as u64));
        }
    }

    // A retried request must be resent, so its body is buffered (bounded); otherwise it streams.
    let has_body = !http_body::Body::is_end_stream(&body);
    let mut streaming: Option<Incoming> = None;
    let replay: Option<Bytes> = if retry.is_some() && has_body {
        match Limited::new(body, RETRY_BUFFER_LIMIT).collect().await {
            Ok(c) => Some(c.to_bytes()),
            Err(_) => return local_reply::reply(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large", meta.grpc),
        }
    } else if has_body {
        streaming = Some(body);
        None
    } else {
        drop(body);
        // A bodyless POST/PUT/PATCH/OPTIONS still says so to an HTTP/1.1 upstream, as Envoy's
        // codec does (GET, HEAD and DELETE do not; checked in tests/differential/cors_fault).
        let body_method = matches!(
            parts.method,
            http::Method::POST | http::Method::PUT | http::Method::PATCH | http::Method::OPTIONS
        );
        if body_method
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
            && !cluster.uses_h2(meta.version == Version::HTTP_2)
        {
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        Some(Bytes::new())
    };

    // istio.alpn: the upstream TLS connection names the request's protocol, unless the cluster
    // opted out (DestinationRule TLS SIMPLE/MUTUAL sets `istio.alpn_override: "false"`).
    let alpn = hcm.config.alpn_override().filter(|_| cluster.config().alpn_override_allowed).and_then(|o| {
        use crate::model::istio_alpn::UpstreamProtocol as P;
        let protocol = if cluster.uses_h2(meta.version == Version::HTTP_2) {
            P::Http2
        } else if meta.version == Version::HTTP_10 {
            P::Http10
        } else {
            P::Http11
        };
        o.protocols(protocol).map(|protocols| crate::upstream::connector::AlpnChoice { key: protocol as u8, protocols })
    });
    let deadline = timeout.map(|t| meta.start + t);
    let max_attempts = retry.map_or(1, |r| r.num_retries.saturating_add(1));
    let mut tried: Vec<SocketAddr> = Vec::new();
    let downstream_h2 = meta.version == Version::HTTP_2;
    let hash =
        if action.hash_policy.is_empty() { None } else { hash_key(action, &parts.headers, parts.uri.query(), meta) };
    let original_dst = original_destination(&cluster, &parts.headers, meta);
    let mut parts = Some(parts);
    let mut attempt = 0u32;
    let mut retries_taken = 0u32;
    // Holds the current retry's slot in the `max_retries` budget until the next attempt or the end.
    let mut _retry_guard: Option<RetryGuard> = None;
    loop {
        attempt += 1;
        let avoid: &[SocketAddr] = if retry.is_some_and(|r| r.avoid_previous_hosts) { &tried } else { &[] };
        let Some(host) = cluster.choose_host(&LbContext { hash, avoid, original_dst }) else {
            cluster.stats.cx_none_healthy.inc();
            return local.reply(StatusCode::SERVICE_UNAVAILABLE, local_reply::NO_HEALTHY_UPSTREAM, attempt);
        };
        if retry.is_some() {
            tried.push(host.address);
        }
        // Circuit breaker: a free request slot, or a bounded wait as a pending request.
        let permit = match cluster.request_slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let pending = cluster.pending.fetch_add(1, Ordering::Relaxed);
                if pending >= cluster.config().circuit_breakers.max_pending_requests {
                    cluster.pending.fetch_sub(1, Ordering::Relaxed);
                    cluster.stats.rq_pending_overflow.inc();
                    let mut r = local.reply(StatusCode::SERVICE_UNAVAILABLE, local_reply::OVERFLOW_BODY, attempt);
                    r.headers_mut().insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
                    return r;
                }
                let _pending_gauge = crate::telemetry::stats::GaugeGuard::new(&cluster.stats.rq_pending_active);
                let acquired = match deadline {
                    Some(d) => {
                        tokio::time::timeout_at(d.into(), cluster.request_slots.clone().acquire_owned()).await.ok()
                    }
                    None => Some(cluster.request_slots.clone().acquire_owned().await),
                };
                cluster.pending.fetch_sub(1, Ordering::Relaxed);
                match acquired {
                    Some(Ok(p)) => p,
                    _ => {
                        cluster.stats.rq_timeout.inc();
                        hcm.stats.rq_timeout.inc();
                        return local.reply(StatusCode::GATEWAY_TIMEOUT, local_reply::UPSTREAM_TIMEOUT, attempt);
                    }
                }
            }
        };
        let body: ResponseBody = match (&replay, streaming.take()) {
            (Some(b), _) => super::body::full(b.clone()),
            (None, Some(s)) => match hcm.config.stream_idle_timeout {
                Some(t) => boxed(super::idle::TimedBody::idle(s, t)),
                None => boxed(s),
            },
            (None, None) => super::body::empty(),
        };
        // The last possible attempt takes the request head; earlier ones send a copy.
        let head = match (attempt < max_attempts, parts.as_ref()) {
            (true, Some(p)) => p.clone(),
            _ => match parts.take() {
                Some(p) => p,
                None => return local_reply::reply(StatusCode::INTERNAL_SERVER_ERROR, "", meta.grpc),
            },
        };
        let mut upstream_req = Request::from_parts(head, body);
        if let (HostRewrite::Auto, Some(name)) = (&action.host_rewrite, &host.hostname) {
            // auto_host_rewrite: the chosen endpoint's host name becomes the Host.
            if let Ok(v) = HeaderValue::from_str(name) {
                if let Ok(orig) = HeaderValue::from_str(&meta.host) {
                    upstream_req.headers_mut().insert(X_ENVOY_ORIGINAL_HOST.clone(), orig);
                }
                upstream_req.headers_mut().insert(header::HOST, v);
            }
        }
        if sel.vh.include_request_attempt_count {
            upstream_req.headers_mut().insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
        }
        cluster.stats.rq_total.inc();
        let rq_active = crate::telemetry::stats::GaugeGuard::new(&cluster.stats.rq_active);
        let host_guard = host.start_request();
        let sent_at = Instant::now();
        let send = cluster.send(upstream_req, host.address, downstream_h2, alpn);
        let try_deadline = match (per_try, deadline) {
            (Some(p), Some(d)) => Some((sent_at + p).min(d)),
            (Some(p), None) => Some(sent_at + p),
            (None, d) => d,
        };
        let per_try_is_binding = per_try.is_some_and(|p| deadline.is_none_or(|d| sent_at + p < d));
        let outcome = match try_deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), send).await {
                Ok(r) => r.map_err(classify),
                Err(_) if per_try_is_binding => Err(AttemptError::PerTryTimeout),
                Err(_) => {
                    cluster.stats.rq_timeout.inc();
                    cluster.stats.record_status(504);
                    hcm.stats.rq_timeout.inc();
                    return local.reply(StatusCode::GATEWAY_TIMEOUT, local_reply::UPSTREAM_TIMEOUT, attempt);
                }
            },
            None => send.await.map_err(classify),
        };
        let can_retry = |retry: Option<&RetryPolicy>| retry.is_some() && attempt < max_attempts && replay.is_some();
        match outcome {
            Ok(resp) => {
                let status = resp.status();
                if let Some(r) = retry {
                    if should_retry_response(r, status, resp.headers()) {
                        if can_retry(retry) {
                            if let Some(guard) = take_retry(&cluster) {
                                cluster.stats.record_retried_status(status.as_u16());
                                _retry_guard = Some(guard);
                                retries_taken += 1;
                                drop(resp);
                                backoff(r, retries_taken).await;
                                continue;
                            }
                        } else if attempt >= max_attempts {
                            cluster.stats.rq_retry_limit_exceeded.inc();
                        }
                    }
                }
                cluster.stats.record_status(status.as_u16());
                if retries_taken > 0 && status.is_success() {
                    cluster.stats.rq_retry_success.inc();
                }
                let service_time = sent_at.elapsed();
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                if !suppress {
                    rparts
                        .headers
                        .insert(X_ENVOY_SERVICE_TIME.clone(), HeaderValue::from(service_time.as_millis() as u64));
                }
                if sel.vh.include_attempt_count_in_response {
                    rparts.headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
                }
                let body = GuardedBody { inner: rbody, _guards: Some((permit, host_guard, rq_active)) };
                let body = match hcm.config.stream_idle_timeout {
                    Some(t) => boxed(super::idle::TimedBody::idle(body, t)),
                    None => boxed(body),
                };
                let mut out = Response::from_parts(rparts, body);
                let levels = RouteLevels { route: sel.route, vh: sel.vh, table: sel.table, weighted };
                let upstream = Upstream { cluster: cluster_name, address: Some(host.address) };
                apply_response_mutations(&mut out, &original_headers, meta, &levels, Some(upstream));
                return out;
            }
            Err(err) => {
                drop((permit, host_guard, rq_active));
                let retryable = retry.is_some_and(|r| match &err {
                    AttemptError::Connect(_) => {
                        r.retry_on.connect_failure
                            || r.retry_on.five_xx
                            || r.retry_on.gateway_error
                            || r.retry_on.reset
                            || r.retry_on.reset_before_request
                    }
                    AttemptError::Reset => r.retry_on.reset || r.retry_on.five_xx,
                    AttemptError::Refused => r.retry_on.refused_stream || r.retry_on.reset || r.retry_on.five_xx,
                    AttemptError::PerTryTimeout => r.retry_on.five_xx || r.retry_on.gateway_error,
                });
                if let AttemptError::PerTryTimeout = err {
                    cluster.stats.rq_per_try_timeout.inc();
                }
                // Envoy charges upstream failures as the code it answers with: 504 for a timeout,
                // 503 for a reset or a failed connection.
                let charged = if matches!(err, AttemptError::PerTryTimeout) { 504 } else { 503 };
                if let (true, Some(r)) = (retryable && can_retry(retry), retry) {
                    if let Some(guard) = take_retry(&cluster) {
                        cluster.stats.record_retried_status(charged);
                        _retry_guard = Some(guard);
                        retries_taken += 1;
                        backoff(r, retries_taken).await;
                        continue;
                    }
                }
                if retryable && attempt >= max_attempts {
                    cluster.stats.rq_retry_limit_exceeded.inc();
                }
                cluster.stats.record_status(charged);
                return match err {
                    AttemptError::Connect(detail) => local.reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &local_reply::connect_failure_body(detail, retries_taken > 0),
                        attempt,
                    ),
                    AttemptError::Reset | AttemptError::Refused => {
                        local.reply(StatusCode::SERVICE_UNAVAILABLE, local_reply::RESET_BODY, attempt)
                    }
                    AttemptError::PerTryTimeout => {
                        cluster.stats.rq_timeout.inc();
                        local.reply(StatusCode::GATEWAY_TIMEOUT, local_reply::UPSTREAM_TIMEOUT, attempt)
                    }
                };
            }
        }
    }
}

/// Local replies of one forwarded request: Envoy's body and status, the route's response
/// header mutations, and the attempt count when the virtual host asks for it.
struct LocalReplies<'a> {
    meta: &'a RequestMeta,
    sel: &'a Selected<'a>,
    req_headers: &'a http::HeaderMap,
    weighted: Option<&'a WeightedCluster>,
}

impl LocalReplies<'_> {
    fn reply(&self, status: StatusCode, body: &str, attempts: u32) -> Response<ResponseBody> {
        let mut r = local_reply::reply(status, body, self.meta.grpc);
        if self.sel.vh.include_attempt_count_in_response && attempts > 0 {
            r.headers_mut().insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempts));
        }
        let sel = self.sel;
        let upstream = Upstream { cluster: self.weighted.map_or(sel.cluster, |w| w.name.as_str()), address: None };
        let levels = RouteLevels { route: sel.route, vh: sel.vh, table: sel.table, weighted: self.weighted };
        apply_response_mutations(&mut r, self.req_headers, self.meta, &levels, Some(upstream));
        r
    }
}

/// Path and host rewrites and the request header mutations of every route level.
fn rewrite_request(
    parts: &mut http::request::Parts,
    sel: &Selected<'_>,
    weighted: Option<&WeightedCluster>,
    action: &ForwardAction,
    meta: &RequestMeta,
    cluster: &str,
) {
    if action.prefix_rewrite.is_some() || action.regex_rewrite.is_some() {
        rewrite_path(parts, sel, action);
    }
    rewrite_host_and_headers(parts, sel, weighted, action, meta, cluster);
}

fn rewrite_path(parts: &mut http::request::Parts, sel: &Selected<'_>, action: &ForwardAction) {
    let (path, query) = split_path_uri(&parts.uri);
    let new_path = if let Some(prefix) = &action.prefix_rewrite {
        Some(rewrite_prefix(&path, sel.route.matcher.rewritten_len(&path), prefix))
    } else {
        action.regex_rewrite.as_ref().map(|(re, sub)| re.replace_all(&path, sub.as_str()).into_owned())
    };
    if let Some(p) = new_path {
        let original = parts.uri.path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_else(|| path.clone());
        let pq = match query {
            Some(q) => format!("{p}?{q}"),
            None => p,
        };
        if let Ok(uri) = Uri::builder().path_and_query(pq.as_str()).build() {
            parts.uri = uri;
            if let Ok(v) = HeaderValue::from_str(&original) {
                parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
            }
        }
    }
}

fn rewrite_host_and_headers(
    parts: &mut http::request::Parts,
    sel: &Selected<'_>,
    weighted: Option<&WeightedCluster>,
    action: &ForwardAction,
    meta: &RequestMeta,
    cluster: &str,
) {
    let new_host = match (weighted.and_then(|w| w.host_rewrite.as_ref()), &action.host_rewrite) {
        (Some(h), _) => Some(h.clone()),
        (None, HostRewrite::Literal(h)) => Some(h.clone()),
        (None, HostRewrite::Header(name)) => parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string),
        (None, HostRewrite::Auto) | (None, HostRewrite::None) => None,
    };
    if let Some(h) = new_host {
        if let Ok(v) = HeaderValue::from_str(&meta.host) {
            parts.headers.insert(X_ENVOY_ORIGINAL_HOST.clone(), v);
        }
        if action.append_x_forwarded_host {
            if let Ok(v) = HeaderValue::from_str(&meta.host) {
                parts.headers.append(X_FORWARDED_HOST.clone(), v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&h) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let levels = [
        weighted.map(|w| &w.request_headers),
        Some(&sel.route.request_headers),
        Some(&sel.vh.request_headers),
        Some(&sel.table.request_headers),
    ];
    for m in levels.into_iter().flatten() {
        if m.is_empty() {
            continue;
        }
        let rendered = {
            let ctx = HeaderFormat {
                meta,
                request: &parts.headers,
                response: None,
                cluster: Some(cluster),
                upstream: None,
                route_name: Some(&sel.route.name),
                status: None,
            };
            m.render(&ctx)
        };
        m.apply_rendered(&mut parts.headers, rendered);
    }
}

fn split_path_uri(uri: &Uri) -> (String, Option<String>) {
    let path = if uri.path().is_empty() { "/" } else { uri.path() };
    (path.to_string(), uri.query().map(str::to_string))
}

fn classify(e: SendError) -> AttemptError {
    match e {
        SendError::Connect(detail) => AttemptError::Connect(detail),
        SendError::Reset => AttemptError::Reset,
        SendError::Refused => AttemptError::Refused,
    }
}

fn should_retry_response(r: &RetryPolicy, status: StatusCode, headers: &http::HeaderMap) -> bool {
    let code = status.as_u16();
    let on = &r.retry_on;
    if on.five_xx && code >= 500 {
        return true;
    }
    if on.gateway_error && matches!(code, 502..=504) {
        return true;
    }
    if on.retriable_4xx && code == 409 {
        return true;
    }
    if on.retriable_status_codes && r.retriable_status_codes.contains(&code) {
        return true;
    }
    if let Some(g) = headers.get(&GRPC_STATUS).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok()) {
        return (on.grpc_cancelled && g == 1)
            || (on.grpc_deadline_exceeded && g == 4)
            || (on.grpc_resource_exhausted && g == 8)
            || (on.grpc_internal && g == 13)
            || (on.grpc_unavailable && g == 14);
    }
    false
}

/// Takes a retry from the cluster's `max_retries` circuit breaker; the retry counts as active
/// until the returned guard drops (after its attempt).
fn take_retry(cluster: &Arc<ClusterState>) -> Option<RetryGuard> {
    let active = cluster.active_retries.fetch_add(1, Ordering::Relaxed);
    if active >= cluster.config().circuit_breakers.max_retries {
        cluster.active_retries.fetch_sub(1, Ordering::Relaxed);
        cluster.stats.rq_retry_overflow.inc();
        return None;
    }
    cluster.stats.rq_retry.inc();
    Some(RetryGuard(cluster.clone()))
}

struct RetryGuard(Arc<ClusterState>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.active_retries.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Envoy's jittered exponential back-off: uniform in [0, min(base·2^(n-1), max)].
async fn backoff(r: &RetryPolicy, n: u32) {
    let exp = r.base_interval.saturating_mul(1u32 << (n.saturating_sub(1)).min(16));
    let upper = exp.min(r.max_interval).as_millis().max(1) as u64;
    let wait = rand::rng().random_range(0..upper);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

fn hash_key(action: &ForwardAction, headers: &http::HeaderMap, query: Option<&str>, meta: &RequestMeta) -> Option<u64> {
    use crate::model::route::HashPolicy;
    use crate::upstream::lb::hash64;
    let mut combined: Option<u64> = None;
    for p in &action.hash_policy {
        let (h, terminal) = match p {
            HashPolicy::Header { name, terminal } => (headers.get(name).map(|v| hash64(v.as_bytes())), *terminal),
            HashPolicy::SourceIp { terminal } => {
                (Some(hash64(meta.conn.remote.ip().to_string().as_bytes())), *terminal)
            }
            HashPolicy::Cookie { name, terminal } => (
                headers
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|kv| {
                        let (k, v) = kv.trim().split_once('=')?;
                        (k == name).then(|| hash64(v.as_bytes()))
                    }),
                *terminal,
            ),
            HashPolicy::QueryParameter { name, terminal } => {
                (query_value(query, name).map(|v| hash64(v.as_bytes())), *terminal)
            }
        };
        if let Some(h) = h {
            combined = Some(match combined {
                Some(c) => c.rotate_left(1) ^ h,
                None => h,
            });
            if terminal {
                break;
            }
        }
    }
    combined
}

fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    for name in [header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE] {
        h.remove(name);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

pin_project_lite::pin_project! {
    /// A response body that holds the request's circuit-breaker slot and host accounting until
    /// the body ends or is dropped.
    struct GuardedBody<B> {
        #[pin]
        inner: B,
        _guards: Option<(tokio::sync::OwnedSemaphorePermit, HostRequestGuard, crate::telemetry::stats::GaugeGuard)>,
    }
}

impl<B> http_body::Body for GuardedBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(None) => {
                *this._guards = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => Poll::Ready(Some(r.map_err(Into::into))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn take_header(headers: &mut http::HeaderMap, name: &'static str) -> Option<String> {
    headers.remove(name).and_then(|v| v.to_str().ok().map(str::to_string))
}

fn take_millis(headers: &mut http::HeaderMap, name: &'static str) -> Option<Duration> {
    take_header(headers, name).and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_millis)
}

/// The upstream of an ORIGINAL_DST cluster: the `x-envoy-original-dst-host` header when the
/// cluster opts into it, else the downstream connection's original destination.
fn original_destination(cluster: &ClusterState, headers: &http::HeaderMap, meta: &RequestMeta) -> Option<SocketAddr> {
    if let Some(name) = &cluster.config().original_dst_header {
        if let Some(addr) = headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
            return Some(addr);
        }
    }
    // Envoy uses the downstream local address only when the listener restored it; a listener
    // bound directly would otherwise send the request back to itself.
    meta.conn.local_restored.then_some(meta.conn.local)
}
