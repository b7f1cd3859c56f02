//! The process's log subscriber: `tracing` to stderr (or a file), one line per event, colours only
//! on a terminal. Every entry point (`remora`, `remora control-plane`, `remora demo`) uses this.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `directives` is an `EnvFilter` string; if it does not parse,
/// `fallback` applies. With `log_path`, logs are appended to that file when it can be opened.
pub fn init(directives: &str, fallback: &str, log_path: Option<&str>) {
    let filter = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new(fallback));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if let Some(path) = log_path {
        if let Ok(file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            builder.with_writer(std::sync::Mutex::new(file)).init();
            return;
        }
    }
    builder.init();
}
