//! `smtp-relay stats`: the counts of the last hours per project and overall, the queue and
//! the upstreams' health — the same `AdminRequest::Stats` as `GET /api/v1/stats` and the
//! panel's Overview.

use clap::Args;
use serde_json::Value;

use super::{Cli, admin, fmt_time, load_config, print_json};
use crate::admin::AdminRequest;
use crate::admin::stats::StatsRequest;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The window: the last this many hours (1-720).
    #[arg(long, default_value_t = 24)]
    pub hours: u32,
}

fn counts(v: &Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    format!(
        "accepted={} relayed={} deferred={} failed={} rate_limited={}",
        n("accepted"),
        n("relayed"),
        n("deferred"),
        n("failed"),
        n("rate_limited")
    )
}

pub fn run(cli: &Cli, args: &StatsArgs) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let v = admin(
        cli,
        &config,
        AdminRequest::Stats(StatsRequest { hours: args.hours }),
    )?;
    if cli.json {
        print_json(&v);
        return Ok(());
    }
    println!("last {} h    {}", args.hours, counts(&v["overall"]));
    for p in v["projects"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {}",
            p["project"].as_str().unwrap_or(""),
            counts(p)
        );
    }
    let q = &v["queue"];
    match q["oldest_received_ms"].as_u64() {
        Some(ms) => println!(
            "queue        {} waiting, oldest accepted {}",
            q["depth"].as_u64().unwrap_or(0),
            fmt_time(ms / 1000)
        ),
        None => println!("queue        empty"),
    }
    for u in v["upstreams"].as_array().into_iter().flatten() {
        println!(
            "upstream {:<12} {:<9} last success {}  last error {} {}",
            u["name"].as_str().unwrap_or(""),
            u["state"].as_str().unwrap_or(""),
            u["last_success_ms"]
                .as_u64()
                .map(|t| fmt_time(t / 1000))
                .unwrap_or("-".into()),
            u["last_error_ms"]
                .as_u64()
                .map(|t| fmt_time(t / 1000))
                .unwrap_or("-".into()),
            u["last_error"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}
