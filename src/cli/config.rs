//! `smtp-relay config check [path]`: validate a config and print the effective settings.
//!
//! The printed config has every default filled in and every secret replaced by
//! `[redacted]` (see [`crate::secret::redact`]). Files the config points at (certificate,
//! key, credentials) are checked too, but only warned about: under systemd some of them
//! exist only inside the service (`$CREDENTIALS_DIRECTORY`).

use clap::Subcommand;

use super::Cli;
use crate::config::{Config, UpstreamKind};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config file (default: --config, else the built-in one) and print it with
    /// defaults filled in. Exits non-zero with the file, line and key on error.
    Check {
        path: Option<std::path::PathBuf>,
        /// Print nothing when the config is valid (for `ExecReload=`).
        #[arg(long, short)]
        quiet: bool,
    },
}

pub fn run(cli: &Cli, cmd: &ConfigCommand) -> anyhow::Result<()> {
    let ConfigCommand::Check { path, quiet } = cmd;
    let path = path.as_deref().or(cli.config.as_deref());
    let config = Config::load_or_builtin(path)?;
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

/// Problems with the files a valid config refers to.
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
        if u.kind != UpstreamKind::Smtp {
            continue;
        }
        if let Some(f) = &u.password_file
            && let Err(e) = std::fs::metadata(f)
        {
            out.push(format!(
                "upstream.{name}.password_file: {}: {e}",
                f.display()
            ));
        }
        if let Some(var) = &u.password_env
            && std::env::var_os(var).is_none()
        {
            out.push(format!(
                "upstream.{name}.password_env: {var} is not set in this environment"
            ));
        }
        if let Some(f) = &u.ca_file
            && let Err(e) = std::fs::metadata(f)
        {
            out.push(format!("upstream.{name}.ca_file: {}: {e}", f.display()));
        }
    }
    out
}
