//! The cluster manager: runtime state per cluster (hosts, balancer, pooled client, circuit
//! breakers, stats), kept across snapshot swaps when a cluster's config is unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use tokio::sync::Semaphore;

use super::connector::{ConnStats, Connector};
use super::h1pool::UpstreamResponseBody;
use super::lb::{Balancer, LbContext};
use crate::model::cluster::{Cluster, Discovery, EndpointAddress, UpstreamProtocol};
use crate::telemetry::stats::{Counter, Gauge, Store};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type UpstreamBody = BoxBody<Bytes, BoxError>;

#[derive(Debug)]
pub struct Host {
    pub address: SocketAddr,
    pub weight: u32,
    /// The endpoint's host name (its DNS name, or `endpoint.hostname`), for `auto_host_rewrite`.
    pub hostname: Option<Arc<str>>,
    active: AtomicU32,
}

impl Host {
    pub fn new(address: SocketAddr, weight: u32) -> Self {
        Host { address, weight, hostname: None, active: AtomicU32::new(0) }
    }
    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
    /// Counts a request against this host until the guard drops (least-request LB).
    pub fn start_request(self: &Arc<Self>) -> HostRequestGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        HostRequestGuard(self.clone())
    }
}

pub struct HostRequestGuard(Arc<Host>);

impl Drop for HostRequestGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Healthy hosts per priority, each with its balancer.
#[derive(Debug, Default)]
pub struct HostSet {
    levels: Vec<(Vec<Arc<Host>>, Balancer)>,
    pub total: usize,
    /// The `transport_socket_matches` entry of each endpoint address that matched one.
    pub socket_matches: HashMap<SocketAddr, usize>,
}

impl HostSet {
    fn build(cluster: &Cluster, resolved: &HashMap<EndpointAddress, Vec<SocketAddr>>) -> Self {
        let mut by_priority: std::collections::BTreeMap<u32, Vec<Arc<Host>>> = Default::default();
        let mut total = 0;
        let mut socket_matches = HashMap::new();
        for locality in &cluster.load_assignment.localities {
            for ep in &locality.endpoints {
                let addrs: Vec<SocketAddr> = match &ep.address {
                    EndpointAddress::Socket(a) => vec![*a],
                    dns @ EndpointAddress::Dns { .. } => {
                        let all = resolved.get(dns).cloned().unwrap_or_default();
                        if cluster.discovery == Discovery::LogicalDns {
                            all.into_iter().take(1).collect()
                        } else {
                            all
                        }
                    }
                    EndpointAddress::Pipe(_) => vec![],
                };
                let hostname: Option<Arc<str>> = match &ep.address {
                    _ if !ep.hostname.is_empty() => Some(ep.hostname.as_str().into()),
                    EndpointAddress::Dns { host, .. } => Some(host.as_str().into()),
                    _ => None,
                };
                let socket_match = cluster.socket_match(ep);
                for a in addrs {
                    total += 1;
                    if let Some(i) = socket_match {
                        socket_matches.insert(a, i);
                    }
                    if ep.healthy {
                        let host = Host { hostname: hostname.clone(), ..Host::new(a, ep.weight) };
                        by_priority.entry(locality.priority).or_default().push(Arc::new(host));
                    }
                }
            }
        }
        let levels = by_priority
            .into_values()
            .filter(|hosts| !hosts.is_empty())
            .map(|hosts| {
                let b = Balancer::build(&cluster.lb_policy, &hosts);
                (hosts, b)
            })
            .collect();
        HostSet { levels, total, socket_matches }
    }

    /// The first priority with healthy hosts serves (Envoy spills over only when a level is empty
    /// of healthy hosts at the default overprovisioning; partial health is not modelled).
    pub fn choose(&self, ctx: &LbContext<'_>) -> Option<Arc<Host>> {
        let (hosts, balancer) = self.levels.first()?;
        balancer.choose(hosts, ctx)
    }

    pub fn healthy_count(&self) -> usize {
        self.levels.iter().map(|(h, _)| h.len()).sum()
    }

