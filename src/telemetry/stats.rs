//! A lock-free-on-update stats store. Counters and gauges are registered by name (Envoy's dotted
//! names such as `cluster.backend.upstream_rq_total`) when config is applied; the data path holds
//! `Arc` handles and only touches atomics. Registration takes a mutex; it never runs per request.

use std::collections::BTreeMap;
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

#[derive(Debug, Default)]
struct Inner {
    counters: BTreeMap<String, Arc<Counter>>,
    gauges: BTreeMap<String, Arc<Gauge>>,
}

/// The process-wide store. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
}

impl Store {
    pub fn counter(&self, name: &str) -> Arc<Counter> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.counters.entry(name.to_string()).or_default().clone()
    }

    pub fn gauge(&self, name: &str) -> Arc<Gauge> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.gauges.entry(name.to_string()).or_default().clone()
    }

    /// `name: value` lines sorted by name, as Envoy's `/stats`.
    pub fn render_text(&self, filter: Option<&regex::Regex>) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: BTreeMap<&str, String> = BTreeMap::new();
        for (k, c) in &inner.counters {
            all.insert(k, c.get().to_string());
        }
        for (k, g) in &inner.gauges {
            all.insert(k, g.get().to_string());
        }
        let mut out = String::new();
        for (k, v) in all {
            if filter.is_none_or(|f| f.is_match(k)) {
                out.push_str(k);
                out.push_str(": ");
                out.push_str(&v);
                out.push('\n');
            }
        }
        out
    }

    /// Prometheus text exposition with Envoy's naming: `envoy_` prefix, dots to underscores, and the
    /// cluster / listener / HCM name pulled out into a label as Envoy's default tag extractors do.
    pub fn render_prometheus(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut families: BTreeMap<String, (&'static str, Vec<String>)> = BTreeMap::new();
        let mut add = |name: &str, kind: &'static str, value: String| {
            let (family, labels) = prometheus_name(name);
            families.entry(family).or_insert_with(|| (kind, Vec::new())).1.push(format!("{labels} {value}"));
        };
        for (k, c) in &inner.counters {
            add(k, "counter", c.get().to_string());
        }
        for (k, g) in &inner.gauges {
            add(k, "gauge", g.get().to_string());
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
