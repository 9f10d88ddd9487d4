//! `smtp-relay domain verify <domain>` and `domain status [--project <id>]`: the sending
//! domain's DKIM, SPF and DMARC records as published in DNS, checked against what the relay
//! does. With a server running it answers (its resolver, its keys); without one the CLI runs
//! the same operation on the database. Exit status 1 when a domain is failing or could not
//! be checked, so a cron job or CI step can alert.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use super::{Cli, load_config, offline_context, print_json};
use crate::admin::socket::{ClientError, request_with_timeout};
use crate::admin::{AdminRequest, execute_async};
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Look up one domain's DKIM, SPF and DMARC records and say what to fix.
    Verify { domain: String },
    /// Verify every domain of a project, or of every project.
    Status {
        #[arg(long)]
        project: Option<String>,
    },
}

/// Longest the server may take: many lookups, each bounded by `[dns]`.
fn deadline(config: &Config) -> Duration {
    Duration::from_secs(60 + 40 * config.dns.timeout_secs * config.dns.attempts as u64)
}

pub fn run(cli: &Cli, cmd: &DomainCommand) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let req = match cmd {
        DomainCommand::Verify { domain } => AdminRequest::DomainVerify {
            domain: domain.clone(),
        },
        DomainCommand::Status { project } => AdminRequest::DomainStatus {
            project: project.clone(),
        },
    };
    let v = match request_with_timeout(&config.admin_socket(), &req, deadline(&config)) {
        Ok(v) => v,
        Err(ClientError::NotRunning(_)) => in_process(cli, &config, req)?,
        Err(ClientError::Remote(e)) => anyhow::bail!("{e}"),
        Err(e) => return Err(e.into()),
    };
    let reports: Vec<Value> = match &v {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    if cli.json {
        print_json(&v);
    } else {
        for r in &reports {
            print_report(r);
        }
        if reports.is_empty() {
            println!("no domains");
        }
    }
    let bad: Vec<String> = reports
        .iter()
        .filter(|r| matches!(r["verdict"].as_str(), Some("failing" | "could_not_check")))
        .map(|r| {
            format!(
                "{} {}",
                r["domain"].as_str().unwrap_or(""),
                r["verdict"].as_str().unwrap_or("").replace('_', " ")
            )
        })
        .collect();
    if !bad.is_empty() {
        anyhow::bail!("{}", bad.join(", "));
    }
    Ok(())
}

fn print_report(r: &Value) {
    println!(
        "{}: {}",
        r["domain"].as_str().unwrap_or(""),
        r["verdict"].as_str().unwrap_or("").replace('_', " ")
    );
    for f in r["findings"].as_array().into_iter().flatten() {
        let status = f["status"].as_str().unwrap_or("").replace('_', " ");
        println!(
            "  {:<15} {:<6} {}",
            status,
            f["check"].as_str().unwrap_or(""),
            f["message"].as_str().unwrap_or("")
        );
        if let Some(p) = f["publish"].as_str() {
            println!("  {:<15} {:<6} publish: {p}", "", "");
        }
    }
}

fn in_process(cli: &Cli, config: &Config, req: AdminRequest) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let (_store, ctx) = offline_context(cli, config, true)?;
        execute_async(&ctx, req)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))
    })
}