    pub fn all_hosts(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.levels.iter().flat_map(|(h, _)| h.iter())
    }
}

/// Counters registered on first use, one per status code (`upstream_rq_503`). A cluster sees a
/// handful of distinct codes, so they live in a small copy-on-write list: the data path does one
/// lock-free load and a short scan, and a cluster that never answers costs no table (5,000 idle
/// clusters with a 500-slot table each held 80 MB).
#[derive(Debug)]
pub struct CodeCounters {
    store: Store,
    prefix: String,
    codes: ArcSwap<Vec<(u16, Arc<Counter>)>>,
    classes: [Arc<Counter>; 5],
}

impl CodeCounters {
    fn new(store: &Store, prefix: String) -> Self {
        let classes = [1, 2, 3, 4, 5].map(|c| store.counter(&format!("{prefix}upstream_rq_{c}xx")));
        CodeCounters { store: store.clone(), prefix, codes: ArcSwap::default(), classes }
    }

    pub fn record(&self, status: u16) {
        if !(100..600).contains(&status) {
            return;
        }
        self.counter(status).inc();
        if let Some(c) = self.classes.get(usize::from(status / 100).wrapping_sub(1)) {
            c.inc();
        }
    }

    fn counter(&self, status: u16) -> Arc<Counter> {
        if let Some((_, c)) = self.codes.load().iter().find(|(s, _)| *s == status) {
            return c.clone();
        }
        // The store hands out the same counter for the same name, so two racing first uses of a
        // code count into one stat whichever list wins.
        let counter = self.store.counter(&format!("{}upstream_rq_{status}", self.prefix));
        self.codes.rcu(|codes| {
            let mut next = Vec::with_capacity(codes.len() + 1);
            next.extend(codes.iter().filter(|(s, _)| *s != status).cloned());
            next.push((status, counter.clone()));
            next
        });
        counter
    }
}

/// Envoy's `cluster.<name>.*` stats.
#[derive(Debug)]
pub struct ClusterStats {
    pub rq_total: Arc<Counter>,
    pub rq_completed: Arc<Counter>,
    /// `upstream_rq_<code>` and `upstream_rq_<class>xx` of final responses.
    pub codes: CodeCounters,
    /// The same under `retry.`, for responses that were retried (Envoy charges them there).
    pub retry_codes: CodeCounters,
    pub rq_active: Arc<Gauge>,
    pub rq_pending_active: Arc<Gauge>,
    pub rq_pending_overflow: Arc<Counter>,
    pub rq_timeout: Arc<Counter>,
    pub rq_per_try_timeout: Arc<Counter>,
    pub rq_retry: Arc<Counter>,
    pub rq_retry_success: Arc<Counter>,
    pub rq_retry_overflow: Arc<Counter>,
    pub rq_retry_limit_exceeded: Arc<Counter>,
    pub cx_none_healthy: Arc<Counter>,
    pub membership_healthy: Arc<Gauge>,
    pub membership_total: Arc<Gauge>,
    pub conn: ConnStats,
}

impl ClusterStats {
    fn new(store: &Store, name: &str) -> Self {
        let c = |s: &str| store.counter(&format!("cluster.{name}.{s}"));
        let g = |s: &str| store.gauge(&format!("cluster.{name}.{s}"));
        ClusterStats {
            rq_total: c("upstream_rq_total"),
            rq_completed: c("upstream_rq_completed"),
            codes: CodeCounters::new(store, format!("cluster.{name}.")),
            retry_codes: CodeCounters::new(store, format!("cluster.{name}.retry.")),
            rq_active: g("upstream_rq_active"),
            rq_pending_active: g("upstream_rq_pending_active"),
            rq_pending_overflow: c("upstream_rq_pending_overflow"),
            rq_timeout: c("upstream_rq_timeout"),
            rq_per_try_timeout: c("upstream_rq_per_try_timeout"),
            rq_retry: c("upstream_rq_retry"),
            rq_retry_success: c("upstream_rq_retry_success"),
            rq_retry_overflow: c("upstream_rq_retry_overflow"),
            rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            cx_none_healthy: c("upstream_cx_none_healthy"),
            membership_healthy: g("membership_healthy"),
            membership_total: g("membership_total"),
            conn: ConnStats {
                cx_total: c("upstream_cx_total"),
                cx_active: g("upstream_cx_active"),
                cx_connect_fail: c("upstream_cx_connect_fail"),
                cx_connect_timeout: c("upstream_cx_connect_timeout"),
                ssl: None,
            },
        }
    }

