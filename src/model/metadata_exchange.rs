//! Istio's TCP metadata exchange filter config (`envoy.tcp.metadataexchange.config.MetadataExchange`,
//! the `istio.metadata_exchange` network filter on inbound TCP chains and cluster filter on outbound
//! clusters). It names the ALPN protocol (`istio-peer-exchange`) under which both ends write a
//! metadata frame before any application byte.
//!
//! Owns: the config message and its check. Must not touch sockets (`tcp::metadata_exchange` speaks
//! the frame).

use envoy_types::pb::google::protobuf::Any;

use super::error::{FieldError, FieldResult};

pub const TYPE_NAME: &str = "envoy.tcp.metadataexchange.config.MetadataExchange";

/// The message as istio/proxy defines it (`proto/istio/metadata_exchange/metadata_exchange.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataExchange {
    #[prost(string, tag = "1")]
    pub protocol: String,
}

impl prost::Name for MetadataExchange {
    const NAME: &'static str = "MetadataExchange";
    const PACKAGE: &'static str = "envoy.tcp.metadataexchange.config";
}

/// The ALPN protocol the filter at `path` exchanges metadata under.
pub fn protocol(any: &Any, path: &str) -> FieldResult<String> {
    let mx: MetadataExchange = super::unpack(any).map_err(|e| FieldError::new(format!("{path}.typed_config"), e))?;
    if mx.protocol.is_empty() {
        // istio/proxy asserts a protocol; without one the filter could never match a connection.
        return Err(FieldError::new(format!("{path}.typed_config.protocol"), "must not be empty"));
    }
    Ok(mx.protocol)
}
