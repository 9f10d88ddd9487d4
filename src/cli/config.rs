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
    fill_effective(&config, &mut value);
    crate::secret::redact(&mut value);
    if cli.json {
        super::print_json(&serde_json::to_value(&value)?);
    } else {
        println!("# configuration is valid");
        print!("{}", toml::to_string(&value)?);
    }
    Ok(())
}

/// Writes out the values that apply where the config leaves an optional key unset, so the
/// printed config is the whole truth: windows that are off (0), the log level `serve` starts
/// with, the connection limits every SMTP upstream gets.
fn fill_effective(config: &Config, value: &mut toml::Value) {
    use toml::Value as V;
    let Some(root) = value.as_table_mut() else {
        return;
    };
    let mut set = |table: &str, key: &str, v: V| {
        if let Some(t) = root.get_mut(table).and_then(V::as_table_mut) {
            t.entry(key).or_insert(v);
        }
    };
    for key in ["per_minute", "per_hour", "per_day", "recipients_per_day"] {
        set("limits", key, V::Integer(0));
    }
    let level = config
        .log
        .level
        .clone()
        .or_else(|| std::env::var(crate::logging::LEVEL_ENV).ok())
        .unwrap_or_else(|| "info".into());
    set("log", "level", V::String(level));
    let Some(upstreams) = root.get_mut("upstream").and_then(V::as_table_mut) else {
        return;
    };
    for (name, u) in &config.upstreams {
        let Some(t) = upstreams.get_mut(name).and_then(V::as_table_mut) else {
            continue;
        };
        if u.kind != crate::config::UpstreamKind::Smtp {
            continue;
        }
        let int = |n: u64| V::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        for (key, v) in [
            ("tls", V::String("starttls".into())),
            ("auth", V::String("none".into())),
            ("max_connections", int(u.max_connections() as u64)),
            (
                "max_messages_per_connection",
                int(u.max_messages_per_connection() as u64),
            ),
            ("idle_timeout_secs", int(u.idle_timeout().as_secs())),
            ("throttle_backoff_secs", int(u.throttle_backoff().as_secs())),
        ] {
            t.entry(key).or_insert(v);
        }
    }
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
