//! Shared helpers for Remora's integration tests.
//!
//! Everything here drives real processes over real sockets on 127.0.0.1:
//!
//! * [`free_port`] — a port the kernel just handed out for `127.0.0.1:0`.
//! * [`ChildGuard`] — owns a spawned process; kills and reaps it on drop.
//! * [`wait_for_port`] / [`wait_for_port_blocking`] — bounded wait until a port accepts.
//! * [`TempDir`] — a scratch directory removed on drop.
//! * [`envoy_binary`] / [`remora_binary`] — locate the two proxies.
//! * [`render_template`] / [`start_proxy`] — run a bootstrap template under Envoy or Remora.
//! * [`Upstream`] — a real HTTP/1.1 + h2c server that echoes what it saw as JSON and can
//!   be steered by request headers (see [`Upstream`] for the `x-test-*` headers).
//!
//! Each test binary compiles this module separately (`mod support;`), and not every
//! binary uses every helper.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The loopback address every test binds to.
pub const LOCALHOST: &str = "127.0.0.1";

// ---------------------------------------------------------------------------------------------
// ports, processes, directories
// ---------------------------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, release it).
///
/// There is a small window in which another process could take it; tests accept that.
///
/// Ports are drawn from below the kernel's ephemeral range (`ip_local_port_range`, 32768+ by
/// default), where port-0 binds and outgoing connections never land: otherwise a port handed out
/// here and released could be taken by a concurrently started upstream (bound to port 0) before
/// the proxy binds it. Each candidate is checked free by binding it; a process-wide counter
/// spreads concurrent tests over the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if StdTcpListener::bind((LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    let listener = StdTcpListener::bind((LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Owns a spawned child process: on drop it is killed (SIGKILL) and reaped, so no test leaves
/// a process behind, whether it passes, fails or panics.
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self { child: Some(child), name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` when the process has already exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kill and reap now (idempotent).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Wait until `addr` accepts a TCP connection, for at most `timeout`. Returns whether it did.
pub async fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await;
        if let Ok(Ok(_)) = attempt {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking twin of [`wait_for_port`] for tests without a runtime.
pub fn wait_for_port_blocking(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh scratch directory under the system temp dir, removed (recursively) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// locating the proxies
// ---------------------------------------------------------------------------------------------

/// The repository root (where Cargo.toml lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Locate the real Envoy binary: `$ENVOY_BIN`, else `<repo>/.venv/bin/envoy`, else `envoy` on
/// `PATH`.
///
/// When none is found: under CI (`$CI` set) this panics, because a silently skipped oracle is a
/// hole in CI; elsewhere it prints why the test is skipped and returns `None`.
pub fn envoy_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
        return missing_envoy(&format!("ENVOY_BIN={} is not a file", p.display()));
    }
    let venv = repo_root().join(".venv/bin/envoy");
    if venv.is_file() {
        return Some(venv);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    missing_envoy("no envoy: set ENVOY_BIN, or install it into .venv/bin/envoy or on PATH")
}

fn missing_envoy(reason: &str) -> Option<PathBuf> {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but Envoy is unavailable: {reason}");
    }
    eprintln!("SKIP: {reason}");
    None
}

/// The Remora binary: `$REMORA_BIN` when set (e.g. to run a comparison with Envoy on both sides
/// to check the harness itself), else the binary Cargo built for this test run.
pub fn remora_binary() -> PathBuf {
    match std::env::var_os("REMORA_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_remora")),
    }
}

/// Which proxy a [`Proxy`] runs. Both take Envoy's command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Envoy,
    Remora,
}

impl ProxyKind {
    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Envoy => "envoy",
            ProxyKind::Remora => "remora",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config templates and running a proxy
// ---------------------------------------------------------------------------------------------

/// Replace every `{{NAME}}` in `template` with `vars["NAME"]`. Fails when a placeholder has no
/// value, so a typo in a template cannot go unnoticed.
pub fn render_template(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| "unterminated {{ in template".to_string())?;
        let key = after[..end].trim();
        let value = vars.get(key).ok_or_else(|| format!("template placeholder {{{{{key}}}}} has no value"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The placeholder names (`LISTEN_PORT`, `UPSTREAM_A`, ...) a template uses, in order of first
/// appearance.
pub fn template_placeholders(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let key = after[..end].trim().to_string();
        if !names.contains(&key) {
            names.push(key);
        }
        rest = &after[end + 2..];
    }
    names
}

/// A running proxy (Envoy or Remora) with its rendered config and logs in a temp dir.
/// Dropping it kills the process and removes the directory.
pub struct Proxy {
    pub kind: ProxyKind,
    // field order matters: kill the process before removing its directory
    guard: ChildGuard,
    dir: TempDir,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Proxy {
    /// Everything the process wrote to stdout/stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The rendered config it runs.
    pub fn config(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.guard.try_wait().is_none()
    }
}

/// Command-line flags for a proxy run, the same for both kinds (Remora takes Envoy's command
/// line). `--disable-hot-restart` keeps parallel Envoy instances from sharing hot-restart shared
/// memory (with it, `--base-id` is not needed: checked against Envoy 1.40 by running several
/// instances at once); passing it to Remora too lets `REMORA_BIN` point at an Envoy.
pub fn proxy_args(_kind: ProxyKind, config: &Path) -> Vec<String> {
    vec![
        "-c".to_string(),
        config.display().to_string(),
        "--concurrency".to_string(),
        "1".to_string(),
        "-l".to_string(),
        "warning".to_string(),
        "--disable-hot-restart".to_string(),
    ]
}

/// Render `template` with `vars`, write it to a temp dir, start `bin` on it, and wait (bounded
/// by `timeout`) until every port in `wait_ports` accepts connections.
pub async fn start_proxy(
    kind: ProxyKind,
    bin: &Path,
    template: &str,
    vars: &BTreeMap<String, String>,
    wait_ports: &[u16],
    timeout: Duration,
) -> Result<Proxy, String> {
    let rendered = render_template(template, vars)?;
    let dir = TempDir::new(&format!("remora-test-{}", kind.name())).map_err(|e| format!("temp dir: {e}"))?;
    let config_path = dir.path().join("bootstrap.yaml");
    std::fs::write(&config_path, rendered).map_err(|e| format!("write config: {e}"))?;
    let log_path = dir.path().join("proxy.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("log file: {e}"))?;
    let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
    let child = Command::new(bin)
        .args(proxy_args(kind, &config_path))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let mut proxy = Proxy { kind, guard: ChildGuard::new(kind.name(), child), dir, config_path, log_path };
    let deadline = Instant::now() + timeout;
    for &port in wait_ports {
        let addr: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, port).into();
        loop {
            if !proxy.is_running() {
                return Err(format!("{} exited before listening on {port}; log:\n{}", kind.name(), proxy.logs()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if wait_for_port(addr, left.min(Duration::from_millis(250))).await {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not listen on {port} within {timeout:?}; log:\n{}",
                    kind.name(),
                    proxy.logs()
                ));
            }
        }
    }
    Ok(proxy)
}

// ---------------------------------------------------------------------------------------------
// the echo upstream
// ---------------------------------------------------------------------------------------------

/// A real upstream server on 127.0.0.1:0 speaking HTTP/1.1 and h2c (prior knowledge), built on
/// `hyper_util::server::conn::auto`.
///
/// Every request is answered with `content-type: application/json` and a body describing what it
/// saw:
///
/// ```json
/// {"upstream": "a", "method": "GET", "path": "/x?y=1", "version": "HTTP/1.1",
///  "authority": "", "headers": {"host": ["example.com"], ...}, "body": ""}
/// ```
///
/// Header names are lowercase; each maps to the list of its values in arrival order.
///
/// Steering headers (all optional):
/// * `x-test-status: N` — answer with status N (default 200).
/// * `x-test-delay-ms: N` — wait N ms before answering.
/// * `x-test-response-header: name=value` — add a response header (repeatable).
/// * `x-test-fail-first: N` — the first N requests with the same key get status
///   `x-test-fail-status` (default 503) after `x-test-fail-delay-ms` (default 0); later ones are
///   answered normally. The key is `x-test-key`, else `x-case`.
///
/// Every request is counted per (`x-case` value) so a test can ask how often a case reached this
/// upstream ([`Upstream::hits`]). Dropping the `Upstream` stops it and all its connections.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct UpstreamState {
    hits: Mutex<HashMap<String, u32>>,
    fail_counters: Mutex<HashMap<String, u32>>,
}

