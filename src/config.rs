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

/// Provider presets (`provider = "sendgrid"`…): facts about the config, applied while parsing.
pub mod cluster;
pub mod providers;
/// `[suppression]` and `[retention]`.
pub mod retention;

/// The example config, which is also the built-in default.
pub const DEFAULT_CONFIG: &str = include_str!("../config/smtp-relay.toml");
pub const DEFAULT_SOURCE: &str = "<built-in config/smtp-relay.toml>";
/// The shortest maximum queue age (`queue.max_age_secs`, a project's max age): less could
/// expire a message before its first delivery attempt.
pub const MIN_MAX_AGE_SECS: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}{}: {message}", location(*.line, *.column, .key.as_deref()))]
    Parse {
        path: String,
        line: Option<usize>,
        column: Option<usize>,
        key: Option<String>,
        message: String,
    },
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
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The HTTP admin API (and later the web panel); off unless `address` is set.
    #[serde(default)]
    pub admin_http: AdminHttpConfig,
    /// Webhook delivery of delivery events (events::outbox).
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    /// Lifetime of suppression list entries (policy::suppression).
    #[serde(default)]
    pub suppression: retention::SuppressionConfig,
    /// How long the message log, events and webhook attempts are kept (retention.rs).
    #[serde(default)]
    pub retention: retention::RetentionConfig,
    /// The HTTP send API (Resend-compatible `POST /emails`); off unless `address` is set.
    #[serde(default)]
    pub send_api: SendApiConfig,
    /// How long idempotency keys are remembered (policy::idempotency).
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
    /// How much mail a sandbox project keeps captured (queue::sandbox).
    #[serde(default)]
    pub sandbox: SandboxConfig,
    /// Default per-project rate limits and quotas (policy::limits).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Per-client-IP abuse throttles (policy::throttle).
    #[serde(default)]
    pub throttle: ThrottleConfig,
    /// The resolver `domain verify` uses (domain_check).
    #[serde(default)]
    pub dns: DnsConfig,
    /// Several nodes sharing registry and limits through Redis (`cluster/`); absent: one node.
    #[serde(default)]
    pub cluster: Option<cluster::ClusterConfig>,
    /// Where the config came from, for errors found after parsing (secret files).
    #[serde(skip)]
    pub origin: Option<std::sync::Arc<ConfigOrigin>>,
}

/// The file name and text a [`Config`] was parsed from.
#[derive(Debug, Clone, Default)]
pub struct ConfigOrigin {
    pub path: String,
    pub text: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Level or filter (`info`, `debug`, `info,smtp_relay=trace`). Unset: `SMTP_RELAY_LOG`,
    /// else `info`. A reload applies a change.
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Loopback address of the Prometheus endpoint (`GET /metrics`). Unset: no endpoint.
    #[serde(default)]
    pub address: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminHttpConfig {
    /// Where the admin API listens. Unset: no HTTP admin server.
    #[serde(default)]
    pub address: Option<SocketAddr>,
    /// Serve HTTPS. Required on any address that is not loopback.
    #[serde(default)]
    pub tls: bool,
    /// Certificate and key for HTTPS; unset: the relay's own (`[tls]`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// How long a web panel login lasts, in hours (fractions allowed). Sessions are kept in
    /// memory: a restart ends them too.
    #[serde(default = "d_session_hours")]
    pub session_hours: f64,
}

impl Default for AdminHttpConfig {
    fn default() -> AdminHttpConfig {
        AdminHttpConfig {
            address: None,
            tls: false,
            cert_file: None,
            key_file: None,
            session_hours: d_session_hours(),
        }
    }
}

fn d_session_hours() -> f64 {
    12.0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// A key is remembered this long after its request completed (Resend: 24 h).
    #[serde(default = "d_idempotency_window")]
    pub window_secs: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            window_secs: d_idempotency_window(),
        }
    }
}

fn d_idempotency_window() -> u64 {
    86_400
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Captured messages kept per sandbox project; the oldest go first.
    #[serde(default = "d_sandbox_max")]
    pub max_messages: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_messages: d_sandbox_max(),
        }
    }
}

fn d_sandbox_max() -> usize {
    1000
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendApiConfig {
    /// Where the send API listens. Unset: no send API.
    #[serde(default)]
    pub address: Option<SocketAddr>,
    /// Serve HTTPS. Required on any address that is not loopback.
    #[serde(default)]
    pub tls: bool,
    /// Certificate and key for HTTPS; unset: the relay's own (`[tls]`).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Allow `http://` and `https://` endpoints on loopback addresses (tests, a local agent).
    /// Private and link-local targets are always refused.
    #[serde(default)]
    pub allow_loopback: bool,
    /// Delay before retry 1, 2, 3…; after the last one the delivery is given up.
    #[serde(default = "d_webhook_schedule")]
    pub retry_schedule_secs: Vec<u64>,
    /// Deadline of one request (connect, send, response).
    #[serde(default = "d_webhook_timeout")]
    pub timeout_secs: u64,
    /// An endpoint that has failed every delivery for this long is disabled.
    #[serde(default = "d_webhook_disable_after")]
    pub disable_after_secs: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            allow_loopback: false,
            retry_schedule_secs: d_webhook_schedule(),
            timeout_secs: d_webhook_timeout(),
            disable_after_secs: d_webhook_disable_after(),
        }
    }
}

