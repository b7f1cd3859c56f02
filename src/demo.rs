//! `remora demo`: a live canary on loopback, started by one command. It runs the local control
//! plane (in process) on a temp directory of Istio files, two versions of a sample `reviews`
//! service (in-process HTTP servers answering `reviews-v1` / `reviews-v2`), and Remora itself as
//! the sidecar (this binary, configured over ADS); then it sends steady traffic through the
//! sidecar's outbound listener and prints the observed split every second. Editing the weights in
//! the printed VirtualService file moves the split within about a second.
//!
//! Owns: the demo's wiring and output. Must not hold control-plane or data-path logic.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::{debug, warn};

/// `remora demo`: a canary of `reviews` v1/v2 through a Remora sidecar, all on loopback.
#[derive(Debug, Parser)]
#[command(
    name = "remora demo",
    about = "Run a live canary on loopback: local control plane, two versions of a sample service and a \
             Remora sidecar; prints the traffic split every second until Ctrl-C"
)]
pub struct Args {
    /// Requests per second sent through the sidecar.
    #[arg(long, default_value_t = 500)]
    pub rate: u32,
    /// Stop after this long (`30s`, `500ms`, `2m`; plain numbers are seconds). Default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Initial weight of v1 (v2 gets the rest of 100).
    #[arg(long = "v1-weight", default_value_t = 90, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub v1_weight: u32,
    /// Directory for the generated config files and the sidecar's log (created; kept after exit).
    /// Default: a fresh temp directory, removed on exit.
    #[arg(long = "dir")]
    pub dir: Option<PathBuf>,
    /// Log level of the demo and its control plane (trace, debug, info, warn, error).
    #[arg(short = 'l', long = "log-level", default_value = "warn")]
    pub log_level: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration '{s}'"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in '{s}' (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("bad duration '{s}'"))
}

/// Runs the subcommand (`args` starts with `demo`) until Ctrl-C or `--duration`.
pub fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let args = Args::parse_from(args);
    remora::telemetry::logging::init(&args.log_level.replace("warning", "warn"), "warn", None);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The demo's future runs on this (main) thread, so the sidecar's parent-death signal, which
    // follows the spawning thread, fires only when the demo itself goes away.
    let result = runtime.block_on(run(args));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The config directory: removed on drop unless the user chose it.
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The sidecar process: killed and reaped on drop.
struct Sidecar {
    child: Child,
    log: PathBuf,
}

impl Sidecar {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let work = match &args.dir {
        Some(dir) => WorkDir { path: dir.clone(), remove: false },
        None => {
            WorkDir { path: std::env::temp_dir().join(format!("remora-demo-{}", std::process::id())), remove: true }
        }
    };
    std::fs::create_dir_all(&work.path).with_context(|| format!("create {}", work.path.display()))?;
    let config_dir = work.path.join("istio");
    std::fs::create_dir_all(&config_dir).with_context(|| format!("create {}", config_dir.display()))?;

    // Two versions of the sample service.
    let (v1, v1_task) = sample_service("reviews-v1").await?;
    let (v2, v2_task) = sample_service("reviews-v2").await?;

    // The Istio files: the registry and subsets are fixed; the VirtualService is the one to edit.
    write_file(&config_dir.join("reviews-serviceentry.yaml"), &service_entry(v1.port(), v2.port()))?;
    write_file(&config_dir.join("reviews-destinationrule.yaml"), DESTINATION_RULE)?;
    let vs_path = config_dir.join("reviews-virtualservice.yaml");
    write_file(&vs_path, &virtual_service(args.v1_weight, 100 - args.v1_weight))?;

