//! `smtp-relay dkim …`: DKIM keys, their rotation, the DNS records to publish, and what a
//! project's mail does when signing fails.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use super::{Cli, admin, fmt_time, load_config, print_json};
use crate::admin::AdminRequest;
use crate::admin::dkim::{DkimRequest, PrivatePem};
use crate::transform::dkim_keys::{Algorithm, OnFailure};

#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Generate a key (pending until activated) and print the DNS record to publish.
    Keygen {
        #[arg(long)]
        domain: String,
        /// Default: s<YYYYMM> for RSA, e<YYYYMM> for Ed25519.
        #[arg(long)]
        selector: Option<String>,
        /// rsa (understood by every receiver) or ed25519 (RFC 8463; use with an RSA key).
        #[arg(long, default_value = "rsa")]
        algorithm: Algorithm,
        /// RSA key size, 2048 to 4096.
        #[arg(long)]
        bits: Option<usize>,
        /// Sign with it at once (only when its record is already published).
        #[arg(long)]
        activate: bool,
        /// Also print the private key.
        #[arg(long)]
        show_private: bool,
    },
    /// Import an existing private key (PEM: PKCS#8 RSA or Ed25519, or PKCS#1 RSA).
    Import {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        #[arg(long)]
        activate: bool,
        /// The PEM file.
        file: PathBuf,
    },
    /// List keys and their state.
    List {
        #[arg(long)]
        domain: Option<String>,
    },
    /// Start signing with a key; the active key of the same algorithm becomes retiring.
    Activate { domain: String, selector: String },
    /// Stop signing with a key (keep its DNS record until it is removed).
    Retire { domain: String, selector: String },
    /// Delete a retiring or pending key and its private key file.
    Remove { domain: String, selector: String },
    /// Print every DNS record to publish for a domain: DKIM, plus suggested SPF and DMARC.
    Dns { domain: String },
    /// Show or set what a project's mail does when signing fails: tempfail (451, the
    /// client retries; default) or send-unsigned (queued unsigned, warning logged).
    OnFailure {
        project: String,
        policy: Option<OnFailure>,
    },
}

pub fn run(cli: &Cli, cmd: &DkimCommand) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let req = match cmd {
        DkimCommand::Keygen {
            domain,
            selector,
            algorithm,
            bits,
            activate,
            show_private,
        } => DkimRequest::Keygen {
            domain: domain.clone(),
            selector: selector.clone(),
            algorithm: *algorithm,
            bits: *bits,
            activate: *activate,
            show_private: *show_private,
        },
        DkimCommand::Import {
            domain,
            selector,
            activate,
            file,
        } => DkimRequest::Import {
            domain: domain.clone(),
            selector: selector.clone(),
            private_key: PrivatePem(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read {}", file.display()))?,
            ),
            activate: *activate,
        },
        DkimCommand::List { domain } => DkimRequest::List {
            domain: domain.clone(),
        },
        DkimCommand::Activate { domain, selector } => DkimRequest::Activate {
            domain: domain.clone(),
            selector: selector.clone(),
        },
        DkimCommand::Retire { domain, selector } => DkimRequest::Retire {
            domain: domain.clone(),
            selector: selector.clone(),
        },
        DkimCommand::Remove { domain, selector } => DkimRequest::Remove {
            domain: domain.clone(),
            selector: selector.clone(),
        },
        DkimCommand::Dns { domain } => DkimRequest::Dns {
            domain: domain.clone(),
        },
        DkimCommand::OnFailure { project, policy } => DkimRequest::OnFailure {
            project: project.clone(),
            on_failure: *policy,
        },
    };
    let v = admin(cli, &config, AdminRequest::Dkim(req))?;
    if cli.json {
        print_json(&v);
        return Ok(());
    }
    match cmd {
        DkimCommand::Keygen { .. } | DkimCommand::Import { .. } => print_new_key(&v),
        DkimCommand::List { .. } => {
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!(
                    "no DKIM keys; create one with: smtp-relay dkim keygen --domain example.com"
                );
            }
            for k in list {
                println!(
                    "{:<28} {:<14} {:<8} {:>5}  {:<9} created {}  owners: {}",
                    s(&k["domain"]),
                    s(&k["selector"]),
                    s(&k["algorithm"]),
                    k["bits"].as_u64().unwrap_or(0),
                    s(&k["state"]),
                    fmt_time(k["created"].as_u64().unwrap_or(0)),
                    owners(&k["owners"]),
                );
            }
        }
        DkimCommand::Activate { .. } => {
            println!(
                "{} {} is active: new mail from {} is signed with it.",
                s(&v["domain"]),
                s(&v["selector"]),
                s(&v["domain"])
            );
            for r in v["replaced"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{} is now retiring; keep its DNS record a few days, then `smtp-relay dkim remove {} {}`.",
                    s(&r["selector"]),
                    s(&v["domain"]),
                    s(&r["selector"])
                );
            }
        }
        DkimCommand::Retire { .. } => println!(
            "{} {} is retiring: no longer signs; keep its DNS record a few days, then remove it.",
            s(&v["domain"]),
            s(&v["selector"])
        ),
        DkimCommand::Remove { .. } => println!(
            "{} {} removed (and its private key file); delete its DNS record {}.",
            s(&v["domain"]),
            s(&v["selector"]),
            s(&v["dns"]["name"])
        ),
        DkimCommand::Dns { .. } => {
            println!("; DNS records for {}", s(&v["domain"]));
            if v["owners"].as_array().is_none_or(Vec::is_empty) {
                println!("; warning: no project has this domain, so nothing is signed for it");
            }
            for r in v["records"].as_array().cloned().unwrap_or_default() {
                println!();
                println!("; {}", s(&r["comment"]));
                println!("{}", s(&r["record"]));
            }
        }
        DkimCommand::OnFailure { .. } => println!(
            "project {}: when DKIM signing fails, {}",
            s(&v["project"]),
            match s(&v["on_failure"]) {
                "send-unsigned" => "the message is queued unsigned and a warning is logged",
                _ => "the message is refused with 451 4.3.0 and the client retries",
            }
        ),
    }
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn owners(v: &Value) -> String {
    let list: Vec<&str> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

fn print_new_key(v: &Value) {
    let kind = match s(&v["algorithm"]) {
        "rsa" => format!("RSA-{}", v["bits"].as_u64().unwrap_or(0)),
        _ => "Ed25519".to_string(),
    };
    println!(
        "{kind} key {} for {}, {}.",
        s(&v["selector"]),
        s(&v["domain"]),
        s(&v["state"])
    );
    println!("private key: {} (mode 0600)", s(&v["key_file"]));
    if v["owners"].as_array().is_none_or(Vec::is_empty) {
        println!(
            "warning: no project has the domain {} yet; add it with `smtp-relay project domain add`",
            s(&v["domain"])
        );
    }
    println!();
    println!("Publish this DNS record:");
    println!();
    println!("{}", s(&v["dns"]["record"]));
    println!();
    if s(&v["state"]) == "pending" {
        println!(
            "Then start signing with: smtp-relay dkim activate {} {}",
            s(&v["domain"]),
            s(&v["selector"])
        );
    }
    if let Some(pem) = v["private_key"].as_str() {
        println!();
        print!("{pem}");
    }
}
