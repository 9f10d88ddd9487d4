//! `smtp-relay config check [path]`: validate a config and print the effective settings.

use clap::Subcommand;

use super::Cli;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file (default: --config, else the built-in one) and print it with
    /// defaults filled in. Exits non-zero with the file, line and key on error.
    Check { path: Option<std::path::PathBuf> },
}

pub fn run(cli: &Cli, cmd: &ConfigCommand) -> anyhow::Result<()> {
    let ConfigCommand::Check { path } = cmd;
    let path = path.as_deref().or(cli.config.as_deref());
    let config = Config::load_or_builtin(path)?;
    if cli.json {
        super::print_json(&serde_json::to_value(&config)?);
    } else {
        println!("# configuration is valid");
        print!("{}", toml::to_string(&config)?);
    }
    Ok(())
}
