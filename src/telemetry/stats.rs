//! A lock-free-on-update stats store. Counters and gauges are registered by name (Envoy's dotted
//! names such as `cluster.backend.upstream_rq_total`) when config is applied; the data path holds
//! `Arc` handles and only touches atomics. Registration takes a mutex; it never runs per request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Increments a gauge now and decrements it when dropped (active connections and requests).
#[derive(Debug)]
pub struct GaugeGuard(Arc<Gauge>);

impl GaugeGuard {
    pub fn new(g: &Arc<Gauge>) -> Self {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug, Clone)]
enum Stat {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
}

impl Stat {
    fn value(&self) -> String {
        match self {
            Stat::Counter(c) => c.get().to_string(),
            Stat::Gauge(g) => g.get().to_string(),
        }
    }
}

/// Names are stored split at their last dot: the scope (`cluster.<name>`) once per scope, the leaf
/// (`upstream_rq_total`) once per process. A 5,000-cluster mesh registers about 150,000 stats
/// whose full names average 70 bytes; keeping each only as two shared pieces and a pointer is
/// what keeps the store a small part of the proxy's memory (Envoy's symbol table does the same).
#[derive(Debug, Default)]
struct Inner {
    scopes: HashMap<Arc<str>, Vec<(Arc<str>, Stat)>>,
    leaves: HashSet<Arc<str>>,
}

impl Inner {
    fn get_or_insert(&mut self, name: &str, make: impl FnOnce() -> Stat) -> Stat {
        let (scope, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let interned = match self.leaves.get(leaf) {
            Some(l) => l.clone(),
            None => {
                let l: Arc<str> = Arc::from(leaf);
                self.leaves.insert(l.clone());
                l
            }
        };
        match self.scopes.get_mut(scope) {
            Some(stats) => match stats.iter().find(|(l, _)| **l == *leaf) {
                Some((_, stat)) => stat.clone(),
                None => {
                    let stat = make();
                    stats.push((interned, stat.clone()));
                    stat
                }
            },
            None => {
                let stat = make();
                self.scopes.insert(Arc::from(scope), vec![(interned, stat.clone())]);
                stat
            }
        }
    }

    /// The stats whose full name `filter` matches (all without one), sorted by name. Names are
    /// built in one buffer and kept only when they match: a filtered query on a large mesh (what
    /// readiness probes send) allocates for its matches, not for every stat.
    fn sorted(&self, filter: Option<&regex::Regex>) -> Vec<(String, &Stat)> {
        let mut all: Vec<(String, &Stat)> = Vec::new();
        let mut name = String::new();
        for (scope, stats) in &self.scopes {
            for (leaf, stat) in stats {
                name.clear();
                if !scope.is_empty() {
                    name.push_str(scope);
                    name.push('.');
                }
                name.push_str(leaf);
                if filter.is_none_or(|f| f.is_match(&name)) {
                    all.push((name.clone(), stat));
                }
            }
        }
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// The process-wide store. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
}

impl Store {
    /// The counter called `name`. A name registered as a gauge gets a detached counter (a bug in
    /// the caller that must not take the proxy down; it is logged).
    pub fn counter(&self, name: &str) -> Arc<Counter> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.get_or_insert(name, || Stat::Counter(Arc::default())) {
            Stat::Counter(c) => c,
            Stat::Gauge(_) => {
                tracing::error!(stat = name, "stat registered as a gauge is used as a counter");
                Arc::default()
            }
        }
    }

    /// The gauge called `name` (see [`Store::counter`] for a kind mismatch).
    pub fn gauge(&self, name: &str) -> Arc<Gauge> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.get_or_insert(name, || Stat::Gauge(Arc::default())) {
            Stat::Gauge(g) => g,
            Stat::Counter(_) => {
                tracing::error!(stat = name, "stat registered as a counter is used as a gauge");
                Arc::default()
            }
        }
    }

    /// `name: value` lines sorted by name, as Envoy's `/stats`.
    pub fn render_text(&self, filter: Option<&regex::Regex>) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, stat) in inner.sorted(filter) {
            out.push_str(&name);
            out.push_str(": ");
            out.push_str(&stat.value());
            out.push('\n');
        }
        out
    }

    /// Prometheus text exposition with Envoy's naming: `envoy_` prefix, dots to underscores, and the
    /// cluster / listener / HCM name pulled out into a label as Envoy's default tag extractors do.
    pub fn render_prometheus(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut families: BTreeMap<String, (&'static str, Vec<String>)> = BTreeMap::new();
        for (name, stat) in inner.sorted(None) {
            let kind = match stat {
                Stat::Counter(_) => "counter",
                Stat::Gauge(_) => "gauge",
            };
            let (family, labels) = prometheus_name(&name);
            families.entry(family).or_insert_with(|| (kind, Vec::new())).1.push(format!("{labels} {}", stat.value()));
        }
        let mut out = String::new();
        for (family, (kind, samples)) in families {
            out.push_str(&format!("# TYPE {family} {kind}\n"));
            for s in samples {
                out.push_str(&family);
                out.push_str(&s);
                out.push('\n');
            }
        }
        out
    }
}

/// `cluster.backend.upstream_rq_total` → (`envoy_cluster_upstream_rq_total`, `{envoy_cluster_name="backend"}`).
fn prometheus_name(name: &str) -> (String, String) {
    let sanitize = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>();
    for (prefix, label) in [
        ("cluster.", "envoy_cluster_name"),
        ("http.", "envoy_http_conn_manager_prefix"),
        ("listener.", "envoy_listener_address"),
        ("tcp.", "envoy_tcp_prefix"),
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            // The scope name may itself contain dots (listener addresses), so the stat is the last
            // segment and the scope everything before it.
            if let Some((scope, stat)) = rest.rsplit_once('.') {
                let family = format!("envoy_{}{}", sanitize(prefix), sanitize(stat));
                return (family, format!("{{{label}=\"{scope}\"}}"));
            }
        }
    }
    (format!("envoy_{}", sanitize(name)), String::new())
}
