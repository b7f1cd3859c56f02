//! `remora control-plane` command line: flags → [`Options`](super::Options), logging, runtime.
//!
//! Owns: the subcommand's arguments. Must not hold control-plane logic.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// `remora control-plane`: a local xDS server for Envoy resources and Istio networking files.
#[derive(Debug, Parser)]
#[command(
    name = "remora control-plane",
    about = "Serve ADS (state of the world and delta) and SDS from a directory of Envoy and Istio YAML files"
)]
pub struct Args {
    /// Directory of *.yaml / *.yml / *.json files (Envoy resources with @type, or Istio resources).
    #[arg(long = "config-dir")]
    pub config_dir: PathBuf,
    /// gRPC address; port 0 picks a free port. The bound address is printed on stdout as
    /// `listening on <addr>`.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub listen: SocketAddr,
    /// Address the translated outbound listeners bind (istiod's are 0.0.0.0 and do not bind).
    #[arg(long = "listener-address", default_value = "0.0.0.0")]
    pub listener_address: String,
    /// Bind the listener of a service port on another port: `SERVICE_PORT=BIND_PORT` (repeatable).
    /// Names stay istiod's (`0.0.0.0_9080`, route `9080`).
    #[arg(long = "listener-port", value_parser = parse_port_map)]
    pub listener_port: Vec<(u32, u32)>,
    /// Add istio-proxy's metadata-exchange filters, as istiod does by default: for Remora and
    /// istio-proxy sidecars (upstream Envoy does not have them).
    #[arg(long = "metadata-exchange")]
    pub metadata_exchange: bool,
    /// The mesh DNS domain for short names (`reviews` → `reviews.<ns>.svc.<suffix>`).
    #[arg(long = "domain-suffix", default_value = "cluster.local")]
    pub domain_suffix: String,
    /// Serve Istio's CA (`IstioCertificateService`) with the root in this directory
    /// (`root-cert.pem`, `root-key.pem`; generated on first start).
    #[arg(long = "ca-dir")]
    pub ca_dir: Option<PathBuf>,
    /// `token: spiffe://…` (or `token: NAMESPACE/SERVICE_ACCOUNT`) lines: the identities callers
    /// authenticate as. Without it the CA trusts each CSR's SPIFFE ID (local development).
    #[arg(long = "ca-tokens")]
    pub ca_tokens: Option<PathBuf>,
    /// The trust domain of issued identities.
    #[arg(long = "trust-domain", default_value = "cluster.local")]
    pub trust_domain: String,
    /// trace, debug, info, warn, error (or a tracing filter).
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,
}

fn parse_port_map(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s.split_once('=').ok_or_else(|| format!("expected SERVICE_PORT=BIND_PORT, got '{s}'"))?;
    let port = |p: &str| p.trim().parse::<u32>().ok().filter(|n| (1..=65535).contains(n));
    match (port(a), port(b)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(format!("bad port mapping '{s}'")),
    }
}

impl Args {
    pub fn options(self) -> super::Options {
        super::Options {
            config_dir: self.config_dir,
            listen: self.listen,
            translate: super::istio::Options {
                listener_address: self.listener_address,
                listener_ports: self.listener_port.into_iter().collect::<BTreeMap<_, _>>(),
                domain_suffix: self.domain_suffix,
                trust_domain: self.trust_domain.clone(),
                metadata_exchange: self.metadata_exchange,
            },
            ca: self.ca_dir.map(|dir| super::CaOptions {
                dir,
                tokens: self.ca_tokens,
                trust_domain: self.trust_domain,
            }),
        }
    }
}

/// Runs the subcommand (`args` starts with `control-plane`) until interrupted.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let args = Args::parse_from(args);
    crate::telemetry::logging::init(&args.log_level.replace("warning", "warn"), "info", None);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(super::run(
        args.options(),
        |addr| {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "listening on {addr}");
            let _ = out.flush();
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("control plane: {e}");
            ExitCode::FAILURE
        }
    }
}