impl Upstream {
    /// Start a named upstream on 127.0.0.1:0. Must be called inside a tokio runtime.
    pub async fn start(name: &str) -> std::io::Result<Upstream> {
        let listener = TcpListener::bind((LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(UpstreamState::default());
        let name_owned = name.to_string();
        let st = state.clone();
        let task = tokio::spawn(async move {
            // connections live in the JoinSet, so aborting this task aborts them too
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let name = name_owned.clone();
                        let st = st.clone();
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                handle_upstream(name.clone(), st.clone(), req)
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
        Ok(Upstream { name: name.to_string(), addr, state, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many requests carrying `x-case: case` arrived here.
    pub fn hits(&self, case: &str) -> u32 {
        self.state.hits.lock().map(|h| h.get(case).copied().unwrap_or(0)).unwrap_or(0)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header_str<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn header_num(req: &Request<Incoming>, name: &str) -> Option<u64> {
    header_str(req, name).and_then(|v| v.trim().parse().ok())
}

async fn handle_upstream(
    name: String,
    state: Arc<UpstreamState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let case = header_str(&req, "x-case").unwrap_or("").to_string();
    if let Ok(mut hits) = state.hits.lock() {
        *hits.entry(case.clone()).or_insert(0) += 1;
    }

    let mut status =
        header_num(&req, "x-test-status").and_then(|s| StatusCode::from_u16(s as u16).ok()).unwrap_or(StatusCode::OK);
    let mut delay = header_num(&req, "x-test-delay-ms").unwrap_or(0);
    if let Some(fail_first) = header_num(&req, "x-test-fail-first") {
        let key = header_str(&req, "x-test-key").map(str::to_string).unwrap_or(case);
        let seen = {
            let mut counters = state.fail_counters.lock().expect("fail counters");
            let c = counters.entry(key).or_insert(0);
            *c += 1;
            *c
        };
        if u64::from(seen) <= fail_first {
            status = header_num(&req, "x-test-fail-status")
                .and_then(|s| StatusCode::from_u16(s as u16).ok())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            delay = header_num(&req, "x-test-fail-delay-ms").unwrap_or(0);
        }
    }
    let extra_headers: Vec<(String, String)> = req
        .headers()
        .get_all("x-test-response-header")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split_once('=').map(|(n, v)| (n.trim().to_string(), v.trim().to_string())))
        .collect();

    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers.entry(k.as_str().to_string()).or_default().push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".to_string());
    let version = format!("{:?}", req.version());
    // HTTP/2's :authority (an h1 request in origin form has none: "")
    let authority = req.uri().authority().map(|a| a.as_str().to_string()).unwrap_or_default();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_else(|e| format!("<body error: {e}>"));

    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }

    let echo = serde_json::json!({
        "upstream": name,
        "method": method,
        "path": path,
        "version": version,
        "authority": authority,
        "headers": headers,
        "body": body,
    });
    let mut resp = Response::new(Full::new(Bytes::from(echo.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    for (n, v) in extra_headers {
        if let (Ok(n), Ok(v)) =
            (hyper::header::HeaderName::from_bytes(n.as_bytes()), hyper::header::HeaderValue::from_str(&v))
        {
            resp.headers_mut().append(n, v);
        }
    }
    Ok(resp)
}