fn d_webhook_schedule() -> Vec<u64> {
    vec![5, 300, 1800, 7200, 18000, 36000, 86400]
}
fn d_webhook_timeout() -> u64 {
    10
}
fn d_webhook_disable_after() -> u64 {
    5 * 86400
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
    /// Recipient domains refused with 550 5.1.2: each name and everything under it. Names
    /// without a dot are refused whatever this says.
    #[serde(default = "d_refused_recipient_domains")]
    pub refused_recipient_domains: Vec<String>,
    #[serde(default = "d_grace")]
    pub shutdown_grace_secs: u64,
    /// Wait for fsync before answering 250. Turn off only for development benchmarks.
    #[serde(default = "d_true")]
    pub durable_ack: bool,
    /// New messages get 452 4.3.1 while less than this many MiB would stay free on the
    /// state directory's filesystem.
    #[serde(default = "d_min_free")]
    pub min_free_space_mb: u64,
    /// MiB of whole large messages (over 256 KiB) held in memory at once, receiving and
    /// delivering; larger bodies wait on disk for their turn (`memory_budget.rs`).
    #[serde(default = "d_message_memory")]
    pub message_memory_mb: u64,
    /// A message with more `Received` fields than this is refused as a mail loop
    /// (`554 5.4.6`); Postfix's `hopcount_limit`.
    #[serde(default = "d_max_received")]
    pub max_received_headers: usize,
    /// Lines ending in a bare LF (no CR), in commands and DATA: read as CRLF, or refused.
    #[serde(default)]
    pub bare_newline: BareNewline,
    /// NOOP, RSET, VRFY, EXPN, HELP and unknown commands a session may send before it gets
    /// 421 4.7.0 and is closed; the count starts again when a message is accepted. 0: no limit.
    #[serde(default = "d_junk_commands")]
    pub junk_command_limit: u32,
}

/// What `[server] bare_newline` does with a line that ends in LF without CR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareNewline {
    /// Read it as CRLF (Postfix 3.9's `smtpd_forbid_bare_newline = normalize`); only
    /// CRLF.CRLF still ends DATA, and a lone `.` line next to a bare LF is refused.
    #[default]
    Normalize,
    /// Refuse it with 550 5.5.2 and close the connection.
    Reject,
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
    /// Behind a load balancer: each connection starts with a PROXY protocol header (v1 or v2)
    /// naming the real client, and only `trusted_proxies` may connect (`inbound/proxy.rs`).
    #[serde(default)]
    pub proxy_protocol: bool,
    /// CIDRs (or single addresses) of the balancers allowed to send PROXY headers.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
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
    /// Name of the `[upstream.<name>]` every project uses unless it has a route of its own.
    pub default_route: String,
    /// Upstreams tried in order when `default_route` is unreachable (see `project route`).
    #[serde(default)]
    pub default_fallbacks: Vec<String>,
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
    /// SASL XOAUTH2 with an OAuth2 access token (Gmail, Microsoft 365): see `[upstream.x.oauth2]`.
    Xoauth2,
    None,
}

/// A sending rate such as `"30/min"`: at most `count` messages per `per_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    pub count: u32,
    pub per_secs: u64,
}

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(s: String) -> Result<Rate, String> {
        let bad = || {
            format!("{s:?} is not a rate such as \"14/s\", \"30/min\", \"1000/h\" or \"2000/day\"")
        };
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per_secs = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("{s:?}: the count must be at least 1"));
        }
        Ok(Rate { count, per_secs })
    }
}

impl From<Rate> for String {
    fn from(r: Rate) -> String {
        let unit = match r.per_secs {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "day",
        };
        format!("{}/{unit}", r.count)
    }
}

/// OAuth2 for `auth = "xoauth2"`. With a refresh token the refresh-token flow is used (Gmail,
/// delegated Microsoft 365), otherwise client credentials (Microsoft 365 app registration).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// Token endpoint; `provider = "gmail" | "office365"` fill it in (office365 from `tenant`).
    #[serde(default)]
    pub token_url: Option<String>,
    /// Microsoft Entra directory (tenant) id or domain, for the office365 preset.
    #[serde(default)]
    pub tenant: Option<String>,
    pub client_id: String,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub refresh_token_file: Option<PathBuf>,
    #[serde(default)]
    pub refresh_token_env: Option<String>,
    /// Deadline for one token request.
    #[serde(default = "d_token_timeout")]
    pub timeout_secs: u64,
}

impl OAuth2Config {
    pub fn uses_refresh_token(&self) -> bool {
        self.refresh_token_file.is_some() || self.refresh_token_env.is_some()
    }
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
    /// Fill host, port, TLS, AUTH and documented limits from a preset (see
    /// `config/providers.rs`); explicit fields win.
    #[serde(default)]
    pub provider: Option<providers::Provider>,
    /// AWS region for `provider = "ses"`.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub oauth2: Option<OAuth2Config>,
    /// Connections open at once toward this upstream (default 10).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Messages sent over one connection before it is closed (default 100).
    #[serde(default)]
    pub max_messages_per_connection: Option<usize>,
    /// Messages per period toward this upstream, e.g. `"30/min"` (default: unlimited).
    #[serde(default)]
    pub max_rate: Option<Rate>,
    /// Close a pooled connection unused for this long (default 30).
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    /// After a throttle reply, leave this upstream alone this long, doubling while the
    /// throttling goes on (default 60, at most 16 times that).
    #[serde(default)]
    pub throttle_backoff_secs: Option<u64>,
    /// Header From becomes `from_address` (display name kept), the original goes to
    /// Reply-To — for providers that only send as the authenticated mailbox.
    #[serde(default)]
    pub rewrite_from: bool,
    /// The mailbox From is rewritten to; defaults to `username` when it is an address.
    #[serde(default)]
    pub from_address: Option<String>,
}

