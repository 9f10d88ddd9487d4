//! The command line: one file per command group. Commands that change or read state go
//! through [`admin`](crate::admin) — over the running server's socket when there is one,
//! directly on the database otherwise. `anyhow` lives here, at the edge, and nowhere else.

pub mod admin_tokens;
pub mod cluster;
pub mod config;
pub mod dkim;
pub mod domain;
pub mod generate;
pub mod limits;
pub mod project;
pub mod queue;
pub mod sandbox;
pub mod send_test;
pub mod serve;
pub mod stats;
pub mod status;
pub mod suppression;
pub mod webhook;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::admin::socket::{ClientError, request};
use crate::admin::{AdminContext, AdminRequest, execute};
use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "smtp-relay",
    version,
    about = "Self-hosted multi-tenant SMTP relay"
)]
pub struct Cli {
    /// Config file (default: the built-in config/smtp-relay.toml).
    #[arg(long, short, global = true, env = "SMTP_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log format on stderr: text on a terminal and JSON lines otherwise (auto), or forced.
    #[arg(
        long,
        global = true,
        env = "SMTP_RELAY_LOG_FORMAT",
        value_enum,
        default_value = "auto"
    )]
    pub log_format: crate::logging::LogFormat,
    /// Create the state directory and database if the config's `state_dir` has none yet
    /// (`serve` always does). Without it, the CLI refuses rather than start a second,
    /// empty database that the running server never sees.
    #[arg(long, global = true)]
    pub init: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve,
    /// Manage projects, their domains and tokens.
    Project {
        #[command(subcommand)]
        command: project::ProjectCommand,
    },
    /// Inspect and act on queued messages.
    Queue {
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Show recent messages and their outcome.
    Log {
        /// Only this project's messages.
        #[arg(long)]
        project: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Search and filter like the API's /messages (any of these: pages of at most 200).
        #[command(flatten)]
        search: queue::LogSearch,
    },
    /// Recipients a project's mail is refused for after a permanent upstream refusal.
    Suppression {
        #[command(subcommand)]
        command: suppression::SuppressionCommand,
    },
    /// Validate and print the configuration.
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Send a test message through the pipeline now and print the upstream's reply.
    SendTest(send_test::SendTestArgs),
    /// DKIM keys: generate, import, rotate, and the DNS records to publish.
    Dkim {
        #[command(subcommand)]
        command: dkim::DkimCommand,
    },
    /// Check a sending domain's DKIM, SPF and DMARC records in DNS.
    Domain {
        #[command(subcommand)]
        command: domain::DomainCommand,
    },
    /// The HTTP admin API: its admin tokens.
    Admin {
        #[command(subcommand)]
        command: admin_tokens::AdminCommand,
    },
    /// Man pages and shell completions, generated from this CLI's own definition.
    Generate {
        #[command(subcommand)]
        command: generate::GenerateCommand,
    },
    /// Webhook endpoints that receive signed delivery events.
    Webhook {
        #[command(subcommand)]
        command: webhook::WebhookCommand,
    },
    /// The running server at a glance: version, uptime, listeners, TLS certificate expiry,
    /// queue, upstreams, store health, and each project's last hour (`--json` too).
    Status,
    /// Counts of the last hours per project, the queue and the upstreams' health.
    Stats(stats::StatsArgs),
    /// Mail captured for sandbox projects: list, show (or save as .eml), release, clear.
    Sandbox {
        #[command(subcommand)]
        command: sandbox::SandboxCommand,
    },
    /// Cluster mode: the nodes sharing this relay's registry through Redis.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve::run(cli.config.as_deref()),
        Command::Project { ref command } => project::run(&cli, command),
        Command::Queue { ref command } => queue::run(&cli, command),
        Command::Log {
            ref project,
            limit,
            ref search,
        } => queue::log(&cli, project.clone(), limit, search),
        Command::Suppression { ref command } => suppression::run(&cli, command),
        Command::Config { ref command } => config::run(&cli, command),
        Command::SendTest(ref args) => send_test::run(&cli, args),
        Command::Dkim { ref command } => dkim::run(&cli, command),
        Command::Domain { ref command } => domain::run(&cli, command),
        Command::Admin { ref command } => admin_tokens::run(&cli, command),
        Command::Generate { ref command } => generate::run(command),
        Command::Webhook { ref command } => webhook::run(&cli, command),
        Command::Status => status::run(&cli),
        Command::Stats(ref args) => stats::run(&cli, args),
        Command::Sandbox { ref command } => sandbox::run(&cli, command),
        Command::Cluster { ref command } => cluster::run(&cli, command),
    }
}

pub fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load_or_builtin(cli.config.as_deref())?)
}

