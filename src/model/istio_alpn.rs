//! Istio's `istio.alpn` HTTP filter (`istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig`,
//! istio/api). istiod puts it on outbound HTTP connection managers: it replaces the ALPN offered
//! on the upstream mTLS connection by one naming the request's protocol (`istio-http/1.1`,
//! `istio-h2`, ...), which is how the receiving sidecar picks its HTTP filter chain. Clusters whose
//! metadata says `istio.alpn_override: "false"` (DestinationRule SIMPLE/MUTUAL TLS) keep theirs.
//!
//! Owns: the filter's config. Must not open connections (the upstream pools do, with the chosen
//! protocols).

/// The message as istio/api defines it (`proto/istio/alpn/config.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FilterConfig {
    #[prost(message, repeated, tag = "1")]
    pub alpn_override: Vec<Override>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Override {
    /// HTTP10 = 0, HTTP11 = 1, HTTP2 = 2.
    #[prost(int32, tag = "1")]
    pub upstream_protocol: i32,
    #[prost(string, repeated, tag = "2")]
    pub alpn_override: Vec<String>,
}

impl prost::Name for FilterConfig {
    const NAME: &'static str = "FilterConfig";
    const PACKAGE: &'static str = "istio.envoy.config.filter.http.alpn.v2alpha1";
}

/// The upstream protocol of a request, as the filter keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    Http10 = 1,
    Http11 = 2,
    Http2 = 3,
}

/// ALPN to offer per upstream protocol (empty: keep the cluster's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlpnOverride {
    pub http10: Vec<String>,
    pub http11: Vec<String>,
    pub http2: Vec<String>,
}

impl AlpnOverride {
    pub fn from_config(c: &FilterConfig) -> Result<Self, String> {
        let mut out = AlpnOverride::default();
        for (i, o) in c.alpn_override.iter().enumerate() {
            let slot = match o.upstream_protocol {
                0 => &mut out.http10,
                1 => &mut out.http11,
                2 => &mut out.http2,
                other => return Err(format!("alpn_override[{i}].upstream_protocol: unknown value {other}")),
            };
            slot.clone_from(&o.alpn_override);
        }
        Ok(out)
    }

    /// The protocols to offer for `protocol`, if overridden.
    pub fn protocols(&self, protocol: UpstreamProtocol) -> Option<&[String]> {
        let list = match protocol {
            UpstreamProtocol::Http10 => &self.http10,
            UpstreamProtocol::Http11 => &self.http11,
            UpstreamProtocol::Http2 => &self.http2,
        };
        (!list.is_empty()).then_some(list.as_slice())
    }
}
