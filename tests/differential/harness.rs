//! The differential harness: load a corpus entry (bootstrap template + request cases), run it
//! under a proxy against fresh echo upstreams, record normalised outcomes, check them against
//! the case file's expectations (the Envoy half), or diff two runs (Envoy vs Remora).
//!
//! Corpus layout, per suite `NAME`:
//! * `tests/differential/NAME.yaml` — a static Envoy v3 bootstrap template. Placeholders:
//!   `{{LISTEN_PORT}}` (and any `{{LISTEN_PORT_*}}`: each gets a free port, and the proxy is
//!   ready once they all accept), `{{ADMIN_PORT}}`, `{{UPSTREAM_A}}`/`_B`/`_C`... (the port of
//!   a fresh echo upstream named `a`/`b`/`c`...), `{{DEAD_PORT}}` (a port nothing listens on).
//! * `tests/differential/NAME.cases.yaml` — the request cases; the format is documented at the
//!   top of `vhost_domains.cases.yaml` and parsed by [`parse_case`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use regex::Regex;
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::{self, ProxyKind, Upstream};

/// How long one request may take end to end (the slowest cases wait for a route timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a proxy may take to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// the corpus
// ---------------------------------------------------------------------------------------------

/// One corpus entry: a bootstrap template and its request cases.
pub struct Suite {
    pub name: String,
    pub template: String,
    pub cases: Vec<Case>,
}

/// One request and what Envoy is expected to do with it.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub method: String,
    pub path: String,
    /// Host header (h1) or :authority (h2).
    pub authority: String,
    pub http2: bool,
    /// Placeholder naming the listener to send to (default `LISTEN_PORT`).
    pub port: String,
    pub headers: Vec<(String, String)>,
    /// An extra header `name: aaaa...` of `bytes` bytes (to exceed header size limits).
    pub pad_header: Option<(String, usize)>,
    pub body: String,
    pub expect: Expect,
    /// Header names whose values legitimately vary between runs: only presence is compared.
    pub volatile: Vec<String>,
    /// Deliberate, documented Remora-vs-Envoy differences: header name -> reason. A mismatch in
    /// such a header is reported but does not fail the comparison.
    pub known_differences: Vec<(String, String)>,
}

/// Expectations checked against the oracle (and, in the comparison, against Remora too).
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// The response status (0 when `error` is set).
    pub status: u16,
    /// The exchange must fail without a response (connection closed or reset): `error: true`.
    pub error: bool,
    /// Which upstream must have received the request (`none`: no upstream at all).
    pub upstream: Option<String>,
    /// How many times that upstream received it (retries).
    pub hits: Option<u32>,
    /// The path (+query) the upstream saw.
    pub path: Option<String>,
    /// The HTTP version the upstream saw (`HTTP/1.1`, `HTTP/2.0`).
    pub version: Option<String>,
    /// The HTTP/2 :authority the upstream saw (`""` for HTTP/1.1 upstreams).
    pub authority: Option<String>,
    pub upstream_headers: Vec<(String, HeaderExpect)>,
    pub response_headers: Vec<(String, HeaderExpect)>,
    pub trailers: Vec<(String, HeaderExpect)>,
    /// Exact client-visible body (for local replies).
    pub body: Option<String>,
    pub body_contains: Option<String>,
}

#[derive(Debug, Clone)]
pub enum HeaderExpect {
    /// `~` / null: must be absent.
    Absent,
    /// `"*"`: must be present, any value.
    Present,
    /// `"re:<regex>"`: every value matches.
    Regex(String),
    /// a string: the values joined with "," (or ", ") equal it.
    Exact(String),
    /// a list: exactly these values, in this order.
    Values(Vec<String>),
}

pub fn corpus_dir() -> PathBuf {
    support::repo_root().join("tests/differential")
}

/// Names of every suite in the corpus (each `X.cases.yaml` with its `X.yaml`).
pub fn suite_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("read tests/differential")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".cases.yaml")).map(str::to_string))
        .collect();
    names.sort();
    names
}

