//! `--mode validate` must agree with Envoy.
//!
//! Corpus: `tests/validate/valid/*` (Envoy 1.40 accepts every file) and `tests/validate/invalid/*`
//! (Envoy rejects every file). Each invalid YAML file starts with comment lines:
//!
//! ```text
//! # <what is wrong>
//! # envoy 1.40 (exit 1): <Envoy's error message>
//! # expect-error-contains: <substring>      (zero or more lines)
//! ```
//!
//! JSON files cannot hold comments, so `invalid/NAME.json` keeps those lines in `invalid/NAME.json.meta`.
//! Every `expect-error-contains` substring must appear in Remora's output. The comparison ignores case
//! and `_`, so `connect_timeout` also matches `ConnectTimeout` and `connectTimeout`, and it is made after
//! the config file's path has been removed from the output (a path must not satisfy it by accident).
//!
//! Both binaries run with the same working directory (`tests/validate/`), because Envoy resolves
//! relative `filename:` paths (e.g. `certs/server.pem`) from its working directory.
//!
//! The conformance corpus `../shared/conformance/envoy/` is validated in a temporary working directory
//! that holds stand-in certificates (made with rcgen) for the `certs/*.pem` files the configs refer to.
//! `CONFORMANCE` below records Envoy 1.40's verdict for each file in that setup, so the Remora half is
//! meaningful without Envoy; the Envoy half checks that table whenever Envoy is installed.
//!
//! Envoy is found through `ENVOY_BIN`, then `<crate>/.venv/bin/envoy`, then `envoy` on `PATH`. Without
//! it the Envoy half is skipped, unless `CI` is set, in which case it fails.
//!
//! The `remora_*` tests are ignored until Remora's validate mode lands; run them with
//! `cargo test --test validate -- --include-ignored`.

use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Validations run at the same time (Envoy takes 0.1 to 1 s per file; the machine has few cores).
const PARALLELISM: usize = 2;
/// A validation that takes longer than this is killed and reported as a failure.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const MIN_VALID: usize = 18;
const MIN_INVALID: usize = 22;
const EXPECT_PREFIX: &str = "# expect-error-contains:";
const ENVOY_PREFIX: &str = "# envoy ";
/// Extra arguments for every conformance run (the Envoy Gateway bootstrap needs a node id and cluster).
const NODE_ARGS: &[&str] = &["--service-node", "n", "--service-cluster", "c"];
/// Extra arguments for Envoy only: keep its output short.
const ENVOY_ONLY_ARGS: &[&str] = &["--log-level", "warning"];

// ---------------------------------------------------------------------------------------------
// Envoy's verdicts on the conformance corpus (Envoy 1.40.0, fixture setup of `conformance_workdir`)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Envoy prints `configuration '…' OK` and exits 0. Remora must accept.
    Ok,
    /// Envoy prints `configuration '…' OK`, then segfaults while shutting down (rc 139): an Envoy
    /// validate-mode bug, not a config error. Remora must accept (and exit 0).
    OkThenEnvoyCrashes,
    /// Envoy rejects the configuration itself. Remora must reject it, naming `.0`.
    Reject(&'static str),
    /// Envoy rejects it only because absolute paths the test cannot provide do not exist on this
    /// machine. Remora must reject it too and name at least one of the paths. If one of the paths does
    /// exist here, the verdict would change, so the file is skipped.
    MissingAbsolutePaths(&'static [&'static str]),
}

