//! `trackstore`: the server binary. With no argument it runs a local primary (data in ./data,
//! loopback ports); see `trackstore --help` and the README.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use trackstore_server::config::{Config, Flags, LogFormat};

/// mimalloc rather than glibc's malloc: after a retention step (tens of MB allocated and freed at
/// once) glibc's small allocations took its slow path for the rest of the run; the writer spent a
/// fifth of its time in malloc and ingest ran at ~75% of its plain figure between steps
/// (bench/RESULTS.md, issue 6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any thread or allocation of note (see the function for the measurements).
    let huge_pages_off = trackstore_engine::memory::disable_transparent_huge_pages();
    let flags = Flags::parse();
    let config = match Config::resolve(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trackstore: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_format);
    if let Err(e) = huge_pages_off {
        tracing::warn!("transparent huge pages stay on for this process (prctl failed: {e})");
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("trackstore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: logs collected from a pipe stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Bounds the threads that run engine reads and large parses.
        .max_blocking_threads(64)
        .thread_name("trackstore")
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(trackstore_server::server::run(config))
        .map_err(anyhow::Error::from)
}
