//! The xDS client's life: connect over the xDS cluster, run one ADS stream (SotW or delta) until it
//! fails, keep serving the last configuration, back off (jittered, exponential) and reconnect,
//! resubscribing everything.
//!
//! Owns: the reconnect loop and what both stream flavours share (request stream, metadata, the
//! response → apply → ACK step). Must not validate resources (`resources` does).

mod delta;
mod sotw;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};

use super::backoff::Backoff;
use super::resources::Engine;
use super::{Sink, XdsConfig, XdsError};
use crate::model::Snapshot;
use crate::state::ProxyState;

/// Largest response accepted: istiod's responses can be large (a big mesh's CDS), pilot-agent
/// allows MaxInt32; this keeps a bound.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Outbound requests queued for the stream (a handful per response at most).
const REQUEST_QUEUE: usize = 64;

/// Runs the client until the process shuts down.
pub async fn run(cfg: XdsConfig, base: Arc<Snapshot>, state: Arc<ProxyState>, sink: Arc<dyn Sink>) {
    let mut engine = Engine::new(&cfg, base, state.clone(), sink);
    engine.set_connected(false);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut shutdown = state.shutdown_signal();
    loop {
        let before = engine.responses;
        let result = tokio::select! {
            r = session(&cfg, &mut engine) => r,
            _ = stopped(&mut shutdown) => return,
        };
        engine.set_connected(false);
        engine.record_stream_failure();
        if engine.responses > before {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        match result {
            Ok(()) => tracing::warn!(retry_in = ?delay, "xDS stream closed; keeping the last configuration"),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "xDS stream failed; keeping the last configuration")
            }
        }
        // Warming timeouts keep running while disconnected.
        let wake = tokio::time::Instant::now() + delay;
        loop {
            let deadline = engine.next_deadline().filter(|d| *d < wake);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => break,
                _ = stopped(&mut shutdown) => return,
                _ = sleep_until_opt(deadline) => {
                    engine.evaluate(tokio::time::Instant::now());
                    engine.publish().await;
                }
            }
        }
    }
}

async fn session(cfg: &XdsConfig, engine: &mut Engine) -> Result<(), XdsError> {
    let channel = super::transport::connect(&cfg.cluster).await?;
    tracing::info!(cluster = %cfg.cluster.name, api = ?cfg.api, "connected to the xDS server");
    match cfg.api {
        super::Api::Sotw => sotw::stream(channel, cfg, engine).await,
        super::Api::Delta => delta::stream(channel, cfg, engine).await,
    }
}

async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

pub(super) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next response of the stream (`None` when the server closed it), re-evaluating warming and
/// publishing whenever a fetch timeout falls due meanwhile.
pub(super) async fn next_response<T>(
    inbound: &mut tonic::Streaming<T>,
    engine: &mut Engine,
) -> Result<Option<T>, XdsError> {
    loop {
        let deadline = engine.next_deadline();
        tokio::select! {
            msg = inbound.message() => return Ok(msg?),
            _ = sleep_until_opt(deadline) => {
                engine.evaluate(tokio::time::Instant::now());
                engine.publish().await;
            }
        }
    }
}

/// A bounded request queue and the stream tonic sends from.
pub(crate) fn request_channel<T: Send + 'static>() -> (mpsc::Sender<T>, impl Stream<Item = T> + Send + 'static) {
    let (tx, rx) = mpsc::channel::<T>(REQUEST_QUEUE);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    (tx, stream)
}

/// The streaming request with the configured `initial_metadata`, and the workload's credentials
/// (the token re-read now: projected tokens rotate).
pub(super) fn with_metadata<S>(stream: S, cfg: &XdsConfig) -> Result<tonic::Request<S>, XdsError> {
    let mut req = tonic::Request::new(stream);
    for (k, v) in &cfg.initial_metadata {
        let key = AsciiMetadataKey::from_bytes(k.as_bytes()).map_err(|_| XdsError::Metadata(k.clone()))?;
        let value = AsciiMetadataValue::try_from(v.as_str()).map_err(|_| XdsError::Metadata(k.clone()))?;
        req.metadata_mut().append(key, value);
    }
    if let Some(c) = &cfg.credentials {
        match std::fs::read_to_string(&c.token_path) {
            Ok(token) => {
                let value = AsciiMetadataValue::try_from(format!("Bearer {}", token.trim()))
                    .map_err(|_| XdsError::Metadata("authorization".into()))?;
                req.metadata_mut().insert("authorization", value);
            }
            Err(e) => tracing::warn!(path = %c.token_path.display(), error = %e, "no token for the xDS stream"),
        }
        if let Ok(v) = AsciiMetadataValue::try_from(c.cluster_id.as_str()) {
            req.metadata_mut().insert("clusterid", v);
        }
    }
    Ok(req)
}

/// The `error_detail` of a NACK (Envoy uses code INTERNAL).
pub(crate) fn error_detail(message: String) -> envoy_types::pb::google::rpc::Status {
    envoy_types::pb::google::rpc::Status { code: 13, message, details: vec![] }
}

/// Applies one update, publishes the result and re-evaluates warming; returns the NACK detail.
pub(super) async fn handle(engine: &mut Engine, update: super::resources::Update) -> Option<String> {
    let kind = update.kind;
    let result = engine.update(update);
    engine.prune();
    engine.evaluate(tokio::time::Instant::now());
    engine.publish().await;
    match result {
        Ok(()) => None,
        Err(detail) => {
            tracing::warn!(kind = kind.short(), %detail, "NACK");
            Some(detail)
        }
    }
}

/// Subscribed names per named type, for the stream's lifetime.
pub(super) type Subscribed = HashMap<super::Kind, std::collections::BTreeSet<String>>;
