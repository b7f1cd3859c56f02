//! SDS over gRPC (`SecretDiscoveryService/StreamSecrets`, state of the world), as Envoy does for
//! an `sds_config` naming an `envoy_grpc` cluster, and as pilot-agent serves it on its Unix
//! socket through Istio's `sds-grpc` cluster. One stream per SDS cluster subscribes to every name
//! a TLS context wants from it (the full list is re-sent when one is added); an accepted response
//! goes into the store, a bad one is NACKed with the reason and the previous secrets keep serving.
//! Reconnects with jittered backoff, keeping the last secrets however long the server is away.
//!
//! Owns: those streams. Must not build TLS configs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::{Message, Name};
use tokio::sync::watch;

use super::SecretValue;
use crate::model::Cluster;
use crate::xds::backoff::Backoff;
use crate::xds::client::{error_detail, request_channel, MAX_MESSAGE_BYTES};
use crate::xds::XdsError;

/// Starts the stream for `cluster`; `names` is the live set of wanted secret names.
pub fn spawn(cluster: Arc<Cluster>, node: Node, names: watch::Receiver<BTreeSet<String>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut names = names;
        loop {
            let mut accepted_any = false;
            let result = stream(&cluster, &node, &mut names, &mut accepted_any).await;
            if accepted_any {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            match result {
                Ok(()) => tracing::warn!(cluster = %cluster.name, retry_in = ?delay, "SDS stream closed; keeping the current secrets"),
                Err(e) => {
                    tracing::warn!(cluster = %cluster.name, error = %e, retry_in = ?delay, "SDS stream failed; keeping the current secrets")
                }
            }
            tokio::time::sleep(delay).await;
        }
    });
}

struct Subscription {
    version: String,
    nonce: String,
    names: BTreeSet<String>,
}

impl Subscription {
    fn request(&self, node: Option<Node>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.version.clone(),
            node,
            resource_names: self.names.iter().cloned().collect(),
            type_url: Secret::type_url(),
            response_nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

async fn stream(
    cluster: &Cluster,
    node: &Node,
    names: &mut watch::Receiver<BTreeSet<String>>,
    accepted_any: &mut bool,
) -> Result<(), XdsError> {
    let channel = crate::xds::transport::connect(cluster).await?;
    let (tx, outbound) = request_channel::<DiscoveryRequest>();
    let mut sub =
        Subscription { version: String::new(), nonce: String::new(), names: names.borrow_and_update().clone() };
    // The node goes on the first request only (istiod's `set_node_on_first_message_only`).
    tx.send(sub.request(Some(node.clone()))).await.map_err(|_| XdsError::Closed)?;
    let mut client = SecretDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut inbound = client.stream_secrets(outbound).await?.into_inner();
    tracing::info!(cluster = %cluster.name, secrets = ?sub.names, "SDS stream open");
    loop {
        tokio::select! {
            changed = names.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                sub.names = names.borrow_and_update().clone();
                tx.send(sub.request(None)).await.map_err(|_| XdsError::Closed)?;
            }
            message = inbound.message() => {
                let Some(response) = message? else { return Ok(()) };
                let nack = apply(&response).err();
                sub.nonce = response.nonce.clone();
                if nack.is_none() {
                    sub.version = response.version_info.clone();
                    *accepted_any = true;
                }
                let mut req = sub.request(None);
                if let Some(detail) = nack {
                    tracing::warn!(cluster = %cluster.name, %detail, "SDS response rejected (NACK); the current secrets keep serving");
                    req.error_detail = Some(error_detail(detail));
                }
                tx.send(req).await.map_err(|_| XdsError::Closed)?;
            }
        }
    }
}

/// Checks every secret of the response, then stores them all; one bad secret rejects the response.
fn apply(response: &DiscoveryResponse) -> Result<(), String> {
    let mut values = Vec::with_capacity(response.resources.len());
    for (i, any) in response.resources.iter().enumerate() {
        if any.type_url != Secret::type_url() {
            return Err(format!("resources[{i}]: expected {}, got {}", Secret::type_url(), any.type_url));
        }
        let secret = Secret::decode(any.value.as_slice()).map_err(|e| format!("resources[{i}]: {e}"))?;
        let value = SecretValue::from_proto(&secret).map_err(|e| format!("secret '{}': {e}", secret.name))?;
        values.push((secret.name, value));
    }
    for (name, value) in values {
        super::store().set(&name, value);
    }
    Ok(())
}