    /// A final upstream response (or an upstream failure answered locally with `status`).
    pub fn record_status(&self, status: u16) {
        self.codes.record(status);
        self.rq_completed.inc();
    }

    /// A response that is being retried.
    pub fn record_retried_status(&self, status: u16) {
        self.retry_codes.record(status);
    }
}

/// Why an upstream request got no response headers.
#[derive(Debug)]
pub enum SendError {
    /// The connection could not be made; Envoy's reset reason.
    Connect(&'static str),
    Reset,
    /// The stream was refused before the upstream processed it (safe to retry).
    Refused,
}

/// Runtime state of one cluster.
pub struct ClusterState {
    /// Replaced in place only when nothing but the endpoints changed (see [`ClusterManager::apply`]).
    config: ArcSwap<Cluster>,
    hosts: Arc<ArcSwap<HostSet>>,
    h1: Arc<super::h1pool::H1Pool>,
    h2: super::h2pool::H2Pool,
    pub connector: Connector,
    pub stats: ClusterStats,
    /// Circuit breakers: concurrent requests (waiting here is "pending").
    pub request_slots: Arc<Semaphore>,
    pub pending: AtomicU32,
    pub active_retries: AtomicU32,
    dns_task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterState").field("name", &self.config().name).finish()
    }
}

impl Drop for ClusterState {
    fn drop(&mut self) {
        if let Some(t) = &self.dns_task {
            t.abort();
        }
    }
}

