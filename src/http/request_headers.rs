//! Envoy's request-header rules at the connection manager (`ConnectionManagerUtility::
//! mutateRequestHeaders`): hop-by-hop removal, `x-forwarded-for` / `-proto`, the trusted client
//! address and whether the request is internal or an edge request, sanitising of `x-envoy-*`
//! control headers from external clients, `x-envoy-external-address`, `via` and `x-request-id`.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::model::hcm::HttpConnectionManager;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// Request headers only trusted from internal requests (Envoy's `cleanInternalHeaders`).
const INTERNAL_ONLY: [&str; 14] = [
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
];
/// Additionally removed from edge requests.
const EDGE_ONLY: [&str; 3] =
    ["x-envoy-decorator-operation", "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node"];

/// What the connection manager concluded about who sent the request.
#[derive(Debug, Clone, Copy)]
pub struct Trust {
    /// The trusted client address (from the connection or `x-forwarded-for`); port 0 when it came
    /// from `x-forwarded-for`.
    pub remote: SocketAddr,
    pub internal: bool,
}

/// Applies Envoy's request-header rules and returns the trusted client address.
pub fn mutate(
    headers: &mut HeaderMap,
    cfg: &HttpConnectionManager,
    remote: SocketAddr,
    scheme: &'static str,
    h2: bool,
    websocket: bool,
) -> Trust {
    strip_hop_by_hop(headers, websocket);
    if h2 {
        join_cookies(headers);
    }
    // Envoy answers `Expect: 100-continue` itself (hyper sends the 100 when the body is read), so
    // the upstream never sees the expectation.
    headers.remove(header::EXPECT);

    let had_xff = headers.contains_key(&X_FORWARDED_FOR);
    let (final_remote, single_address) = if cfg.use_remote_address {
        let from_xff =
            if cfg.xff_num_trusted_hops > 0 { last_xff_address(headers, cfg.xff_num_trusted_hops - 1).0 } else { None };
        if !cfg.skip_xff_append {
            // A loopback peer is this host itself: Envoy records the host's own address instead.
            let appended = if remote.ip().is_loopback() { local_address().unwrap_or(remote.ip()) } else { remote.ip() };
            append_xff(headers, appended);
        }
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
        (Some(from_xff.map_or(remote, |ip| SocketAddr::new(ip, 0))), !had_xff)
    } else {
        let (ip, single) = last_xff_address(headers, cfg.xff_num_trusted_hops);
        (ip.map(|ip| SocketAddr::new(ip, 0)), single)
    };
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    }
    let internal =
        single_address && final_remote.is_some_and(|a| cfg.internal_cidrs.iter().any(|c| c.contains(a.ip())));
    let edge = !internal && cfg.use_remote_address;
    if internal {
        headers.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
    } else {
        headers.remove(&X_ENVOY_INTERNAL);
        for h in INTERNAL_ONLY {
            headers.remove(h);
        }
        if edge {
            for h in EDGE_ONLY {
                headers.remove(h);
            }
        }
    }
    if edge {
        if let Some(a) = final_remote {
            if let Ok(v) = HeaderValue::from_str(&a.ip().to_canonical().to_string()) {
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
            }
        }
    }
    if let Some(via) = &cfg.via {
        if let Ok(v) = HeaderValue::from_str(via) {
            headers.append(header::VIA, v);
        }
    }
    let needs_id = !headers.contains_key(&X_REQUEST_ID) || (edge && !cfg.preserve_external_request_id);
    if cfg.generate_request_id && needs_id {
        let mut buf = uuid::Uuid::encode_buffer();
        if let Ok(v) = HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf)) {
            headers.insert(X_REQUEST_ID.clone(), v);
        }
    }
    Trust { remote: final_remote.unwrap_or(remote), internal }
}

/// Removes hop-by-hop headers, including every header the `Connection` header names; an allowed
/// WebSocket upgrade keeps `connection` and `upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, websocket: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(websocket && (n == header::UPGRADE || n == header::CONNECTION)))
        .collect();
    for n in named {
        headers.remove(n);
    }
    if !websocket {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(header::TRANSFER_ENCODING);
    if let Some(te) = headers.get(header::TE) {
        if te.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))) {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// HTTP/2 allows `cookie` to arrive in crumbs; HTTP/1.1 upstreams need one header (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if let (Some(_), Some(_)) = (crumbs.next(), crumbs.next()) {
        let joined =
            headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join("; ");
        if let Ok(v) = HeaderValue::from_str(&joined) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// The address `skip` entries from the right of `x-forwarded-for`, and whether the header held
/// exactly one address (Envoy's `getLastAddressFromXFF`).
fn last_xff_address(headers: &HeaderMap, skip: u32) -> (Option<IpAddr>, bool) {
    let entries: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let single = entries.len() == 1;
    let idx = entries.len().checked_sub(1 + skip as usize);
    (idx.and_then(|i| entries[i].parse().ok()), single)
}

fn append_xff(headers: &mut HeaderMap, ip: IpAddr) {
    let ip = ip.to_canonical().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing},{ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// The host's first non-loopback IPv4 address (Envoy's `Network::Utility::getLocalAddress`).
fn local_address() -> Option<IpAddr> {
    static LOCAL: OnceLock<Option<IpAddr>> = OnceLock::new();
    *LOCAL.get_or_init(|| {
        let mut found = None;
        // SAFETY: getifaddrs allocates a list we walk read-only and free with freeifaddrs.
        unsafe {
            let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
            if libc::getifaddrs(&mut ifap) != 0 {
                return None;
            }
            let mut cur = ifap;
            while !cur.is_null() {
                let ifa = &*cur;
                if !ifa.ifa_addr.is_null() && (*ifa.ifa_addr).sa_family as libc::c_int == libc::AF_INET {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    if !ip.is_loopback() {
                        found = Some(IpAddr::V4(ip));
                        break;
                    }
                }
                cur = ifa.ifa_next;
            }
            libc::freeifaddrs(ifap);
        }
        found
    })
}
