//! Logging: `tracing` events to stderr, filtered by `RUST_LOG` (default `info`), as human text or
//! as JSON lines (`--log-format json`). ANSI colours only when stderr is a terminal, because
//! tracing-subscriber would otherwise write escape codes into piped logs (DESIGN.md §9).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber. Call once, before anything logs. A second call (tests that run
/// several servers in one process) keeps the first subscriber.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
    // Err means a subscriber is already installed, which is fine.
    drop(result);
}
