//! Which EDS and RDS names the client subscribes to: they follow the clusters and listeners that
//! need them (subscribe when a cluster/listener appears, unsubscribe when the last user goes).
//!
//! Owns: computing wanted names and the difference to what is subscribed. Must not send anything.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Kind;
use crate::model::dynamic::{eds_service_name, rds_routes};
use crate::model::{Cluster, Listener};

/// The names `kind` should be subscribed to, given the clusters and listeners held (static and
/// accepted dynamic ones, warming included: they are what needs the names). Wildcard kinds and
/// SDS (not subscribed by the client) want nothing by name.
pub fn wanted<'a>(
    kind: Kind,
    clusters: impl Iterator<Item = &'a Arc<Cluster>>,
    listeners: impl Iterator<Item = &'a Arc<Listener>>,
) -> BTreeSet<String> {
    match kind {
        Kind::Endpoint => clusters.filter_map(|c| eds_service_name(c).map(str::to_string)).collect(),
        Kind::Route => listeners.flat_map(|l| rds_routes(l).into_iter().map(|(_, r)| r)).collect(),
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
