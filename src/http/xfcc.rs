//! `x-forwarded-client-cert` as Envoy's connection manager writes it
//! (`ConnectionManagerUtility::mutateXfccRequestHeader`): removed unless the connection is mTLS
//! (or the mode is ALWAYS_FORWARD_ONLY), forwarded as is, or set / appended with this hop's
//! element — `By` (our certificate's URI SANs), `Hash`, then the configured details in Envoy's
//! order (Cert, Chain, Subject, URI, DNS), `;`-separated.
//!
//! Owns: that header. Must not look inside certificates (`tls::peer` does).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::model::hcm::{ClientCertDetails, ForwardClientCert};
use crate::tls::peer::TlsPeer;

pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

pub fn apply(headers: &mut HeaderMap, mode: ForwardClientCert, details: ClientCertDetails, peer: Option<&TlsPeer>) {
    if mode == ForwardClientCert::AlwaysForwardOnly {
        return;
    }
    let Some(peer) = peer.filter(|_| mode != ForwardClientCert::Sanitize) else {
        headers.remove(&X_FORWARDED_CLIENT_CERT);
        return;
    };
    if mode == ForwardClientCert::ForwardOnly {
        return;
    }
    let element = element(peer, details);
    let value = match (mode, headers.get(&X_FORWARDED_CLIENT_CERT).and_then(|v| v.to_str().ok())) {
        (ForwardClientCert::AppendForward, Some(existing)) if !existing.is_empty() => format!("{existing},{element}"),
        _ => element,
    };
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            headers.insert(X_FORWARDED_CLIENT_CERT.clone(), v);
        }
        // Certificate text that cannot be a header value: forward nothing rather than a guess.
        Err(_) => {
            headers.remove(&X_FORWARDED_CLIENT_CERT);
        }
    }
}

fn element(peer: &TlsPeer, wanted: ClientCertDetails) -> String {
    let d = peer.details();
    let mut parts: Vec<String> = d.local_uris.iter().map(|u| format!("By={u}")).collect();
    if !d.hash.is_empty() {
        parts.push(format!("Hash={}", d.hash));
    }
    if wanted.cert && !d.cert.is_empty() {
        parts.push(format!("Cert=\"{}\"", d.cert));
    }
    if wanted.chain && !d.chain.is_empty() {
        parts.push(format!("Chain=\"{}\"", d.chain));
    }
    if wanted.subject {
        // The key is there even for an empty subject.
        parts.push(format!("Subject=\"{}\"", d.subject));
    }
    if wanted.uri {
        if d.uris.is_empty() {
            parts.push("URI=".into());
        }
        parts.extend(d.uris.iter().map(|u| format!("URI={u}")));
    }
    if wanted.dns {
        parts.extend(d.dns.iter().map(|n| format!("DNS={n}")));
    }
    parts.join(";")
}
