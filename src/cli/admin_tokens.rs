//! `smtp-relay admin token …`: the tokens of the HTTP admin API, kept apart from project tokens.

use clap::Subcommand;

use super::{Cli, admin, load_config, print_json};
use crate::admin::AdminRequest;
use crate::policy::admin_tokens::Role;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Tokens of the HTTP admin API and web panel.
    Token {
        #[command(subcommand)]
        command: AdminTokenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Create an admin token (shown once): admin can change everything, viewer only reads.
    Add {
        #[arg(long)]
        label: String,
        #[arg(long, default_value = "admin", value_parser = ["admin", "viewer"])]
        role: String,
    },
    /// List admin tokens (never the tokens themselves).
    List,
    /// Revoke an admin token by its id (`adm_…`).
    Revoke { id: String },
}

pub fn run(cli: &Cli, cmd: &AdminCommand) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let AdminCommand::Token { command } = cmd;
    let req = match command {
        AdminTokenCommand::Add { label, role } => AdminRequest::AdminTokenAdd {
            label: label.clone(),
            role: role.parse::<Role>()?,
        },
        AdminTokenCommand::List => AdminRequest::AdminTokenList,
        AdminTokenCommand::Revoke { id } => AdminRequest::AdminTokenRevoke { id: id.clone() },
    };
    let v = admin(cli, &config, req)?;
    if cli.json {
        print_json(&v);
        return Ok(());
    }
    match command {
        AdminTokenCommand::Add { .. } => {
            println!(
                "admin token {} ({}, role {})",
                v["admin_token"]["id"].as_str().unwrap_or(""),
                v["admin_token"]["label"].as_str().unwrap_or(""),
                v["admin_token"]["role"].as_str().unwrap_or("")
            );
            println!("token: {}", v["token"].as_str().unwrap_or(""));
            println!("(shown only this once; use it as `Authorization: Bearer <token>`)");
        }
        AdminTokenCommand::List => {
            println!("{:<16} {:<8} {:<20} CREATED", "ID", "ROLE", "LABEL");
            for t in v.as_array().into_iter().flatten() {
                println!(
                    "{:<16} {:<8} {:<20} {}",
                    t["id"].as_str().unwrap_or(""),
                    t["role"].as_str().unwrap_or(""),
                    t["label"].as_str().unwrap_or(""),
                    super::fmt_time(t["created"].as_u64().unwrap_or(0))
                );
            }
        }
        AdminTokenCommand::Revoke { id } => println!("admin token {id} revoked"),
    }
    Ok(())
}
