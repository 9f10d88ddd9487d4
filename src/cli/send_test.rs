//! `smtp-relay send-test --project <id> --to <addr> [--upstream <name>]`: sends one test
//! message synchronously and prints the upstream's reply, or the failure in plain words with
//! a non-zero exit.
//!
//! With a server running, the server sends it (over the admin socket), so the test uses the
//! very pools, token caches and settings that deliver real mail. Without one, the CLI builds
//! the same pipeline in-process on the database.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{Cli, load_config, offline_context, print_json};
use crate::admin::socket::{ClientError, request_with_timeout};
use crate::admin::{AdminRequest, execute_async};
use crate::config::Config;
use crate::outbound::routing::Router;
use crate::outbound::send_test::{SendTest, Tester};

#[derive(Debug, Args)]
pub struct SendTestArgs {
    /// The project whose route (and domain) to test.
    #[arg(long)]
    pub project: String,
    /// Recipient of the test message.
    #[arg(long)]
    pub to: String,
    /// Send through this upstream only, instead of the project's route.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Sender address (default smtp-relay-test@<the project's first domain>).
    #[arg(long)]
    pub from: Option<String>,
}

/// Longest a test can take: every upstream of any route timing out at every step.
fn deadline(config: &Config) -> Duration {
    let per: u64 = config
        .upstreams
        .values()
        .map(|u| u.connect_timeout_secs + 6 * u.command_timeout_secs + u.data_timeout_secs)
        .sum();
    Duration::from_secs(per + 30)
}

pub fn run(cli: &Cli, args: &SendTestArgs) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let test = SendTest {
        project: args.project.clone(),
        to: args.to.clone(),
        upstream: args.upstream.clone(),
        from: args.from.clone(),
    };
    let req = AdminRequest::SendTest(test.clone());
    let v = match request_with_timeout(&config.admin_socket(), &req, deadline(&config)) {
        Ok(v) => v,
        Err(ClientError::NotRunning(_)) => in_process(cli, &config, test)?,
        Err(ClientError::Remote(e)) => anyhow::bail!("send-test: {e}"),
        Err(e) => return Err(e.into()),
    };
    if cli.json {
        print_json(&v);
    } else {
        println!(
            "sent {} → {} through upstream {}",
            v["from"].as_str().unwrap_or(""),
            v["to"].as_str().unwrap_or(""),
            v["upstream"].as_str().unwrap_or("")
        );
        println!("upstream replied: {}", v["reply"].as_str().unwrap_or(""));
        if let Some(path) = v["path"].as_array().filter(|p| p.len() > 1) {
            for p in path {
                println!("  tried {}", p.as_str().unwrap_or(""));
            }
        }
    }
    Ok(())
}

fn in_process(cli: &Cli, config: &Config, test: SendTest) -> anyhow::Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let (store, mut ctx) = offline_context(cli, config, true)?;
        let config = Arc::new(config.clone());
        let router = Arc::new(Router::new(&config, ctx.routes.clone())?);
        ctx.tester = Some(Arc::new(Tester {
            config,
            registry: ctx.registry.clone(),
            router: router.clone(),
            dkim: ctx.dkim.clone(),
            branding: ctx.branding.clone(),
        }));
        let result = execute_async(&ctx, AdminRequest::SendTest(test)).await;
        router.close().await;
        store.flush_now()?;
        result.map_err(|e| anyhow::anyhow!("send-test: {}", e.message))
    })
}
