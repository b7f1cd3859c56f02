//! The fault injection filter (`envoy.filters.http.fault`): after the route is chosen, delays the
//! request and/or answers it with an error, per the route's (else virtual host's, else the
//! filter's own) config, as Envoy's fault filter does. istiod writes a VirtualService's `fault`
//! here.
//!
//! Owns: deciding and applying a fault for one request, and Envoy's `http.<prefix>.fault.*` stats.
//! Must not forward requests.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use rand::Rng;

use super::body::ResponseBody;
use super::local_reply;
use crate::model::fault::{AbortSource, DelaySource, FaultConfig, PerMillion};
use crate::model::route::RequestView;
use crate::telemetry::stats::{Counter, Gauge, GaugeGuard, Store};

const DELAY_HEADER: &str = "x-envoy-fault-delay-request";
const DELAY_PERCENTAGE_HEADER: &str = "x-envoy-fault-delay-request-percentage";
const ABORT_HEADER: &str = "x-envoy-fault-abort-request";
const ABORT_GRPC_HEADER: &str = "x-envoy-fault-abort-grpc-request";
const ABORT_PERCENTAGE_HEADER: &str = "x-envoy-fault-abort-request-percentage";
const DOWNSTREAM_NODE_HEADER: &str = "x-envoy-downstream-service-node";
const ABORT_BODY: &str = "fault filter abort";

/// The filter on one connection manager: its own config and stats.
#[derive(Debug)]
pub struct FaultFilter {
    config: Arc<FaultConfig>,
    delays_injected: Arc<Counter>,
    aborts_injected: Arc<Counter>,
    faults_overflow: Arc<Counter>,
    active_faults: Arc<Gauge>,
}

/// What the filter decided for a request.
pub enum Fault {
    /// Forward the request (after the delay, if one was injected and then no abort).
    Continue(Option<GaugeGuard>),
    /// Answer with this instead of forwarding.
    Abort(http::Response<ResponseBody>),
}

impl FaultFilter {
    pub fn new(config: Arc<FaultConfig>, store: &Store, stat_prefix: &str) -> Self {
        let c = |n: &str| store.counter(&format!("http.{stat_prefix}.fault.{n}"));
        FaultFilter {
            delays_injected: c("delays_injected"),
            aborts_injected: c("aborts_injected"),
            faults_overflow: c("faults_overflow"),
            active_faults: store.gauge(&format!("http.{stat_prefix}.fault.active_faults")),
            config,
        }
    }

    /// Applies the most specific config (`route` or virtual host's, else the filter's) to a
    /// request bound for `cluster` (`None`: a direct response or redirect).
    pub async fn apply(
        &self,
        per_route: Option<&FaultConfig>,
        request: &RequestView<'_>,
        cluster: Option<&str>,
        grpc: bool,
    ) -> Fault {
        let cfg = per_route.unwrap_or(&self.config);
        let headers = request.headers;
        if !applies(cfg, request, cluster) {
            return Fault::Continue(None);
        }
        if cfg.max_active_faults.is_some_and(|max| self.active_faults.get() >= i64::from(max)) {
            self.faults_overflow.inc();
            return Fault::Continue(None);
        }
        let delay = cfg.delay.as_ref().and_then(|d| {
            let ms = match &d.source {
                DelaySource::Fixed(t) => Some(*t),
                DelaySource::Header => header_u64(headers, DELAY_HEADER).map(Duration::from_millis),
            }?;
            let pct = header_percentage(headers, DELAY_PERCENTAGE_HEADER, d.percentage, &d.proto_percentage);
            roll(pct).then_some(ms)
        });
        let abort = cfg.abort.as_ref().and_then(|a| {
            let source = match &a.source {
                AbortSource::Header => {
                    match (header_u64(headers, ABORT_HEADER), header_u64(headers, ABORT_GRPC_HEADER)) {
                        (Some(s), _) if (200..600).contains(&s) => AbortSource::Http(s as u16),
                        (_, Some(g)) => AbortSource::Grpc(g as u32),
                        _ => return None,
                    }
                }
                other => other.clone(),
            };
            let pct = header_percentage(headers, ABORT_PERCENTAGE_HEADER, a.percentage, &a.proto_percentage);
            roll(pct).then(|| (source, a.body.clone()))
        });
        if delay.is_none() && abort.is_none() {
            return Fault::Continue(None);
        }
        let active = GaugeGuard::new(&self.active_faults);
        if let Some(d) = delay {
            self.delays_injected.inc();
            tokio::time::sleep(d).await;
        }
        match abort {
            Some((source, body)) => {
                self.aborts_injected.inc();
                Fault::Abort(abort_reply(&source, body.as_deref().unwrap_or(ABORT_BODY), grpc))
            }
            None => Fault::Continue(Some(active)),
        }
    }
}

/// The request conditions: header matchers, the upstream cluster, the downstream node.
fn applies(cfg: &FaultConfig, request: &RequestView<'_>, cluster: Option<&str>) -> bool {
    if let Some(want) = &cfg.upstream_cluster {
        if cluster != Some(want.as_str()) {
            return false;
        }
    }
    if !cfg.downstream_nodes.is_empty() {
        let node = request.headers.get(DOWNSTREAM_NODE_HEADER).and_then(|v| v.to_str().ok());
        if !node.is_some_and(|n| cfg.downstream_nodes.iter().any(|d| d == n)) {
            return false;
        }
    }
    cfg.headers.iter().all(|m| m.matches(request))
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The configured percentage, lowered by the request's `*-percentage` header (same denominator).
fn header_percentage(
    headers: &HeaderMap,
    name: &str,
    configured: PerMillion,
    proto: &Option<envoy_types::pb::envoy::r#type::v3::FractionalPercent>,
) -> PerMillion {
    match header_u64(headers, name).and_then(|n| u32::try_from(n).ok()) {
        Some(n) => configured.with_numerator(n, proto),
        None => configured,
    }
}

fn roll(p: PerMillion) -> bool {
    p.0 >= 1_000_000 || (p.0 > 0 && rand::rng().random_range(0..1_000_000) < p.0)
}

fn abort_reply(source: &AbortSource, body: &str, grpc: bool) -> http::Response<ResponseBody> {
    match source {
        AbortSource::Grpc(code) if grpc => {
            // A trailers-only gRPC response (HTTP 200) with the configured code.
            let mut r = local_reply::reply(StatusCode::OK, body, true);
            r.headers_mut().insert("grpc-status", HeaderValue::from(*code));
            r
        }
        // As Envoy: a plain request aborted with a gRPC code gets a plain 200 with the body.
        AbortSource::Grpc(_) => local_reply::reply(StatusCode::OK, body, false),
        AbortSource::Http(status) => {
            local_reply::reply(StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), body, grpc)
        }
        // Resolved from the request headers before this point.
        AbortSource::Header => local_reply::reply(StatusCode::SERVICE_UNAVAILABLE, body, grpc),
    }
}