pub fn load_suite(name: &str) -> Suite {
    let dir = corpus_dir();
    let template = read(&dir.join(format!("{name}.yaml")));
    let cases_path = dir.join(format!("{name}.cases.yaml"));
    let cases_text = read(&cases_path);
    let docs = YamlLoader::load_from_str(&cases_text).unwrap_or_else(|e| panic!("{}: {e}", cases_path.display()));
    let doc = docs.first().unwrap_or_else(|| panic!("{}: empty", cases_path.display()));
    let list = doc["cases"].as_vec().unwrap_or_else(|| panic!("{}: needs a `cases:` list", cases_path.display()));
    let cases = list
        .iter()
        .enumerate()
        .map(|(i, y)| parse_case(y).unwrap_or_else(|e| panic!("{} case #{i}: {e}", cases_path.display())))
        .collect();
    Suite { name: name.to_string(), template, cases }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn str_field(y: &Yaml, key: &str, default: &str) -> Result<String, String> {
    match &y[key] {
        Yaml::BadValue | Yaml::Null => Ok(default.to_string()),
        v => scalar(v).ok_or_else(|| format!("`{key}` must be a scalar")),
    }
}

fn opt_str(y: &Yaml, key: &str) -> Result<Option<String>, String> {
    match &y[key] {
        Yaml::BadValue => Ok(None),
        v => scalar(v).map(Some).ok_or_else(|| format!("`{key}` must be a scalar")),
    }
}

fn string_list(y: &Yaml, key: &str) -> Result<Vec<String>, String> {
    match &y[key] {
        Yaml::BadValue | Yaml::Null => Ok(vec![]),
        Yaml::Array(a) => a.iter().map(|v| scalar(v).ok_or_else(|| format!("`{key}` items must be scalars"))).collect(),
        v => scalar(v).map(|s| vec![s]).ok_or_else(|| format!("`{key}` must be a list")),
    }
}

fn header_expectations(y: &Yaml, key: &str) -> Result<Vec<(String, HeaderExpect)>, String> {
    let Some(h) = y[key].as_hash() else {
        return match &y[key] {
            Yaml::BadValue | Yaml::Null => Ok(vec![]),
            _ => Err(format!("`{key}` must be a mapping")),
        };
    };
    h.iter()
        .map(|(k, v)| {
            let name = scalar(k).ok_or_else(|| format!("`{key}`: bad header name"))?.to_ascii_lowercase();
            let exp = match v {
                Yaml::Null => HeaderExpect::Absent,
                Yaml::Array(a) => HeaderExpect::Values(
                    a.iter()
                        .map(|v| scalar(v).ok_or_else(|| format!("`{key}.{name}`: bad value")))
                        .collect::<Result<_, _>>()?,
                ),
                v => {
                    let s = scalar(v).ok_or_else(|| format!("`{key}.{name}`: bad value"))?;
                    if s == "*" {
                        HeaderExpect::Present
                    } else if let Some(re) = s.strip_prefix("re:") {
                        Regex::new(re).map_err(|e| format!("`{key}.{name}`: {e}"))?;
                        HeaderExpect::Regex(re.to_string())
                    } else {
                        HeaderExpect::Exact(s)
                    }
                }
            };
            Ok((name, exp))
        })
        .collect()
}

/// Parse one case. Fields: `name` (unique in the suite), `method` (GET), `path` (/),
/// `authority` (example.com), `http2` (false: h1; true: h2c prior knowledge), `port`
/// (LISTEN_PORT), `headers` (name: value or name: [values]), `pad_header` ({name, bytes}),
/// `body`, `volatile`, `known_differences` ([{header, reason}]), and `expect` with `status`
/// (required unless `error: true`), `error`, `upstream`, `hits`, `path`, `version`, `authority`, `upstream_headers`,
/// `response_headers`, `trailers`, `body`, `body_contains`.
pub fn parse_case(y: &Yaml) -> Result<Case, String> {
    let name = opt_str(y, "name")?.ok_or("case without `name`")?;
    let wrap = |e: String| format!("{name}: {e}");
    let mut headers = Vec::new();
    if let Some(h) = y["headers"].as_hash() {
        for (k, v) in h {
            let k = scalar(k).ok_or_else(|| wrap("bad header name".into()))?;
            match v {
                Yaml::Array(a) => {
                    for v in a {
                        headers.push((k.clone(), scalar(v).ok_or_else(|| wrap(format!("bad value for {k}")))?));
                    }
                }
                v => headers.push((k.clone(), scalar(v).ok_or_else(|| wrap(format!("bad value for {k}")))?)),
            }
        }
    }
    let e = &y["expect"];
    if e.is_badvalue() {
        return Err(wrap("needs `expect`".into()));
    }
    let error = e["error"].as_bool().unwrap_or(false);
    let status = match (e["status"].as_i64(), error) {
        (Some(s), false) => s,
        (None, true) => 0,
        (Some(_), true) => return Err(wrap("`expect.error: true` takes no status".into())),
        (None, false) => return Err(wrap("`expect.status` is required".into())),
    };
    let pad_header = match &y["pad_header"] {
        Yaml::BadValue | Yaml::Null => None,
        p => {
            let name = opt_str(p, "name").map_err(wrap)?.ok_or_else(|| wrap("`pad_header` needs `name`".into()))?;
            let bytes = p["bytes"]
                .as_i64()
                .and_then(|b| usize::try_from(b).ok())
                .ok_or_else(|| wrap("`pad_header` needs `bytes`".into()))?;
            Some((name, bytes))
        }
    };
    let expect = Expect {
        status: u16::try_from(status).map_err(|_| wrap("bad status".into()))?,
        error,
        upstream: opt_str(e, "upstream").map_err(wrap)?,
        hits: e["hits"].as_i64().map(|h| h as u32),
        path: opt_str(e, "path").map_err(wrap)?,
        version: opt_str(e, "version").map_err(wrap)?,
        authority: opt_str(e, "authority").map_err(wrap)?,
        upstream_headers: header_expectations(e, "upstream_headers").map_err(wrap)?,
        response_headers: header_expectations(e, "response_headers").map_err(wrap)?,
        trailers: header_expectations(e, "trailers").map_err(wrap)?,
        body: opt_str(e, "body").map_err(wrap)?,
        body_contains: opt_str(e, "body_contains").map_err(wrap)?,
    };
    let mut known_differences = Vec::new();
    if let Some(list) = y["known_differences"].as_vec() {
        for d in list {
            let header = opt_str(d, "header")
                .map_err(wrap)?
                .ok_or_else(|| wrap("known_differences item needs `header`".into()))?;
            let reason = opt_str(d, "reason")
                .map_err(wrap)?
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| wrap(format!("known difference `{header}` needs a `reason`")))?;
            known_differences.push((header.to_ascii_lowercase(), reason));
        }
    }
    Ok(Case {
        method: str_field(y, "method", "GET").map_err(wrap)?,
        path: str_field(y, "path", "/").map_err(wrap)?,
        authority: str_field(y, "authority", "example.com").map_err(wrap)?,
        http2: y["http2"].as_bool().unwrap_or(false),
        port: str_field(y, "port", "LISTEN_PORT").map_err(wrap)?,
        headers,
        pad_header,
        body: str_field(y, "body", "").map_err(wrap)?,
        expect,
        volatile: string_list(y, "volatile").map_err(wrap)?.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
        known_differences,
        name,
    })
}

