//! Logging setup: `tracing` to stderr, human-readable by default or JSON lines with
//! `--log-format json`, filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

/// The log line format chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    // The PostgreSQL client logs every statement and its parameters at DEBUG: too much
    // for `RUST_LOG=debug`, and event bodies have no place in the log; and the server's
    // notices at INFO ("schema ... already exists, skipping" at each start), which say
    // nothing wrong. Its warnings stay; asked for by name, all of it is shown.
    let directives = if wanted.contains("tokio_postgres") {
        wanted
    } else {
        format!("{wanted},tokio_postgres=warn")
    };
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Only fails if a subscriber is already installed (tests); keep that one.
    let _ = result;
}
