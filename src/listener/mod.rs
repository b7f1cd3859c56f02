//! Listeners: binding, accept loops, original-destination recovery, listener filters (TLS and
//! HTTP inspection), filter-chain selection, TLS termination, and draining.
//!
//! Owns: sockets and the choice of filter chain. Must not know HTTP semantics: it hands the
//! connection to `http` or `tcp`.

pub mod filter_chain;
mod original_dst;
mod tls_accept;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};

use crate::http::{ConnInfo, HcmRuntime};
use crate::model::error::ConfigError;
use crate::model::listener::{FilterChain, Listener, NetworkTerminal};
use crate::state::ProxyState;
use crate::tcp::TcpProxyRuntime;
use crate::telemetry::stats::{Counter, Gauge, GaugeGuard, Store};
use crate::tls::client_hello;

/// A filter chain ready to serve: TLS acceptor and terminal runtime built once per snapshot.
pub struct ChainRuntime {
    pub config: Arc<FilterChain>,
    pub tls: Option<tls_accept::DownstreamTls>,
    pub terminal: Terminal,
}

pub enum Terminal {
    Http(Arc<HcmRuntime>),
    Tcp(Arc<TcpProxyRuntime>),
    Closed(String),
}

pub struct ListenerRuntime {
    pub config: Arc<Listener>,
    pub chains: Vec<ChainRuntime>,
    pub default_chain: Option<ChainRuntime>,
    pub stats: ListenerStats,
}

pub struct ListenerStats {
    pub cx_total: Arc<Counter>,
    pub cx_active: Arc<Gauge>,
    pub no_filter_chain_match: Arc<Counter>,
    pub ssl: crate::tls::stats::SslStats,
}

impl ListenerRuntime {
    /// Builds everything a listener needs except its socket; validate mode runs this too, so TLS
    /// material errors are reported before serving.
    pub fn build(config: Arc<Listener>, store: &Store) -> Result<Self, ConfigError> {
        let chain = |fc: &Arc<FilterChain>, path: String| -> Result<ChainRuntime, ConfigError> {
            let tls = match fc.tls.as_ref().map(|t| crate::tls::server_config(t).map(|cfg| (t, cfg))) {
                Some(Ok((t, cfg))) => Some(tls_accept::DownstreamTls::new(match &fc.metadata_exchange {
                    Some(protocol) => {
                        let mut cfg = (*cfg).clone();
                        cfg.alpn_protocols = crate::tls::exchange_alpn(&t.common.alpn, protocol);
                        Arc::new(cfg)
                    }
                    None => cfg,
                })),
                Some(Err(e)) => {
                    return Err(ConfigError::new(
                        "listener",
                        &config.name,
                        format!("{path}.transport_socket"),
                        e.to_string(),
                    ))
                }
                None => None,
            };
            let terminal = match &fc.terminal {
                NetworkTerminal::Http(h) => Terminal::Http(HcmRuntime::new(h.clone(), store)),
                NetworkTerminal::Tcp(t) => Terminal::Tcp(Arc::new(TcpProxyRuntime::new(t.clone(), store))),
                NetworkTerminal::Unsupported(name) => Terminal::Closed(name.clone()),
            };
            Ok(ChainRuntime { config: fc.clone(), tls, terminal })
        };
        let chains = config
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, fc)| chain(fc, format!("filter_chains[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let default_chain =
            config.default_filter_chain.as_ref().map(|fc| chain(fc, "default_filter_chain".into())).transpose()?;
        // Envoy's listener scope is the address with ':' made '_' (`listener.127.0.0.1_10000`).
        let scope = format!("listener.{}", config.address.to_string().replace(':', "_"));
        let stats = ListenerStats {
            cx_total: store.counter(&format!("{scope}.downstream_cx_total")),
            cx_active: store.gauge(&format!("{scope}.downstream_cx_active")),
            no_filter_chain_match: store.counter(&format!("{scope}.no_filter_chain_match")),
            ssl: crate::tls::stats::SslStats::new(store, &scope),
        };
        Ok(ListenerRuntime { config, chains, default_chain, stats })
    }
}

/// Binds a listener socket the way Envoy does (SO_REUSEADDR, a deep backlog).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(true);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until draining starts, then stops accepting; established connections finish on their
/// own (or are cut when the process exits after the drain time).
pub async fn run(listener: TcpListener, runtime: Arc<ArcSwap<ListenerRuntime>>, state: Arc<ProxyState>) {
    let mut drain = state.draining();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.wait_for(|d| *d) => return,
        };
        let (stream, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let rt = runtime.load_full();
        let state = state.clone();
        tokio::spawn(async move { handle_connection(stream, remote, rt, state).await });
    }
}

