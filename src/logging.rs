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

/// The relay's own events: a bare level (`trace`, `debug`) applies to these only.
const OWN_TARGET: &str = "smtp_relay";

/// What a bare level means. `debug` or `trace` alone would bury the relay's own events under
/// sled's and rustls' internals, so a bare level more verbose than `info` applies to the
/// relay only and dependencies stay at `info`; name one to hear more of it
/// (`smtp_relay=trace,sled=debug`). Directives with a target are kept as they are.
pub fn expand_directive(directive: &str) -> String {
    let parts: Vec<&str> = directive
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let level = |p: &str| (!p.contains('=')).then(|| p.to_ascii_lowercase());
    let verbose = |p: &str| level(p).is_some_and(|l| l == "debug" || l == "trace");
    if !parts.iter().any(|p| verbose(p)) {
        return directive.to_string();
    }
    let quieter_global = parts
        .iter()
        .any(|p| level(p).is_some_and(|l| matches!(l.as_str(), "off" | "error" | "warn" | "info")));
    let mut out: Vec<String> = parts
        .iter()
        .map(|p| {
            if verbose(p) {
                format!("{OWN_TARGET}={p}")
            } else {
                p.to_string()
            }
        })
        .collect();
    if !quieter_global {
        out.insert(0, "info".to_string());
    }
    out.join(",")
}

/// One command line as the trace transcript shows it. Only known SMTP verbs are shown: a
/// line that is not one may be a credential sent out of turn (after a refused AUTH). AUTH
/// keeps its mechanism and hides the initial response.
pub fn redact_command(line: &[u8]) -> String {
    const VERBS: &[&str] = &[
        "EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP",
        "STARTTLS", "BDAT", "ETRN", "AUTH",
    ];
    let text: String = String::from_utf8_lossy(line)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let mut words = text.split_whitespace();
    let verb = words.next().unwrap_or("").to_ascii_uppercase();
    if !VERBS.contains(&verb.as_str()) {
        return format!("[{} bytes, not a command]", line.len());
    }
    if verb == "AUTH" {
        let mechanism = words.next().unwrap_or("");
        let hidden = if words.next().is_some() {
            " [redacted]"
        } else {
            ""
        };
        return format!("AUTH {mechanism}{hidden}").trim_end().to_string();
    }
    text.chars().take(256).collect()
}

/// A reply as the transcript shows it: its lines joined with ` | `.
pub fn reply_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Parses a level or filter directive the way the logger will.
pub fn parse_level(directive: &str) -> Result<EnvFilter, LogError> {
    EnvFilter::builder()
        .parse(expand_directive(directive))
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
    fn a_bare_verbose_level_is_the_relay_only() {
        assert_eq!(expand_directive("trace"), "info,smtp_relay=trace");
        assert_eq!(expand_directive("debug"), "info,smtp_relay=debug");
        assert_eq!(expand_directive("warn,debug"), "warn,smtp_relay=debug");
        for kept in [
            "info",
            "warn",
            "smtp_relay=trace,sled=debug",
            "info,smtp_relay=trace",
            "trace,sled=trace",
        ] {
            // A directive naming targets says what it wants, except a bare verbose level,
            // which still only applies to the relay.
            let e = expand_directive(kept);
            if kept.starts_with("trace,") {
                assert_eq!(e, "info,smtp_relay=trace,sled=trace");
            } else {
                assert_eq!(e, kept);
            }
        }
    }

    #[test]
    fn the_transcript_hides_credentials() {
        assert_eq!(
            redact_command(b"AUTH PLAIN AHByal94AHNtdHByX3NlY3JldA=="),
            "AUTH PLAIN [redacted]"
        );
        assert_eq!(
            redact_command(b"auth login dXNlcg=="),
            "AUTH login [redacted]"
        );
        assert_eq!(redact_command(b"AUTH LOGIN"), "AUTH LOGIN");
        assert_eq!(
            redact_command(b"MAIL FROM:<a@b.test> SIZE=10"),
            "MAIL FROM:<a@b.test> SIZE=10"
        );
        // A base64 line sent out of turn is not shown.
        assert_eq!(
            redact_command(b"c210cHJfc2VjcmV0"),
            "[16 bytes, not a command]"
        );
        assert_eq!(redact_command(b""), "[0 bytes, not a command]");
        assert_eq!(redact_command(b"NOOP \x1b[2J"), "NOOP ?[2J");
        assert_eq!(reply_text(b"250-a\r\n250 b\r\n"), "250-a | 250 b");
    }

    #[test]
    fn levels_parse_or_are_named() {
        assert!(parse_level("debug").is_ok());
        assert!(parse_level("info,smtp_relay=trace").is_ok());
        let err = parse_level("loud=verbose!").unwrap_err().to_string();
        assert!(err.contains("loud=verbose!"), "{err}");
    }
}
