//! TOML configuration → typed, validated [`Config`].
//!
//! The documented example `config/smtp-relay.toml` is compiled in and is the built-in default,
//! so `smtp-relay serve` runs with no file at all. Every mistake is reported with the key (and
//! the line when it can be found) so a sysadmin never has to guess what to fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The example config, which is also the built-in default.
pub const DEFAULT_CONFIG: &str = include_str!("../config/smtp-relay.toml");
pub const DEFAULT_SOURCE: &str = "<built-in config/smtp-relay.toml>";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}{line}: key `{key}`: {message}")]
    Invalid {
        path: String,
        line: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    pub tls: TlsConfig,
    #[serde(rename = "listener", default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub queue: QueueConfig,
    pub delivery: DeliveryConfig,
    #[serde(rename = "upstream", default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Name used in the greeting, EHLO reply and Received headers.
    pub hostname: String,
    pub state_dir: PathBuf,
    /// Server secret for token HMACs. Empty: `$CREDENTIALS_DIRECTORY/server-secret` when
    /// systemd provides it, else `<state_dir>/secret`, generated with mode 0600.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    #[serde(default = "d_max_connections")]
    pub max_connections: usize,
    #[serde(default = "d_max_message_size")]
    pub max_message_size: usize,
    #[serde(default = "d_max_recipients")]
    pub max_recipients: usize,
    #[serde(default = "d_grace")]
    pub shutdown_grace_secs: u64,
    /// Wait for fsync before answering 250. Turn off only for development benchmarks.
    #[serde(default = "d_true")]
    pub durable_ack: bool,
    /// New messages get 452 4.3.1 while less than this many MiB would stay free on the
    /// state directory's filesystem.
    #[serde(default = "d_min_free")]
    pub min_free_space_mb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    #[serde(default = "d_handshake")]
    pub tls_handshake_secs: u64,
    #[serde(default = "d_command")]
    pub command_secs: u64,
    #[serde(default = "d_command")]
    pub data_secs: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            tls_handshake_secs: d_handshake(),
            command_secs: d_command(),
            data_secs: d_command(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Generate a self-signed development certificate when the files do not exist.
    #[serde(default)]
    pub generate_dev_cert: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Plain SMTP upgraded with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS at all: loopback addresses only.
    Plain,
}

impl ListenerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerMode::Starttls => "starttls",
            ListenerMode::Implicit => "implicit",
            ListenerMode::Plain => "plain",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub mode: ListenerMode,
    /// Plain listeners only: allow AUTH without TLS (loopback only).
    #[serde(default)]
    pub allow_plaintext_auth: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(default = "d_workers")]
    pub workers: usize,
    /// Delay before each retry; the last entry repeats until `max_age_secs`.
    #[serde(default = "d_schedule")]
    pub retry_schedule_secs: Vec<u64>,
    #[serde(default = "d_max_age")]
    pub max_age_secs: u64,
    #[serde(default = "d_poll")]
    pub poll_interval_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            workers: d_workers(),
            retry_schedule_secs: d_schedule(),
            max_age_secs: d_max_age(),
            poll_interval_ms: d_poll(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Name of the `[upstream.<name>]` every project uses.
    pub default_route: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// Writes each message as an `.eml` file: the relay works with no external server.
    Outbox,
    Smtp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    Starttls,
    Implicit,
    /// Loopback only.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamAuth {
    /// PLAIN or LOGIN, whichever the upstream offers.
    Plain,
    Login,
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(rename = "type")]
    pub kind: UpstreamKind,
    /// outbox: directory for the `.eml` files.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    #[serde(default)]
    pub auth: Option<UpstreamAuth>,
    #[serde(default)]
    pub username: Option<String>,
    /// The password/API key is read from this file (systemd `LoadCredential=`)…
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// …or from this environment variable. Never written inline in the config.
    #[serde(default)]
    pub password_env: Option<String>,
    /// PEM CA bundle to trust instead of the public web roots (private upstreams, tests).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// EHLO name to present; defaults to `server.hostname`.
    #[serde(default)]
    pub helo_name: Option<String>,
    #[serde(default = "d_connect")]
    pub connect_timeout_secs: u64,
    #[serde(default = "d_upstream_cmd")]
    pub command_timeout_secs: u64,
    #[serde(default = "d_upstream_data")]
    pub data_timeout_secs: u64,
}