const CONFORMANCE: &[(&str, Verdict)] = &[
    ("aigw-data-plane-extproc-retries-outlier.yaml", Verdict::Ok),
    ("envoy-configs-envoy-demo.yaml", Verdict::Ok),
    ("envoy-configs-otel-http-tracing-accesslog.yaml", Verdict::Ok),
    ("envoy-docs-access-log-json-format.yaml", Verdict::Ok),
    // needs certs/servercert.pem + certs/serverkey.pem
    ("envoy-docs-best-practices-edge.yaml", Verdict::Ok),
    ("envoy-docs-dynamic-forward-proxy.yaml", Verdict::Ok),
    ("envoy-docs-ext-authz-grpc.yaml", Verdict::Ok),
    ("envoy-docs-jwt-authn-remote-jwks.yaml", Verdict::Ok),
    ("envoy-docs-load-balancing-policy-random.yaml", Verdict::Ok),
    ("envoy-docs-local-rate-limit-descriptors.yaml", Verdict::Ok),
    // needs certs/{cacert,servercert,serverkey,clientcert,clientkey}.pem
    ("envoy-docs-quickstart-demo-tls-client-auth.yaml", Verdict::Ok),
    // needs certs/servercert.pem + certs/serverkey.pem
    ("envoy-docs-quickstart-demo-tls.yaml", Verdict::Ok),
    ("envoy-docs-quickstart-dynamic-control-plane-ads.yaml", Verdict::Ok),
    // "paths must refer to an existing path in the system: '/var/lib/envoy/cds.yaml' does not exist"
    (
        "envoy-docs-quickstart-dynamic-filesystem.yaml",
        Verdict::MissingAbsolutePaths(&["/var/lib/envoy/cds.yaml", "/var/lib/envoy/lds.yaml"]),
    ),
    // "Didn't find a registered implementation for 'envoy.filters.http.router' with type URL: ''"
    ("envoy-docs-quickstart-envoy-demo.yaml", Verdict::Reject("envoy.filters.http.router")),
    ("envoy-docs-rbac-cel-condition.yaml", Verdict::Ok),
    // needs certs/servercert.pem + certs/serverkey.pem
    ("envoy-docs-sds-grpc-source.yaml", Verdict::OkThenEnvoyCrashes),
    ("examples-cors-backend.yaml", Verdict::Ok),
    // needs certs/{servercert,serverkey,cacert}.pem
    ("examples-double-proxy-backend-mtls.yaml", Verdict::Ok),
    // needs certs/{clientcert,clientkey,cacert}.pem
    ("examples-double-proxy-frontend-mtls.yaml", Verdict::Ok),
    ("examples-dynamic-config-ads.yaml", Verdict::Ok),
    // "paths must refer to an existing path in the system: '/var/lib/envoy/cds.yaml' does not exist"
    (
        "examples-dynamic-config-fs.yaml",
        Verdict::MissingAbsolutePaths(&["/var/lib/envoy/cds.yaml", "/var/lib/envoy/lds.yaml"]),
    ),
    ("examples-ext-authz-http.yaml", Verdict::Ok),
    // "unable to add filesystem watch for file /srv/runtime/current: No such file or directory"
    ("examples-fault-injection.yaml", Verdict::MissingAbsolutePaths(&["/srv/runtime/current"])),
    ("examples-front-proxy-tls.yaml", Verdict::Ok),
    ("examples-gzip-compressor.yaml", Verdict::Ok),
    ("examples-local-ratelimit.yaml", Verdict::Ok),
    ("examples-locality-lb-health-checks.yaml", Verdict::Ok),
    ("examples-opentelemetry-front-proxy.yaml", Verdict::Ok),
    ("examples-rbac.yaml", Verdict::Ok),
    ("examples-redis-maglev.yaml", Verdict::Ok),
    ("examples-route-mirror.yaml", Verdict::Ok),
    // "paths must refer to an existing path in the system:
    //  '/etc/envoy/secrets/myhub-token-secret.yml' does not exist"
    (
        "examples-single-page-app.yaml",
        Verdict::MissingAbsolutePaths(&[
            "/var/lib/envoy/lds.yml",
            "/etc/envoy/secrets/myhub-token-secret.yml",
            "/etc/envoy/secrets/hmac-secret.yml",
        ]),
    ),
    ("examples-tls-https-to-https.yaml", Verdict::Ok),
    // needs certs/domain{1,2}.{crt,key}.pem
    ("examples-tls-sni-tcp-proxy.yaml", Verdict::Ok),
    ("examples-websocket-route.yaml", Verdict::Ok),
    // with --service-node/--service-cluster: "paths must refer to an existing path in the system:
    // '/sds/xds-certificate.json' does not exist" (without them: "TlsCertificateSdsApi: node 'id' and
    // 'cluster' are required. Set it either in 'node' config or via --service-node and
    // --service-cluster options.")
    (
        "gateway-bootstrap-ads-sds-files.yaml",
        Verdict::MissingAbsolutePaths(&["/sds/xds-certificate.json", "/sds/xds-trusted-ca.json"]),
    ),
    ("gcp-sample-bootstrap-ads.yaml", Verdict::Ok),
    ("gcp-sample-bootstrap-rest.yaml", Verdict::Ok),
    ("ratelimit-example-proxy-global-ratelimit.yaml", Verdict::Ok),
];

