//! Istio's HTTP metadata exchange (`istio.metadata_exchange` on a connection manager): the
//! `x-envoy-peer-metadata` / `x-envoy-peer-metadata-id` headers. As istio-proxy does, the peer's
//! headers are taken off (so applications never see them) and this proxy's are written where the
//! config says: on requests leaving an outbound sidecar, and on responses from an inbound sidecar
//! whose request carried the peer's.
//!
//! Owns: those two headers. Must not touch other headers or choose routes.

use http::{HeaderMap, HeaderName};

use crate::model::hcm::PeerMetadataHeaders;
use crate::tcp::metadata_exchange::LocalExchange;

static METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
static METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");

/// Which of the downstream peer's headers the request carried.
#[derive(Debug, Clone, Copy, Default)]
pub struct Received {
    id: bool,
    metadata: bool,
}

pub fn on_request(headers: &mut HeaderMap, cfg: PeerMetadataHeaders, local: &LocalExchange) -> Received {
    let mut received = Received::default();
    if cfg.strip_request {
        let present = |v: Option<http::HeaderValue>| v.is_some_and(|v| !v.is_empty());
        received.id = present(headers.remove(&METADATA_ID));
        received.metadata = present(headers.remove(&METADATA));
    }
    if cfg.add_request {
        set(headers, local, true, true);
    }
    received
}

pub fn on_response(headers: &mut HeaderMap, cfg: PeerMetadataHeaders, received: Received, local: &LocalExchange) {
    if cfg.strip_response {
        headers.remove(&METADATA_ID);
        headers.remove(&METADATA);
    }
    if cfg.add_response {
        set(headers, local, received.id, received.metadata);
    }
}

fn set(headers: &mut HeaderMap, local: &LocalExchange, id: bool, metadata: bool) {
    if let (true, Some(v)) = (id, &local.header_id) {
        headers.insert(METADATA_ID.clone(), v.clone());
    }
    if let (true, Some(v)) = (metadata, &local.header_metadata) {
        headers.insert(METADATA.clone(), v.clone());
    }
}