async fn handle_connection(stream: TcpStream, remote: SocketAddr, rt: Arc<ListenerRuntime>, state: Arc<ProxyState>) {
    rt.stats.cx_total.inc();
    let _active = GaugeGuard::new(&rt.stats.cx_active);
    let _open = GaugeGuard::new(&state.connections);
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let restored = if rt.config.use_original_dst { original_dst::get(&stream) } else { None };
    let destination = restored.unwrap_or(local);
    let inspected = if rt.config.tls_inspector || rt.config.http_inspector {
        inspect(&stream, rt.config.http_inspector, rt.config.listener_filters_timeout).await
    } else {
        client_hello::Inspected::default()
    };
    let facts = filter_chain::ConnFacts {
        destination,
        source: remote,
        sni: inspected.sni.as_deref(),
        transport_protocol: if inspected.tls { "tls" } else { "raw_buffer" },
        alpn: &inspected.alpn,
    };
    let chain = filter_chain::select(&rt.config, &facts).and_then(|fc| {
        rt.chains
            .iter()
            .find(|c| Arc::ptr_eq(&c.config, fc))
            .or(rt.default_chain.as_ref().filter(|d| Arc::ptr_eq(&d.config, fc)))
    });
    let Some(chain) = chain else {
        rt.stats.no_filter_chain_match.inc();
        return;
    };
    let mut conn = ConnInfo {
        remote,
        local: destination,
        local_restored: restored.is_some(),
        tls: chain.tls.is_some(),
        sni: inspected.sni.clone(),
        peer: None,
    };
    match &chain.tls {
        Some(acceptor) => match acceptor.accept(stream).await {
            Ok(tls) => {
                let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
                if let (Some(v), Some(peer)) =
                    (chain.config.tls.as_ref().and_then(|t| t.common.validation.as_ref()), &peer)
                {
                    if !crate::tls::verify_san(peer, &v.san_matchers) {
                        rt.stats.ssl.fail_verify_san.inc();
                        rt.stats.ssl.connection_error.inc();
                        return;
                    }
                }
                rt.stats.ssl.handshake_done(peer.is_some());
                if let (Some(local), Some(certs)) = (&chain.config.tls, tls.get_ref().1.peer_certificates()) {
                    conn.peer = crate::tls::peer::TlsPeer::new(certs.to_vec(), local.clone());
                }
                match &chain.config.metadata_exchange {
                    Some(protocol) => {
                        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                        match state.metadata_exchange.start(tls, alpn.as_deref(), protocol).await {
                            Ok(io) => dispatch(io, chain, conn, state).await,
                            Err(e) => tracing::debug!(error = %e, "writing the metadata exchange frame failed"),
                        }
                    }
                    None => dispatch(tls, chain, conn, state).await,
                }
            }
            Err(e) => {
                rt.stats.ssl.handshake_failed(&e);
                tracing::debug!(error = %e, "downstream TLS handshake failed");
            }
        },
        None => dispatch(stream, chain, conn, state).await,
    }
}

async fn dispatch<I>(io: I, chain: &ChainRuntime, conn: ConnInfo, state: Arc<ProxyState>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match &chain.terminal {
        Terminal::Http(hcm) => crate::http::serve_connection(io, hcm.clone(), Arc::new(conn), state).await,
        Terminal::Tcp(t) => crate::tcp::proxy(io, t.clone(), &conn, state).await,
        Terminal::Closed(name) => {
            tracing::debug!(filter = %name, "closing connection: network filter not implemented")
        }
    }
}

/// Peeks at the first bytes (without consuming them) for the TLS and HTTP inspectors.
async fn inspect(stream: &TcpStream, http: bool, timeout: Option<Duration>) -> client_hello::Inspected {
    let mut buf = vec![0u8; 16 * 1024 + 5];
    let peek = async {
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return client_hello::Inspected::default(),
                Ok(n) => n,
            };
            if let Some(result) = client_hello::inspect(&buf[..n], http) {
                return result;
            }
            // More of the ClientHello is in flight; wait for it.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, peek).await.unwrap_or_default(),
        None => peek.await,
    }
}
