//! `smtp-relay webhook …`: endpoints that receive signed delivery events.

use clap::Subcommand;
use serde_json::Value;

use super::{Cli, admin, fmt_time, load_config, print_json};
use crate::admin::AdminRequest;

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Add an endpoint for a project's events (or every project's with --global); prints
    /// its `whsec_` signing secret once.
    Add {
        /// Project id (omit with --global).
        project: Option<String>,
        /// Receive every project's events.
        #[arg(long, conflicts_with = "project")]
        global: bool,
        /// https:// URL (http:// only to loopback with webhooks.allow_loopback).
        #[arg(long)]
        url: String,
        /// Comma-separated: accepted, relayed, deferred, failed, suppressed, rate_limited.
        #[arg(long, default_value = "relayed,deferred,failed")]
        events: String,
    },
    /// List endpoints (never their secrets).
    List {
        #[arg(long)]
        project: Option<String>,
    },
    /// One endpoint, the deliveries it is owed and its recent attempts.
    Show { id: String },
    /// Remove an endpoint; deliveries still owed to it are dropped.
    Remove { id: String },
    /// Send a signed `webhook.test` event (through the outbox, with retries).
    Test { id: String },
    /// New signing secret (printed once); the old one also signs for 24 hours.
    RotateSecret { id: String },
    /// Turn an endpoint disabled by `410 Gone` or by days of failures on again.
    Enable { id: String },
}

pub fn run(cli: &Cli, cmd: &WebhookCommand) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let req = match cmd {
        WebhookCommand::Add {
            project,
            global,
            url,
            events,
        } => {
            if project.is_none() && !global {
                anyhow::bail!("name a project, or pass --global for every project's events");
            }
            AdminRequest::WebhookAdd {
                project: project.clone(),
                url: url.clone(),
                events: events.split(',').map(|s| s.trim().to_string()).collect(),
            }
        }
        WebhookCommand::List { project } => AdminRequest::WebhookList {
            project: project.clone(),
        },
        WebhookCommand::Show { id } => AdminRequest::WebhookShow { id: id.clone() },
        WebhookCommand::Remove { id } => AdminRequest::WebhookRemove { id: id.clone() },
        WebhookCommand::Test { id } => AdminRequest::WebhookTest { id: id.clone() },
        WebhookCommand::RotateSecret { id } => AdminRequest::WebhookRotateSecret { id: id.clone() },
        WebhookCommand::Enable { id } => AdminRequest::WebhookEnable { id: id.clone() },
    };
    let v = admin(cli, &config, req)?;
    if cli.json {
        print_json(&v);
        return Ok(());
    }
    match cmd {
        WebhookCommand::Add { .. } | WebhookCommand::RotateSecret { .. } => {
            print_endpoint(&v);
            println!("secret: {}", v["secret"].as_str().unwrap_or(""));
            println!("(shown only this once; verify the webhook-signature header with it)");
        }
        WebhookCommand::List { .. } => {
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no webhook endpoints");
            }
            for e in list {
                print_endpoint(&e);
            }
        }
        WebhookCommand::Show { .. } => {
            print_endpoint(&v);
            println!("pending deliveries: {}", v["pending"].as_u64().unwrap_or(0));
            for a in v["attempts"].as_array().cloned().unwrap_or_default() {
                println!(
                    "  {}  {:<5} {:>6} ms  {}  {}",
                    fmt_time(a["time_ms"].as_u64().unwrap_or(0) / 1000),
                    a["status"]
                        .as_u64()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                    a["duration_ms"].as_u64().unwrap_or(0),
                    a["event_id"].as_str().unwrap_or(""),
                    a["error"].as_str().unwrap_or("ok"),
                );
            }
        }
        WebhookCommand::Remove { id } => println!("webhook {id} removed"),
        WebhookCommand::Test { id } => println!(
            "test event {} queued for webhook {id} (see `smtp-relay webhook show {id}`)",
            v["event_id"].as_str().unwrap_or("")
        ),
        WebhookCommand::Enable { id } => println!("webhook {id} enabled"),
    }
    Ok(())
}

fn print_endpoint(e: &Value) {
    let events: Vec<&str> = e["events"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let state = if e["enabled"].as_bool().unwrap_or(false) {
        "enabled".to_string()
    } else {
        format!(
            "disabled ({})",
            e["disabled_reason"].as_str().unwrap_or("-")
        )
    };
    println!(
        "{}  {}  {}  [{}]  {}",
        e["id"].as_str().unwrap_or(""),
        e["project"].as_str().unwrap_or("(all projects)"),
        e["url"].as_str().unwrap_or(""),
        events.join(","),
        state
    );
}