// ---------------------------------------------------------------------------------------------
// Tests that run now
// ---------------------------------------------------------------------------------------------

/// The corpus is complete and well-formed. Needs neither binary.
#[test]
fn corpus_is_well_formed() {
    let valid = valid_files();
    let invalid = invalid_files();
    assert!(valid.len() >= MIN_VALID, "need at least {MIN_VALID} valid configs, found {}", valid.len());
    assert!(invalid.len() >= MIN_INVALID, "need at least {MIN_INVALID} invalid configs, found {}", invalid.len());
    assert!(valid.iter().any(|f| f.rel.ends_with(".json")), "no JSON bootstrap in valid/");
    assert!(invalid.iter().any(|f| f.rel.ends_with(".json")), "no JSON bootstrap in invalid/");
    let mut with_expectations = 0;
    for f in &invalid {
        assert!(f.envoy_message.is_some(), "{}: no `{ENVOY_PREFIX}...` line recording Envoy's error", f.rel);
        for e in &f.expects {
            assert!(!e.is_empty(), "{}: empty expect-error-contains", f.rel);
        }
        if !f.expects.is_empty() {
            with_expectations += 1;
        }
    }
    assert!(
        with_expectations >= MIN_INVALID,
        "only {with_expectations} invalid configs carry an expect-error-contains line"
    );

    if let Some(dir) = conformance_dir() {
        let mut on_disk: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml") || n.ends_with(".json"))
            .collect();
        on_disk.sort();
        let in_table: Vec<&str> = CONFORMANCE.iter().map(|(n, _)| *n).collect();
        let missing: Vec<&String> = on_disk.iter().filter(|n| !in_table.contains(&n.as_str())).collect();
        let stale: Vec<&&str> = in_table.iter().filter(|n| !on_disk.iter().any(|d| d == *n)).collect();
        assert!(
            missing.is_empty() && stale.is_empty() && in_table.len() == on_disk.len(),
            "CONFORMANCE table and {} disagree: not in the table: {missing:?}; not on disk: {stale:?}",
            dir.display()
        );
    }
}

/// Oracle check of the corpus: Envoy accepts every file in valid/.
#[test]
fn envoy_accepts_valid_corpus() {
    let Some(envoy) = envoy_or_skip("envoy_accepts_valid_corpus") else {
        return;
    };
    let files = valid_files();
    let failures = par_map(&files, |f| {
        let out = run_validate(&envoy, &f.rel, &corpus_dir(), ENVOY_ONLY_ARGS);
        let ok_line = format!("configuration '{}' OK", f.rel);
        (!(out.success() && out.text.contains(&ok_line)))
            .then(|| format!("{}: Envoy {}\n{}", f.rel, out.describe(), out.tail()))
    });
    report(failures, "Envoy rejected files in tests/validate/valid");
}

/// Oracle check of the corpus: Envoy rejects every file in invalid/ with a configuration error.
#[test]
fn envoy_rejects_invalid_corpus() {
    let Some(envoy) = envoy_or_skip("envoy_rejects_invalid_corpus") else {
        return;
    };
    let files = invalid_files();
    let failures = par_map(&files, |f| {
        let out = run_validate(&envoy, &f.rel, &corpus_dir(), ENVOY_ONLY_ARGS);
        let rejected = out.code == Some(1) && out.text.contains("error initializing configuration");
        (!rejected).then(|| {
            format!(
                "{}: expected Envoy to reject it (exit 1, 'error initializing configuration'), got {}\n{}",
                f.rel,
                out.describe(),
                out.tail()
            )
        })
    });
    report(failures, "Envoy did not reject files in tests/validate/invalid");
}

