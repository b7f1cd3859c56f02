//! The CORS filter (`envoy.filters.http.cors`), as Envoy applies it: with a policy on the route or
//! virtual host and an allowed `Origin`, a preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered here and an actual request's response gets
//! `Access-Control-Allow-Origin` (and credentials / exposed headers). Each setting is taken from
//! the most specific policy that has it.
//!
//! Owns: the CORS headers and preflight answers. Must not route or forward.

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use rand::Rng;

use super::body::ResponseBody;
use crate::model::cors::CorsPolicy;

pub enum Cors {
    /// Not a CORS request, or no policy applies: nothing to do.
    Pass,
    /// Answer with this.
    Preflight(Response<ResponseBody>),
    /// Forward, and decorate the response for `origin`.
    Actual { origin: HeaderValue, credentials: bool, expose: Option<HeaderValue> },
}

/// Policies from the most specific (route) to the least (virtual host).
pub fn on_request(policies: &[Option<&CorsPolicy>], method: &Method, headers: &HeaderMap) -> Cors {
    let policies: Vec<&CorsPolicy> = policies.iter().flatten().copied().collect();
    let Some(first) = policies.first() else { return Cors::Pass };
    if first.enabled.0 < 1_000_000 && rand::rng().random_range(0..1_000_000) >= first.enabled.0 {
        return Cors::Pass;
    }
    let Some(origin) = headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else { return Cors::Pass };
    let text = |pick: fn(&CorsPolicy) -> &str| policies.iter().map(|p| pick(p)).find(|s| !s.is_empty());
    let flag = |pick: fn(&CorsPolicy) -> Option<bool>| policies.iter().find_map(|p| pick(p));
    let origins = policies.iter().map(|p| &p.allow_origin).find(|o| !o.is_empty());
    let allowed =
        origin.to_str().is_ok_and(|o| origins.is_some_and(|list| list.iter().any(|m| m.matches("*") || m.matches(o))));
    let preflight =
        method == Method::OPTIONS && headers.get(header::ACCESS_CONTROL_REQUEST_METHOD).is_some_and(|m| !m.is_empty());
    // A preflight from an origin that is not allowed is forwarded unless the policy says to
    // answer it; Envoy's answer then carries the policy's headers without an allowed origin.
    let answer_unmatched = preflight && flag(|p| p.forward_not_matching_preflights) == Some(false);
    if !allowed && !answer_unmatched {
        return Cors::Pass;
    }
    let credentials = flag(|p| p.allow_credentials) == Some(true);
    let expose = text(|p| &p.expose_headers).and_then(|e| HeaderValue::from_str(e).ok());
    if !preflight {
        return Cors::Actual { origin: origin.clone(), credentials, expose };
    }
    let mut resp = super::local_reply::reply(StatusCode::OK, "", false);
    let h = resp.headers_mut();
    if allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if let Some(e) = expose {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e);
        }
    }
    if credentials {
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    let mut set = |name: header::HeaderName, value: Option<&str>| {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(name, v);
        }
    };
    set(header::ACCESS_CONTROL_ALLOW_METHODS, text(|p| &p.allow_methods));
    set(header::ACCESS_CONTROL_ALLOW_HEADERS, text(|p| &p.allow_headers));
    set(header::ACCESS_CONTROL_MAX_AGE, text(|p| &p.max_age));
    let private_network = headers.get("access-control-request-private-network").is_some_and(|v| v == "true");
    if private_network && flag(|p| p.allow_private_network_access) == Some(true) {
        h.insert("access-control-allow-private-network", HeaderValue::from_static("true"));
    }
    Cors::Preflight(resp)
}

pub fn on_response(headers: &mut HeaderMap, origin: HeaderValue, credentials: bool, expose: Option<HeaderValue>) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if credentials {
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    if let Some(e) = expose {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e);
    }
}
