//! The service registry: ServiceEntries (and the WorkloadEntries they select) as istiod's
//! `model.Service` and `IstioEndpoint`s — hostnames, ports with protocols, VIPs, endpoints with
//! labels (for subsets), localities and weights.
//!
//! Owns: hostname resolution (short names → FQDN) and port protocol detection. Must not build
//! Envoy resources.

use std::collections::BTreeMap;

use tracing::warn;

use super::types::{Location, Resolution, ServicePort, WorkloadEntrySpec};
use super::{IstioObject, Spec};

/// How a port's traffic is proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (or protocol sniffing, which Remora treats as HTTP).
    Http,
    /// HTTP/2 and gRPC: the upstream is spoken to with h2.
    Http2,
    /// Opaque TCP (TCP, TLS, HTTPS, MONGO, MYSQL, REDIS, ...).
    Tcp,
}

impl Protocol {
    pub fn is_http(self) -> bool {
        self != Protocol::Tcp
    }
}

/// istiod's protocol detection: the `protocol` field, else the `<proto>-` name prefix, else
/// auto-detection (HTTP for a sidecar listener that sniffs).
pub fn protocol(port: &ServicePort) -> Protocol {
    let explicit = port.protocol.clone().unwrap_or_else(|| port.name.split('-').next().unwrap_or("").to_string());
    match explicit.to_ascii_uppercase().as_str() {
        "HTTP2" | "GRPC" | "GRPC-WEB" => Protocol::Http2,
        "TCP" | "TLS" | "HTTPS" | "MONGO" | "MYSQL" | "REDIS" | "UDP" => Protocol::Tcp,
        _ => Protocol::Http,
    }
}

/// A short host (`reviews`) in namespace `ns` → `reviews.ns.svc.<suffix>`; names with a dot and
/// wildcards are taken as written (istiod's `ResolveShortnameToFQDN`).
pub fn resolve_host(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host.contains('.') || host.starts_with('*') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.{domain_suffix}")
    }
}

/// One workload instance of a service.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: String,
    pub ports: BTreeMap<String, u32>,
    pub labels: BTreeMap<String, String>,
    pub locality: Option<String>,
    pub weight: Option<u32>,
    /// WorkloadEntry name (empty for inline ServiceEntry endpoints).
    pub workload: String,
    pub namespace: String,
}

impl Endpoint {
    fn from_spec(spec: &WorkloadEntrySpec, workload: &str, namespace: &str) -> Self {
        Endpoint {
            address: spec.address.clone(),
            ports: spec.ports.clone(),
            labels: spec.labels.clone(),
            locality: spec.locality.clone(),
            weight: spec.weight,
            workload: workload.to_string(),
            namespace: namespace.to_string(),
        }
    }

    /// The endpoint's port for a service port: by port name, else the target port, else the
    /// service port itself.
    pub fn port_for(&self, port: &ServicePort) -> u32 {
        self.ports.get(&port.name).copied().or(port.target_port).unwrap_or(port.number)
    }

    /// Whether every label of `selector` is on this endpoint (istiod's `SubsetOf`).
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }

    /// Pods labelled for Istio mTLS (`security.istio.io/tlsMode: istio`).
    pub fn istio_mtls(&self) -> bool {
        self.labels.get("security.istio.io/tlsMode").map(String::as_str) == Some("istio")
    }
}

/// A service: one ServiceEntry host.
#[derive(Debug, Clone)]
pub struct Service {
    pub hostname: String,
    pub namespace: String,
    /// The ServiceEntry's name (for `istio.services` metadata).
    pub name: String,
    pub ports: Vec<ServicePort>,
    pub addresses: Vec<String>,
    pub resolution: Resolution,
    pub mesh_external: bool,
    pub endpoints: Vec<Endpoint>,
    pub subject_alt_names: Vec<String>,
}

/// All services, by hostname.
#[derive(Debug, Default)]
pub struct Registry {
    pub services: BTreeMap<String, Service>,
}

impl Registry {
    pub fn build(objects: &[IstioObject]) -> Registry {
        let workload_entries: Vec<(&IstioObject, &WorkloadEntrySpec)> = objects
            .iter()
            .filter_map(|o| match &o.spec {
                Spec::WorkloadEntry(we) => Some((o, we.as_ref())),
                _ => None,
            })
            .collect();
        let mut services = BTreeMap::new();
        for o in objects {
            let Spec::ServiceEntry(se) = &o.spec else { continue };
            let mut endpoints: Vec<Endpoint> =
                se.endpoints.iter().map(|e| Endpoint::from_spec(e, "", &o.namespace)).collect();
            if let Some(sel) = &se.workload_selector {
                for (we_obj, we) in &workload_entries {
                    if we_obj.namespace == o.namespace && sel.labels.iter().all(|(k, v)| we.labels.get(k) == Some(v)) {
                        endpoints.push(Endpoint::from_spec(we, &we_obj.name, &we_obj.namespace));
                    }
                }
            }
            for host in &se.hosts {
                if services.contains_key(host) {
                    warn!(service_entry = %format!("{}/{}", o.namespace, o.name), host, "host already defined by an earlier ServiceEntry; ignored");
                    continue;
                }
                services.insert(
                    host.clone(),
                    Service {
                        hostname: host.clone(),
                        namespace: o.namespace.clone(),
                        name: o.name.clone(),
                        ports: se.ports.clone(),
                        addresses: se.addresses.clone(),
                        resolution: se.resolution.unwrap_or(Resolution::None),
                        mesh_external: se.location != Some(Location::MeshInternal),
                        endpoints: endpoints.clone(),
                        subject_alt_names: se.subject_alt_names.clone(),
                    },
                );
            }
        }
        Registry { services }
    }

    /// The service for a (resolved) hostname.
    pub fn get(&self, host: &str) -> Option<&Service> {
        self.services.get(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_and_protocols() {
        assert_eq!(resolve_host("reviews", "default", "cluster.local"), "reviews.default.svc.cluster.local");
        assert_eq!(resolve_host("a.b.com", "x", "cluster.local"), "a.b.com");
        let p = |protocol: Option<&str>, name: &str| {
            protocol_of(ServicePort {
                number: 1,
                protocol: protocol.map(str::to_string),
                name: name.into(),
                target_port: None,
            })
        };
        assert_eq!(p(Some("GRPC"), ""), Protocol::Http2);
        assert_eq!(p(None, "tcp-db"), Protocol::Tcp);
        assert_eq!(p(None, "web"), Protocol::Http);
    }

    fn protocol_of(p: ServicePort) -> Protocol {
        protocol(&p)
    }
}
