//! Which EDS and RDS names the client subscribes to: they follow the clusters and listeners that
//! need them (subscribe when a cluster/listener appears, unsubscribe when the last user goes).
//!
//! Owns: computing wanted names and the difference to what is subscribed. Must not send anything.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Kind;
use crate::model::dynamic::{eds_service_name, rds_routes};
use crate::model::tls::SdsSource;
use crate::model::{Cluster, Listener};

/// The names `kind` should be subscribed to, given the clusters and listeners held (static and
/// accepted dynamic ones, warming included: they are what needs the names). Secrets are the ones
/// TLS contexts name with an ADS `sds_config` (istiod's `credentialName`). Wildcard kinds want
/// nothing by name.
pub fn wanted<'a>(
    kind: Kind,
    clusters: impl Iterator<Item = &'a Arc<Cluster>>,
    listeners: impl Iterator<Item = &'a Arc<Listener>>,
) -> BTreeSet<String> {
    match kind {
        Kind::Endpoint => clusters.filter_map(|c| eds_service_name(c).map(str::to_string)).collect(),
        Kind::Route => listeners.flat_map(|l| rds_routes(l).into_iter().map(|(_, r)| r)).collect(),
        Kind::Secret => {
            let upstream = clusters.filter_map(|c| c.tls.as_ref().map(|t| t.common.clone()));
            let downstream = listeners.flat_map(|l| {
                l.filter_chains
                    .iter()
                    .chain(l.default_filter_chain.iter())
                    .filter_map(|fc| fc.tls.as_ref().map(|t| t.common.clone()))
                    .collect::<Vec<_>>()
            });
            upstream
                .chain(downstream)
                .flat_map(|c| c.certificate_sds.into_iter().chain(c.validation_sds))
                .filter(|r| r.source == SdsSource::Ads)
                .map(|r| r.name)
                .collect()
        }
        _ => BTreeSet::new(),
    }
}

/// `(added, removed)` going from `old` to `new`.
pub fn diff(old: &BTreeSet<String>, new: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    (new.difference(old).cloned().collect(), old.difference(new).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names() {
        let old: BTreeSet<String> = ["a", "b"].into_iter().map(String::from).collect();
        let new: BTreeSet<String> = ["b", "c"].into_iter().map(String::from).collect();
        assert_eq!(diff(&old, &new), (vec!["c".to_string()], vec!["a".to_string()]));
    }
}