// ---------------------------------------------------------------------------------------------
// outcomes
// ---------------------------------------------------------------------------------------------

pub type Headers = BTreeMap<String, Vec<String>>;

/// What the upstream reported it saw (the echo body), normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Echo {
    pub upstream: String,
    pub method: String,
    pub path: String,
    pub version: String,
    /// HTTP/2's :authority as the upstream saw it ("" over HTTP/1.1: see the host header).
    pub authority: String,
    pub headers: Headers,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Echo(Echo),
    Text(String),
}

/// One case's normalised result.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// 0 when the exchange failed (see `error`).
    pub status: u16,
    pub error: Option<String>,
    pub headers: Headers,
    pub trailers: Headers,
    pub body: Body,
    /// upstream name -> requests received for this case (only non-zero entries).
    pub hits: BTreeMap<String, u32>,
}

/// The result of running a suite under one proxy.
pub struct Run {
    pub kind: ProxyKind,
    pub outcomes: Vec<Outcome>,
    pub logs: String,
    pub config: String,
}

/// Rewrites run-specific values into stable placeholders.
struct Normalizer {
    /// port -> placeholder name
    ports: BTreeMap<u16, String>,
}

fn addr_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(127\.0\.0\.1|localhost|\[::1\]):(\d{1,5})").expect("regex"))
}

fn uuid_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$").expect("regex"))
}

