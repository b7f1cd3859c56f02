//! Istio networking resources → Envoy resources, the way istiod translates them for a sidecar.
//!
//! `types` is the user-facing YAML model (with validation), `registry` the service registry built
//! from ServiceEntries and WorkloadEntries, `clusters` the outbound clusters and endpoints from
//! DestinationRules, `routes` the route tables from VirtualServices, `listeners` the outbound
//! listeners. Every client is served the same configuration, as if it ran in the services'
//! namespace (there is no per-proxy scoping: Sidecar resources, `exportTo` and `sourceLabels` are
//! not applied).
//!
//! Owns: parsing Istio documents and the translation. Must not read files or speak xDS.

pub mod clusters;
pub mod inbound;
pub mod listeners;
pub mod registry;
pub mod routes;
pub mod types;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use tracing::warn;

use crate::control_plane::resource::Kind;
use types::{DestinationRuleSpec, FieldError, ServiceEntrySpec, VirtualServiceSpec, WorkloadEntrySpec};

/// Translation settings (command-line flags of `remora control-plane`).
#[derive(Debug, Clone)]
pub struct Options {
    /// The address outbound listeners bind (`0.0.0.0` by default).
    pub listener_address: String,
    /// Service port → port the listener binds (default: the service port).
    pub listener_ports: BTreeMap<u32, u32>,
    /// The cluster's DNS domain (`cluster.local`).
    pub domain_suffix: String,
    /// The mesh's trust domain: inbound mutual TLS accepts its SPIFFE identities.
    pub trust_domain: String,
    /// Add istio-proxy's `istio.metadata_exchange` filters (outbound clusters, inbound chains),
    /// as istiod does with `PILOT_ENABLE_METADATA_EXCHANGE`. Off by default here: upstream Envoy,
    /// which may be pointed at this control plane, rejects them.
    pub metadata_exchange: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listener_address: "0.0.0.0".into(),
            listener_ports: BTreeMap::new(),
            domain_suffix: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            metadata_exchange: false,
        }
    }
}

/// A parsed, validated Istio resource.
#[derive(Debug, Clone)]
pub struct IstioObject {
    pub kind: &'static str,
    pub name: String,
    pub namespace: String,
    pub spec: Spec,
}

#[derive(Debug, Clone)]
pub enum Spec {
    VirtualService(Box<VirtualServiceSpec>),
    DestinationRule(Box<DestinationRuleSpec>),
    ServiceEntry(Box<ServiceEntrySpec>),
    WorkloadEntry(Box<WorkloadEntrySpec>),
    PeerAuthentication(Box<types::PeerAuthenticationSpec>),
}

/// An Istio resource that cannot be used: which one, which field, why.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind} '{namespace}/{name}': {field}: {reason}")]
pub struct IstioError {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub field: String,
    pub reason: String,
}

/// An Envoy resource the translation produced, as proto3 JSON.
#[derive(Debug, Clone)]
pub struct Generated {
    pub kind: Kind,
    pub json: Value,
    /// For one workload only: the node IP of its proxy (`None`: for every proxy).
    pub scope: Option<String>,
}

impl Generated {
    pub fn new(kind: Kind, json: Value) -> Self {
        Generated { kind, json, scope: None }
    }

    /// A resource for the proxy of the workload at `ip` only.
    pub fn for_workload(kind: Kind, json: Value, ip: &str) -> Self {
        Generated { kind, json, scope: Some(ip.to_string()) }
    }
}

const API_VERSIONS: [&str; 3] =
    ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"];
const SECURITY_API_VERSIONS: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];