/// Runs an admin operation on the running server, or on the database when none runs.
pub fn admin(cli: &Cli, config: &Config, req: AdminRequest) -> anyhow::Result<Value> {
    match request(&config.admin_socket(), &req) {
        Ok(v) => Ok(v),
        Err(ClientError::NotRunning(_))
            if config.cluster.is_some() && crate::cluster::is_registry_write(&req) =>
        {
            anyhow::bail!(
                "cluster mode: registry changes go through a running node (its admin socket or \
                 HTTP API), so that they reach Redis and every node; no server runs on {}",
                state_dir_shown(config).display()
            )
        }
        Err(ClientError::NotRunning(_)) => {
            let (store, ctx) = offline_context(cli, config, req.is_read_only())?;
            let v = execute(&ctx, req)?;
            store.flush_now()?;
            Ok(v)
        }
        // The server's refusal, as it is: the server was reached.
        Err(ClientError::Remote(message)) => Err(anyhow::anyhow!(message)),
        Err(e) => Err(e.into()),
    }
}

/// The state directory as an absolute path (a relative `state_dir` is relative to the
/// current directory, which is how a second database gets created by mistake).
pub fn state_dir_shown(config: &Config) -> PathBuf {
    std::path::absolute(&config.server.state_dir)
        .unwrap_or_else(|_| config.server.state_dir.clone())
}

fn config_source(config: &Config) -> String {
    config
        .origin
        .as_ref()
        .map(|o| o.path.clone())
        .unwrap_or_else(|| crate::config::DEFAULT_SOURCE.to_string())
}

/// Refuses to create a database where there is none, unless `--init`; read-only commands
/// never create one. Run with no server, in another directory, the CLI would otherwise make
/// a second database whose projects the real server never sees.
fn check_state_exists(cli: &Cli, config: &Config, read_only: bool) -> anyhow::Result<()> {
    // Store::open keeps sled's files here.
    if config.server.state_dir.join("db").exists() {
        return Ok(());
    }
    let dir = state_dir_shown(config);
    let source = config_source(config);
    if read_only {
        anyhow::bail!(
            "no database in {} (state_dir of {source}): nothing has been created with this \
             config; is it the config the server uses (see --config)?",
            dir.display()
        );
    }
    if !cli.init {
        anyhow::bail!(
            "no database in {} (state_dir of {source}); pass --init to create a new one \
             there, or point --config at the config the server uses",
            dir.display()
        );
    }
    eprintln!(
        "smtp-relay: creating a new state directory {} (config {source})",
        dir.display()
    );
    Ok(())
}

/// Opens the database directly (no server running) and builds the admin operations on it.
/// A missing database is created only for a command that writes and with `--init`.
pub fn offline_context(
    cli: &Cli,
    config: &Config,
    read_only: bool,
) -> anyhow::Result<(crate::store::Store, AdminContext)> {
    check_state_exists(cli, config, read_only)?;
    crate::server::prepare_state_dir(config)?;
    let store = crate::store::Store::open(&config.server.state_dir)?;
    let secret = crate::secret::ServerSecret::load(
        config.server.secret_file.as_deref(),
        &config.server.state_dir,
    )?;
    let ctx = AdminContext {
        cluster: None,
        domain_reports: Default::default(),
        admin_tokens: crate::policy::admin_tokens::AdminTokens::new(store.clone(), secret.clone()),
        registry: crate::policy::projects::Registry::new(store.clone(), secret),
        queue: crate::queue::Queue::new(store.clone()),
        log: crate::queue::MessageLog::new(store.clone()),
        routes: crate::policy::routes::RouteTable::new(
            store.clone(),
            std::sync::Arc::new(config.clone()),
        ),
        suppression: crate::policy::suppression::Suppressions::new(
            store.clone(),
            config.suppression.expire_secs,
        ),
        tester: None,
        events: crate::events::webhooks::WebhookAdmin::new(store.clone(), &config.webhooks),
        branding: crate::transform::branding::BrandingStore::new(store.clone()),
        dkim: crate::transform::dkim_keys::DkimKeys::new(store.clone(), config),
        limiter: crate::policy::limits::Limiter::new(
            store.clone(),
            crate::policy::limits::Defaults::from_config(config),
        ),
        sandbox: crate::queue::sandbox::Sandbox::new(
            store.clone(),
            crate::queue::Queue::new(store.clone()),
        ),
        default_max_age_secs: config.queue.max_age_secs,
    };
    Ok((store, ctx))
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn fmt_time(secs: u64) -> String {
    let dt = mail_parser::DateTime::from_timestamp(secs as i64);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second
    )
}

/// One line, no backtrace: the chain of causes joined with `: `. A cause whose text the
/// message already shows (an error that prints its source and also returns it from
/// `source()`, like `io::Error` inside a `thiserror` message) is not repeated.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
