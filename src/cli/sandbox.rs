//! `smtp-relay sandbox …`: the mail a sandbox project captured instead of sending.

use std::path::PathBuf;

use base64::Engine;
use clap::Subcommand;
use serde_json::Value;

use super::{Cli, admin, fmt_time, load_config, print_json};
use crate::admin::AdminRequest;

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// A project's captured messages, newest first.
    List {
        project: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One captured message: envelope and text; with --eml, write the message to a file.
    Show {
        id: String,
        /// Write the message as it would have left (an .eml file) instead of printing it.
        #[arg(long, value_name = "FILE")]
        eml: Option<PathBuf>,
    },
    /// Send one captured message to its real recipients (it enters the queue).
    Release { id: String },
    /// Drop every captured message of a project.
    Clear { project: String },
}

pub fn run(cli: &Cli, cmd: &SandboxCommand) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let req = match cmd {
        SandboxCommand::List { project, limit } => AdminRequest::SandboxList {
            project: project.clone(),
            limit: *limit,
        },
        SandboxCommand::Show { id, .. } => AdminRequest::SandboxShow { id: id.clone() },
        SandboxCommand::Release { id } => AdminRequest::SandboxRelease { id: id.clone() },
        SandboxCommand::Clear { project } => AdminRequest::SandboxClear {
            project: project.clone(),
        },
    };
    let v = admin(cli, &config, req)?;
    if let SandboxCommand::Show {
        eml: Some(path), ..
    } = cmd
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v["eml_base64"].as_str().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("the server sent a damaged message: {e}"))?;
        std::fs::write(path, &bytes)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        if !cli.json {
            println!("wrote {} ({} bytes)", path.display(), bytes.len());
            return Ok(());
        }
    }
    if cli.json {
        print_json(&v);
        return Ok(());
    }
    match cmd {
        SandboxCommand::List { .. } => {
            let list = v["messages"].as_array().cloned().unwrap_or_default();
            println!(
                "project {} ({} mode): {} captured",
                v["project"].as_str().unwrap_or(""),
                v["mode"].as_str().unwrap_or(""),
                v["count"].as_u64().unwrap_or(0)
            );
            for m in list {
                print_summary(&m);
            }
        }
        SandboxCommand::Show { .. } => {
            print_summary(&v);
            println!();
            print!("{}", v["eml"].as_str().unwrap_or_default());
        }
        SandboxCommand::Release { id } => println!(
            "{id} released: queued for {}",
            join(&v["released"]["recipients"], "address")
        ),
        SandboxCommand::Clear { project } => println!(
            "{} captured message(s) of {project} removed",
            v["removed"].as_u64().unwrap_or(0)
        ),
    }
    Ok(())
}

fn join(v: &Value, field: &str) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x[field].as_str().or(x.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn print_summary(m: &Value) {
    println!(
        "{}  {}  {} → {}  {:?}  {} bytes",
        m["id"].as_str().unwrap_or(""),
        fmt_time(m["received_ms"].as_u64().unwrap_or(0) / 1000),
        m["from"].as_str().unwrap_or(""),
        join(&m["recipients"], ""),
        m["subject"].as_str().unwrap_or(""),
        m["size"].as_u64().unwrap_or(0),
    );
}
