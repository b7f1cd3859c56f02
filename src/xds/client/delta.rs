//! Delta ADS (`DeltaAggregatedResources`): wildcard CDS/LDS, named EDS/RDS subscribed and
//! unsubscribed incrementally, `initial_resource_versions` on (re)connect so the server sends only
//! what changed, `removed_resources` applied, ACK/NACK by nonce.
//!
//! Owns: the delta message shapes and subscription diffs. Must not validate resources.

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::{error_detail, handle, next_response, request_channel, with_metadata, Subscribed, MAX_MESSAGE_BYTES};
use crate::xds::resources::{Engine, Incoming, Update};
use crate::xds::subscriptions::diff;
use crate::xds::{Kind, XdsConfig, XdsError};

struct Out {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    node: Option<envoy_types::pb::envoy::config::core::v3::Node>,
    node_every: bool,
}

impl Out {
    async fn send(&mut self, mut req: DeltaDiscoveryRequest) -> Result<(), XdsError> {
        req.node = if self.node_every { self.node.clone() } else { self.node.take() };
        self.tx.send(req).await.map_err(|_| XdsError::Closed)
    }
}

pub(super) async fn stream(channel: Channel, cfg: &XdsConfig, engine: &mut Engine) -> Result<(), XdsError> {
    let (tx, outbound) = request_channel();
    let mut out = Out { tx, node: Some(cfg.node.clone()), node_every: !cfg.node_on_first_message_only };
    let mut subscribed = Subscribed::new();
    for kind in Kind::ALL {
        if !engine.subscribes(kind) {
            continue;
        }
        let names = engine.wanted(kind);
        if !kind.is_wildcard() && names.is_empty() {
            continue;
        }
        let mut initial = engine.known_versions(kind);
        if !kind.is_wildcard() {
            initial.retain(|n, _| names.contains(n));
        }
        out.send(DeltaDiscoveryRequest {
            type_url: kind.type_url().to_string(),
            resource_names_subscribe: names.iter().cloned().collect(),
            initial_resource_versions: initial,
            ..Default::default()
        })
        .await?;
        subscribed.insert(kind, names);
    }
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut inbound = client.delta_aggregated_resources(with_metadata(outbound, cfg)?).await?.into_inner();
    engine.set_connected(true);
    loop {
        let Some(resp): Option<DeltaDiscoveryResponse> = next_response(&mut inbound, engine).await? else {
            return Ok(());
        };
        let Some(kind) = Kind::from_type_url(&resp.type_url) else {
            tracing::warn!(type_url = %resp.type_url, "response for a type the client does not handle");
            out.send(DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce,
                error_detail: Some(error_detail(format!("unsupported resource type '{}'", resp.type_url))),
                ..Default::default()
            })
            .await?;
            continue;
        };
        let resources = resp
            .resources
            .into_iter()
            .filter_map(|r| r.resource.map(|any| Incoming { name: r.name, version: r.version, any }))
            .collect();
        let update = Update {
            kind,
            system_version: resp.system_version_info,
            resources,
            removed: resp.removed_resources,
            complete: false,
        };
        let nack = handle(engine, update).await;
        out.send(DeltaDiscoveryRequest {
            type_url: kind.type_url().to_string(),
            response_nonce: resp.nonce,
            error_detail: nack.map(error_detail),
            ..Default::default()
        })
        .await?;
        for named in [Kind::Endpoint, Kind::Route, Kind::Secret] {
            let wanted = engine.wanted(named);
            let current = subscribed.entry(named).or_default();
            let (add, remove) = diff(current, &wanted);
            if add.is_empty() && remove.is_empty() {
                continue;
            }
            tracing::debug!(kind = named.short(), ?add, ?remove, "subscription changed");
            *current = wanted;
            out.send(DeltaDiscoveryRequest {
                type_url: named.type_url().to_string(),
                resource_names_subscribe: add,
                resource_names_unsubscribe: remove,
                ..Default::default()
            })
            .await?;
        }
    }
}
