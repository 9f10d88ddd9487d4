//! The command line: one file per command group. Commands that change or read state go
//! through [`admin`](crate::admin) — over the running server's socket when there is one,
//! directly on the database otherwise. `anyhow` lives here, at the edge, and nowhere else.

pub mod admin_tokens;
pub mod config;
pub mod dkim;
pub mod limits;
pub mod project;
pub mod queue;
pub mod send_test;
pub mod serve;

use std::path::PathBuf;

use anyhow::Context;
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
    /// The HTTP admin API: its admin tokens.
    Admin {
        #[command(subcommand)]
        command: admin_tokens::AdminCommand,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve::run(cli.config.as_deref()),
        Command::Project { ref command } => project::run(&cli, command),
        Command::Queue { ref command } => queue::run(&cli, command),
        Command::Log { ref project, limit } => queue::log(&cli, project.clone(), limit),
        Command::Config { ref command } => config::run(&cli, command),
        Command::SendTest(ref args) => send_test::run(&cli, args),
        Command::Dkim { ref command } => dkim::run(&cli, command),
        Command::Admin { ref command } => admin_tokens::run(&cli, command),
    }
}

pub fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load_or_builtin(cli.config.as_deref())?)
}

/// Runs an admin operation on the running server, or on the database when none runs.
pub fn admin(config: &Config, req: AdminRequest) -> anyhow::Result<Value> {
    match request(&config.admin_socket(), &req) {
        Ok(v) => Ok(v),
        Err(ClientError::NotRunning(_)) => {
            let (store, ctx) = offline_context(config)?;
            let v = execute(&ctx, req)?;
            store.flush_now()?;
            Ok(v)
        }
        Err(e) => Err(e).context("cannot reach the running server"),
    }
}

/// Opens the database directly (no server running) and builds the admin operations on it.
pub fn offline_context(config: &Config) -> anyhow::Result<(crate::store::Store, AdminContext)> {
    crate::server::prepare_state_dir(config)?;
    let store = crate::store::Store::open(&config.server.state_dir)?;
    let secret = crate::secret::ServerSecret::load(
        config.server.secret_file.as_deref(),
        &config.server.state_dir,
    )?;
    let ctx = AdminContext {
        admin_tokens: crate::policy::admin_tokens::AdminTokens::new(store.clone(), secret.clone()),
        registry: crate::policy::projects::Registry::new(store.clone(), secret),
        queue: crate::queue::Queue::new(store.clone()),
        log: crate::queue::MessageLog::new(store.clone()),
        routes: crate::policy::routes::RouteTable::new(
            store.clone(),
            std::sync::Arc::new(config.clone()),
        ),
        tester: None,
        branding: crate::transform::branding::BrandingStore::new(store.clone()),
        dkim: crate::transform::dkim_keys::DkimKeys::new(store.clone(), config),
        limiter: crate::policy::limits::Limiter::new(
            store.clone(),
            crate::policy::limits::Defaults::from_config(config),
        ),
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