impl Normalizer {
    /// Ports of this run become `{{NAME}}`; other loopback ports (client ephemeral ports)
    /// become `<port>`.
    fn text(&self, s: &str) -> String {
        addr_re()
            .replace_all(s, |c: &regex::Captures| {
                let port: u16 = c[2].parse().unwrap_or(0);
                match self.ports.get(&port) {
                    Some(name) => format!("{}:{{{{{name}}}}}", &c[1]),
                    None => format!("{}:<port>", &c[1]),
                }
            })
            .into_owned()
    }

    fn header_value(&self, name: &str, value: &str, case: &Case) -> String {
        if case.volatile.iter().any(|v| v == name) {
            return "<volatile>".into();
        }
        if uuid_re().is_match(value) {
            return "<uuid>".into();
        }
        match name {
            "date" if httpdate::parse_http_date(value).is_ok() => "<date>".into(),
            "x-envoy-upstream-service-time" if value.chars().all(|c| c.is_ascii_digit()) => "<ms>".into(),
            _ => self.text(value),
        }
    }

    fn headers(&self, h: &Headers, case: &Case) -> Headers {
        h.iter().map(|(k, vs)| (k.clone(), vs.iter().map(|v| self.header_value(k, v, case)).collect())).collect()
    }
}

fn collect_headers(h: &hyper::HeaderMap) -> Headers {
    let mut out = Headers::new();
    for (k, v) in h {
        out.entry(k.as_str().to_string()).or_default().push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    out
}

fn parse_echo(body: &str) -> Option<Echo> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let o = v.as_object()?;
    let s = |k: &str| o.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let mut headers = Headers::new();
    for (k, vals) in o.get("headers")?.as_object()? {
        let vals = vals.as_array()?.iter().filter_map(|x| x.as_str().map(str::to_string)).collect();
        headers.insert(k.clone(), vals);
    }
    Some(Echo {
        upstream: s("upstream")?,
        method: s("method")?,
        path: s("path")?,
        version: s("version")?,
        authority: s("authority").unwrap_or_default(),
        headers,
        body: s("body")?,
    })
}

struct RawResponse {
    status: u16,
    headers: Headers,
    trailers: Headers,
    body: String,
}

/// An error and its sources, `outer: inner: ...` (hyper's own message is often just
/// "http2 error"; the h2 reset reason is in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(out, ": {s}");
        source = s.source();
    }
    out
}

/// Send one case's request on a fresh connection (h1, or h2c prior knowledge).
async fn send(case: &Case, port: u16) -> Result<RawResponse, String> {
    let stream =
        tokio::net::TcpStream::connect((support::LOCALHOST, port)).await.map_err(|e| format!("connect: {e}"))?;
    let io = TokioIo::new(stream);
    let uri = if case.http2 { format!("http://{}{}", case.authority, case.path) } else { case.path.clone() };
    let mut builder = Request::builder().method(case.method.as_str()).uri(uri);
    if !case.http2 {
        builder = builder.header("host", case.authority.as_str());
    }
    builder = builder.header("x-case", case.name.as_str());
    for (k, v) in &case.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    if let Some((name, bytes)) = &case.pad_header {
        builder = builder.header(name.as_str(), "a".repeat(*bytes));
    }
    let req = builder.body(Full::new(Bytes::from(case.body.clone()))).map_err(|e| format!("build request: {e}"))?;
    let resp = if case.http2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| format!("send: {}", error_chain(&e)))?
    } else {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| format!("send: {}", error_chain(&e)))?
    };
    let status = resp.status().as_u16();
    let headers = collect_headers(resp.headers());
    let collected = resp.into_body().collect().await.map_err(|e| format!("read body: {}", error_chain(&e)))?;
    let trailers = collected.trailers().map(collect_headers).unwrap_or_default();
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    Ok(RawResponse { status, headers, trailers, body })
}