impl UpstreamConfig {
    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or(10)
    }
    pub fn max_messages_per_connection(&self) -> usize {
        self.max_messages_per_connection.unwrap_or(100)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.unwrap_or(30))
    }
    pub fn throttle_backoff(&self) -> Duration {
        Duration::from_secs(self.throttle_backoff_secs.unwrap_or(60))
    }
    /// The address From is rewritten to, when `rewrite_from` is on.
    pub fn rewrite_address(&self) -> Option<String> {
        if !self.rewrite_from {
            return None;
        }
        self.from_address
            .clone()
            .or_else(|| self.username.clone().filter(|u| u.contains('@')))
    }
}

/// What happens to a message that exceeds its project's rate windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitMode {
    /// `451 4.7.1 … retry in N s`; nothing is queued.
    #[default]
    Reject,
    /// Accept and queue, release to the upstream when the windows allow.
    AcceptAndDelay,
}

impl LimitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitMode::Reject => "reject",
            LimitMode::AcceptAndDelay => "accept-and-delay",
        }
    }
}

/// `[limits]`: the defaults every project gets unless it has an override. The protective
/// defaults of the example config (`per_second`, `burst`, `max_connections`) apply when a key
/// or the whole section is left out; 0 means no limit. The other windows are off unless set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Messages per second, sustained…
    #[serde(default = "d_per_second")]
    pub per_second: Option<u32>,
    /// …with bursts of up to this many (0: `per_second`).
    #[serde(default = "d_burst")]
    pub burst: Option<u32>,
    #[serde(default)]
    pub per_minute: Option<u32>,
    #[serde(default)]
    pub per_hour: Option<u32>,
    #[serde(default)]
    pub per_day: Option<u32>,
    #[serde(default)]
    pub recipients_per_day: Option<u32>,
    /// Concurrent authenticated sessions per project.
    #[serde(default = "d_project_connections")]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub mode: LimitMode,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_second: d_per_second(),
            burst: d_burst(),
            per_minute: None,
            per_hour: None,
            per_day: None,
            recipients_per_day: None,
            max_connections: d_project_connections(),
            mode: LimitMode::Reject,
        }
    }
}

impl LimitsConfig {
    /// No limit at all (building block for tests and overrides; a config file never gets this
    /// unless it sets the keys to 0).
    pub fn unlimited() -> LimitsConfig {
        LimitsConfig {
            per_second: None,
            burst: None,
            max_connections: None,
            ..LimitsConfig::default()
        }
    }
}

fn d_per_second() -> Option<u32> {
    Some(100)
}
fn d_burst() -> Option<u32> {
    Some(200)
}
fn d_project_connections() -> Option<u32> {
    Some(50)
}

/// `[dns]`: the resolver that checks published SPF, DKIM and DMARC records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `"ip"` or `"ip:port"`; empty: the system's resolver (`/etc/resolv.conf`).
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// How long one query may take before it counts as "could not check".
    #[serde(default = "d_dns_timeout")]
    pub timeout_secs: u64,
    /// Tries per query (1 = no retry).
    #[serde(default = "d_dns_attempts")]
    pub attempts: usize,
    /// How often the server re-checks every domain (jittered ±10 %); 0: never.
    #[serde(default = "d_dns_recheck")]
    pub recheck_secs: u64,
    /// Refuse MAIL FROM (550 5.7.26) whose domain the last re-check found `failing`.
    #[serde(default)]
    pub require_verified_domain: bool,
}

fn d_dns_timeout() -> u64 {
    3
}
fn d_dns_attempts() -> usize {
    2
}
fn d_dns_recheck() -> u64 {
    3600
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout_secs: d_dns_timeout(),
            attempts: d_dns_attempts(),
            recheck_secs: d_dns_recheck(),
            require_verified_domain: false,
        }
    }
}

impl DnsConfig {
    /// The configured nameservers as socket addresses (port 53 when none is given).
    pub fn nameserver_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        self.nameservers
            .iter()
            .map(|n| {
                n.parse::<SocketAddr>()
                    .or_else(|_| {
                        n.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| format!("{n:?} is not an IP address or IP:port"))
            })
            .collect()
    }
}

/// `[throttle]`: per-client-IP protections, independent of projects. The defaults (those of
/// the example config) apply when a key or the section is left out; 0 turns one off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Concurrent connections from one IP.
    #[serde(default = "d_connections_per_ip")]
    pub max_connections_per_ip: u32,
    /// New connections per minute from one IP.
    #[serde(default = "d_connections_per_ip_per_minute")]
    pub connections_per_ip_per_minute: u32,
    /// Every failed AUTH is answered this long after the credentials arrived.
    #[serde(default = "d_auth_delay")]
    pub auth_failure_delay_ms: u64,
    /// This many failed AUTHs as one username from one IP within `auth_failure_window_secs`
    /// refuse that login (that username from that IP) for `auth_cooldown_secs`, even with a
    /// correct token; other usernames from the same IP are not affected (shared NAT).
    #[serde(default = "d_auth_failures_user")]
    pub auth_failures_per_user: u32,
    /// This many failed AUTHs from one IP, whatever the username (spraying), make every
    /// further failure from it close the session at once for the cool-down. Correct tokens of
    /// logins that are not cooling down are still accepted.
    #[serde(default = "d_auth_failures")]
    pub auth_failures_per_ip: u32,
    #[serde(default = "d_auth_window")]
    pub auth_failure_window_secs: u64,
    #[serde(default = "d_auth_cooldown")]
    pub auth_cooldown_secs: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            max_connections_per_ip: d_connections_per_ip(),
            connections_per_ip_per_minute: d_connections_per_ip_per_minute(),
            auth_failure_delay_ms: d_auth_delay(),
            auth_failures_per_user: d_auth_failures_user(),
            auth_failures_per_ip: d_auth_failures(),
            auth_failure_window_secs: d_auth_window(),
            auth_cooldown_secs: d_auth_cooldown(),
        }
    }
}

