//! The TCP proxy network filter: picks a cluster (weighted clusters included) and a host, connects
//! within the cluster's connect timeout, and copies bytes both ways with an idle timeout.
//!
//! Owns: L4 forwarding. Must not parse application protocols.

pub mod metadata_exchange;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::http::ConnInfo;
use crate::model::listener::{TcpProxy, TcpTarget};
use crate::state::ProxyState;
use crate::telemetry::stats::{Counter, Store};
use crate::upstream::lb::LbContext;

pub struct TcpProxyRuntime {
    pub config: Arc<TcpProxy>,
    cx_total: Arc<Counter>,
    no_route: Arc<Counter>,
    idle_timeout: Arc<Counter>,
    upstream_connect_fail: Arc<Counter>,
}

impl TcpProxyRuntime {
    pub fn new(config: Arc<TcpProxy>, store: &Store) -> Self {
        let c = |s: &str| store.counter(&format!("tcp.{}.{s}", config.stat_prefix));
        TcpProxyRuntime {
            cx_total: c("downstream_cx_total"),
            no_route: c("downstream_cx_no_route"),
            idle_timeout: c("idle_timeout"),
            upstream_connect_fail: c("upstream_flush_total"),
            config,
        }
    }
}

pub async fn proxy<I>(mut downstream: I, rt: Arc<TcpProxyRuntime>, conn: &ConnInfo, state: Arc<ProxyState>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    rt.cx_total.inc();
    let cluster_name = match &rt.config.cluster {
        TcpTarget::Cluster(c) => c.clone(),
        TcpTarget::Weighted(w) => {
            let draw = rand::rng().random_range(0..w.total_weight.max(1));
            match w.pick(draw) {
                Some(c) => c.name.clone(),
                None => return,
            }
        }
    };
    let Some(cluster) = state.clusters.get(&cluster_name) else {
        rt.no_route.inc();
        return;
    };
    let mut upstream = None;
    for _ in 0..rt.config.max_connect_attempts {
        let original_dst = conn.local_restored.then_some(conn.local);
        let Some(host) = cluster.choose_host(&LbContext { original_dst, ..Default::default() }) else {
            cluster.stats.cx_none_healthy.inc();
            return;
        };
        match cluster.connector.connect_for_tcp_proxy(host.address).await {
            Ok(s) => {
                upstream = Some((s, host));
                break;
            }
            Err(e) => {
                tracing::debug!(cluster = %cluster_name, error = %e, "tcp_proxy upstream connect failed")
            }
        }
    }
    let Some((upstream, host)) = upstream else {
        rt.upstream_connect_fail.inc();
        return;
    };
    let _host_guard = host.start_request();
    let exchange = cluster.config().metadata_exchange.clone();
    let negotiated = upstream.alpn().map(<[u8]>::to_vec);
    let (upstream, _counted) = upstream.into_parts();
    let idled = match exchange {
        Some(protocol) => match state.metadata_exchange.start(upstream, negotiated.as_deref(), &protocol).await {
            Ok(mut upstream) => copy_with_idle_timeout(&mut downstream, &mut upstream, rt.config.idle_timeout).await,
            Err(e) => {
                tracing::debug!(cluster = %cluster_name, error = %e, "writing the metadata exchange frame failed");
                false
            }
        },
        None => {
            let mut upstream = upstream;
            copy_with_idle_timeout(&mut downstream, &mut upstream, rt.config.idle_timeout).await
        }
    };
    if idled {
        rt.idle_timeout.inc();
    }
}

/// Copies both directions until both are closed; returns true if the idle timeout ended it.
async fn copy_with_idle_timeout<A, B>(a: &mut A, b: &mut B, idle: Option<Duration>) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let Some(idle) = idle else {
        let _ = tokio::io::copy_bidirectional(a, b).await;
        return false;
    };
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let mut abuf = vec![0u8; 16 * 1024];
    let mut bbuf = vec![0u8; 16 * 1024];
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        let step = tokio::time::timeout(idle, async {
            tokio::select! {
                r = ar.read(&mut abuf), if a_open => match r {
                    Ok(0) | Err(_) => { a_open = false; let _ = bw.shutdown().await; Ok(()) }
                    Ok(n) => bw.write_all(&abuf[..n]).await,
                },
                r = br.read(&mut bbuf), if b_open => match r {
                    Ok(0) | Err(_) => { b_open = false; let _ = aw.shutdown().await; Ok(()) }
                    Ok(n) => aw.write_all(&bbuf[..n]).await,
                },
            }
        })
        .await;
        match step {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => return true,
        }
    }
    false
}
