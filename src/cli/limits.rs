//! `smtp-relay project limits <id> …`: a project's own rate limits and quotas, and how the
//! limits are printed by `project show`.

use clap::Args;
use serde_json::Value;

use crate::admin::AdminRequest;
use crate::config::LimitMode;
use crate::policy::limits::{LimitOverride, parse_size};

/// Flags override the `[limits]` defaults key by key; 0 means "no limit" for this project.
/// With no flag, shows the limits and their current usage.
#[derive(Debug, Args)]
pub struct LimitsArgs {
    pub id: String,
    /// Messages per second, sustained.
    #[arg(long)]
    pub per_second: Option<u32>,
    /// Messages at once on top of the per-second rate.
    #[arg(long)]
    pub burst: Option<u32>,
    #[arg(long)]
    pub per_minute: Option<u32>,
    #[arg(long)]
    pub per_hour: Option<u32>,
    #[arg(long)]
    pub per_day: Option<u32>,
    #[arg(long)]
    pub recipients_per_day: Option<u32>,
    /// Recipients per message.
    #[arg(long)]
    pub max_recipients: Option<usize>,
    /// Message size, e.g. 25MiB, 512KiB or bytes.
    #[arg(long, value_parser = parse_size)]
    pub max_size: Option<usize>,
    /// Concurrent SMTP sessions of this project.
    #[arg(long)]
    pub max_connections: Option<u32>,
    /// reject (451 with a retry time) or accept-and-delay (queue, release when allowed).
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<LimitMode>,
    /// Drop the project's override first: back to the defaults (plus any flags given).
    #[arg(long)]
    pub clear: bool,
}

fn parse_mode(s: &str) -> Result<LimitMode, String> {
    match s {
        "reject" => Ok(LimitMode::Reject),
        "accept-and-delay" => Ok(LimitMode::AcceptAndDelay),
        other => Err(format!(
            "unknown mode {other:?}: use reject or accept-and-delay"
        )),
    }
}

impl LimitsArgs {
    pub fn request(&self) -> AdminRequest {
        AdminRequest::ProjectLimits {
            id: self.id.clone(),
            set: LimitOverride {
                per_second: self.per_second,
                burst: self.burst,
                per_minute: self.per_minute,
                per_hour: self.per_hour,
                per_day: self.per_day,
                recipients_per_day: self.recipients_per_day,
                max_recipients: self.max_recipients,
                max_size: self.max_size,
                max_connections: self.max_connections,
                mode: self.mode,
            },
            clear: self.clear,
        }
    }
}

/// The `limits` part of `project show`.
pub fn print(l: &Value) {
    let num = |v: &Value| v.as_u64().map(|n| n.to_string());
    println!(
        "limits    mode {}, max size {} bytes, max recipients {}, sessions {}/{}",
        l["mode"].as_str().unwrap_or("?"),
        num(&l["max_size"]).unwrap_or_default(),
        num(&l["max_recipients"]).unwrap_or_default(),
        num(&l["connections"]).unwrap_or_default(),
        num(&l["max_connections"]).unwrap_or_else(|| "unlimited".into()),
    );
    let windows = l["windows"].as_array().cloned().unwrap_or_default();
    if windows.is_empty() {
        println!("  no rate limits");
    }
    for w in windows {
        let mut rate = format!(
            "{} {}/{}",
            w["limit"].as_u64().unwrap_or(0),
            if w["unit"] == "recipients" {
                "recipients"
            } else {
                "messages"
            },
            w["per"].as_str().unwrap_or("?"),
        );
        if w["per"] == "second" {
            rate.push_str(&format!(", burst {}", w["burst"].as_u64().unwrap_or(0)));
        }
        println!(
            "  {:<19} {:<34} used {:>6}  remaining {:>6}  full in {:>7.1} s  ({}{})",
            w["window"].as_str().unwrap_or("?"),
            rate,
            w["used"].as_u64().unwrap_or(0),
            w["remaining"].as_u64().unwrap_or(0),
            w["refills_in_secs"].as_f64().unwrap_or(0.0),
            w["source"].as_str().unwrap_or("?"),
            if w["persistent"].as_bool() == Some(true) {
                ", survives restart"
            } else {
                ""
            },
        );
    }
}
