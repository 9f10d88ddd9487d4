//! `smtp-relay suppression list|add|remove <project> …`: the recipients a project's mail is
//! refused for (policy::suppression).

use clap::Subcommand;
use serde_json::Value;

use super::{Cli, admin, fmt_time, load_config, print_json};
use crate::admin::AdminRequest;

#[derive(Debug, Subcommand)]
pub enum SuppressionCommand {
    /// The project's suppressed recipients, with reason and expiry.
    List { project: String },
    /// Suppress a recipient by hand (it expires like the others: suppression.expire_secs).
    Add {
        project: String,
        address: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Let mail to a suppressed recipient through again.
    Remove { project: String, address: String },
}

pub fn run(cli: &Cli, cmd: &SuppressionCommand) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let req = match cmd {
        SuppressionCommand::List { project } => AdminRequest::SuppressionList {
            project: project.clone(),
        },
        SuppressionCommand::Add {
            project,
            address,
            reason,
        } => AdminRequest::SuppressionAdd {
            project: project.clone(),
            address: address.clone(),
            reason: reason.clone(),
        },
        SuppressionCommand::Remove { project, address } => AdminRequest::SuppressionRemove {
            project: project.clone(),
            address: address.clone(),
        },
    };
    let v = admin(cli, &config, req)?;
    if cli.json {
        print_json(&v);
        return Ok(());
    }
    match cmd {
        SuppressionCommand::List { project } => {
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no suppressed recipients in project {project}");
            }
            for e in list {
                print_entry(&e);
            }
        }
        SuppressionCommand::Add { .. } => {
            print!("suppressed: ");
            print_entry(&v);
        }
        SuppressionCommand::Remove { project, .. } => println!(
            "{} removed from the suppression list of project {project}",
            v["address"].as_str().unwrap_or("")
        ),
    }
    Ok(())
}

fn print_entry(e: &Value) {
    println!(
        "{}  {:<8} added {}  expires {}  {}",
        e["address"].as_str().unwrap_or(""),
        e["source"].as_str().unwrap_or(""),
        fmt_time(e["added_ms"].as_u64().unwrap_or(0) / 1000),
        fmt_time(e["expires_ms"].as_u64().unwrap_or(0) / 1000),
        e["reason"].as_str().unwrap_or(""),
    );
}