/// Envoy's verdicts on ../shared/conformance/envoy match the CONFORMANCE table.
#[test]
fn envoy_agrees_with_conformance_table() {
    let Some(dir) = conformance_dir_or_skip("envoy_agrees_with_conformance_table") else {
        return;
    };
    let Some(envoy) = envoy_or_skip("envoy_agrees_with_conformance_table") else {
        return;
    };
    let work = conformance_workdir();
    let entries = conformance_entries();
    let mut args = NODE_ARGS.to_vec();
    args.extend_from_slice(ENVOY_ONLY_ARGS);
    let failures = par_map(&entries, |&(name, verdict)| {
        let config = dir.join(name);
        let config = config.to_str().unwrap();
        let out = run_validate(&envoy, config, work.path(), &args);
        let ok_line = format!("configuration '{config}' OK");
        let agrees = match verdict {
            Verdict::Ok => out.success() && out.text.contains(&ok_line),
            // Envoy 1.40 prints OK, then crashes with SIGSEGV while shutting down; accept any exit.
            Verdict::OkThenEnvoyCrashes => out.text.contains(&ok_line),
            Verdict::Reject(_) | Verdict::MissingAbsolutePaths(_) => {
                out.code == Some(1) && out.text.contains("error initializing configuration")
            }
        };
        (!agrees).then(|| format!("{name}: table says {verdict:?}, Envoy: {}\n{}", out.describe(), out.tail()))
    });
    report(failures, "Envoy disagrees with the CONFORMANCE table");
}

// ---------------------------------------------------------------------------------------------
// Remora tests (ignored until `remora --mode validate` exists)
// ---------------------------------------------------------------------------------------------

/// Remora accepts every file in valid/ and prints `configuration '<FILE>' OK`.
#[test]
fn remora_accepts_valid_corpus() {
    let remora = remora_bin();
    let files = valid_files();
    let failures = par_map(&files, |f| {
        let out = run_validate(&remora, &f.rel, &corpus_dir(), &[]);
        let ok_line = format!("configuration '{}' OK", f.rel);
        (!(out.code == Some(0) && out.text.contains(&ok_line)))
            .then(|| format!("{}: expected exit 0 and `{ok_line}`, got {}\n{}", f.rel, out.describe(), out.tail()))
    });
    report(failures, "Remora rejected configs that Envoy accepts");
}

/// Remora rejects every file in invalid/ (exit 1) and names what is wrong.
#[test]
fn remora_rejects_invalid_corpus() {
    let remora = remora_bin();
    let files = invalid_files();
    let failures = par_map(&files, |f| {
        let out = run_validate(&remora, &f.rel, &corpus_dir(), &[]);
        let mut problems = Vec::new();
        if out.code != Some(1) {
            problems.push(format!("expected exit 1, got {}", out.describe()));
        }
        let haystack = normalize(&strip_path(&out.text, &f.rel));
        for e in &f.expects {
            if !haystack.contains(&normalize(e)) {
                problems.push(format!("output does not mention `{e}`"));
            }
        }
        (!problems.is_empty()).then(|| {
            format!(
                "{}: {}\n  envoy said: {}\n{}",
                f.rel,
                problems.join("; "),
                f.envoy_message.as_deref().unwrap_or("?"),
                out.tail()
            )
        })
    });
    report(failures, "Remora did not reject invalid configs as expected");
}

