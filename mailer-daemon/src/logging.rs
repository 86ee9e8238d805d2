//! Logs: tracing to stderr, quiet at the default level (one line per message event).

use tracing_subscriber::{fmt, EnvFilter};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Level from MAILER_LOG, else RUST_LOG, else the configuration's `[log] level`.
pub fn init(config_level: &str, format: Format) {
    let filter = std::env::var("MAILER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .or_else(|| EnvFilter::try_new(config_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // journald stamps every line itself.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match (format, journal) {
        (Format::Json, _) => builder.json().try_init(),
        (Format::Text, true) => builder.without_time().with_ansi(false).try_init(),
        (Format::Text, false) => builder.with_ansi(false).try_init(),
    };
}
