//! `smtp-relay project …`: projects, domains and tokens.

use clap::Subcommand;
use serde_json::{Value, json};

use super::{Cli, admin, fmt_time, load_config, print_json};
use crate::admin::AdminRequest;
use crate::config::{Config, ListenerMode};

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project and its first token (shown once).
    Add {
        name: String,
        /// A domain the project may send from (repeat for several).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// Label of the first token, e.g. production or staging.
        #[arg(long, default_value = "default")]
        label: String,
        /// Give up on undelivered mail after this many seconds (default: queue.max_age_secs).
        #[arg(long)]
        max_age_secs: Option<u64>,
    },
    /// List projects.
    List,
    /// Show one project.
    Show {
        id: String,
    },
    /// Manage tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage allowed sender domains.
    Domain {
        #[command(subcommand)]
        command: DomainCommand,
    },
    /// Refuse all logins of a project until enabled again.
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    /// Delete a project and all its tokens.
    Delete {
        id: String,
    },
    /// Set (or with no value, clear) the project's maximum queue age in seconds.
    MaxAge {
        id: String,
        secs: Option<u64>,
    },
    /// Show or override the project's rate limits and quotas (defaults: `[limits]`).
    Limits(super::limits::LimitsArgs),
    /// Show the project's upstream route; with --upstream, set it (fallbacks tried in order
    /// when the upstream is unreachable); with --default, go back to the config's route.
    Route {
        id: String,
        #[arg(long)]
        upstream: Option<String>,
        #[arg(long = "fallback", requires = "upstream")]
        fallbacks: Vec<String>,
        #[arg(long = "default", conflicts_with = "upstream")]
        clear: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create another token (rotation, or one per environment).
    Add {
        id: String,
        #[arg(long, default_value = "default")]
        label: String,
    },
    /// Revoke a token: the next session using it is refused.
    Revoke { id: String, token_id: String },
}

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    Add { id: String, domain: String },
    Remove { id: String, domain: String },
}

