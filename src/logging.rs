//! Log output: human-readable text on a terminal, JSON lines otherwise, and a level that a
//! config reload can change while the server runs.
//!
//! Under systemd, stderr is the journal. Each JSON line is then prefixed with the syslog
//! priority (`<3>`, `<4>`, `<6>`, `<7>`), which journald strips and stores as `PRIORITY=`, so
//! `journalctl -p warning` works and `journalctl -o cat` still shows one JSON object a line.
//! The level lives behind a `tracing_subscriber` reload handle; the server calls
//! [`apply_level`] at start and on every reload.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The environment variable holding the default filter (e.g. `debug`, `info,smtp_relay=trace`).
pub const LEVEL_ENV: &str = "SMTP_RELAY_LOG";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON lines otherwise.
    Auto,
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log level `{directive}`: {message}")]
    BadLevel { directive: String, message: String },
    #[error("logging is not initialised")]
    NotInitialised,
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

struct State {
    handle: reload::Handle<EnvFilter, Registry>,
    /// What the level falls back to when the config sets none: `SMTP_RELAY_LOG` or the
    /// command's default.
    startup: String,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Parses a level or filter directive the way the logger will.
pub fn parse_level(directive: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::builder()
        .parse(directive)
        .map_err(|e| LogError::BadLevel {
            directive: directive.to_string(),
            message: e.to_string(),
        })
}

/// Installs the global subscriber. `default_level` applies when `SMTP_RELAY_LOG` is unset.
pub fn init(format: LogFormat, default_level: &str) {
    let startup = std::env::var(LEVEL_ENV)
        .ok()
        .filter(|s| parse_level(s).is_ok())
        .unwrap_or_else(|| default_level.to_string());
    let filter = parse_level(&startup).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Auto => !terminal,
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let writer = StderrWriter {
        journald: stderr_is_journal(),
    };
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
    });
    let text_layer = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(terminal)
            .with_writer(writer)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(json_layer)
        .with(text_layer)
        .try_init()
        .is_ok();
    if installed {
        let _ = STATE.set(State { handle, startup });
    }
}

/// Sets the level from the config (`[log] level`), or back to the startup level when the
/// config has none. Returns the directive now in force.
pub fn apply_level(configured: Option<&str>) -> Result<String, LogError> {
    let state = STATE.get().ok_or(LogError::NotInitialised)?;
    let directive = configured.unwrap_or(&state.startup).to_string();
    let filter = parse_level(&directive)?;
    state
        .handle
        .reload(filter)
        .map_err(|e| LogError::Reload(e.to_string()))?;
    Ok(directive)
}

/// Whether stderr is the systemd journal: `$JOURNAL_STREAM` names its device and inode.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(expected) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = expected.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// sd-daemon(3) priority prefix for a level.
fn priority(level: &tracing::Level) -> &'static [u8] {
    match *level {
        tracing::Level::ERROR => b"<3>",
        tracing::Level::WARN => b"<4>",
        tracing::Level::INFO => b"<6>",
        _ => b"<7>",
    }
}

#[derive(Clone, Copy)]
struct StderrWriter {
    journald: bool,
}

/// One event: the formatter hands over a whole line, which goes out in a single write so
/// lines from different threads never interleave.
struct EventWriter {
    prefix: Option<&'static [u8]>,
}

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        match self.prefix.take() {
            Some(p) => {
                let mut line = Vec::with_capacity(p.len() + buf.len());
                line.extend_from_slice(p);
                line.extend_from_slice(buf);
                err.write_all(&line)?;
            }
            None => err.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrWriter {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter { prefix: None }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EventWriter {
        EventWriter {
            prefix: self.journald.then(|| priority(meta.level())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_or_are_named() {
        assert!(parse_level("debug").is_ok());
        assert!(parse_level("info,smtp_relay=trace").is_ok());
        let err = parse_level("loud=verbose!").unwrap_err().to_string();
        assert!(err.contains("loud=verbose!"), "{err}");
    }
}
