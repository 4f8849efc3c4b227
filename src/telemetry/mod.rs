//! Logs, metrics and the operator's own HTTP endpoints.

pub mod metrics;
pub mod server;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber; the level comes from `RUST_LOG`
/// (default `info`). Text is coloured on a terminal only, so that a pod's log
/// and a log file hold plain lines.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().flatten_event(true)).init(),
        LogFormat::Text => {
            registry.with(tracing_subscriber::fmt::layer().with_ansi(std::io::stdout().is_terminal())).init()
        }
    }
}