impl ClusterState {
    /// Builds the state; DNS clusters resolve once before returning (Envoy warms a cluster on its
    /// first resolution) and then keep refreshing in the background.
    pub async fn new(config: Arc<Cluster>, store: &Store) -> Arc<Self> {
        let stats = ClusterStats::new(store, &config.name);
        let tls = |t: &Option<Arc<crate::model::tls::UpstreamTls>>| {
            let mut ctx = (**t.as_ref()?).clone();
            // Envoy offers ALPN h2 to HTTP/2 clusters over TLS when none is configured.
            if ctx.common.alpn.is_empty() && config.protocol == UpstreamProtocol::Http2 {
                ctx.common.alpn = vec!["h2".into()];
            }
            match crate::tls::client_config(&ctx) {
                Ok(client) => {
                    let exchange_client =
                        config.metadata_exchange.as_deref().filter(|p| ctx.common.alpn.iter().any(|a| a == p)).map(
                            |p| {
                                let mut c = (*client).clone();
                                c.alpn_protocols = crate::tls::exchange_alpn(&ctx.common.alpn, p);
                                Arc::new(c)
                            },
                        );
                    Some(super::connector::UpstreamTlsConfig { client, exchange_client, context: Arc::new(ctx) })
                }
                Err(e) => {
                    // Validated at load time; a failure here means the material changed on disk.
                    // The socket stays TLS-less only in name: connections fail (fail closed).
                    tracing::error!(cluster = %config.name, error = %e, "upstream TLS context unusable; the cluster will fail requests");
                    Some(super::connector::UpstreamTlsConfig::unusable(ctx))
                }
            }
        };
        let sockets = Arc::new(super::connector::UpstreamSockets::new(
            tls(&config.tls),
            config.socket_matches.iter().map(|m| tls(&m.tls)).collect(),
        ));
        let mut conn_stats = stats.conn.clone();
        if sockets.default.is_some() || sockets.matches.iter().any(Option::is_some) {
            conn_stats.ssl =
                Some(Arc::new(crate::tls::stats::SslStats::new(store, &format!("cluster.{}", config.name))));
        }
        let connector =
            Connector { connect_timeout: config.connect_timeout, stats: conn_stats, sockets: sockets.clone() };
        let h1 = super::h1pool::H1Pool::new(connector.clone(), config.idle_timeout, config.max_requests_per_connection);
        let h2 = super::h2pool::H2Pool::new(connector.clone());
        let dns_names: Vec<EndpointAddress> = config
            .load_assignment
            .localities
            .iter()
            .flat_map(|l| l.endpoints.iter())
            .filter(|e| matches!(e.address, EndpointAddress::Dns { .. }))
            .map(|e| e.address.clone())
            .collect();
        let resolved = resolve_all(&dns_names).await;
        let set = HostSet::build(&config, &resolved);
        sockets.set_endpoints(set.socket_matches.clone());
        let hosts = Arc::new(ArcSwap::from_pointee(set));
        let slots = match config.protocol {
            UpstreamProtocol::Http1 => {
                config.circuit_breakers.max_requests.min(config.circuit_breakers.max_connections)
            }
            _ => config.circuit_breakers.max_requests,
        };
        stats.membership_total.set(hosts.load().total as i64);
        stats.membership_healthy.set(hosts.load().healthy_count() as i64);
        let dns_task = (!dns_names.is_empty()).then(|| {
            let hosts = hosts.clone();
            let config = config.clone();
            let healthy = stats.membership_healthy.clone();
            let total = stats.membership_total.clone();
            let sockets = sockets.clone();
            tokio::spawn(async move {
                let mut last = resolved;
                loop {
                    tokio::time::sleep(config.dns_refresh_rate).await;
                    let now = resolve_all(&dns_names).await;
                    if now != last {
                        let set = HostSet::build(&config, &now);
                        sockets.set_endpoints(set.socket_matches.clone());
                        healthy.set(set.healthy_count() as i64);
                        total.set(set.total as i64);
                        hosts.store(Arc::new(set));
                        last = now;
                    }
                }
            })
        });
        Arc::new(ClusterState {
            config: ArcSwap::new(config),
            hosts,
            h1,
            h2,
            connector,
            stats,
            request_slots: Arc::new(Semaphore::new(slots.max(1) as usize)),
            pending: AtomicU32::new(0),
            active_retries: AtomicU32::new(0),
            dns_task,
        })
    }

    pub fn config(&self) -> arc_swap::Guard<Arc<Cluster>> {
        self.config.load()
    }

    /// Takes `config`, whose definition equals the current one, with its new endpoints: the host
    /// set is rebuilt and swapped, while pools (connections to hosts that stay), stats, circuit
    /// breakers and in-flight requests are untouched, as in Envoy. `false` if this needs a new
    /// state instead: endpoints given by DNS name are resolved only when a state is built.
    fn update_endpoints(&self, config: &Arc<Cluster>) -> bool {
        let mut endpoints = config.load_assignment.localities.iter().flat_map(|l| l.endpoints.iter());
        if self.dns_task.is_some() || endpoints.any(|e| matches!(e.address, EndpointAddress::Dns { .. })) {
            return false;
        }
        let set = HostSet::build(config, &HashMap::new());
        self.connector.sockets.set_endpoints(set.socket_matches.clone());
        self.stats.membership_total.set(set.total as i64);
        self.stats.membership_healthy.set(set.healthy_count() as i64);
        self.hosts.store(Arc::new(set));
        self.config.store(config.clone());
        true
    }

    pub fn hosts(&self) -> arc_swap::Guard<Arc<HostSet>> {
        self.hosts.load()
    }

    pub fn choose_host(&self, ctx: &LbContext<'_>) -> Option<Arc<Host>> {
        if self.config().discovery == Discovery::OriginalDst {
            // The cluster's only host is wherever the connection was going before redirection.
            return ctx.original_dst.map(|a| Arc::new(Host::new(a, 1)));
        }
        self.hosts.load().choose(ctx)
    }