/// Remora accepts every conformance file Envoy accepts, and rejects the ones Envoy rejects.
#[test]
fn remora_agrees_with_conformance_corpus() {
    let Some(dir) = conformance_dir_or_skip("remora_agrees_with_conformance_corpus") else {
        return;
    };
    let remora = remora_bin();
    let work = conformance_workdir();
    let entries = conformance_entries();
    let failures = par_map(&entries, |&(name, verdict)| {
        let config = dir.join(name);
        let config = config.to_str().unwrap();
        let out = run_validate(&remora, config, work.path(), NODE_ARGS);
        let ok_line = format!("configuration '{config}' OK");
        let haystack = normalize(&strip_path(&out.text, config));
        let problem = match verdict {
            Verdict::Ok | Verdict::OkThenEnvoyCrashes => (!(out.code == Some(0) && out.text.contains(&ok_line)))
                .then(|| format!("Envoy accepts it; expected exit 0 and `{ok_line}`")),
            Verdict::Reject(needle) => {
                if out.code != Some(1) {
                    Some("Envoy rejects it; expected exit 1".to_string())
                } else if !haystack.contains(&normalize(needle)) {
                    Some(format!("rejected, but the output does not mention `{needle}`"))
                } else {
                    None
                }
            }
            Verdict::MissingAbsolutePaths(paths) => {
                if out.code != Some(1) {
                    Some(format!("Envoy rejects it because {paths:?} do not exist; expected exit 1"))
                } else if !paths.iter().any(|p| out.text.contains(p)) {
                    Some(format!("rejected, but the output names none of the missing paths {paths:?}"))
                } else {
                    None
                }
            }
        };
        problem.map(|p| format!("{name}: {p}; got {}\n{}", out.describe(), out.tail()))
    });
    report(failures, "Remora disagrees with Envoy on the conformance corpus");
}

// ---------------------------------------------------------------------------------------------
// Corpus loading
// ---------------------------------------------------------------------------------------------

struct CorpusFile {
    /// Path relative to `tests/validate/` (the working directory of every corpus run).
    rel: String,
    expects: Vec<String>,
    envoy_message: Option<String>,
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corpus_dir() -> PathBuf {
    manifest_dir().join("tests").join("validate")
}

fn valid_files() -> Vec<CorpusFile> {
    corpus_files("valid")
}

fn invalid_files() -> Vec<CorpusFile> {
    corpus_files("invalid")
}

fn corpus_files(sub: &str) -> Vec<CorpusFile> {
    let dir = corpus_dir().join(sub);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml") || n.ends_with(".json"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            let header_source =
                if name.ends_with(".json") { path.with_file_name(format!("{name}.meta")) } else { path.clone() };
            let header = fs::read_to_string(&header_source).unwrap_or_default();
            let comments = header.lines().take_while(|l| l.starts_with('#'));
            let mut expects = Vec::new();
            let mut envoy_message = None;
            for line in comments {
                if let Some(e) = line.strip_prefix(EXPECT_PREFIX) {
                    expects.push(e.trim().to_string());
                } else if line.starts_with(ENVOY_PREFIX) {
                    envoy_message = Some(line.trim_start_matches('#').trim().to_string());
                }
            }
            CorpusFile { rel: format!("{sub}/{name}"), expects, envoy_message }
        })
        .collect()
}

fn conformance_dir() -> Option<PathBuf> {
    let dir = manifest_dir().join("../shared/conformance/envoy");
    fs::canonicalize(dir).ok().filter(|d| d.is_dir())
}

fn conformance_dir_or_skip(test: &str) -> Option<PathBuf> {
    let dir = conformance_dir();
    if dir.is_none() {
        eprintln!(
            "SKIP {test}: conformance corpus {} not found",
            manifest_dir().join("../shared/conformance/envoy").display()
        );
    }
    dir
}

/// Table entries to run: those whose verdict does not depend on files that happen to exist here.
fn conformance_entries() -> Vec<(&'static str, Verdict)> {
    CONFORMANCE
        .iter()
        .copied()
        .filter(|(name, verdict)| match verdict {
            Verdict::MissingAbsolutePaths(paths) => {
                let present: Vec<_> = paths.iter().filter(|p| Path::new(p).exists()).collect();
                if !present.is_empty() {
                    eprintln!("SKIP {name}: {present:?} exist on this machine, so Envoy's verdict differs");
                }
                present.is_empty()
            }
            _ => true,
        })
        .collect()
}

