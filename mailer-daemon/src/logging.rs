//! Logs: tracing to stderr, or natively to the journal under systemd; quiet at the default
//! level (one line per message event).

use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter, Registry};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The level in effect, changeable on reload unless the environment fixed it.
pub struct Level {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
}

impl Level {
    /// Applies the configuration's `[log] level` (after a reload).
    pub fn set(&self, level: &str) -> Result<(), String> {
        let Some(handle) = &self.handle else {
            return Ok(());
        };
        let filter =
            EnvFilter::try_new(level).map_err(|e| format!("[log] level {level:?}: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Level from MAILER_LOG, else RUST_LOG, else the configuration's `[log] level`.
pub fn init(config_level: &str, format: Format) -> Level {
    let from_env = std::env::var("MAILER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok());
    let fixed = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(config_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let journal = stderr_is_the_journal();
    let lines = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let lines = match (format, journal) {
        (Format::Json, _) => lines.json().boxed(),
        (Format::Text, true) => match journald() {
            Some(native) => native.boxed(),
            // journald stamps every line itself.
            None => lines.without_time().boxed(),
        },
        (Format::Text, false) => lines.boxed(),
    };
    let _ = Registry::default().with(filter).with(lines).try_init();
    Level {
        handle: (!fixed).then_some(handle),
    }
}

/// systemd sets `JOURNAL_STREAM=DEV:INODE` for a service whose stderr is the journal. The
/// variable is inherited by whatever the service starts, and a child's stderr may be
/// something else (a pipe, a file), so it counts only when it names our stderr (as
/// systemd.exec(5) advises).
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var("JOURNAL_STREAM").ok() else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The journal's native protocol: each event's fields become journal fields (`QUEUE_ID`,
/// `RECIPIENT`, `ACTION`, `STATUS` on message events), unprefixed, so that
/// `journalctl -u mailer QUEUE_ID=…` shows one message's whole story; journald adds the time.
/// None when the journal's socket cannot be reached: the caller falls back to stderr.
fn journald() -> Option<tracing_journald::Layer> {
    match tracing_journald::layer() {
        Ok(layer) => Some(
            layer
                .with_field_prefix(None)
                .with_syslog_identifier("mailer".to_string()),
        ),
        Err(e) => {
            eprintln!("mailer: the journal's socket cannot be reached ({e}); logging to stderr");
            None
        }
    }
}
