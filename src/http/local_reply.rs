//! Envoy's locally generated responses: the same status codes and bodies (`no healthy upstream`,
//! `upstream request timeout`, …), turned into a trailers-only gRPC response for gRPC requests.

use http::{header, HeaderValue, Response, StatusCode};

use super::body::{empty, full, ResponseBody};

/// Why Remora answered instead of an upstream; maps to Envoy's response flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoRoute,
    NoCluster,
    NoHealthyUpstream,
    ConnectFailure,
    Overflow,
    UpstreamTimeout,
    UpstreamReset,
    DirectResponse,
    FilterRefused,
    PayloadTooLarge,
}

impl Reason {
    /// Envoy's short response flag (access logs, `x-envoy-*` debugging).
    pub fn flag(self) -> &'static str {
        match self {
            Reason::NoRoute => "NR",
            Reason::NoCluster => "NC",
            Reason::NoHealthyUpstream => "UH",
            Reason::ConnectFailure => "UF",
            Reason::Overflow => "UO",
            Reason::UpstreamTimeout => "UT",
            Reason::UpstreamReset => "UC",
            Reason::DirectResponse => "",
            Reason::FilterRefused => "UAEX",
            Reason::PayloadTooLarge => "",
        }
    }
}

/// Marks a response Remora generated itself (response extension), so the connection manager
/// knows the request body may be unread.
#[derive(Debug, Clone, Copy)]
pub struct Local;

/// Builds a local reply; `grpc` turns it into a trailers-only gRPC response as Envoy does.
/// Empty bodies carry no explicit length: hyper frames them as Envoy does per protocol (a
/// `content-length: 0` on HTTP/1.1, nothing on HTTP/2).
pub fn reply(status: StatusCode, body: &str, grpc: bool) -> Response<ResponseBody> {
    let mut resp = if grpc {
        let mut resp = Response::new(empty());
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(grpc_status(status)));
        if !body.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&percent_encode_grpc(body)) {
                h.insert("grpc-message", v);
            }
        }
        resp
    } else if body.is_empty() {
        let mut resp = Response::new(empty());
        *resp.status_mut() = status;
        resp
    } else {
        let mut resp = Response::new(full(body.to_string()));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        resp
    };
    resp.extensions_mut().insert(Local);
    resp
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
pub fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// grpc-message is percent-encoded (gRPC HTTP/2 spec).
fn percent_encode_grpc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";
pub const UPSTREAM_TIMEOUT: &str = "upstream request timeout";

/// `reason` is Envoy's reset reason: `remote connection failure`, `connection timeout`, …
pub fn connect_failure_body(reason: &str, retried: bool) -> String {
    if retried {
        format!(
            "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: {reason}"
        )
    } else {
        format!("upstream connect error or disconnect/reset before headers. reset reason: {reason}")
    }
}

pub const OVERFLOW_BODY: &str = "upstream connect error or disconnect/reset before headers. reset reason: overflow";
pub const RESET_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
