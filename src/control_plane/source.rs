//! The config directory: `*.yaml` / `*.yml` / `*.json` files (multi-document YAML allowed), each
//! document a plain Envoy resource (`@type` Listener, Cluster, RouteConfiguration,
//! ClusterLoadAssignment, Secret; also Envoy's file-xDS form `{resources: [...]}`) or an Istio
//! networking resource. Files are re-read when the directory changes (`notify`, with a short
//! debounce, and a slow poll as a safety net, or a fast poll when notify is unavailable).
//!
//! A file with any bad document is reported (file, document, resource, field) and its previous
//! good contents keep being served; the other files are unaffected.
//!
//! Owns: reading, parsing and validating files, and the watch loop. Must not speak xDS.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::{error, info, warn};

use super::istio::{self, IstioError, IstioObject};
use super::resource::{encode, fnv1a, Kind, Resource, ResourceError};
use super::server::cache::Cache;

/// Why a file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: document {doc}: {reason}")]
    Parse { file: String, doc: usize, reason: String },
    #[error("{file}: document {doc}: {source}")]
    Envoy { file: String, doc: usize, source: Box<ResourceError> },
    #[error("{file}: document {doc}: {source}")]
    Istio { file: String, doc: usize, source: Box<IstioError> },
}

/// One usable document.
#[derive(Debug, Clone)]
enum Doc {
    Envoy(Resource),
    Istio(IstioObject),
}

struct FileState {
    digest: u64,
    good: Option<Arc<Vec<Doc>>>,
}

/// The directory and the last good contents of each file in it.
pub struct Source {
    dir: PathBuf,
    opts: istio::Options,
    files: BTreeMap<PathBuf, FileState>,
}