pub fn run(cli: &Cli, cmd: &ProjectCommand) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let req = match cmd {
        ProjectCommand::Add {
            name,
            domains,
            label,
            max_age_secs,
        } => AdminRequest::ProjectAdd {
            name: name.clone(),
            domains: domains.clone(),
            label: label.clone(),
            max_age_secs: *max_age_secs,
        },
        ProjectCommand::List => AdminRequest::ProjectList,
        ProjectCommand::Show { id } => AdminRequest::ProjectShow { id: id.clone() },
        ProjectCommand::Token {
            command: TokenCommand::Add { id, label },
        } => AdminRequest::TokenAdd {
            id: id.clone(),
            label: label.clone(),
        },
        ProjectCommand::Token {
            command: TokenCommand::Revoke { id, token_id },
        } => AdminRequest::TokenRevoke {
            id: id.clone(),
            token_id: token_id.clone(),
        },
        ProjectCommand::Domain {
            command: DomainCommand::Add { id, domain },
        } => AdminRequest::DomainAdd {
            id: id.clone(),
            domain: domain.clone(),
        },
        ProjectCommand::Domain {
            command: DomainCommand::Remove { id, domain },
        } => AdminRequest::DomainRemove {
            id: id.clone(),
            domain: domain.clone(),
        },
        ProjectCommand::Disable { id } => AdminRequest::ProjectEnable {
            id: id.clone(),
            enabled: false,
        },
        ProjectCommand::Enable { id } => AdminRequest::ProjectEnable {
            id: id.clone(),
            enabled: true,
        },
        ProjectCommand::Delete { id } => AdminRequest::ProjectDelete { id: id.clone() },
        ProjectCommand::MaxAge { id, secs } => AdminRequest::ProjectMaxAge {
            id: id.clone(),
            max_age_secs: *secs,
        },
        ProjectCommand::Limits(args) => args.request(),
        ProjectCommand::Route {
            id,
            upstream,
            fallbacks,
            clear,
        } => AdminRequest::ProjectRoute {
            id: id.clone(),
            upstream: upstream.clone(),
            fallbacks: fallbacks.clone(),
            clear: *clear,
        },
    };
    let creates_token = matches!(
        cmd,
        ProjectCommand::Add { .. }
            | ProjectCommand::Token {
                command: TokenCommand::Add { .. }
            }
    );
    let mut v = admin(&config, req)?;
    if creates_token {
        v["smtp"] = smtp_settings(&config, &v);
    }
    if cli.json {
        print_json(&v);
        return Ok(());
    }
    match cmd {
        ProjectCommand::List => {
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!(
                    "no projects; create one with: smtp-relay project add myapp --domain example.com"
                );
            }
            for p in list {
                println!(
                    "{}  {:<24} {:<8} tokens={}  domains={}",
                    p["id"].as_str().unwrap_or(""),
                    p["name"].as_str().unwrap_or(""),
                    if p["enabled"].as_bool() == Some(true) {
                        "enabled"
                    } else {
                        "DISABLED"
                    },
                    p["tokens"].as_array().map(Vec::len).unwrap_or(0),
                    join(&p["domains"]),
                );
            }
        }
        _ if creates_token => print_new_token(&v),
        ProjectCommand::Route { .. } => {
            let mut order = vec![v["upstream"].as_str().unwrap_or("").to_string()];
            order.extend(
                v["fallbacks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string),
            );
            println!(
                "project {} → {}{}",
                v["project"].as_str().unwrap_or(""),
                order.join(" → "),
                if v["default"].as_bool() == Some(true) {
                    "  (the config's default route)"
                } else {
                    ""
                }
            );
        }
        _ => print_project(&v),
    }
    Ok(())
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn print_project(p: &Value) {
    println!("project   {}", p["id"].as_str().unwrap_or(""));
    println!("name      {}", p["name"].as_str().unwrap_or(""));
    println!(
        "state     {}",
        if p["enabled"].as_bool() == Some(true) {
            "enabled"
        } else {
            "disabled"
        }
    );
    println!("domains   {}", join(&p["domains"]));
    if let Some(age) = p["max_age_secs"].as_u64() {
        println!("max age   {age} s");
    }
    println!("created   {}", fmt_time(p["created"].as_u64().unwrap_or(0)));
    if p.get("limits").is_some() {
        super::limits::print(&p["limits"]);
    }
    println!("tokens");
    for t in p["tokens"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {}  {:<12} created {}",
            t["id"].as_str().unwrap_or(""),
            t["label"].as_str().unwrap_or(""),
            fmt_time(t["created"].as_u64().unwrap_or(0))
        );
    }
}

fn print_new_token(v: &Value) {
    let p = &v["project"];
    println!(
        "project   {} ({})",
        p["id"].as_str().unwrap_or(""),
        p["name"].as_str().unwrap_or("")
    );
    println!("domains   {}", join(&p["domains"]));
    println!("token id  {}", v["token_id"].as_str().unwrap_or(""));
    println!();
    println!("The token is shown only now. Store it in your app's secret store.");
    println!();
    let s = &v["smtp"];
    println!("SMTP settings:");
    println!("  host      {}", s["host"].as_str().unwrap_or(""));
    if let Some(port) = s["port_starttls"].as_u64() {
        println!("  port      {port}  (STARTTLS; secure=false in nodemailer)");
    }
    if let Some(port) = s["port_implicit_tls"].as_u64() {
        println!("  port      {port}  (implicit TLS; secure=true in nodemailer)");
    }
    println!("  username  {}", s["username"].as_str().unwrap_or(""));
    println!("  password  {}", s["password"].as_str().unwrap_or(""));
}

/// Ready-to-paste settings for the app that will use this token.
fn smtp_settings(config: &Config, v: &Value) -> Value {
    let port = |mode| {
        config
            .listeners
            .iter()
            .find(|l| l.mode == mode)
            .map(|l| l.address.port())
    };
    json!({
        "host": config.server.hostname,
        "port_starttls": port(ListenerMode::Starttls),
        "port_implicit_tls": port(ListenerMode::Implicit),
        "username": v["project"]["id"],
        "password": v["token"],
    })
}