fn d_connections_per_ip() -> u32 {
    100
}
fn d_connections_per_ip_per_minute() -> u32 {
    600
}
fn d_auth_delay() -> u64 {
    500
}
fn d_auth_failures_user() -> u32 {
    10
}
fn d_auth_failures() -> u32 {
    100
}
fn d_auth_window() -> u64 {
    600
}
fn d_auth_cooldown() -> u64 {
    900
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
fn d_junk_commands() -> u32 {
    100
}
fn d_message_memory() -> u64 {
    128
}
fn d_max_received() -> usize {
    50
}

fn d_max_message_size() -> usize {
    25 * 1024 * 1024
}
fn d_max_recipients() -> usize {
    100
}
fn d_refused_recipient_domains() -> Vec<String> {
    vec!["localhost".into(), "invalid".into()]
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
fn d_token_timeout() -> u64 {
    30
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

    /// Whether this is the built-in development config (no config file given).
    pub fn is_builtin(&self) -> bool {
        self.origin
            .as_ref()
            .is_some_and(|o| o.path == DEFAULT_SOURCE)
    }

    /// `path`, or the built-in default when `None`.
    pub fn load_or_builtin(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::load(p),
            None => Config::builtin(),
        }
    }

    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| parse_error(text, source, &e))?;
        config.origin = Some(std::sync::Arc::new(ConfigOrigin {
            path: source.to_string(),
            text: text.to_string(),
        }));
        for (name, u) in config.upstreams.iter_mut() {
            if let Err((key, message)) = providers::apply(u) {
                return Err(config_invalid(
                    text,
                    source,
                    &format!("upstream.{name}"),
                    key,
                    message,
                ));
            }
        }
        config.validate(text, source)?;
        Ok(config)
    }

    fn validate(&self, text: &str, source: &str) -> Result<(), ConfigError> {
        let bad = |table: &str, key: &str, message: String| {
            config_invalid(text, source, table, key, message)
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
        if self.server.message_memory_mb == 0 {
            return Err(bad(
                "server",
                "message_memory_mb",
                "must be at least 1 (MiB of large messages held in memory at once)".into(),
            ));
        }
        if self.server.max_recipients == 0 {
            return Err(bad("server", "max_recipients", "must be at least 1".into()));
        }
        if self.server.max_received_headers == 0 {
            return Err(bad(
                "server",
                "max_received_headers",
                "must be at least 1 (Received fields a message may carry)".into(),
            ));
        }
        for d in &self.server.refused_recipient_domains {
            let plain = !d.is_empty()
                && !d.starts_with('.')
                && !d.ends_with('.')
                && !d.contains("..")
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !plain {
                return Err(bad(
                    "server",
                    "refused_recipient_domains",
                    format!(
                        "{d:?} is not a plain ASCII domain name (e.g. \"localhost\", \"invalid\")"
                    ),
                ));
            }
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
            if l.proxy_protocol && l.trusted_proxies.is_empty() {
                return Err(bad(
                    "listener",
                    "trusted_proxies",
                    "proxy_protocol = true needs the balancers' addresses (e.g. [\"10.0.0.0/8\"])"
                        .into(),
                ));
            }
            if !l.proxy_protocol && !l.trusted_proxies.is_empty() {
                return Err(bad(
                    "listener",
                    "trusted_proxies",
                    "only applies with proxy_protocol = true".into(),
                ));
            }
            if let Some(c) = l
                .trusted_proxies
                .iter()
                .find(|c| cluster::parse_cidr(c).is_none())
            {
                return Err(bad(
                    "listener",
                    "trusted_proxies",
                    format!("{c:?} is not a CIDR such as 10.0.0.0/8 or an address"),
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
        if let Some((key, message)) = self.cluster.as_ref().and_then(|c| c.problem()) {
            return Err(bad("cluster", key, message));
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
        if self.queue.max_age_secs < MIN_MAX_AGE_SECS {
            return Err(bad(
                "queue",
                "max_age_secs",
                format!(
                    "must be at least {MIN_MAX_AGE_SECS} (seconds), so that a message gets at \
                     least one delivery attempt"
                ),
            ));
        }
        if self.queue.poll_interval_ms == 0 {
            return Err(bad(
                "queue",
                "poll_interval_ms",
                "must be at least 1".into(),
            ));
        }
        if let Some(level) = &self.log.level
            && let Err(e) = crate::logging::parse_level(level)
        {
            return Err(bad("log", "level", e.to_string()));
        }
        if let Some(addr) = self.metrics.address
            && !addr.ip().is_loopback()
        {
            return Err(bad(
                "metrics",
                "address",
                format!("the metrics endpoint is only allowed on a loopback address, not {addr}"),
            ));
        }
        // The two HTTP listeners follow one rule: HTTPS off loopback, certificate and key paired.
        let http_sections = [
            (
                "admin_http",
                "admin API",
                self.admin_http.address,
                self.admin_http.tls,
                self.admin_http.cert_file.is_some(),
                self.admin_http.key_file.is_some(),
            ),
            (
                "send_api",
                "send API",
                self.send_api.address,
                self.send_api.tls,
                self.send_api.cert_file.is_some(),
                self.send_api.key_file.is_some(),
            ),
        ];
        for (table, service, address, tls, cert, key) in http_sections {
            if let Some(addr) = address
                && !addr.ip().is_loopback()
                && !tls
            {
                return Err(bad(
                    table,
                    "tls",
                    format!(
                        "the {service} on {addr} (not loopback) needs TLS: set {table}.tls = true \
                         (the relay's certificate, or {table}.cert_file/key_file)"
                    ),
                ));
            }
            if cert != key {
                return Err(bad(
                    table,
                    "cert_file",
                    format!("set both {table}.cert_file and {table}.key_file, or neither"),
                ));
            }
        }
        if self.webhooks.retry_schedule_secs.is_empty()
            || self.webhooks.retry_schedule_secs.contains(&0)
        {
            return Err(bad(
                "webhooks",
                "retry_schedule_secs",
                "must list at least one delay, each at least 1 second".into(),
            ));
        }
        if !(1..=30 * 86_400).contains(&self.idempotency.window_secs) {
            return Err(bad(
                "idempotency",
                "window_secs",
                "must be between 1 second and 30 days (2592000)".into(),
            ));
        }
        if !(1..=100_000).contains(&self.sandbox.max_messages) {
            return Err(bad(
                "sandbox",
                "max_messages",
                "must be between 1 and 100000".into(),
            ));
        }
        if !(1..=60).contains(&self.webhooks.timeout_secs) {
            return Err(bad(
                "webhooks",
                "timeout_secs",
                "must be between 1 and 60 seconds".into(),
            ));
        }
        if self.webhooks.disable_after_secs < 60 {
            return Err(bad(
                "webhooks",
                "disable_after_secs",
                "must be at least 60 seconds".into(),
            ));
        }
        if let Err((table, key, message)) = retention::validate(&self.suppression, &self.retention)
        {
            return Err(bad(table, key, message));
        }
        if let Err(message) = self.dns.nameserver_addrs() {
            return Err(bad("dns", "nameservers", message));
        }
        if self.dns.timeout_secs == 0 || self.dns.timeout_secs > 60 {
            return Err(bad("dns", "timeout_secs", "must be 1 to 60 seconds".into()));
        }
        if self.dns.attempts == 0 || self.dns.attempts > 5 {
            return Err(bad("dns", "attempts", "must be 1 to 5".into()));
        }
        if self.dns.require_verified_domain && self.dns.recheck_secs == 0 {
            return Err(bad(
                "dns",
                "require_verified_domain",
                "needs the server's re-check: set dns.recheck_secs above 0".into(),
            ));
        }
        // At least a second, at most 30 days (NaN fails the range check too).
        if !(1.0 / 3600.0..=720.0).contains(&self.admin_http.session_hours) {
            return Err(bad(
                "admin_http",
                "session_hours",
                format!(
                    "{} hours: a panel session lasts from 1 second (0.0003) to 720 hours",
                    self.admin_http.session_hours
                ),
            ));
        }
        if !self.upstreams.contains_key(&self.delivery.default_route) {
            return Err(bad(
                "delivery",
                "default_route",
                format!("no [upstream.{}] is defined", self.delivery.default_route),
            ));
        }
        // Only a burst written in the file: the default one just goes unused.
        if self.limits.burst.is_some_and(|b| b > 0)
            && self.limits.per_second.is_none_or(|r| r == 0)
            && find_line(text, "limits", "burst").is_some()
        {
            return Err(bad(
                "limits",
                "burst",
                "applies to per_second, which is not set".into(),
            ));
        }
        if (self.throttle.auth_failures_per_ip > 0 || self.throttle.auth_failures_per_user > 0)
            && (self.throttle.auth_failure_window_secs == 0
                || self.throttle.auth_cooldown_secs == 0)
        {
            return Err(bad(
                "throttle",
                "auth_failure_window_secs",
                "auth_failure_window_secs and auth_cooldown_secs must be at least 1".into(),
            ));
        }
        for f in &self.delivery.default_fallbacks {
            if !self.upstreams.contains_key(f) {
                return Err(bad(
                    "delivery",
                    "default_fallbacks",
                    format!("no [upstream.{f}] is defined"),
                ));
            }
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
                    if auth != UpstreamAuth::None && u.username.is_none() {
                        return Err(bad(&table, "username", "needed when auth is set".into()));
                    }
                    match auth {
                        UpstreamAuth::Plain | UpstreamAuth::Login => {
                            if u.password_file.is_none() && u.password_env.is_none() {
                                return Err(bad(
                                    &table,
                                    "password_file",
                                    "auth needs password_file or password_env".into(),
                                ));
                            }
                        }
                        UpstreamAuth::Xoauth2 => self.validate_oauth2(name, u, &bad)?,
                        UpstreamAuth::None => {}
                    }
                    if u.rewrite_from && u.rewrite_address().is_none() {
                        return Err(bad(
                            &table,
                            "from_address",
                            "rewrite_from needs from_address (or a username that is an address)"
                                .into(),
                        ));
                    }
                    if let Some(a) = &u.from_address
                        && crate::policy::sender::address_domain(a).is_none()
                    {
                        return Err(bad(
                            &table,
                            "from_address",
                            format!("{a:?} is not a plain local@domain address"),
                        ));
                    }
                    for (key, v) in [
                        ("max_connections", u.max_connections),
                        ("max_messages_per_connection", u.max_messages_per_connection),
                    ] {
                        if v == Some(0) {
                            return Err(bad(&table, key, "must be at least 1".into()));
                        }
                    }
                    for (key, v) in [
                        ("idle_timeout_secs", u.idle_timeout_secs),
                        ("throttle_backoff_secs", u.throttle_backoff_secs),
                    ] {
                        if v == Some(0) {
                            return Err(bad(&table, key, "must be at least 1 second".into()));
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

    fn validate_oauth2(
        &self,
        name: &str,
        u: &UpstreamConfig,
        bad: &dyn Fn(&str, &str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let table = format!("upstream.{name}");
        let Some(o) = &u.oauth2 else {
            return Err(bad(
                &table,
                "oauth2",
                "auth = \"xoauth2\" needs an [upstream.NAME.oauth2] table (token_url, client_id, client_secret_file…)"
                    .into(),
            ));
        };
        let otable = format!("{table}.oauth2");
        let Some(url) = &o.token_url else {
            return Err(bad(
                &otable,
                "token_url",
                "needed (no provider preset gives one)".into(),
            ));
        };
        match reqwest::Url::parse(url) {
            Ok(parsed) => {
                let host = parsed.host_str().unwrap_or("").trim_matches(['[', ']']);
                let loopback = host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
                    return Err(bad(
                        &otable,
                        "token_url",
                        "must be an https:// URL (http:// only toward a loopback address)".into(),
                    ));
                }
            }
            Err(e) => return Err(bad(&otable, "token_url", format!("not a URL: {e}"))),
        }
        if o.client_secret_file.is_none()
            && o.client_secret_env.is_none()
            && !o.uses_refresh_token()
        {
            return Err(bad(
                &otable,
                "client_secret_file",
                "the client-credentials flow needs client_secret_file or client_secret_env".into(),
            ));
        }
        if u.provider == Some(providers::Provider::Gmail) && !o.uses_refresh_token() {
            return Err(bad(
                &otable,
                "refresh_token_file",
                "Gmail SMTP needs the refresh-token flow: set refresh_token_file or refresh_token_env"
                    .into(),
            ));
        }
        if o.timeout_secs == 0 {
            return Err(bad(
                &otable,
                "timeout_secs",
                "must be at least 1 second".into(),
            ));
        }
        Ok(())
    }

    /// Reads every upstream secret (passwords, OAuth2 client secrets and refresh tokens) once,
    /// so a missing file or variable is reported up front with its key. The values are
    /// dropped here; nothing is printed.
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        for name in self.upstreams.keys() {
            self.upstream_secrets(name)?;
        }
        Ok(())
    }

    /// The secrets of one upstream, read now.
    pub fn upstream_secrets(&self, name: &str) -> Result<UpstreamSecrets, ConfigError> {
        let mut out = UpstreamSecrets::default();
        let Some(u) = self.upstreams.get(name) else {
            return Ok(out);
        };
        let table = format!("upstream.{name}");
        let read = |table: &str,
                    file: &Option<PathBuf>,
                    file_key: &str,
                    env: &Option<String>,
                    env_key: &str|
         -> Result<Option<crate::secret::Secret>, ConfigError> {
            if file.is_none() && env.is_none() {
                return Ok(None);
            }
            let key = if file.is_some() { file_key } else { env_key };
            crate::secret::read_credential(file.as_deref(), env.as_deref())
                .map(Some)
                .map_err(|e| self.invalid(table, key, e.to_string()))
        };
        if u.kind != UpstreamKind::Smtp {
            return Ok(out);
        }
        if matches!(u.auth, Some(UpstreamAuth::Plain | UpstreamAuth::Login)) {
            out.password = read(
                &table,
                &u.password_file,
                "password_file",
                &u.password_env,
                "password_env",
            )?;
        }
        if u.auth == Some(UpstreamAuth::Xoauth2)
            && let Some(o) = &u.oauth2
        {
            let otable = format!("{table}.oauth2");
            out.client_secret = read(
                &otable,
                &o.client_secret_file,
                "client_secret_file",
                &o.client_secret_env,
                "client_secret_env",
            )?;
            out.refresh_token = read(
                &otable,
                &o.refresh_token_file,
                "refresh_token_file",
                &o.refresh_token_env,
                "refresh_token_env",
            )?;
        }
        Ok(out)
    }

    /// A [`ConfigError::Invalid`] for `table.key`, with the line when the source is known.
    pub fn invalid(&self, table: &str, key: &str, message: String) -> ConfigError {
        let (path, text) = match &self.origin {
            Some(o) => (o.path.as_str(), o.text.as_str()),
            None => ("<config>", ""),
        };
        config_invalid(text, path, table, key, message)
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

/// Secrets of one upstream, as read at startup.
#[derive(Debug, Default, Clone)]
pub struct UpstreamSecrets {
    pub password: Option<crate::secret::Secret>,
    pub client_secret: Option<crate::secret::Secret>,
    pub refresh_token: Option<crate::secret::Secret>,
}

fn config_invalid(
    text: &str,
    source: &str,
    table: &str,
    key: &str,
    message: String,
) -> ConfigError {
    ConfigError::Invalid {
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
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `:line:column: key `k`` for a parse error, as much of it as is known.
fn location(line: Option<usize>, column: Option<usize>, key: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(l) = line {
        out.push_str(&format!(":{l}"));
        if let Some(c) = column {
            out.push_str(&format!(":{c}"));
        }
    }
    if let Some(k) = key {
        out.push_str(&format!(": key `{k}`"));
    }
    out
}

/// Turns toml's error into file, line, column and the dotted key it is about. toml points
/// its span at the offending key or value; the key is recovered from that line and the
/// table header above it (or from the message, for unknown and missing fields).
fn parse_error(text: &str, source: &str, e: &toml::de::Error) -> ConfigError {
    let message = one_line(e.message());
    let Some(span) = e.span() else {
        return ConfigError::Parse {
            path: source.to_string(),
            line: None,
            column: None,
            key: None,
            message,
        };
    };
    // An empty span at the start is toml's way of blaming the whole document: a required
    // top-level table is missing. Name it, not the first table of the file.
    if span.is_empty()
        && span.start == 0
        && let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
    {
        return ConfigError::Parse {
            path: source.to_string(),
            line: None,
            column: None,
            key: Some(field.to_string()),
            message: format!("the [{field}] table is missing"),
        };
    }
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = text[line_start..start].chars().count() + 1;
    let line_end = text[line_start..]
        .find('\n')
        .map(|i| line_start + i)
        .unwrap_or(text.len());
    let line_text = text[line_start..line_end].trim();
    // The table in force at the error: the last header at or above it.
    let table = text[..line_end]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
        .unwrap_or_default();
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.split_once(p))
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(k, _)| k.to_string());
    let key = if line_text.starts_with('[') {
        named.or_else(|| (!table.is_empty()).then(|| table.clone()))
    } else {
        named.or_else(|| {
            line_text
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_string())
                .filter(|k| !k.is_empty() && !k.contains(char::is_whitespace))
        })
    };
    let key = key.map(|k| {
        if table.is_empty() || k == table || k.starts_with(&format!("{table}.")) {
            k
        } else {
            format!("{table}.{k}")
        }
    });
    ConfigError::Parse {
        path: source.to_string(),
        line: Some(line_no),
        column: Some(column),
        key,
        message,
    }
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
        // The development default serves the panel on loopback.
        assert_eq!(
            c.admin_http.address,
            Some("127.0.0.1:2580".parse().unwrap())
        );
        assert!(c.is_builtin());
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
    fn dns_settings_are_checked() {
        let c = Config::parse(DEFAULT_CONFIG, "x.toml").unwrap();
        assert!(c.dns.nameservers.is_empty(), "system resolver by default");
        assert_eq!((c.dns.timeout_secs, c.dns.recheck_secs), (3, 3600));
        let with = |t: &str| Config::parse(&format!("{DEFAULT_CONFIG}\n[dns]\n{t}\n"), "x.toml");
        let ok = with("nameservers = [\"127.0.0.1:5353\", \"::1\"]").unwrap();
        assert_eq!(
            ok.dns.nameserver_addrs().unwrap()[1],
            "[::1]:53".parse().unwrap()
        );
        for (t, key) in [
            ("nameservers = [\"ns.example.com\"]", "dns.nameservers"),
            ("timeout_secs = 0", "dns.timeout_secs"),
            ("attempts = 9", "dns.attempts"),
            ("resolver = \"x\"", "resolver"),
            (
                "recheck_secs = 0\nrequire_verified_domain = true",
                "dns.require_verified_domain",
            ),
        ] {
            let err = with(t).unwrap_err().to_string();
            assert!(err.contains(key), "{t}: {err}");
        }
    }

    #[test]
    fn hop_limit_is_checked() {
        assert_eq!(
            Config::parse(DEFAULT_CONFIG, "x.toml")
                .unwrap()
                .server
                .max_received_headers,
            50
        );
        let text = DEFAULT_CONFIG.replace("max_received_headers = 50", "max_received_headers = 0");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("server.max_received_headers"), "{err}");
    }

    #[test]
    fn refused_recipient_domains_are_checked() {
        let cfg = Config::parse(DEFAULT_CONFIG, "x.toml").unwrap();
        assert_eq!(
            cfg.server.refused_recipient_domains,
            ["localhost", "invalid"]
        );
        let text = DEFAULT_CONFIG.replace(
            "refused_recipient_domains = [\"localhost\", \"invalid\"]",
            "refused_recipient_domains = [\"localhost\", \".corp\"]",
        );
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("server.refused_recipient_domains"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let text = DEFAULT_CONFIG.replace("[server]", "[server]\nhostnme = \"x\"");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("hostnme"), "{err}");
    }

    fn parse_err(text: &str) -> String {
        Config::parse(text, "x.toml").unwrap_err().to_string()
    }

    #[test]
    fn parse_errors_name_line_and_key() {
        let line_of = |needle: &str, text: &str| {
            text.lines().position(|l| l.starts_with(needle)).unwrap() + 1
        };
        // Unknown key.
        let text = DEFAULT_CONFIG.replace("[queue]\n", "[queue]\nwrokers = 4\n");
        let err = parse_err(&text);
        let n = line_of("wrokers", &text);
        assert!(
            err.starts_with(&format!("x.toml:{n}:1: key `queue.wrokers`: unknown field")),
            "{err}"
        );
        // Wrong type.
        let text = DEFAULT_CONFIG.replace("max_recipients = 100", "max_recipients = \"many\"");
        let err = parse_err(&text);
        let n = line_of("max_recipients", &text);
        assert!(err.starts_with(&format!("x.toml:{n}:")), "{err}");
        assert!(err.contains("key `server.max_recipients`"), "{err}");
        // Missing required key.
        let text = DEFAULT_CONFIG.replace("hostname = \"localhost\"", "");
        let err = parse_err(&text);
        assert!(
            err.contains("key `server.hostname`") && err.contains("missing field"),
            "{err}"
        );
        // Bad address.
        let text = DEFAULT_CONFIG.replace("127.0.0.1:2587", "127.0.0.1:99999");
        let err = parse_err(&text);
        let n = line_of("address = \"127.0.0.1:99999", &text);
        assert!(err.starts_with(&format!("x.toml:{n}:")), "{err}");
        assert!(err.contains("key `listener.address`"), "{err}");
        // Broken syntax.
        let text = DEFAULT_CONFIG.replace("workers = 4", "workers = = 4");
        let err = parse_err(&text);
        let n = line_of("workers = = 4", &text);
        assert!(err.starts_with(&format!("x.toml:{n}:")), "{err}");
        // Bad enum value.
        let text = DEFAULT_CONFIG.replace("mode = \"implicit\"", "mode = \"tls\"");
        let err = parse_err(&text);
        assert!(
            err.contains("key `listener.mode`") && err.contains("tls"),
            "{err}"
        );
    }

    #[test]
    fn log_level_and_metrics_address_are_checked() {
        let text = format!("{DEFAULT_CONFIG}\n[log]\nlevel = \"info,=loud\"\n");
        assert!(parse_err(&text).contains("log.level"));
        let text = format!("{DEFAULT_CONFIG}\n[metrics]\naddress = \"0.0.0.0:9187\"\n");
        let err = parse_err(&text);
        assert!(
            err.contains("metrics.address") && err.contains("loopback"),
            "{err}"
        );
        let text = format!(
            "{DEFAULT_CONFIG}\n[metrics]\naddress = \"127.0.0.1:9187\"\n[log]\nlevel = \"debug\"\n"
        );
        let c = Config::parse(&text, "x.toml").unwrap();
        assert_eq!(c.metrics.address.unwrap().port(), 9187);
        assert_eq!(c.log.level.as_deref(), Some("debug"));
    }

    #[test]
    fn limits_sections_parse_and_are_checked() {
        let c = Config::builtin().unwrap();
        assert_eq!(c.limits.per_second, Some(100));
        assert_eq!(c.limits.mode, LimitMode::Reject);
        assert_eq!(c.throttle.auth_failures_per_user, 10);
        assert_eq!(c.throttle.auth_failures_per_ip, 100);
        let text = DEFAULT_CONFIG.replace("per_second = 100\n", "per_second = 0\n");
        let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("limits.burst"), "{err}");
        // per_second = 0 alone turns the window off; the default burst does not complain.
        let text = DEFAULT_CONFIG.replace("per_second = 100\nburst = 200\n", "per_second = 0\n");
        assert_eq!(
            Config::parse(&text, "x.toml").unwrap().limits.per_second,
            Some(0)
        );
        let text = DEFAULT_CONFIG.replace("mode = \"reject\"", "mode = \"accept-and-delay\"");
        assert_eq!(
            Config::parse(&text, "x.toml").unwrap().limits.mode,
            LimitMode::AcceptAndDelay
        );
    }

    /// The struct defaults are the example config's values: leaving a section out of a
    /// config file keeps the protections it documents.
    #[test]
    fn defaults_match_the_example_config() {
        let c = Config::builtin().unwrap();
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.throttle, ThrottleConfig::default());
        let q = QueueConfig::default();
        assert_eq!(
            (
                q.workers,
                &q.retry_schedule_secs,
                q.max_age_secs,
                q.poll_interval_ms
            ),
            (
                c.queue.workers,
                &c.queue.retry_schedule_secs,
                c.queue.max_age_secs,
                c.queue.poll_interval_ms
            )
        );
        let t = TimeoutConfig::default();
        assert_eq!(
            (t.tls_handshake_secs, t.command_secs, t.data_secs),
            (
                c.timeouts.tls_handshake_secs,
                c.timeouts.command_secs,
                c.timeouts.data_secs
            )
        );
        // A file with neither section gets them.
        let start = DEFAULT_CONFIG.find("\n[limits]\n").unwrap();
        let end = DEFAULT_CONFIG.find("\n[delivery]\n").unwrap();
        let text = format!("{}{}", &DEFAULT_CONFIG[..start], &DEFAULT_CONFIG[end..]);
        let bare = Config::parse(&text, "x.toml").unwrap();
        assert_eq!(bare.limits, c.limits);
        assert_eq!(bare.throttle, c.throttle);
        assert_eq!(bare.throttle.max_connections_per_ip, 100);
        assert_eq!(bare.limits.max_connections, Some(50));
    }

    #[test]
    fn a_missing_table_is_named() {
        for table in ["server", "tls", "delivery"] {
            // The table's header and keys removed, up to the next header.
            let start = DEFAULT_CONFIG.find(&format!("\n[{table}]\n")).unwrap() + 1;
            let end = start + 1 + DEFAULT_CONFIG[start + 1..].find("\n[").unwrap() + 1;
            let text = format!("{}{}", &DEFAULT_CONFIG[..start], &DEFAULT_CONFIG[end..]);
            let err = parse_err(&text);
            assert_eq!(
                err,
                format!("x.toml: key `{table}`: the [{table}] table is missing"),
            );
        }
    }

    #[test]
    fn bare_newline_and_junk_limit() {
        let c = Config::builtin().unwrap();
        assert_eq!(c.server.bare_newline, BareNewline::Normalize);
        assert_eq!(c.server.junk_command_limit, 100);
        let text =
            DEFAULT_CONFIG.replace("bare_newline = \"normalize\"", "bare_newline = \"reject\"");
        assert_eq!(
            Config::parse(&text, "x.toml").unwrap().server.bare_newline,
            BareNewline::Reject
        );
        let text = DEFAULT_CONFIG.replace("bare_newline = \"normalize\"", "bare_newline = \"fix\"");
        let err = parse_err(&text);
        assert!(err.contains("key `server.bare_newline`"), "{err}");
        let text = DEFAULT_CONFIG.replace("junk_command_limit = 100", "junk_command_limit = -1");
        assert!(parse_err(&text).contains("key `server.junk_command_limit`"));
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
