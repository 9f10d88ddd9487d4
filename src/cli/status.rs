//! `smtp-relay status [--json]`: asks the running server for its status report
//! (`admin/status.rs`) over the admin socket and prints it as one screen. There is no offline
//! fallback: with no server running there is no uptime, listener or upstream to report, and
//! the command says so and exits non-zero.

use std::fmt::Write as _;

use serde_json::Value;

use super::{Cli, fmt_time, load_config, print_json};
use crate::admin::AdminRequest;
use crate::admin::socket::{ClientError, request};

pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let socket = config.admin_socket();
    let report = match request(&socket, &AdminRequest::Status) {
        Ok(v) => v,
        Err(ClientError::NotRunning(path)) => anyhow::bail!(
            "smtp-relay is not running: no admin socket at {} (status reports the running \
             server; is --config the config it was started with?)",
            path.display()
        ),
        Err(ClientError::Remote(message)) => anyhow::bail!(message),
        Err(e) => return Err(e.into()),
    };
    if cli.json {
        print_json(&report);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn bytes(n: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if n >= GIB {
        format!("{:.1} GiB", n as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    }
}

/// "2026-12-03 04:00:00 UTC (5m ago)", or "never".
fn when(v: &Value, now: u64) -> String {
    match v.as_u64() {
        Some(t) => format!("{} ({} ago)", fmt_time(t), duration(now.saturating_sub(t))),
        None => "never".into(),
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The report as text: one labelled line per subject, tables for upstreams and projects.
pub fn render(r: &Value) -> String {
    let now = r["started"].as_u64().unwrap_or(0) + r["uptime_secs"].as_u64().unwrap_or(0);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "smtp-relay {} (pid {}), up {} since {}",
        str_of(&r["version"]),
        r["pid"],
        duration(r["uptime_secs"].as_u64().unwrap_or(0)),
        fmt_time(r["started"].as_u64().unwrap_or(0))
    );
    let listeners: Vec<String> = r["listeners"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|l| format!("{} {}", str_of(&l["mode"]), str_of(&l["address"])))
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(o, "Listeners:  {}", listeners.join(", "));
    let tls = &r["tls"];
    if let Some(e) = tls["error"].as_str() {
        let _ = writeln!(o, "TLS:        WARNING: cannot read the certificate: {e}");
    } else if let Some(not_after) = tls["not_after"].as_i64() {
        let days = tls["days_left"].as_i64().unwrap_or(0);
        let warn = if tls["expiring_soon"].as_bool() == Some(true) {
            format!(
                "  WARNING: expires within {} days, renew it",
                tls["warn_days"]
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "TLS:        {} — expires {} ({days} days){warn}",
            str_of(&tls["subject"]),
            fmt_time(u64::try_from(not_after).unwrap_or(0)),
        );
    } else {
        let _ = writeln!(o, "TLS:        (no certificate loaded)");
    }
    let q = &r["queue"];
    let oldest = match q["oldest_received"].as_u64() {
        Some(_) => format!(", oldest accepted {}", when(&q["oldest_received"], now)),
        None => String::new(),
    };
    let _ = writeln!(
        o,
        "Queue:      {} message(s) ({} in flight){oldest}",
        q["depth"], q["in_flight"]
    );
    let s = &r["store"];
    let free = s["free_bytes"]
        .as_u64()
        .map(|b| format!(", {} free", bytes(b)))
        .unwrap_or_default();
    let health = match s["failure"].as_str() {
        Some(f) => format!("FAILED ({f})"),
        None => "ok".into(),
    };
    let _ = writeln!(o, "Store:      {health}, {}{free}", str_of(&s["state_dir"]));
    let _ = writeln!(o, "Upstreams:");
    for u in r["upstreams"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "  {:<16} last success {}",
            str_of(&u["name"]),
            when(&u["last_success"], now)
        );
        let err = match u["last_error"].as_u64() {
            Some(_) => format!(
                "{}: {}",
                when(&u["last_error"], now),
                str_of(&u["last_error_reply"])
            ),
            None => "never".into(),
        };
        let _ = writeln!(o, "  {:<16} last error   {err}", "");
    }
    let window = r["last_hour"]["window_secs"].as_u64().unwrap_or(0);
    let _ = writeln!(o, "Projects, last {}:", duration(window));
    let projects = r["last_hour"]["projects"].as_array();
    if projects.is_none_or(|p| p.is_empty()) {
        let _ = writeln!(o, "  (no mail)");
        return o;
    }
    let _ = writeln!(
        o,
        "  {:<32} {:>8} {:>8} {:>8} {:>8}",
        "project", "accepted", "relayed", "deferred", "failed"
    );
    for p in projects.into_iter().flatten() {
        let label = match p["name"].as_str() {
            Some(n) => format!("{} ({n})", str_of(&p["id"])),
            None => str_of(&p["id"]).to_string(),
        };
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        let _ = writeln!(
            o,
            "  {label:<32} {:>8} {:>8} {:>8} {:>8}",
            n("accepted"),
            n("relayed"),
            n("deferred"),
            n("failed")
        );
    }
    o
}