    /// Sends a request to `addr` over the cluster's pooled connections. `req`'s URI carries only
    /// the path; the authority comes from its `Host` header.
    pub async fn send(
        &self,
        mut req: http::Request<UpstreamBody>,
        addr: SocketAddr,
        downstream_h2: bool,
        alpn: Option<super::connector::AlpnChoice<'_>>,
    ) -> Result<http::Response<UpstreamResponseBody>, SendError> {
        if !self.uses_h2(downstream_h2) {
            *req.version_mut() = http::Version::HTTP_11;
            // HTTP/1.1 upstreams get origin-form (`GET /path`), even when the downstream was h2
            // and its URI carried scheme and authority.
            if req.uri().authority().is_some() {
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                *req.uri_mut() = http::Uri::try_from(pq).map_err(|_| SendError::Reset)?;
            }
            let resp = self.h1.send(req, addr, alpn).await?;
            return Ok(resp.map(|body| UpstreamResponseBody::H1 { body }));
        }
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        let host = req.headers_mut().remove(http::header::HOST);
        let authority = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| addr.to_string());
        let mut sender =
            self.h2.sender(addr, Some(&authority), alpn).await.map_err(|e| SendError::Connect(e.reset_reason()))?;
        *req.uri_mut() = http::Uri::builder()
            .scheme(if self.connector.sockets.for_address(addr).is_some() { "https" } else { "http" })
            .authority(authority.as_str())
            .path_and_query(pq.as_str())
            .build()
            .map_err(|_| SendError::Reset)?;
        *req.version_mut() = http::Version::HTTP_2;
        let resp = sender.send_request(req).await.map_err(|e| {
            if e.is_canceled() {
                SendError::Refused
            } else {
                SendError::Reset
            }
        })?;
        Ok(resp.map(|body| UpstreamResponseBody::H2 { body }))
    }

    pub fn uses_h2(&self, downstream_h2: bool) -> bool {
        let protocol = self.config().protocol;
        protocol == UpstreamProtocol::Http2 || (protocol == UpstreamProtocol::UseDownstream && downstream_h2)
    }
}

async fn resolve_all(names: &[EndpointAddress]) -> HashMap<EndpointAddress, Vec<SocketAddr>> {
    let mut out = HashMap::new();
    for n in names {
        if let EndpointAddress::Dns { host, port } = n {
            let addrs =
                match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host.as_str(), *port)))
                    .await
                {
                    Ok(Ok(a)) => a.collect(),
                    Ok(Err(e)) => {
                        tracing::warn!(host = %host, error = %e, "DNS resolution failed");
                        vec![]
                    }
                    Err(_) => {
                        tracing::warn!(host = %host, "DNS resolution timed out");
                        vec![]
                    }
                };
            out.insert(n.clone(), addrs);
        }
    }
    out
}

/// All clusters, swapped whole when config changes.
#[derive(Debug, Default)]
pub struct ClusterManager {
    clusters: ArcSwap<HashMap<String, Arc<ClusterState>>>,
}

impl ClusterManager {
    pub fn get(&self, name: &str) -> Option<Arc<ClusterState>> {
        self.clusters.load().get(name).cloned()
    }

    pub fn all(&self) -> Arc<HashMap<String, Arc<ClusterState>>> {
        self.clusters.load_full()
    }

    /// Applies a new cluster set: unchanged clusters keep their state (pools, LB cursors), and
    /// clusters whose endpoints alone changed (EDS) keep it with the new hosts swapped in.
    pub async fn apply(&self, clusters: &HashMap<String, Arc<Cluster>>, store: &Store) {
        let current = self.clusters.load_full();
        let mut next = HashMap::with_capacity(clusters.len());
        for (name, cfg) in clusters {
            let state = match current.get(name) {
                Some(s) if s.config().proto == cfg.proto => s.clone(),
                Some(s) if s.config().definition == cfg.definition && s.update_endpoints(cfg) => s.clone(),
                _ => ClusterState::new(cfg.clone(), store).await,
            };
            next.insert(name.clone(), state);
        }
        self.clusters.store(Arc::new(next));
    }
}
