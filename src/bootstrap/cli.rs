//! Envoy's command line, so pilot-agent and users can swap the binary without changing arguments.
//!
//! Flags that only make sense for Envoy's process model are accepted and ignored; each says why in
//! its help text (and in the README's table). Owns: argument parsing. Must not read files.

use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Mode {
    /// Serve traffic (the default).
    #[default]
    Serve,
    /// Load and validate the configuration, print the verdict and exit.
    Validate,
    /// Initialise the server, then exit (Envoy's init_only).
    #[value(name = "init_only")]
    InitOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum DrainStrategy {
    /// Encourage clients to leave progressively over the drain time.
    #[default]
    Gradual,
    /// Tell every client to leave at once when draining starts.
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpVersion {
    V4,
    V6,
}

/// The command line Envoy accepts, as Remora implements it.
#[derive(Debug, Clone, Parser)]
#[command(name = "remora", version, about = "Envoy-compatible service-mesh sidecar proxy", disable_version_flag = true)]
pub struct Options {
    /// Path to the v3 bootstrap (YAML or JSON).
    #[arg(short = 'c', long = "config-path")]
    pub config_path: Option<String>,
    /// Bootstrap fragment in YAML, merged over the file (Envoy's proto merge: maps merge, lists append).
    #[arg(long = "config-yaml")]
    pub config_yaml: Option<String>,
    #[arg(long, value_enum, default_value = "serve")]
    pub mode: Mode,
    /// Worker threads; 0 means one per core. With 1 the proxy runs on a single-threaded runtime.
    #[arg(long, default_value_t = 0)]
    pub concurrency: usize,
    /// trace, debug, info, warning/warn, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,
    /// Per-component levels (`upstream:debug,connection:trace`): mapped onto Remora's modules.
    #[arg(long = "component-log-level")]
    pub component_log_level: Option<String>,
    /// Envoy's log line format. Accepted; Remora keeps its own structured format (harmless: log text
    /// is for people, not an interface).
    #[arg(long = "log-format")]
    pub log_format: Option<String>,
    /// Write logs to this file instead of stderr.
    #[arg(long = "log-path")]
    pub log_path: Option<String>,
    #[arg(long = "log-format-escaped", default_value_t = false)]
    pub log_format_escaped: bool,
    /// Seconds connections have to finish after draining starts (SIGTERM, removed listeners).
    #[arg(long = "drain-time-s", default_value_t = 600)]
    pub drain_time_s: u64,
    #[arg(long = "drain-strategy", value_enum, default_value = "gradual")]
    pub drain_strategy: DrainStrategy,
    /// Hot restart is not implemented; accepted so existing command lines work.
    #[arg(long = "parent-shutdown-time-s", default_value_t = 900)]
    pub parent_shutdown_time_s: u64,
    #[arg(long = "service-cluster")]
    pub service_cluster: Option<String>,
    #[arg(long = "service-node")]
    pub service_node: Option<String>,
    #[arg(long = "service-zone")]
    pub service_zone: Option<String>,
    #[arg(long = "local-address-ip-version", value_enum, default_value = "v4")]
    pub local_address_ip_version: IpVersion,
    /// Hot-restart shared memory id: no-op (Remora has no hot restart).
    #[arg(long = "base-id", default_value_t = 0)]
    pub base_id: u64,
    #[arg(long = "use-dynamic-base-id", default_value_t = false)]
    pub use_dynamic_base_id: bool,
    #[arg(long = "base-id-path")]
    pub base_id_path: Option<String>,
    #[arg(long = "restart-epoch", default_value_t = 0)]
    pub restart_epoch: u64,
    /// No-op: Remora never hot restarts.
    #[arg(long = "disable-hot-restart", default_value_t = false)]
    pub disable_hot_restart: bool,
    /// Ignore unknown fields in the bootstrap instead of rejecting it.
    #[arg(long = "allow-unknown-static-fields", alias = "allow-unknown-fields", default_value_t = false)]
    pub allow_unknown_static_fields: bool,
    /// Reject xDS resources with unknown fields (default: ignore them, as Envoy does).
    #[arg(long = "reject-unknown-dynamic-fields", default_value_t = false)]
    pub reject_unknown_dynamic_fields: bool,
    #[arg(long = "ignore-unknown-dynamic-fields", default_value_t = false)]
    pub ignore_unknown_dynamic_fields: bool,
    /// Access-log flush interval in milliseconds.
    #[arg(long = "file-flush-interval-msec", default_value_t = 10_000)]
    pub file_flush_interval_msec: u64,
    /// No-op: Remora logs no deprecation warnings per use.
    #[arg(long = "skip-deprecated-logs", default_value_t = false)]
    pub skip_deprecated_logs: bool,
    #[arg(long = "enable-core-dump", default_value_t = false)]
    pub enable_core_dump: bool,
    #[arg(long = "cpuset-threads", default_value_t = false)]
    pub cpuset_threads: bool,
    #[arg(long = "disable-extensions")]
    pub disable_extensions: Option<String>,
    #[arg(long = "bootstrap-version")]
    pub bootstrap_version: Option<u32>,
    #[arg(long = "enable-fine-grain-logging", default_value_t = false)]
    pub enable_fine_grain_logging: bool,
    /// Print the version and exit.
    #[arg(long = "version", default_value_t = false)]
    pub version: bool,
    /// Istio CA address (`host:port` over TLS, `http://host:port` plaintext); default `CA_ADDR`.
    /// With one, Remora gets its workload certificate from the CA and serves `sds-grpc`'s
    /// `default` and `ROOTCA` itself.
    #[arg(long = "ca-addr")]
    pub ca_addr: Option<String>,
    /// Default `TRUST_DOMAIN`, else cluster.local.
    #[arg(long = "trust-domain")]
    pub trust_domain: Option<String>,
    /// Default `POD_NAMESPACE`, else default.
    #[arg(long = "pod-namespace")]
    pub pod_namespace: Option<String>,
    /// Default `SERVICE_ACCOUNT`, else default.
    #[arg(long = "service-account")]
    pub service_account: Option<String>,
    /// Default `ISTIO_META_CLUSTER_ID`, else Kubernetes.
    #[arg(long = "cluster-id")]
    pub cluster_id: Option<String>,
    /// Certificate lifetime to request, a Go duration (`24h`, `30s`); default `SECRET_TTL`, else 24h.
    #[arg(long = "secret-ttl")]
    pub secret_ttl: Option<String>,
    /// Workload key type, `ECDSA` (P-256) or `RSA` (2048); default `ECC_SIGNATURE_ALGORITHM`,
    /// else ECDSA.
    #[arg(long = "ecc-signature-algorithm")]
    pub ecc_signature_algorithm: Option<String>,
    /// Default ./var/run/secrets/tokens/istio-token (read on every CA call).
    #[arg(long = "ca-token-path")]
    pub ca_token_path: Option<std::path::PathBuf>,
    /// Default ./var/run/secrets/istio/root-cert.pem.
    #[arg(long = "ca-root-cert")]
    pub ca_root_cert: Option<std::path::PathBuf>,
}

impl Options {
    /// The identity flags, for [`crate::identity::IdentityConfig::from_env`].
    pub fn identity_overrides(&self) -> crate::identity::config::Overrides {
        crate::identity::config::Overrides {
            ca_addr: self.ca_addr.clone(),
            trust_domain: self.trust_domain.clone(),
            namespace: self.pod_namespace.clone(),
            service_account: self.service_account.clone(),
            cluster_id: self.cluster_id.clone(),
            secret_ttl: self.secret_ttl.clone(),
            key_algorithm: self.ecc_signature_algorithm.clone(),
            token_path: self.ca_token_path.clone(),
            root_cert_path: self.ca_root_cert.clone(),
        }
    }

    pub fn drain_time(&self) -> Duration {
        Duration::from_secs(self.drain_time_s)
    }

    /// Envoy's level names mapped onto `tracing` filter directives.
    pub fn tracing_filter(&self) -> String {
        let mut directives = vec![format!("remora={}", tracing_level(&self.log_level))];
        if let Some(components) = &self.component_log_level {
            for pair in components.split(',') {
                if let Some((component, level)) = pair.split_once(':') {
                    if let Some(module) = component_module(component.trim()) {
                        directives.push(format!("remora::{module}={}", tracing_level(level.trim())));
                    }
                }
            }
        }
        directives.join(",")
    }
}

fn tracing_level(envoy_level: &str) -> &'static str {
    match envoy_level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => "info",
    }
}

/// Envoy logger names → the Remora module that does that job. Unknown components are ignored, as
/// Envoy ignores components it does not have.
fn component_module(component: &str) -> Option<&'static str> {
    Some(match component {
        "upstream" | "pool" | "client" | "hc" | "dns" => "upstream",
        "connection" | "conn_handler" | "filter" => "listener",
        "http" | "http2" | "router" => "http",
        "config" | "main" | "misc" | "runtime" => "bootstrap",
        "admin" => "admin",
        "tcp" => "tcp",
        _ => return None,
    })
}
