//! Envoy's fault injection filter config (`envoy.filters.http.fault`, `HTTPFault`), on the filter
//! and per route/virtual host (`typed_per_filter_config`, where istiod puts a VirtualService's
//! `fault`): delays and aborts with their percentages, the header-controlled variants, and the
//! request conditions (headers, upstream cluster, downstream nodes, active-fault limit).
//!
//! Owns: the validated config. Must not delay or answer requests (`http::fault` does).

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort::ErrorType, HttpFault};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;

use super::error::{FieldError, FieldResult};
use super::route::HeaderMatcher;

pub const TYPE_NAME: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";

/// A share of requests, as a fraction of a million.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PerMillion(pub u32);

impl PerMillion {
    /// Envoy's `FractionalPercent`; absent means 0 (the proto default), as in Envoy.
    pub fn from_fraction(p: Option<&FractionalPercent>) -> Self {
        let Some(p) = p else { return PerMillion(0) };
        let scale = match p.denominator {
            0 => 10_000,
            1 => 100,
            _ => 1,
        };
        PerMillion(p.numerator.saturating_mul(scale).min(1_000_000))
    }

    /// The same denominator with another numerator (the `*-percentage` request headers).
    pub fn with_numerator(self, numerator: u32, of: &Option<FractionalPercent>) -> Self {
        let denominator = of.as_ref().map_or(0, |p| p.denominator);
        PerMillion::from_fraction(Some(&FractionalPercent { numerator, denominator })).min(self)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum DelaySource {
    Fixed(Duration),
    /// `x-envoy-fault-delay-request` (milliseconds).
    Header,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AbortSource {
    Http(u16),
    Grpc(u32),
    /// `x-envoy-fault-abort-request` / `x-envoy-fault-abort-grpc-request`.
    Header,
}

#[derive(Debug, Clone)]
pub struct Delay {
    pub source: DelaySource,
    pub percentage: PerMillion,
    pub proto_percentage: Option<FractionalPercent>,
}

#[derive(Debug, Clone)]
pub struct Abort {
    pub source: AbortSource,
    pub percentage: PerMillion,
    pub proto_percentage: Option<FractionalPercent>,
    pub body: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
    pub headers: Vec<HeaderMatcher>,
    pub upstream_cluster: Option<String>,
    pub downstream_nodes: Vec<String>,
    pub max_active_faults: Option<u32>,
}

impl FaultConfig {
    pub fn from_proto(f: &HttpFault) -> FieldResult<Self> {
        if f.response_rate_limit.is_some() {
            return Err(FieldError::new("response_rate_limit", "not supported by Remora"));
        }
        let delay = match &f.delay {
            None => None,
            Some(d) => {
                let source = match &d.fault_delay_secifier {
                    Some(FaultDelaySecifier::FixedDelay(fd)) => {
                        DelaySource::Fixed(super::duration(fd).map_err(|e| e.within("delay.fixed_delay"))?)
                    }
                    Some(FaultDelaySecifier::HeaderDelay(_)) => DelaySource::Header,
                    None => return Err(FieldError::new("delay", "one of fixed_delay or header_delay is required")),
                };
                Some(Delay {
                    source,
                    percentage: PerMillion::from_fraction(d.percentage.as_ref()),
                    proto_percentage: d.percentage,
                })
            }
        };
        let abort = match &f.abort {
            None => None,
            Some(a) => {
                let source = match &a.error_type {
                    Some(ErrorType::HttpStatus(s)) => match u16::try_from(*s) {
                        Ok(s) if (200..600).contains(&s) => AbortSource::Http(s),
                        _ => {
                            return Err(FieldError::new(
                                "abort.http_status",
                                format!("value must be inside range [200, 600), got {s}"),
                            ))
                        }
                    },
                    Some(ErrorType::GrpcStatus(s)) => AbortSource::Grpc(*s),
                    Some(ErrorType::HeaderAbort(_)) => AbortSource::Header,
                    None => {
                        return Err(FieldError::new(
                            "abort",
                            "one of http_status, grpc_status or header_abort is required",
                        ))
                    }
                };
                Some(Abort {
                    source,
                    percentage: PerMillion::from_fraction(a.percentage.as_ref()),
                    proto_percentage: a.percentage,
                    body: Some(a.response_body.clone()).filter(|b| !b.is_empty()),
                })
            }
        };
        let headers = f
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| HeaderMatcher::from_proto(h).map_err(|e| e.within(&format!("headers[{i}]"))))
            .collect::<FieldResult<Vec<_>>>()?;
        Ok(FaultConfig {
            delay,
            abort,
            headers,
            upstream_cluster: Some(f.upstream_cluster.clone()).filter(|c| !c.is_empty()),
            downstream_nodes: f.downstream_nodes.clone(),
            max_active_faults: f.max_active_faults.map(|m| m.value),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_scale_to_a_million() {
        let p = |numerator, denominator| PerMillion::from_fraction(Some(&FractionalPercent { numerator, denominator }));
        assert_eq!(p(50, 0), PerMillion(500_000));
        assert_eq!(p(5, 1), PerMillion(500));
        assert_eq!(p(7, 2), PerMillion(7));
        assert_eq!(p(200, 0), PerMillion(1_000_000));
        assert_eq!(PerMillion::from_fraction(None), PerMillion(0));
    }
}
