//! A protobuf message kept in its encoded form.
//!
//! Remora keeps every accepted xDS resource (for `/config_dump`, for rebuilding an EDS cluster when
//! its endpoints change, and to tell an unchanged re-send from a change), but the data path only
//! ever uses the models built from them. Decoded `envoy-types` messages are large structs (a
//! `Cluster` is about 3.5 KB before any field is set); the encoded bytes of a typical mesh cluster
//! are a few hundred. At 5,000 services that difference is most of the memory.
//!
//! Owns: the encoded form, equality by bytes and decoding on demand. Must not interpret fields.

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

/// `P`, encoded. Cloning shares the bytes.
pub struct Retained<P> {
    bytes: Bytes,
    _message: PhantomData<fn() -> P>,
}

impl<P: Message + Name + Default> Retained<P> {
    /// Keeps `message` as its encoding.
    pub fn encode(message: &P) -> Self {
        Self::from_encoded(Bytes::from(message.encode_to_vec()))
    }

    /// Keeps bytes already known to decode as `P` (an xDS resource as received). Two resources
    /// compare equal when their bytes are equal, so an identical re-send is recognised as such.
    pub fn from_encoded(bytes: Bytes) -> Self {
        Retained { bytes, _message: PhantomData }
    }

    /// The message again. The bytes decoded once before they were kept, so an error here means a
    /// bug, and callers treat it as the resource being unusable rather than panicking.
    pub fn decode(&self) -> Result<P, prost::DecodeError> {
        P::decode(self.bytes.as_ref())
    }

    /// The message as an `Any`, without decoding it.
    pub fn to_any(&self) -> Any {
        Any { type_url: P::type_url(), value: self.bytes.to_vec() }
    }

    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }
}

impl<P> Clone for Retained<P> {
    fn clone(&self) -> Self {
        Retained { bytes: self.bytes.clone(), _message: PhantomData }
    }
}

impl<P> PartialEq for Retained<P> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<P> Eq for Retained<P> {}

impl<P> fmt::Debug for Retained<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retained<{}>({} bytes)", std::any::type_name::<P>(), self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    #[test]
    fn round_trips_and_compares_by_bytes() {
        let c = Cluster { name: "backend".into(), ..Default::default() };
        let kept = Retained::encode(&c);
        assert_eq!(kept.decode().unwrap(), c);
        assert_eq!(kept, Retained::from_encoded(Bytes::from(c.encode_to_vec())));
        assert_ne!(kept, Retained::encode(&Cluster { name: "other".into(), ..Default::default() }));
        assert_eq!(kept.to_any().type_url, "type.googleapis.com/envoy.config.cluster.v3.Cluster");
        assert!(kept.encoded_len() < 16);
    }
}
