//! `smtp-relay cluster status`: the nodes of cluster mode, Redis, degraded or not.

use clap::Subcommand;
use serde_json::Value;

use super::{Cli, admin, load_config, print_json};
use crate::admin::AdminRequest;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Nodes seen (heartbeats: id, addresses, version, queue depth), Redis state, degraded.
    Status,
}

pub fn run(cli: &Cli, cmd: &ClusterCommand) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    match cmd {
        ClusterCommand::Status => {
            if config.cluster.is_none() {
                let v = serde_json::json!({ "clustered": false });
                if cli.json {
                    print_json(&v);
                } else {
                    println!("single node (no [cluster] table in the config)");
                }
                return Ok(());
            }
            let v = admin(cli, &config, AdminRequest::ClusterStatus)?;
            if cli.json {
                print_json(&v);
            } else {
                print_status(&v);
            }
            Ok(())
        }
    }
}

fn print_status(v: &Value) {
    if v["clustered"] != true {
        println!("no server running here: start one to see the cluster");
        return;
    }
    let s = |k: &str| v[k].as_str().unwrap_or("?").to_string();
    println!("this node: {}", s("node_id"));
    println!("redis:     {}", s("redis"));
    println!(
        "degraded:  {}",
        if v["degraded"] == true {
            format!("yes (local limits at {})", s("fallback_share"))
        } else {
            "no".into()
        }
    );
    println!("nodes:");
    for n in v["nodes"].as_array().into_iter().flatten() {
        let addrs: Vec<&str> = n["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str())
            .collect();
        println!(
            "  {:<20} {:<5} {:<30} version {:<8} queue {:>6}  seen {} s ago",
            n["id"].as_str().unwrap_or("?"),
            n["state"].as_str().unwrap_or("?"),
            addrs.join(","),
            n["version"].as_str().unwrap_or("-"),
            n["queue_depth"].as_i64().unwrap_or(0),
            n["last_heartbeat_secs_ago"].as_u64().unwrap_or(0),
        );
    }
}