/// A temporary working directory with stand-in files for the relative paths the conformance
/// configs refer to: `certs/*.pem` (a self-signed CA and leaf certificates/keys it signed).
fn conformance_workdir() -> TempDir {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    let dir = TempDir::new("conformance");
    let certs = dir.path().join("certs");
    fs::create_dir_all(&certs).unwrap();

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Remora conformance test CA");
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    fs::write(certs.join("cacert.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    // (certificate file, key file, DNS name)
    let leaves = [
        ("servercert.pem", "serverkey.pem", "localhost"),
        ("clientcert.pem", "clientkey.pem", "client.example.com"),
        ("domain1.crt.pem", "domain1.key.pem", "domain1.example.com"),
        ("domain2.crt.pem", "domain2.key.pem", "domain2.example.com"),
    ];
    for (cert_file, key_file, dns) in leaves {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![dns.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, dns);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        fs::write(certs.join(cert_file), cert.pem()).unwrap();
        fs::write(certs.join(key_file), key.serialize_pem()).unwrap();
    }
    dir
}

/// Lowercase and drop `_`, so `connect_timeout`, `connectTimeout` and `ConnectTimeout` compare equal.
fn normalize(s: &str) -> String {
    s.chars().filter(|c| *c != '_').flat_map(char::to_lowercase).collect()
}

/// Remove the config path (and its file name) from the output before looking for expected words.
fn strip_path(text: &str, config: &str) -> String {
    let mut text = text.replace(config, "<config>");
    if let Some(name) = Path::new(config).file_name().and_then(|n| n.to_str()) {
        text = text.replace(name, "<config>");
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Binaries and process running
// ---------------------------------------------------------------------------------------------

fn remora_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_remora"))
}

/// `ENVOY_BIN`, else `<crate>/.venv/bin/envoy`, else `envoy` on `PATH`.
fn find_envoy() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "ENVOY_BIN={} does not name a file", bin.display());
        return Some(bin);
    }
    let venv = manifest_dir().join(".venv/bin/envoy");
    if venv.is_file() {
        return Some(venv);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join("envoy")).find(|candidate| candidate.is_file())
}

fn envoy_or_skip(test: &str) -> Option<PathBuf> {
    let envoy = find_envoy();
    if envoy.is_none() {
        let why = "Envoy not found (set ENVOY_BIN, or install it at .venv/bin/envoy or on PATH)";
        if std::env::var_os("CI").is_some() {
            panic!("{test}: {why}; CI is set, so the Envoy oracle check is required");
        }
        eprintln!("SKIP {test}: {why}");
    }
    envoy
}

struct Outcome {
    /// Exit code; `None` when killed by a signal or by the timeout.
    code: Option<i32>,
    status: Option<ExitStatus>,
    /// stdout followed by stderr.
    text: String,
}

impl Outcome {
    fn success(&self) -> bool {
        self.code == Some(0)
    }

    fn describe(&self) -> String {
        match self.status {
            Some(s) => s.to_string(),
            None => format!("timed out after {RUN_TIMEOUT:?}"),
        }
    }

    /// The last lines of output, indented, for failure messages.
    fn tail(&self) -> String {
        if self.text.trim().is_empty() {
            return "    | (no output)".to_string();
        }
        let lines: Vec<&str> = self.text.lines().collect();
        let start = lines.len().saturating_sub(12);
        lines[start..]
            .iter()
            .map(|l| {
                let l: String = l.chars().take(600).collect();
                format!("    | {l}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `BIN --mode validate -c CONFIG EXTRA...` in `cwd`, with a timeout; captures stdout and stderr.
fn run_validate(bin: &Path, config: &str, cwd: &Path, extra: &[&str]) -> Outcome {
    let mut child = Command::new(bin)
        .args(["--mode", "validate", "-c", config])
        .args(extra)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        match child.try_wait().expect("wait for child") {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                // Kill the whole process group (the child may have started helpers).
                let _ = Command::new("kill").args(["-KILL", &format!("-{}", child.id())]).status();
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    };
    let mut text = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    text.push_str(&String::from_utf8_lossy(&err_reader.join().unwrap()));
    Outcome { code: status.and_then(|s| s.code()), status, text }
}

/// Map `f` over `items` on `PARALLELISM` threads; returns the `Some` results in input order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Option<R> + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..PARALLELISM.min(items.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                if let Some(r) = f(item) {
                    results.lock().unwrap().push((i, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

fn report<F: fmt::Display>(failures: Vec<F>, what: &str) {
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        panic!("{what} ({}):\n\n{}", list.len(), list.join("\n\n"));
    }
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("remora-validate-{tag}-{}-{n}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