/// Run every case of `suite` under the proxy `bin`, against fresh upstreams.
pub async fn run_suite(kind: ProxyKind, bin: &Path, suite: &Suite) -> Result<Run, String> {
    let mut vars = BTreeMap::new();
    let mut upstreams: Vec<Upstream> = Vec::new();
    let mut listen_ports = Vec::new();
    for ph in support::template_placeholders(&suite.template) {
        let value = if let Some(up) = ph.strip_prefix("UPSTREAM_") {
            let u = Upstream::start(&up.to_ascii_lowercase()).await.map_err(|e| format!("upstream {up}: {e}"))?;
            let port = u.port();
            upstreams.push(u);
            port
        } else if ph.starts_with("LISTEN_PORT") {
            let p = support::free_port();
            listen_ports.push(p);
            p
        } else if ph == "ADMIN_PORT" || ph == "DEAD_PORT" {
            support::free_port()
        } else {
            return Err(format!("{}: unknown placeholder {{{{{ph}}}}}", suite.name));
        };
        vars.insert(ph, value.to_string());
    }
    let normalizer =
        Normalizer { ports: vars.iter().filter_map(|(k, v)| v.parse().ok().map(|p| (p, k.clone()))).collect() };
    let proxy = support::start_proxy(kind, bin, &suite.template, &vars, &listen_ports, STARTUP_TIMEOUT).await?;

    let mut outcomes = Vec::new();
    for case in &suite.cases {
        let port: u16 = vars
            .get(&case.port)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("{}: unknown port placeholder {}", case.name, case.port))?;
        let result = tokio::time::timeout(REQUEST_TIMEOUT, send(case, port))
            .await
            .unwrap_or_else(|_| Err(format!("no response within {REQUEST_TIMEOUT:?}")));
        let hits = upstreams.iter().map(|u| (u.name.clone(), u.hits(&case.name))).filter(|(_, n)| *n > 0).collect();
        outcomes.push(match result {
            Ok(raw) => {
                let echo = parse_echo(&raw.body);
                let mut headers = normalizer.headers(&raw.headers, case);
                if echo.is_some() {
                    // the echo's length varies with port numbers; its content is compared instead
                    if let Some(cl) = headers.get_mut("content-length") {
                        *cl = vec!["<len>".into()];
                    }
                }
                let body = match echo {
                    Some(e) => Body::Echo(Echo {
                        path: normalizer.text(&e.path),
                        authority: normalizer.text(&e.authority),
                        body: normalizer.text(&e.body),
                        headers: normalizer.headers(&e.headers, case),
                        ..e
                    }),
                    None => Body::Text(normalizer.text(&raw.body)),
                };
                Outcome {
                    status: raw.status,
                    error: None,
                    headers,
                    trailers: normalizer.headers(&raw.trailers, case),
                    body,
                    hits,
                }
            }
            Err(e) => Outcome {
                status: 0,
                error: Some(e),
                headers: Headers::new(),
                trailers: Headers::new(),
                body: Body::Text(String::new()),
                hits,
            },
        });
    }
    Ok(Run { kind, outcomes, logs: proxy.logs(), config: proxy.config() })
}

// ---------------------------------------------------------------------------------------------
// checking expectations
// ---------------------------------------------------------------------------------------------

fn check_header(what: &str, name: &str, exp: &HeaderExpect, got: &Headers, errs: &mut Vec<String>) {
    let vals = got.get(name);
    let ok = match (exp, vals) {
        (HeaderExpect::Absent, v) => v.is_none(),
        (_, None) => false,
        (HeaderExpect::Present, Some(_)) => true,
        (HeaderExpect::Regex(re), Some(v)) => {
            let re = Regex::new(re).expect("validated when parsed");
            v.iter().all(|x| re.is_match(x))
        }
        (HeaderExpect::Exact(s), Some(v)) => v.join(",") == *s || v.join(", ") == *s,
        (HeaderExpect::Values(want), Some(v)) => v == want,
    };
    if !ok {
        errs.push(format!("{what} `{name}`: expected {exp:?}, got {vals:?}"));
    }
}