/// Whether a document is a Kubernetes-style object (`apiVersion` + `kind`).
pub fn is_kubernetes_object(doc: &Value) -> bool {
    doc.get("apiVersion").is_some() || doc.get("kind").is_some()
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// Parses and validates one Istio document. `Ok(None)`: a kind this control plane does not use
/// (logged).
pub fn parse(doc: &Value) -> Result<Option<IstioObject>, IstioError> {
    let kind_str = doc.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    let meta: Metadata = doc
        .get("metadata")
        .map(|m| serde_json::from_value(m.clone()))
        .transpose()
        .map_err(|e| IstioError {
            kind: kind_str.clone(),
            namespace: String::new(),
            name: String::new(),
            field: "metadata".into(),
            reason: e.to_string(),
        })?
        .unwrap_or(Metadata { name: String::new(), namespace: None });
    let namespace = meta.namespace.unwrap_or_else(|| "default".into());
    let fail = |field: &str, reason: String| IstioError {
        kind: kind_str.clone(),
        namespace: namespace.clone(),
        name: meta.name.clone(),
        field: field.to_string(),
        reason,
    };
    let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let security = kind_str == "PeerAuthentication" && SECURITY_API_VERSIONS.contains(&api);
    if !API_VERSIONS.contains(&api) && !security {
        if api.starts_with("networking.istio.io/") || api.is_empty() {
            return Err(fail(
                "apiVersion",
                format!("unsupported apiVersion '{api}' (expected one of {API_VERSIONS:?})"),
            ));
        }
        warn!(api_version = api, kind = %kind_str, name = %meta.name, "not an Istio networking resource; ignored");
        return Ok(None);
    }
    if meta.name.is_empty() {
        return Err(fail("metadata.name", "name is required".into()));
    }
    if let Value::Object(map) = doc {
        if let Some(k) =
            map.keys().find(|k| !["apiVersion", "kind", "metadata", "spec", "status"].contains(&k.as_str()))
        {
            return Err(fail(k, "unknown field".into()));
        }
    }
    let spec_value = doc.get("spec").cloned().unwrap_or(Value::Object(Default::default()));
    fn spec_of<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            let field = if path.is_empty() || path == "." { "spec".to_string() } else { format!("spec.{path}") };
            (field, e.into_inner().to_string())
        })
    }
    let check = |r: Result<(), FieldError>| r.map_err(|e| fail(&e.field, e.reason));
    let (kind, spec) = match kind_str.as_str() {
        "VirtualService" => {
            let s: VirtualServiceSpec = spec_of(spec_value).map_err(|(f, r)| fail(&f, r))?;
            check(s.validate())?;
            ("VirtualService", Spec::VirtualService(Box::new(s)))
        }
        "DestinationRule" => {
            let s: DestinationRuleSpec = spec_of(spec_value).map_err(|(f, r)| fail(&f, r))?;
            check(s.validate())?;
            ("DestinationRule", Spec::DestinationRule(Box::new(s)))
        }
        "ServiceEntry" => {
            let s: ServiceEntrySpec = spec_of(spec_value).map_err(|(f, r)| fail(&f, r))?;
            check(s.validate())?;
            ("ServiceEntry", Spec::ServiceEntry(Box::new(s)))
        }
        "PeerAuthentication" if security => {
            let s: types::PeerAuthenticationSpec = spec_of(spec_value).map_err(|(f, r)| fail(&f, r))?;
            check(s.validate())?;
            ("PeerAuthentication", Spec::PeerAuthentication(Box::new(s)))
        }
        "WorkloadEntry" => {
            let s: WorkloadEntrySpec = spec_of(spec_value).map_err(|(f, r)| fail(&f, r))?;
            check(s.validate("spec"))?;
            ("WorkloadEntry", Spec::WorkloadEntry(Box::new(s)))
        }
        other => {
            warn!(kind = other, name = %meta.name, "Istio kind not served by the local control plane; ignored");
            return Ok(None);
        }
    };
    Ok(Some(IstioObject { kind, name: meta.name, namespace, spec }))
}

/// Translates all Istio objects (in file order) into Envoy resources.
pub fn translate(objects: &[IstioObject], opts: &Options) -> Vec<Generated> {
    let reg = registry::Registry::build(objects);
    let mut drs: Vec<clusters::DrRef<'_>> = Vec::new();
    let mut peer_authentications: Vec<inbound::PaRef<'_>> = Vec::new();
    let mut vss: Vec<routes::VsRef<'_>> = Vec::new();
    for o in objects {
        match &o.spec {
            Spec::DestinationRule(dr) => {
                let host = registry::resolve_host(&dr.host, &o.namespace, &opts.domain_suffix);
                if drs.iter().any(|d| d.host == host) {
                    warn!(destination_rule = %format!("{}/{}", o.namespace, o.name), host, "host already has a DestinationRule; ignored");
                    continue;
                }
                warn_unsupported_policy(o, dr);
                drs.push(clusters::DrRef { name: o.name.clone(), namespace: o.namespace.clone(), host, spec: dr });
            }
            Spec::VirtualService(vs) => {
                if !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g == "mesh") {
                    continue;
                }
                if !vs.tcp.is_empty() || !vs.tls.is_empty() {
                    warn!(virtual_service = %format!("{}/{}", o.namespace, o.name), "tcp and tls routes are not translated by the local control plane");
                }
                let hosts =
                    vs.hosts.iter().map(|h| registry::resolve_host(h, &o.namespace, &opts.domain_suffix)).collect();
                vss.push(routes::VsRef { name: o.name.clone(), namespace: o.namespace.clone(), hosts, spec: vs });
            }
            Spec::PeerAuthentication(pa) => {
                peer_authentications.push(inbound::PaRef { namespace: o.namespace.clone(), spec: pa })
            }
            _ => {}
        }
    }
    for vs in &vss {
        for h in &vs.hosts {
            if !h.starts_with('*') && reg.get(h).is_none() {
                warn!(virtual_service = %format!("{}/{}", vs.namespace, vs.name), host = %h, "host is not in the registry (no ServiceEntry); no virtual host is built for it");
            }
        }
    }
    let mut out = clusters::build(&reg, &drs, opts.metadata_exchange);
    let routes = routes::build(&reg, &vss, &drs, opts);
    out.extend(listeners::build(&reg, &routes.fault_ports, opts));
    out.extend(routes.resources);
    out.extend(inbound::build(&reg, &peer_authentications, opts));
    out
}

fn warn_unsupported_policy(o: &IstioObject, dr: &DestinationRuleSpec) {
    let policies = dr.traffic_policy.iter().chain(dr.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()));
    for tp in policies {
        if tp.tunnel.is_some() || tp.proxy_protocol.is_some() || tp.retry_budget.is_some() {
            warn!(destination_rule = %format!("{}/{}", o.namespace, o.name), "trafficPolicy tunnel / proxyProtocol / retryBudget are not translated");
        }
        if tp.load_balancer.as_ref().is_some_and(|l| l.locality_lb_setting.is_some() || l.warmup.is_some()) {
            warn!(destination_rule = %format!("{}/{}", o.namespace, o.name), "loadBalancer localityLbSetting / warmup are not translated");
        }
    }
}
