//! The resource types of ADS and their type URLs.
//!
//! Owns: the mapping between type URLs and [`Kind`], and which kinds are wildcard. Must not hold
//! resource state.

/// A resource type the client handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl Kind {
    /// Envoy's subscription order: CDS, EDS, LDS, RDS, SDS.
    pub const ALL: [Kind; 5] = [Kind::Cluster, Kind::Endpoint, Kind::Listener, Kind::Route, Kind::Secret];

    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Kind::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// CDS and LDS are wildcard (everything); EDS, RDS and SDS name what they want.
    pub fn is_wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }

    pub fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "CDS",
            Kind::Endpoint => "EDS",
            Kind::Listener => "LDS",
            Kind::Route => "RDS",
            Kind::Secret => "SDS",
        }
    }
}