/// Check one outcome against its case's expectations; returns the failures.
pub fn check_expectations(case: &Case, o: &Outcome) -> Vec<String> {
    let e = &case.expect;
    let mut errs = Vec::new();
    match (&o.error, e.error) {
        (Some(err), false) => errs.push(format!("request failed: {err}")),
        (None, true) => errs.push("expected the exchange to fail, got a response".into()),
        _ => {}
    }
    if o.status != e.status {
        errs.push(format!("status: expected {}, got {}", e.status, o.status));
    }
    if let Some(up) = &e.upstream {
        if up == "none" {
            if !o.hits.is_empty() {
                errs.push(format!("expected no upstream, got hits {:?}", o.hits));
            }
        } else {
            let others: Vec<_> = o.hits.keys().filter(|k| *k != up).collect();
            if !o.hits.contains_key(up) || !others.is_empty() {
                errs.push(format!("expected upstream {up}, got hits {:?}", o.hits));
            }
        }
    }
    if let Some(n) = e.hits {
        let total: u32 = o.hits.values().sum();
        if total != n {
            errs.push(format!("expected {n} upstream hits, got {:?}", o.hits));
        }
    }
    let echo = match &o.body {
        Body::Echo(echo) => Some(echo),
        Body::Text(_) => None,
    };
    if let Some(p) = &e.path {
        match echo {
            Some(echo) if echo.path == *p => {}
            Some(echo) => errs.push(format!("upstream path: expected {p}, got {}", echo.path)),
            None => errs.push(format!("upstream path: expected {p}, but no echo body")),
        }
    }
    for (what, want, got) in
        [("version", &e.version, echo.map(|x| &x.version)), ("authority", &e.authority, echo.map(|x| &x.authority))]
    {
        match (want, got) {
            (None, _) => {}
            (Some(w), Some(g)) if w == g => {}
            (Some(w), Some(g)) => errs.push(format!("upstream {what}: expected {w:?}, got {g:?}")),
            (Some(w), None) => errs.push(format!("upstream {what}: expected {w:?}, but no echo body")),
        }
    }
    if !e.upstream_headers.is_empty() {
        match echo {
            Some(echo) => {
                for (n, x) in &e.upstream_headers {
                    check_header("upstream header", n, x, &echo.headers, &mut errs);
                }
            }
            None => errs.push("upstream headers expected, but no echo body".into()),
        }
    }
    for (n, x) in &e.response_headers {
        check_header("response header", n, x, &o.headers, &mut errs);
    }
    for (n, x) in &e.trailers {
        check_header("trailer", n, x, &o.trailers, &mut errs);
    }
    let text = match &o.body {
        Body::Text(t) => t.clone(),
        Body::Echo(_) => String::from("<echo>"),
    };
    if let Some(b) = &e.body {
        if text != *b {
            errs.push(format!("body: expected {b:?}, got {text:?}"));
        }
    }
    if let Some(b) = &e.body_contains {
        if !text.contains(b.as_str()) {
            errs.push(format!("body: expected to contain {b:?}, got {text:?}"));
        }
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// diffing two runs
// ---------------------------------------------------------------------------------------------

fn diff_headers(what: &str, a: &Headers, b: &Headers, case: &Case, out: &mut Vec<String>, allowed: &mut Vec<String>) {
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for n in names {
        let (x, y) = (a.get(n), b.get(n));
        if x == y {
            continue;
        }
        let line = format!("{what} {n}: envoy={x:?} remora={y:?}");
        match case.known_differences.iter().find(|(h, _)| h == n) {
            Some((_, reason)) => allowed.push(format!("{line} (known difference: {reason})")),
            None => out.push(line),
        }
    }
}

/// Differences between Envoy's and Remora's outcome for one case: (failing, allowed).
pub fn diff_outcomes(case: &Case, envoy: &Outcome, remora: &Outcome) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut allowed = Vec::new();
    if envoy.status != remora.status {
        out.push(format!("status: envoy={} remora={}", envoy.status, remora.status));
    }
    // only whether the exchange failed: how (closed, reset, which message) depends on timing
    if envoy.error.is_some() != remora.error.is_some() {
        out.push(format!("error: envoy={:?} remora={:?}", envoy.error, remora.error));
    }
    if envoy.hits != remora.hits {
        out.push(format!("upstream hits: envoy={:?} remora={:?}", envoy.hits, remora.hits));
    }
    diff_headers("response header", &envoy.headers, &remora.headers, case, &mut out, &mut allowed);
    diff_headers("trailer", &envoy.trailers, &remora.trailers, case, &mut out, &mut allowed);
    match (&envoy.body, &remora.body) {
        (Body::Echo(a), Body::Echo(b)) => {
            for (field, x, y) in [
                ("upstream", &a.upstream, &b.upstream),
                ("method", &a.method, &b.method),
                ("path", &a.path, &b.path),
                ("version", &a.version, &b.version),
                ("authority", &a.authority, &b.authority),
                ("body", &a.body, &b.body),
            ] {
                if x != y {
                    out.push(format!("upstream saw {field}: envoy={x:?} remora={y:?}"));
                }
            }
            diff_headers("upstream header", &a.headers, &b.headers, case, &mut out, &mut allowed);
        }
        (a, b) if a != b => out.push(format!("client body: envoy={a:?}\n        remora={b:?}")),
        _ => {}
    }
    (out, allowed)
}

// ---------------------------------------------------------------------------------------------
// the two test entry points
// ---------------------------------------------------------------------------------------------

/// Cut every line of a report to a readable length (a padded header is kilobytes long).
fn clip_lines(report: &str) -> String {
    const MAX: usize = 300;
    let mut out = String::with_capacity(report.len().min(64 * 1024));
    for line in report.lines() {
        if line.len() > MAX {
            let mut cut = MAX;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            let _ = writeln!(out, "{}… (+{} bytes)", &line[..cut], line.len() - cut);
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

fn describe(case: &Case) -> String {
    format!(
        "{} {} {} (authority {}, {})",
        case.name,
        case.method,
        case.path,
        case.authority,
        if case.http2 { "h2c" } else { "h1" }
    )
}

/// The oracle half: run `suite` under real Envoy and check every case's expectations.
/// Skips (returns) when Envoy is unavailable outside CI.
pub async fn envoy_oracle(suite_name: &str) {
    let Some(envoy) = support::envoy_binary() else {
        return;
    };
    let suite = load_suite(suite_name);
    assert!(!suite.cases.is_empty(), "{suite_name}: no cases");
    let run = run_suite(ProxyKind::Envoy, &envoy, &suite).await.unwrap_or_else(|e| panic!("{suite_name}: {e}"));
    let mut report = String::new();
    let mut failed = 0;
    for (case, outcome) in suite.cases.iter().zip(&run.outcomes) {
        let errs = check_expectations(case, outcome);
        if !errs.is_empty() {
            failed += 1;
            let _ = writeln!(report, "\n[{}]", describe(case));
            for e in errs {
                let _ = writeln!(report, "    {e}");
            }
            let _ = writeln!(report, "    outcome: {outcome:#?}");
        }
    }
    if std::env::var_os("DIFFTEST_DUMP").is_some() {
        eprintln!("--- {suite_name} rendered config ---\n{}", run.config);
        for (case, outcome) in suite.cases.iter().zip(&run.outcomes) {
            eprintln!("[{}] {outcome:?}\n", describe(case));
        }
    }
    assert!(
        failed == 0,
        "{suite_name}: {} disagrees with {failed} of {} case expectations:{}\n--- log ---\n{}",
        run.kind.name(),
        suite.cases.len(),
        clip_lines(&report),
        run.logs
    );
}

/// The comparison: run `suite` under Envoy and under Remora (fresh upstreams each), and fail
/// with a per-case diff when they differ outside the declared known differences.
pub async fn remora_matches_envoy(suite_name: &str) {
    let Some(envoy) = support::envoy_binary() else {
        return;
    };
    let suite = load_suite(suite_name);
    let envoy_run =
        run_suite(ProxyKind::Envoy, &envoy, &suite).await.unwrap_or_else(|e| panic!("{suite_name} under envoy: {e}"));
    let remora_run = run_suite(ProxyKind::Remora, &support::remora_binary(), &suite)
        .await
        .unwrap_or_else(|e| panic!("{suite_name} under remora: {e}"));
    let mut report = String::new();
    let mut failed = 0;
    for ((case, e), r) in suite.cases.iter().zip(&envoy_run.outcomes).zip(&remora_run.outcomes) {
        let (diffs, allowed) = diff_outcomes(case, e, r);
        for a in &allowed {
            eprintln!("[{}] allowed: {a}", case.name);
        }
        // A declared known difference also exempts that header from the case file's expectations.
        let expectation_errs: Vec<String> = check_expectations(case, r)
            .into_iter()
            .filter(|x| !case.known_differences.iter().any(|(h, _)| x.contains(&format!("`{h}`"))))
            .collect();
        if diffs.is_empty() && expectation_errs.is_empty() {
            continue;
        }
        failed += 1;
        let _ = writeln!(report, "\n[{}]", describe(case));
        for d in diffs {
            let _ = writeln!(report, "    {d}");
        }
        for x in expectation_errs {
            let _ = writeln!(report, "    remora vs case file: {x}");
        }
    }
    assert!(
        failed == 0,
        "{suite_name}: Remora differs from Envoy in {failed} of {} cases:\n{}\n--- remora log ---\n{}",
        suite.cases.len(),
        clip_lines(&report),
        remora_run.logs
    );
}