fn d_true() -> bool {
    true
}
fn d_min_free() -> u64 {
    64
}
fn d_max_connections() -> usize {
    1000
}
fn d_max_message_size() -> usize {
    25 * 1024 * 1024
}
fn d_max_recipients() -> usize {
    100
}
fn d_grace() -> u64 {
    30
}
fn d_handshake() -> u64 {
    10
}
fn d_command() -> u64 {
    300
}
fn d_workers() -> usize {
    4
}
fn d_schedule() -> Vec<u64> {
    vec![60, 120, 300, 600, 1800, 3600]
}
fn d_max_age() -> u64 {
    2 * 24 * 3600
}
fn d_poll() -> u64 {
    500
}
fn d_connect() -> u64 {
    30
}
fn d_upstream_cmd() -> u64 {
    120
}
fn d_upstream_data() -> u64 {
    600
}

impl Config {
    /// The built-in defaults (the example config).
    pub fn builtin() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_CONFIG, DEFAULT_SOURCE)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// `path`, or the built-in default when `None`.
    pub fn load_or_builtin(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::load(p),
            None => Config::builtin(),
        }
    }

    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: source.to_string(),
            message: one_line(&e.to_string()),
        })?;
        config.validate(text, source)?;
        Ok(config)
    }

    fn validate(&self, text: &str, source: &str) -> Result<(), ConfigError> {
        let bad = |table: &str, key: &str, message: String| ConfigError::Invalid {
            path: source.to_string(),
            line: find_line(text, table, key)
                .map(|n| format!(":{n}"))
                .unwrap_or_default(),
            key: if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            },
            message,
        };
        if self.server.hostname.trim().is_empty()
            || self
                .server
                .hostname
                .contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                "server",
                "hostname",
                "must be a host name without spaces".into(),
            ));
        }
        if self.server.max_connections == 0 {
            return Err(bad(
                "server",
                "max_connections",
                "must be at least 1".into(),
            ));
        }
        if self.server.max_message_size < 1024 {
            return Err(bad(
                "server",
                "max_message_size",
                "must be at least 1024 bytes".into(),
            ));
        }
        if self.server.max_recipients == 0 {
            return Err(bad("server", "max_recipients", "must be at least 1".into()));
        }
        for (key, v) in [
            ("tls_handshake_secs", self.timeouts.tls_handshake_secs),
            ("command_secs", self.timeouts.command_secs),
            ("data_secs", self.timeouts.data_secs),
        ] {
            if v == 0 {
                return Err(bad("timeouts", key, "must be at least 1 second".into()));
            }
        }
        if self.listeners.is_empty() {
            return Err(bad(
                "",
                "listener",
                "at least one [[listener]] is needed".into(),
            ));
        }
        for l in &self.listeners {
            if l.mode == ListenerMode::Plain && !l.address.ip().is_loopback() {
                return Err(bad(
                    "listener",
                    "mode",
                    format!(
                        "a plain (no TLS) listener is only allowed on a loopback address, not {}",
                        l.address
                    ),
                ));
            }
            if l.allow_plaintext_auth && l.mode != ListenerMode::Plain {
                return Err(bad(
                    "listener",
                    "allow_plaintext_auth",
                    "only applies to mode = \"plain\"".into(),
                ));
            }
        }
        if self.queue.workers == 0 {
            return Err(bad("queue", "workers", "must be at least 1".into()));
        }
        if self.queue.retry_schedule_secs.is_empty() {
            return Err(bad(
                "queue",
                "retry_schedule_secs",
                "needs at least one delay".into(),
            ));
        }
        if self.queue.max_age_secs == 0 {
            return Err(bad("queue", "max_age_secs", "must be at least 1".into()));
        }
        if self.queue.poll_interval_ms == 0 {
            return Err(bad(
                "queue",
                "poll_interval_ms",
                "must be at least 1".into(),
            ));
        }
        if !self.upstreams.contains_key(&self.delivery.default_route) {
            return Err(bad(
                "delivery",
                "default_route",
                format!("no [upstream.{}] is defined", self.delivery.default_route),
            ));
        }
        for (name, u) in &self.upstreams {
            let table = format!("upstream.{name}");
            match u.kind {
                UpstreamKind::Outbox => {
                    if u.dir.is_none() {
                        return Err(bad(&table, "dir", "an outbox upstream needs `dir`".into()));
                    }
                }
                UpstreamKind::Smtp => {
                    if u.host.as_deref().is_none_or(|h| h.trim().is_empty()) {
                        return Err(bad(&table, "host", "an smtp upstream needs `host`".into()));
                    }
                    if u.port.is_none() {
                        return Err(bad(&table, "port", "an smtp upstream needs `port`".into()));
                    }
                    let tls = u.tls.unwrap_or(UpstreamTls::Starttls);
                    if tls == UpstreamTls::None {
                        let host = u.host.as_deref().unwrap_or_default();
                        let loopback = host == "localhost"
                            || host
                                .parse::<std::net::IpAddr>()
                                .is_ok_and(|ip| ip.is_loopback());
                        if !loopback {
                            return Err(bad(
                                &table,
                                "tls",
                                format!(
                                    "tls = \"none\" is only allowed toward a loopback address, not {host}"
                                ),
                            ));
                        }
                    }
                    let auth = u.auth.unwrap_or(UpstreamAuth::None);
                    if auth != UpstreamAuth::None {
                        if u.username.is_none() {
                            return Err(bad(&table, "username", "needed when auth is set".into()));
                        }
                        if u.password_file.is_none() && u.password_env.is_none() {
                            return Err(bad(
                                &table,
                                "password_file",
                                "auth needs password_file or password_env".into(),
                            ));
                        }
                    }
                }
            }
            for (key, v) in [
                ("connect_timeout_secs", u.connect_timeout_secs),
                ("command_timeout_secs", u.command_timeout_secs),
                ("data_timeout_secs", u.data_timeout_secs),
            ] {
                if v == 0 {
                    return Err(bad(&table, key, "must be at least 1 second".into()));
                }
            }
        }
        Ok(())
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.command_secs)
    }
    pub fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.data_secs)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.timeouts.tls_handshake_secs)
    }

    /// Path of the admin socket the CLI uses to talk to a running server.
    pub fn admin_socket(&self) -> PathBuf {
        self.server.state_dir.join("admin.sock")
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Finds the 1-based line of `key = …` inside `[table]` (or `[[table]]`), best effort.
fn find_line(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix('[') {
            current = rest
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            if table.is_empty() && current == key {
                return Some(i + 1);
            }
            continue;
        }
        if current == table
            && let Some(rest) = t.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_config_is_valid() {
        let c = Config::builtin().expect("built-in config must parse");
        assert_eq!(c.delivery.default_route, "outbox");
        assert_eq!(c.listeners.len(), 2);
    }

    #[test]
    fn errors_name_key_and_line() {
        let text = DEFAULT_CONFIG.replace("max_recipients = 100", "max_recipients = 0");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("server.max_recipients"), "{err}");
        assert!(err.starts_with("x.toml:"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = DEFAULT_CONFIG.replace("[server]", "[server]\nhostnme = \"x\"");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("hostnme"), "{err}");
    }

    #[test]
    fn plain_listener_must_be_loopback() {
        let text = format!(
            "{DEFAULT_CONFIG}\n[[listener]]\naddress = \"0.0.0.0:2525\"\nmode = \"plain\"\n"
        );
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("listener.mode"), "{err}");
    }
}
