//! Istio's HTTP peer metadata filter config (`io.istio.http.peer_metadata.Config`, istio/proxy,
//! sent TypedStruct-wrapped as `istio.metadata_exchange`): where the peer's identity headers are
//! read from and where this proxy's are written.
//!
//! Owns: the config message and what it means for headers. Must not touch requests
//! (`http::peer_metadata` does).

use super::hcm::PeerMetadataHeaders;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Config {
    #[prost(message, repeated, tag = "1")]
    pub downstream_discovery: Vec<DiscoveryMethod>,
    #[prost(message, repeated, tag = "2")]
    pub upstream_discovery: Vec<DiscoveryMethod>,
    #[prost(message, repeated, tag = "3")]
    pub downstream_propagation: Vec<PropagationMethod>,
    #[prost(message, repeated, tag = "4")]
    pub upstream_propagation: Vec<PropagationMethod>,
    #[prost(bool, tag = "5")]
    pub shared_with_upstream: bool,
    #[prost(string, repeated, tag = "6")]
    pub additional_labels: Vec<String>,
}

impl prost::Name for Config {
    const NAME: &'static str = "Config";
    const PACKAGE: &'static str = "io.istio.http.peer_metadata";
}

/// One `method_specifier` oneof member per field (the same wire format as the oneof).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DiscoveryMethod {
    #[prost(message, optional, tag = "1")]
    pub baggage: Option<Empty>,
    #[prost(message, optional, tag = "2")]
    pub workload_discovery: Option<Empty>,
    #[prost(message, optional, tag = "3")]
    pub istio_headers: Option<IstioHeaders>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PropagationMethod {
    #[prost(message, optional, tag = "1")]
    pub istio_headers: Option<IstioHeaders>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioHeaders {
    #[prost(bool, tag = "1")]
    pub skip_external_clusters: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

impl Config {
    /// The header behaviour. Discovery through workload discovery (WDS) or baggage only labels
    /// telemetry, which Remora does not produce, so only `istio_headers` changes a request.
    /// Propagation marked `skip_external_clusters` is not done at all: the cluster is not known
    /// when the headers are written, and leaving them off never leaks the workload's metadata
    /// to a service outside the mesh.
    pub fn headers(&self) -> PeerMetadataHeaders {
        let discovers = |m: &[DiscoveryMethod]| m.iter().any(|d| d.istio_headers.is_some());
        let propagates = |m: &[PropagationMethod]| {
            m.iter().any(|p| p.istio_headers.as_ref().is_some_and(|h| !h.skip_external_clusters))
        };
        PeerMetadataHeaders {
            strip_request: discovers(&self.downstream_discovery),
            add_request: propagates(&self.upstream_propagation),
            strip_response: discovers(&self.upstream_discovery),
            add_response: propagates(&self.downstream_propagation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_headers_methods_set_the_header_behaviour() {
        let headers = |skip| Some(IstioHeaders { skip_external_clusters: skip });
        let inbound = Config {
            downstream_discovery: vec![
                DiscoveryMethod { istio_headers: headers(false), ..Default::default() },
                DiscoveryMethod { workload_discovery: Some(Empty {}), ..Default::default() },
            ],
            downstream_propagation: vec![PropagationMethod { istio_headers: headers(false) }],
            ..Default::default()
        };
        assert_eq!(
            inbound.headers(),
            PeerMetadataHeaders { strip_request: true, add_response: true, ..Default::default() }
        );
        let outbound = Config {
            upstream_discovery: vec![DiscoveryMethod { istio_headers: headers(false), ..Default::default() }],
            upstream_propagation: vec![PropagationMethod { istio_headers: headers(true) }],
            ..Default::default()
        };
        // skip_external_clusters: never written (the cluster is not known yet).
        assert_eq!(outbound.headers(), PeerMetadataHeaders { strip_response: true, ..Default::default() });
    }
}