impl Source {
    pub fn new(dir: &Path, opts: istio::Options) -> std::io::Result<Self> {
        if !dir.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(Source { dir: dir.to_path_buf(), opts, files: BTreeMap::new() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the directory (reparsing only changed files) and returns everything to serve.
    pub fn load(&mut self) -> Vec<Resource> {
        let paths = match config_files(&self.dir) {
            Ok(p) => p,
            Err(e) => {
                error!(dir = %self.dir.display(), error = %e, "cannot list the config directory; serving the previous config");
                return self.resources();
            }
        };
        self.files.retain(|p, _| {
            let keep = paths.contains(p);
            if !keep {
                info!(file = %p.display(), "config file removed");
            }
            keep
        });
        for path in paths {
            let text = match std::fs::read(&path) {
                Ok(t) => t,
                Err(source) => {
                    let e = FileError::Read { file: path.display().to_string(), source };
                    error!("{e}; keeping the previous good version of this file");
                    continue;
                }
            };
            let digest = fnv1a(&text);
            if self.files.get(&path).is_some_and(|s| s.digest == digest) {
                continue;
            }
            let parsed = parse_file(&path, &String::from_utf8_lossy(&text));
            let state = self.files.entry(path.clone()).or_insert(FileState { digest, good: None });
            state.digest = digest;
            match parsed {
                Ok(docs) => {
                    info!(file = %path.display(), documents = docs.len(), "config file loaded");
                    state.good = Some(Arc::new(docs));
                }
                Err(e) => {
                    let kept = if state.good.is_some() {
                        "keeping the previous good version of this file"
                    } else {
                        "the file is not served"
                    };
                    error!("invalid config: {e}; {kept}");
                }
            }
        }
        self.resources()
    }

    /// Translates and merges the good documents of every file.
    fn resources(&self) -> Vec<Resource> {
        let mut plain: Vec<Resource> = Vec::new();
        let mut objects: Vec<IstioObject> = Vec::new();
        for state in self.files.values() {
            for doc in state.good.iter().flat_map(|d| d.iter()) {
                match doc {
                    Doc::Envoy(r) => plain.push(r.clone()),
                    Doc::Istio(o) => objects.push(o.clone()),
                }
            }
        }
        let mut out: HashMap<(&'static str, String), Resource> = HashMap::new();
        let mut scoped = Vec::new();
        for g in istio::translate(&objects, &self.opts) {
            match encode(g.kind, &g.json) {
                Ok(mut r) if g.scope.is_some() => {
                    r.scope = g.scope;
                    scoped.push(r);
                }
                Ok(r) => {
                    out.insert((r.type_url, r.name.clone()), r);
                }
                Err(e) => error!("translated Istio config is not valid Envoy config (skipped): {e}"),
            }
        }
        for r in plain {
            let key = (r.type_url, r.name.clone());
            if out.contains_key(&key) {
                warn!(name = %r.name, type_url = r.type_url, "plain resource replaces one with the same name (from Istio translation or an earlier file)");
            }
            out.insert(key, r);
        }
        let mut v: Vec<Resource> = out.into_values().chain(scoped).collect();
        v.sort_by(|a, b| (&a.scope, a.type_url, &a.name).cmp(&(&b.scope, b.type_url, &b.name)));
        v
    }
}

/// The config files of `dir`, sorted (hidden files and editors' temporaries excluded).
fn config_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ext_ok = ["yaml", "yml", "json"].iter().any(|e| path.extension().is_some_and(|x| x == *e));
        if ext_ok && !name.starts_with('.') && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The documents of a YAML stream: split at `---` lines (a `...` line ends a document).
fn split_yaml(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") || t.starts_with("---\t") {
            docs.push(line[3..].to_string() + "\n");
        } else if t == "..." {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.retain(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    docs
}

fn parse_file(path: &Path, text: &str) -> Result<Vec<Doc>, FileError> {
    let file = path.display().to_string();
    let is_json = path.extension().is_some_and(|e| e == "json");
    let texts = if is_json { vec![text.to_string()] } else { split_yaml(text) };
    let mut values = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let name = if is_json { "doc.json" } else { "doc.yaml" };
        let v = crate::bootstrap::parse_document(name, t).map_err(|e| FileError::Parse {
            file: file.clone(),
            doc: i + 1,
            reason: e.to_string(),
        })?;
        values.push((i + 1, v));
    }
    let mut docs = Vec::new();
    for (n, v) in values {
        for item in expand(v) {
            docs.extend(parse_doc(&file, n, item)?);
        }
    }
    Ok(docs)
}

/// A list of documents, Envoy's file-xDS `{resources: [...]}` or a Kubernetes `List` → items.
fn expand(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        Value::Object(mut m) => {
            let file_xds =
                m.get("@type").is_none() && m.get("kind").is_none() && m.get("resources").is_some_and(Value::is_array);
            let k8s_list = m.get("kind").and_then(Value::as_str) == Some("List");
            match (file_xds, k8s_list) {
                (true, _) => take_array(&mut m, "resources"),
                (_, true) => take_array(&mut m, "items"),
                _ => vec![Value::Object(m)],
            }
        }
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

fn take_array(m: &mut serde_json::Map<String, Value>, key: &str) -> Vec<Value> {
    match m.remove(key) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

fn parse_doc(file: &str, n: usize, v: Value) -> Result<Option<Doc>, FileError> {
    if let Some(t) = v.get("@type").and_then(Value::as_str) {
        let Some(kind) = Kind::from_type(t) else {
            return Err(FileError::Parse {
                file: file.into(),
                doc: n,
                reason: format!("unsupported @type '{t}' (expected a Listener, Cluster, RouteConfiguration, ClusterLoadAssignment or Secret)"),
            });
        };
        let mut body = v;
        if let Value::Object(m) = &mut body {
            m.remove("@type");
        }
        return encode(kind, &body).map(|r| Some(Doc::Envoy(r))).map_err(|source| FileError::Envoy {
            file: file.into(),
            doc: n,
            source: Box::new(source),
        });
    }
    if istio::is_kubernetes_object(&v) {
        return istio::parse(&v).map(|o| o.map(Doc::Istio)).map_err(|source| FileError::Istio {
            file: file.into(),
            doc: n,
            source: Box::new(source),
        });
    }
    Err(FileError::Parse {
        file: file.into(),
        doc: n,
        reason: "neither an Envoy resource (no @type) nor an Istio resource (no apiVersion/kind)".into(),
    })
}

/// Debounce: after a change, wait until the directory is quiet this long (at most `MAX_DELAY`).
const QUIET: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(400);

/// Watches the directory and updates the cache after every change, until the task is aborted.
pub async fn watch(mut source: Source, cache: Arc<Cache>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = start_notify(source.dir(), tx);
    let (mut rx, poll) = match &watcher {
        Ok(_) => (Some(rx), Duration::from_secs(2)),
        Err(e) => {
            warn!(dir = %source.dir().display(), error = %e, "file notifications unavailable; polling every 500 ms");
            (None, Duration::from_millis(500))
        }
    };
    loop {
        match rx.as_mut() {
            Some(r) => {
                tokio::select! {
                    ev = r.recv() => if ev.is_none() { rx = None; },
                    _ = tokio::time::sleep(poll) => {}
                }
                let deadline = tokio::time::Instant::now() + MAX_DELAY;
                while let Some(r) = rx.as_mut() {
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                    match tokio::time::timeout(QUIET, r.recv()).await {
                        Ok(Some(())) => continue,
                        _ => break,
                    }
                }
            }
            None => tokio::time::sleep(poll).await,
        }
        let loaded = tokio::task::spawn_blocking(move || {
            let r = source.load();
            (source, r)
        })
        .await;
        let Ok((s, resources)) = loaded else {
            error!("config reload task failed; the watch stops and the current config stays served");
            return;
        };
        source = s;
        if cache.update(resources) {
            let snap = cache.current();
            info!(serial = snap.serial, resources = %snap.counts(), "config changed; pushing to connected clients");
        }
    }
}

/// A notify watcher that signals `tx` on every change in `dir` (kept alive by the returned value).
fn start_notify(dir: &Path, tx: tokio::sync::mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !matches!(ev.kind, EventKind::Access(_)) {
                let _ = tx.try_send(());
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_streams_split() {
        let docs = split_yaml("a: 1\n---\n# only a comment\n---\nb: 2\n...\n");
        assert_eq!(docs.len(), 2);
        assert!(docs[1].contains("b: 2"));
    }
}
