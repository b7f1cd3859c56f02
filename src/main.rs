//! The `remora` binary: Envoy's command line, plus subcommands (`remora control-plane ...`,
//! `remora demo`). Thin: everything lives in the library.

use std::process::ExitCode;

use clap::Parser;
use remora::bootstrap::cli::{Mode, Options};

mod demo;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("control-plane") {
        return remora::control_plane::cli::main(std::env::args().skip(1));
    }
    if std::env::args().nth(1).as_deref() == Some("demo") {
        return demo::main(std::env::args().skip(1));
    }
    let opts = Options::parse();
    if opts.version {
        println!("remora version: {}/Clean/RELEASE/rustls", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    init_logging(&opts);
    let config_name = opts.config_path.clone().unwrap_or_else(|| "--config-yaml".into());
    match opts.mode {
        Mode::Validate => match remora::server::load(&opts) {
            Ok(snapshot) => {
                for note in &snapshot.notes {
                    eprintln!("warning: {note}");
                }
                println!("configuration '{config_name}' OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error initializing configuration '{config_name}': {e}");
                ExitCode::FAILURE
            }
        },
        Mode::Serve | Mode::InitOnly => {
            let runtime = match build_runtime(opts.concurrency) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                if opts.mode == Mode::InitOnly {
                    return remora::server::load(&opts).map(|_| ());
                }
                remora::server::run(&opts).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error initializing configuration '{config_name}': {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `--concurrency 1` runs everything on one thread (Envoy's single worker), otherwise a worker
/// per requested (or available) core.
fn build_runtime(concurrency: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tune_allocator();
    if concurrency == 1 {
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if concurrency > 1 {
        b.worker_threads(concurrency);
    }
    b.enable_all().build()
}

fn init_logging(opts: &Options) {
    remora::telemetry::logging::init(&opts.tracing_filter(), "info", opts.log_path.as_deref());
}

/// glibc raises its trim threshold after large frees, so buffers of connections that have closed
/// stay resident forever. Fixed thresholds keep an idle sidecar's heap small: freed memory at the
/// top of the heap is returned once 128 KiB accumulate, and buffers of 512 KiB or more are mapped
/// on their own and unmapped when freed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 * 1024);
    }
}
