//! `smtp-relay queue …` and `smtp-relay log`: what is waiting, and what happened.

use clap::{Args, Subcommand};
use serde_json::Value;

use super::{Cli, admin, fmt_time, load_config, print_json};
use crate::admin::AdminRequest;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Messages waiting for delivery.
    List,
    /// One message, queued or finished, with per-recipient results.
    Show { id: String },
    /// Attempt a queued or deferred message now.
    Retry { id: String },
    /// Remove a message from the queue (the log keeps it as deleted).
    Delete { id: String },
}

pub fn run(cli: &Cli, cmd: &QueueCommand) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let (req, single) = match cmd {
        QueueCommand::List => (AdminRequest::QueueList, false),
        QueueCommand::Show { id } => (AdminRequest::QueueShow { id: id.clone() }, true),
        QueueCommand::Retry { id } => (AdminRequest::QueueRetry { id: id.clone() }, true),
        QueueCommand::Delete { id } => (AdminRequest::QueueDelete { id: id.clone() }, true),
    };
    let v = admin(cli, &config, req)?;
    if cli.json {
        print_json(&v);
    } else if single {
        print_detail(&v);
    } else {
        print_table(&v);
    }
    Ok(())
}

/// `log`'s search options: the filters of `GET /api/v1/messages`.
#[derive(Debug, Args, Default)]
pub struct LogSearch {
    /// Only messages in this state (queued, deferred, delivered, failed, expired, deleted).
    #[arg(long)]
    pub state: Option<String>,
    /// Part of a recipient address.
    #[arg(long)]
    pub recipient: Option<String>,
    /// Part of the envelope sender or the header From.
    #[arg(long)]
    pub sender: Option<String>,
    /// Free text in the subject, From, addresses or id.
    #[arg(long)]
    pub search: Option<String>,
    /// Accepted at or after this Unix time (seconds).
    #[arg(long)]
    pub since: Option<u64>,
    /// Accepted before this Unix time (seconds).
    #[arg(long)]
    pub until: Option<u64>,
    /// The next page: the cursor a previous search printed.
    #[arg(long)]
    pub cursor: Option<String>,
}

impl LogSearch {
    fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.recipient.is_none()
            && self.sender.is_none()
            && self.search.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.cursor.is_none()
    }
}

pub fn log(
    cli: &Cli,
    project: Option<String>,
    limit: usize,
    search: &LogSearch,
) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    if search.is_empty() {
        let v = admin(cli, &config, AdminRequest::Log { project, limit })?;
        if cli.json {
            print_json(&v);
        } else {
            print_table(&v);
        }
        return Ok(());
    }
    let req = crate::admin::messages::message_search(crate::admin::messages::MessageQueryParts {
        project,
        state: search.state.clone(),
        recipient: search.recipient.clone(),
        sender: search.sender.clone(),
        since: search.since,
        until: search.until,
        q: search.search.clone(),
        cursor: search.cursor.clone(),
        limit: Some(limit.min(crate::admin::messages::MAX_PAGE)),
    })
    .map_err(|e| anyhow::anyhow!(e.message))?;
    let v = admin(cli, &config, AdminRequest::Messages(req))?;
    if cli.json {
        print_json(&v);
    } else {
        print_table(&v["messages"]);
        if let Some(c) = v["next_cursor"].as_str() {
            println!("more: --cursor {c}");
        }
    }
    Ok(())
}

fn rcpts(m: &Value) -> String {
    m["recipients"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["address"].as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn print_table(v: &Value) {
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no messages");
        return;
    }
    for m in list {
        println!(
            "{}  {}  {:<9} {:<16} {} → {}  {} B  attempts={}  {}",
            m["id"].as_str().unwrap_or(""),
            fmt_time(m["received_ms"].as_u64().unwrap_or(0) / 1000),
            m["state"].as_str().unwrap_or(""),
            m["project"].as_str().unwrap_or(""),
            m["mail_from"].as_str().unwrap_or(""),
            rcpts(&m),
            m["size"].as_u64().unwrap_or(0),
            m["attempts"].as_u64().unwrap_or(0),
            m["last_reply"].as_str().unwrap_or("-"),
        );
    }
}

fn print_detail(m: &Value) {
    println!("id          {}", m["id"].as_str().unwrap_or(""));
    println!("state       {}", m["state"].as_str().unwrap_or(""));
    println!("project     {}", m["project"].as_str().unwrap_or(""));
    println!(
        "received    {}",
        fmt_time(m["received_ms"].as_u64().unwrap_or(0) / 1000)
    );
    println!("client      {}", m["client_ip"].as_str().unwrap_or(""));
    println!("from        {}", m["mail_from"].as_str().unwrap_or(""));
    println!("size        {} bytes", m["size"].as_u64().unwrap_or(0));
    println!("attempts    {}", m["attempts"].as_u64().unwrap_or(0));
    println!("upstream    {}", m["upstream"].as_str().unwrap_or("-"));
    println!("last reply  {}", m["last_reply"].as_str().unwrap_or("-"));
    if !m["state"]
        .as_str()
        .is_some_and(|s| s != "queued" && s != "deferred")
    {
        println!(
            "next try    {}",
            fmt_time(m["next_attempt_ms"].as_u64().unwrap_or(0) / 1000)
        );
    }
    println!(
        "expires     {}",
        fmt_time(m["expires_ms"].as_u64().unwrap_or(0) / 1000)
    );
    println!("recipients");
    for r in m["recipients"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {:<32} {:<9} {}",
            r["address"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            r["reply"].as_str().unwrap_or("-")
        );
    }
    let events = m["events"].as_array().cloned().unwrap_or_default();
    if !events.is_empty() {
        println!("events");
    }
    for e in events {
        let rcpts: Vec<&str> = e["recipients"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "  {}  {:<12} attempt {}  {}  {}{}",
            fmt_time(e["time_ms"].as_u64().unwrap_or(0) / 1000),
            e["type"].as_str().unwrap_or(""),
            e["attempt"].as_u64().unwrap_or(0),
            rcpts.join(","),
            e["reply"].as_str().unwrap_or(""),
            e["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
        );
    }
}
