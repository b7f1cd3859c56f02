//! Differential tests: the same bootstrap, the same requests, real Envoy vs Remora.
//!
//! The corpus lives in `tests/differential/`: for each suite `NAME` a bootstrap template
//! `NAME.yaml` and its request cases `NAME.cases.yaml` (format: see `harness.rs` and the comment
//! at the top of `vhost_domains.cases.yaml`).
//!
//! Per suite there are two tests:
//! * `NAME::envoy_oracle` — runs the cases under real Envoy and checks each case's written
//!   expectations (status, upstream, path, headers, body). This keeps the corpus honest.
//! * `NAME::remora_matches_envoy` — runs Envoy and Remora (each against fresh upstreams) and
//!   diffs status, which upstream got the request (and how often), what the upstream saw (method,
//!   path, version, headers, body) and what the client got (headers, trailers, body), after
//!   normalising values that legitimately vary (date, x-request-id, service time, ports).
//!
//! Run: `cargo test --test differential` (set `ENVOY_BIN` to pick an Envoy; `DIFFTEST_DUMP=1`
//! prints every Envoy outcome; `-- --ignored` runs the Remora comparisons; `REMORA_BIN` replaces
//! the Remora binary, e.g. `REMORA_BIN=$(which envoy)` checks the comparison path itself).

mod support;

#[path = "differential/harness.rs"]
mod harness;

macro_rules! suites {
    ($($name:ident),* $(,)?) => {
        /// Every suite with tests, to check against the files on disk.
        const SUITES: &[&str] = &[$(stringify!($name)),*];
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn envoy_oracle() {
                    crate::harness::envoy_oracle(stringify!($name)).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]

                async fn remora_matches_envoy() {
                    crate::harness::remora_matches_envoy(stringify!($name)).await;
                }
            }
        )*
    };
}

suites!(
    vhost_domains,
    vhost_ignore_port,
    route_matchers,
    route_actions,
    redirects,
    headers,
    hcm,
    hcm_remote_address,
    local_replies,
    retries,
    tcp_proxy,
    http2,
    cors_fault,
);

/// The corpus is well formed: every suite on disk has tests and vice versa, case names are
/// unique, and there are enough cases to mean something.
#[test]
fn corpus_is_well_formed() {
    let on_disk = harness::suite_names();
    let mut declared: Vec<String> = SUITES.iter().map(|s| s.to_string()).collect();
    declared.sort();
    assert_eq!(on_disk, declared, "suites on disk vs suites!(...) list");
    let mut total = 0;
    for name in &on_disk {
        let suite = harness::load_suite(name);
        assert!(!suite.cases.is_empty(), "{name}: no cases");
        let mut seen = std::collections::BTreeSet::new();
        for case in &suite.cases {
            assert!(seen.insert(case.name.clone()), "{name}: duplicate case {}", case.name);
            assert!(
                case.expect.error || (100..600).contains(&case.expect.status),
                "{name}/{}: bad expected status",
                case.name
            );
        }
        assert!(
            support::template_placeholders(&suite.template).contains(&"LISTEN_PORT".to_string()),
            "{name}: template has no {{{{LISTEN_PORT}}}}"
        );
        total += suite.cases.len();
    }
    assert!(total >= 45, "only {total} request cases in the corpus");
}
