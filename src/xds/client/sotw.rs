//! State-of-the-world ADS (`StreamAggregatedResources`): one `DiscoveryRequest` per type to
//! subscribe, the response's `version_info` and `nonce` echoed in the ACK, the last accepted
//! version and an `error_detail` in a NACK, the full name list re-sent when EDS/RDS names change
//! (an empty list unsubscribes).
//!
//! Owns: the SotW message shapes and per-type nonces. Must not validate resources.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::{error_detail, handle, next_response, request_channel, with_metadata, MAX_MESSAGE_BYTES};
use crate::xds::resources::{Engine, Incoming, Update};
use crate::xds::{Kind, XdsConfig, XdsError};

struct Out {
    tx: mpsc::Sender<DiscoveryRequest>,
    node: Option<envoy_types::pb::envoy::config::core::v3::Node>,
    node_every: bool,
}

impl Out {
    async fn send(&mut self, mut req: DiscoveryRequest) -> Result<(), XdsError> {
        req.node = if self.node_every { self.node.clone() } else { self.node.take() };
        self.tx.send(req).await.map_err(|_| XdsError::Closed)
    }
}

#[derive(Default)]
struct TypeState {
    nonce: String,
    names: BTreeSet<String>,
}

fn request(engine: &Engine, kind: Kind, ts: &TypeState) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: engine.version(kind),
        type_url: kind.type_url().to_string(),
        resource_names: ts.names.iter().cloned().collect(),
        response_nonce: ts.nonce.clone(),
        ..Default::default()
    }
}

pub(super) async fn stream(channel: Channel, cfg: &XdsConfig, engine: &mut Engine) -> Result<(), XdsError> {
    let (tx, outbound) = request_channel();
    let mut out = Out { tx, node: Some(cfg.node.clone()), node_every: !cfg.node_on_first_message_only };
    let mut types: HashMap<Kind, TypeState> = HashMap::new();
    // Subscribe (or, after a reconnect, resubscribe) in Envoy's order: CDS, EDS, LDS, RDS.
    for kind in Kind::ALL {
        if !engine.subscribes(kind) {
            continue;
        }
        let names = engine.wanted(kind);
        if !kind.is_wildcard() && names.is_empty() {
            continue;
        }
        let ts = types.entry(kind).or_default();
        ts.names = names;
        out.send(request(engine, kind, ts)).await?;
    }
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut inbound = client.stream_aggregated_resources(with_metadata(outbound, cfg)?).await?.into_inner();
    engine.set_connected(true);
    loop {
        let Some(resp): Option<DiscoveryResponse> = next_response(&mut inbound, engine).await? else { return Ok(()) };
        let Some(kind) = Kind::from_type_url(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "response for a type the client does not handle");
            out.send(DiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce,
                error_detail: Some(error_detail(format!("unsupported resource type '{}'", resp.type_url))),
                ..Default::default()
            })
            .await?;
            continue;
        };
        let version = resp.version_info.clone();
        let resources = resp
            .resources
            .into_iter()
            .map(|any| Incoming { name: String::new(), version: version.clone(), any })
            .collect();
        let update = Update { kind, system_version: version, resources, removed: vec![], complete: kind.is_wildcard() };
        let nack = handle(engine, update).await;
        let ts = types.entry(kind).or_default();
        ts.nonce = resp.nonce;
        let mut ack = request(engine, kind, ts);
        ack.error_detail = nack.map(error_detail);
        out.send(ack).await?;
        // EDS follows CDS, RDS follows LDS, and SDS both: subscribe after the update that needs the names.
        for named in [Kind::Endpoint, Kind::Route, Kind::Secret] {
            let wanted = engine.wanted(named);
            let ts = types.entry(named).or_default();
            if wanted != ts.names {
                ts.names = wanted;
                tracing::debug!(kind = named.short(), names = ?ts.names, "subscription changed");
                out.send(request(engine, named, ts)).await?;
            }
        }
    }
}
