//! `smtp-relay config check [path]`: validate a config and print the effective settings.

use clap::Subcommand;

use super::Cli;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file (default: --config, else the built-in one) and print it with
    /// defaults and provider presets filled in. Exits non-zero with the file, line and key on
    /// error. Secret files and variables are read (never printed) to check they exist.
    Check {
        path: Option<std::path::PathBuf>,
        /// Do not read secret files/variables (e.g. systemd credentials outside the service).
        #[arg(long)]
        skip_secrets: bool,
    },
}

pub fn run(cli: &Cli, cmd: &ConfigCommand) -> anyhow::Result<()> {
    let ConfigCommand::Check { path, skip_secrets } = cmd;
    let path = path.as_deref().or(cli.config.as_deref());
    let config = Config::load_or_builtin(path)?;
    if !skip_secrets {
        config.check_secrets()?;
    }
    if cli.json {
        super::print_json(&serde_json::to_value(&config)?);
    } else {
        println!("# configuration is valid");
        print!("{}", toml::to_string(&config)?);
    }
    Ok(())
}
