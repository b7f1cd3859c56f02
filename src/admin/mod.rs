//! The admin API on the bootstrap's admin address, with Envoy's paths and formats: `/ready`,
//! `/server_info`, `/stats`, `/stats/prometheus`, `/clusters`, `/listeners`, `/config_dump`,
//! `/certs`, `/quitquitquit`, `/drain_listeners`, `/healthcheck/fail|ok`.
//!
//! Owns: reading state for operators. Must not mutate config; lifecycle actions go through
//! `ProxyState`.

mod certs;
mod config_dump;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::state::{ProxyState, ServerState};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Serves the admin API until shutdown.
pub async fn serve(listener: TcpListener, state: Arc<ProxyState>) {
    let mut shutdown = state.shutdown_signal();
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(x) => x, Err(_) => continue },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, &state)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

/// A query parameter, URL-decoded as Envoy's admin decodes it (`filter=cluster%5C.a` → `cluster\.a`).
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(req: Request<Incoming>, state: &Arc<ProxyState>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let post_only = matches!(path, "/quitquitquit" | "/drain_listeners" | "/healthcheck/fail" | "/healthcheck/ok");
    if post_only && req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "This endpoint requires POST\n", "text/plain");
    }
    match path {
        "/ready" => {
            let s = state.server_state();
            let body = format!("{}\n", server_state_name(s));
            let status = if s == ServerState::Live { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            text(status, body, "text/plain; charset=UTF-8")
        }
        "/server_info" => text(StatusCode::OK, server_info(state).to_string(), "application/json"),
        "/stats" => {
            let filter = query_param(&req, "filter").and_then(|f| regex::Regex::new(&f).ok());
            if query_param(&req, "format").as_deref() == Some("prometheus") {
                return text(StatusCode::OK, state.stats.render_prometheus(), "text/plain; version=0.0.4");
            }
            if query_param(&req, "format").as_deref() == Some("json") {
                let stats: Vec<serde_json::Value> = state
                    .stats
                    .render_text(filter.as_ref())
                    .lines()
                    .filter_map(|l| l.split_once(": "))
                    .map(|(k, v)| serde_json::json!({"name": k, "value": v.parse::<i64>().unwrap_or(0)}))
                    .collect();
                return text(StatusCode::OK, serde_json::json!({"stats": stats}).to_string(), "application/json");
            }
            text(StatusCode::OK, state.stats.render_text(filter.as_ref()), "text/plain; charset=UTF-8")
        }
        "/stats/prometheus" => text(StatusCode::OK, state.stats.render_prometheus(), "text/plain; version=0.0.4"),
        "/clusters" => text(StatusCode::OK, clusters(state), "text/plain; charset=UTF-8"),
        "/certs" => text(
            StatusCode::OK,
            serde_json::to_string_pretty(&certs::render(state)).unwrap_or_default(),
            "application/json",
        ),
        "/listeners" => {
            let snap = state.snapshot();
            if query_param(&req, "format").as_deref() == Some("json") {
                let ls: Vec<_> = snap
                    .listeners
                    .iter()
                    .map(|l| serde_json::json!({"name": l.name, "local_address": {"socket_address": {"address": l.address.ip().to_string(), "port_value": l.address.port()}}}))
                    .collect();
                return text(StatusCode::OK, serde_json::json!({"listener_statuses": ls}).to_string(), "application/json");
            }
            let body: String = snap.listeners.iter().map(|l| format!("{}::{}\n", l.name, l.address)).collect();
            text(StatusCode::OK, body, "text/plain; charset=UTF-8")
        }
        "/config_dump" => match config_dump::render(state, query_param(&req, "resource").as_deref(), query_param(&req, "include_eds").is_some()) {
            Ok(v) => text(StatusCode::OK, serde_json::to_string_pretty(&v).unwrap_or_default(), "application/json"),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e, "text/plain"),
        },
        "/quitquitquit" => {
            state.shutdown();
            text(StatusCode::OK, "OK\n", "text/plain")
        }
        "/drain_listeners" => {
            state.start_draining();
            text(StatusCode::OK, "OK\n", "text/plain")
        }
        "/healthcheck/fail" => {
            state.set_healthcheck_failed(true);
            text(StatusCode::OK, "OK\n", "text/plain")
        }
        "/healthcheck/ok" => {
            state.set_healthcheck_failed(false);
            text(StatusCode::OK, "OK\n", "text/plain")
        }
        _ => text(StatusCode::NOT_FOUND, "invalid path. admin commands are: /clusters /config_dump /drain_listeners /healthcheck/fail /healthcheck/ok /listeners /quitquitquit /ready /server_info /stats /stats/prometheus\n", "text/plain"),
    }
}

pub fn server_state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Live => "LIVE",
        ServerState::Draining => "DRAINING",
        ServerState::PreInitializing => "PRE_INITIALIZING",
        ServerState::Initializing => "INITIALIZING",
    }
}

fn server_info(state: &ProxyState) -> serde_json::Value {
    let snap = state.snapshot();
    let uptime = state.started.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    serde_json::json!({
        "version": format!("remora/{VERSION}/Clean/RELEASE/rustls"),
        "state": server_state_name(state.server_state()),
        "hot_restart_version": "disabled",
        "command_line_options": {"concurrency": 0},
        "node": {"id": snap.node.id, "cluster": snap.node.cluster},
        "uptime_current_epoch": format!("{uptime}s"),
        "uptime_all_epochs": format!("{uptime}s"),
    })
}

/// Envoy's `/clusters` text: per-cluster thresholds and per-host lines.
fn clusters(state: &ProxyState) -> String {
    let mut out = String::new();
    let mut all: Vec<_> = state.clusters.all().values().cloned().collect();
    all.sort_by(|a, b| a.config().name.cmp(&b.config().name));
    for c in all {
        let config = c.config();
        let n = &config.name;
        let t = config.circuit_breakers;
        out.push_str(&format!("{n}::observability_name::{n}\n"));
        for (k, v) in [
            ("max_connections", t.max_connections),
            ("max_pending_requests", t.max_pending_requests),
            ("max_requests", t.max_requests),
            ("max_retries", t.max_retries),
        ] {
            out.push_str(&format!("{n}::default_priority::{k}::{v}\n"));
        }
        out.push_str(&format!("{n}::added_via_api::false\n"));
        for h in c.hosts().all_hosts() {
            let a = h.address;
            out.push_str(&format!("{n}::{a}::rq_active::{}\n", h.active_requests()));
            out.push_str(&format!("{n}::{a}::health_flags::healthy\n"));
            out.push_str(&format!("{n}::{a}::weight::{}\n", h.weight));
        }
    }
    out
}