    // The control plane, in process; the outbound listener for port 9080 binds a free port.
    let outbound = free_port()?;
    let opts = remora::control_plane::Options {
        config_dir: config_dir.clone(),
        listen: ([127, 0, 0, 1], 0).into(),
        translate: remora::control_plane::istio::Options {
            listener_address: "127.0.0.1".into(),
            listener_ports: BTreeMap::from([(9080, u32::from(outbound))]),
            ..Default::default()
        },
        ca: None,
    };
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cp_task = tokio::spawn(remora::control_plane::run(
        opts,
        move |addr| {
            let _ = addr_tx.send(addr);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let cp_addr = match addr_rx.await {
        Ok(addr) => addr,
        Err(_) => {
            return Err(match cp_task.await {
                Ok(Err(e)) => anyhow!("control plane: {e}"),
                _ => anyhow!("control plane stopped before listening"),
            })
        }
    };

    // The sidecar: this binary, configured over delta ADS from the control plane.
    let admin = free_port()?;
    let bootstrap = work.path.join("sidecar-bootstrap.yaml");
    write_file(&bootstrap, &sidecar_bootstrap(cp_addr, admin))?;
    let log = work.path.join("sidecar.log");
    let mut sidecar = spawn_sidecar(&bootstrap, &log)?;

    let mut out = std::io::stdout();
    let banner = format!(
        "remora demo: a canary of `reviews` through a Remora sidecar, all on loopback\n\
         \x20 control plane   {cp_addr} (ADS), serving {config}\n\
         \x20 reviews v1      {v1}\n\
         \x20 reviews v2      {v2}\n\
         \x20 sidecar         outbound 127.0.0.1:{outbound}, admin http://127.0.0.1:{admin}/, log {log}\n\
         \x20 try             curl -H 'Host: reviews' http://127.0.0.1:{outbound}/\n",
        config = config_dir.display(),
        log = log.display(),
    );
    let _ = out.write_all(banner.as_bytes());
    let _ = out.flush();

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let result = tokio::select! {
        r = drive(&args, &mut sidecar, admin, outbound, &vs_path) => r,
        () = &mut shutdown => Ok(()),
    };

    // Stop everything this demo started: sidecar, control plane, sample services.
    drop(sidecar);
    let _ = stop_tx.send(());
    if tokio::time::timeout(Duration::from_secs(2), cp_task).await.is_err() {
        warn!("control plane did not stop within 2 s");
    }
    v1_task.abort();
    v2_task.abort();
    let _ = writeln!(out, "stopped");
    drop(work);
    result
}

/// Waits for the sidecar, then sends traffic and prints the split every second.
async fn drive(args: &Args, sidecar: &mut Sidecar, admin: u16, outbound: u16, vs_path: &Path) -> anyhow::Result<()> {
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build_http();

    // Ready: the sidecar is LIVE (listeners and clusters warmed) and the outbound listener accepts.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = sidecar.exited() {
            bail!("the sidecar exited ({status}); its log ends with:\n{}", sidecar.log_tail());
        }
        if Instant::now() > deadline {
            bail!("the sidecar did not become ready within 60 s; its log ends with:\n{}", sidecar.log_tail());
        }
        let live = matches!(get(&client, admin, "localhost", "/ready").await, Ok((200, _)));
        if live && tokio::net::TcpStream::connect(("127.0.0.1", outbound)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut out = std::io::stdout();
    let _ = writeln!(out, "virtual service: {}", vs_path.display());
    let _ = writeln!(out, "  edit the two `weight:` values there and save; the split below follows within a second");
    let _ = writeln!(out, "  (Ctrl-C stops the demo and everything it started)");
    let _ = out.flush();

    let counts = Arc::new(Counts::default());
    let workers = args.rate.clamp(1, 8);
    let period = Duration::from_secs_f64(f64::from(workers) / f64::from(args.rate.max(1)));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let client = client.clone();
        let counts = counts.clone();
        load.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match get(&client, outbound, "reviews", "/").await {
                    Ok((200, body)) if body.trim() == "reviews-v1" => counts.v1.fetch_add(1, Ordering::Relaxed),
                    Ok((200, body)) if body.trim() == "reviews-v2" => counts.v2.fetch_add(1, Ordering::Relaxed),
                    Ok((status, body)) => {
                        debug!(status, body = %body.trim(), "unexpected response");
                        counts.errors.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        debug!(error = %e, "request failed");
                        counts.errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }

    let started = Instant::now();
    let mut report =
        tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = Instant::now();
    let mut totals = (0u64, 0u64, 0u64);
    let result = loop {
        report.tick().await;
        let (v1, v2, errors) = counts.take();
        let secs = last.elapsed().as_secs_f64().max(0.001);
        last = Instant::now();
        totals = (totals.0 + v1, totals.1 + v2, totals.2 + errors);
        let _ = writeln!(out, "{}", split_line(v1, v2, errors, secs));
        let _ = out.flush();
        if let Some(status) = sidecar.exited() {
            break Err(anyhow!("the sidecar exited ({status}); its log ends with:\n{}", sidecar.log_tail()));
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break Ok(());
        }
    };
    load.abort_all();
    let (v1, v2, errors) = totals;
    let _ = writeln!(out, "total: {} requests, {} errors", v1 + v2 + errors, errors);
    result
}

#[derive(Default)]
struct Counts {
    v1: AtomicU64,
    v2: AtomicU64,
    errors: AtomicU64,
}

impl Counts {
    fn take(&self) -> (u64, u64, u64) {
        (self.v1.swap(0, Ordering::Relaxed), self.v2.swap(0, Ordering::Relaxed), self.errors.swap(0, Ordering::Relaxed))
    }
}

/// `split: v1  90.2%  v2   9.8%  (500 req/s, 0 errors)`.
fn split_line(v1: u64, v2: u64, errors: u64, secs: f64) -> String {
    let ok = (v1 + v2).max(1) as f64;
    let rate = (v1 + v2 + errors) as f64 / secs;
    format!(
        "split: v1 {:5.1}%  v2 {:5.1}%  ({} req/s, {errors} error{})",
        100.0 * v1 as f64 / ok,
        100.0 * v2 as f64 / ok,
        thousands(rate.round() as u64),
        if errors == 1 { "" } else { "s" },
    )
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

type DemoClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn get(client: &DemoClient, port: u16, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let req = hyper::Request::get(format!("http://127.0.0.1:{port}{path}"))
        .header(hyper::header::HOST, host)
        .body(Empty::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req)).await.context("timed out")??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An HTTP/1.1 and HTTP/2 server on 127.0.0.1:0 answering every request with `name`.
async fn sample_service(name: &'static str) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.context("bind a sample service")?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |_req| async move {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!("{name}\n")))))
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok((addr, task))
}

fn spawn_sidecar(bootstrap: &Path, log: &Path) -> anyhow::Result<Sidecar> {
    let exe = std::env::current_exe().context("locate the remora binary")?;
    let file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("-c")
        .arg(bootstrap)
        .args(["--concurrency", "1", "-l", "warning", "--drain-time-s", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file));
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches only the child's own state. It makes
        // the sidecar exit with the demo even when the demo is killed without a chance to clean up.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    let child = cmd.spawn().context("start the sidecar")?;
    Ok(Sidecar { child, log: log.to_path_buf() })
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

fn sidecar_bootstrap(xds: SocketAddr, admin: u16) -> String {
    format!(
        r#"# Generated by `remora demo`: everything but the xDS cluster comes over delta ADS.
node:
  id: sidecar~127.0.0.1~demo.default~default.svc.cluster.local
  cluster: demo.default
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}
"#,
        ip = xds.ip(),
        port = xds.port(),
    )
}

fn service_entry(v1: u16, v2: u16) -> String {
    format!(
        r#"# The service registry for the demo: `reviews` on port 9080, two endpoints on loopback.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: 9080, name: http, protocol: HTTP}}
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {v1}}}, labels: {{app: reviews, version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {v2}}}, labels: {{app: reviews, version: v2}}}}
"#
    )
}

const DESTINATION_RULE: &str = r#"# The subsets the VirtualService routes to.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      http: {http1MaxPendingRequests: 1024}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn virtual_service(w1: u32, w2: u32) -> String {
    format!(
        r#"# The canary: change the two weights (they should add up to 100) and save. `remora demo`
# pushes the change to the sidecar within a second and its split line follows.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: {w1}
    - destination:
        host: reviews
        subset: v2
      weight: {w2}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("6s"), Ok(Duration::from_secs(6)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn split_lines() {
        assert_eq!(split_line(902, 98, 0, 1.0), "split: v1  90.2%  v2   9.8%  (1,000 req/s, 0 errors)");
        assert_eq!(split_line(0, 0, 1, 1.0), "split: v1   0.0%  v2   0.0%  (1 req/s, 1 error)");
    }
}
