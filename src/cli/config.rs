//! `smtp-relay config check [path]`: validate a config and print the effective settings.
//!
//! The printed config has every default and provider preset filled in and every secret
//! replaced by `[redacted]` (see [`crate::secret::redact`]). Upstream secret files and
//! variables are read (never printed) and a missing one is an error, unless `--skip-secrets`
//! (systemd credentials exist only inside the service). The TLS certificate and key and CA
//! files are checked too, but only warned about, for the same reason.

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
        /// Print nothing when the config is valid (for `ExecReload=`).
        #[arg(long, short)]
        quiet: bool,
    },
}

pub fn run(cli: &Cli, cmd: &ConfigCommand) -> anyhow::Result<()> {
    let ConfigCommand::Check {
        path,
        skip_secrets,
        quiet,
    } = cmd;
    let path = path.as_deref().or(cli.config.as_deref());
    let config = Config::load_or_builtin(path)?;
    if !skip_secrets {
        config.check_secrets()?;
    }
    for w in file_warnings(&config) {
        eprintln!("smtp-relay: warning: {w}");
    }
    if *quiet {
        return Ok(());
    }
    let mut value = toml::Value::try_from(&config)?;
    crate::secret::redact(&mut value);
    if cli.json {
        super::print_json(&serde_json::to_value(&value)?);
    } else {
        println!("# configuration is valid");
        print!("{}", toml::to_string(&value)?);
    }
    Ok(())
}

/// Problems with the non-secret files a valid config refers to.
fn file_warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let tls = &config.tls;
    let will_generate = tls.generate_dev_cert && !tls.cert_file.exists() && !tls.key_file.exists();
    if !will_generate
        && let Err(e) = crate::inbound::tls::server_config(tls, &config.server.hostname)
    {
        out.push(format!("[tls]: {e}"));
    }
    for (name, u) in &config.upstreams {
        if let Some(f) = &u.ca_file
            && let Err(e) = std::fs::metadata(f)
        {
            out.push(format!("upstream.{name}.ca_file: {}: {e}", f.display()));
        }
    }
    out
}
