//! `stats`: what the relay did over a time window — per project and overall, how many
//! messages were accepted, relayed, deferred, failed and held back by limits, hour by hour —
//! plus the queue's depth and oldest message and each upstream's health (last success, last
//! error, throttled). The Overview page draws its chart from it; scripts poll it.
//!
//! Counts come from the delivery events (`events`), read by one range scan: message ids start
//! with their acceptance time, so only messages accepted within the window plus the queue's
//! maximum age before it are read, and each event counts in the hour it happened.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::err;
use super::{AdminContext, AdminError};
use crate::events::EventKind;

/// Longest window (30 days); hourly buckets are given up to a week.
pub const MAX_HOURS: u32 = 720;
const MAX_HOURLY: u32 = 168;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsRequest {
    /// The window: the last `hours` hours.
    pub hours: u32,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    accepted: u64,
    relayed: u64,
    deferred: u64,
    failed: u64,
    rate_limited: u64,
}

impl Counts {
    fn add(&mut self, kind: EventKind) {
        match kind {
            EventKind::Accepted => self.accepted += 1,
            EventKind::Relayed => self.relayed += 1,
            EventKind::Deferred => self.deferred += 1,
            EventKind::Failed => self.failed += 1,
            EventKind::RateLimited => self.rate_limited += 1,
            _ => {}
        }
    }

    fn json(&self) -> Value {
        json!({
            "accepted": self.accepted,
            "relayed": self.relayed,
            "deferred": self.deferred,
            "failed": self.failed,
            "rate_limited": self.rate_limited,
        })
    }
}

#[derive(Default)]
struct Health {
    last_success_ms: Option<u64>,
    last_error_ms: Option<u64>,
    last_error: Option<String>,
}

pub fn execute(ctx: &AdminContext, req: StatsRequest) -> Result<Value, AdminError> {
    if req.hours == 0 || req.hours > MAX_HOURS {
        return Err(AdminError::invalid(
            "hours",
            format!("hours must be 1 to {MAX_HOURS}"),
        ));
    }
    let now = crate::queue::now_ms();
    let hour_ms = 3_600_000u64;
    let window_ms = u64::from(req.hours) * hour_ms;
    let since = now.saturating_sub(window_ms);
    // Buckets end at the next full hour, so the chart's hours are clock hours.
    let end = (now / hour_ms + 1) * hour_ms;
    let hourly_n = req.hours.min(MAX_HOURLY) as u64;
    let first_bucket = end - hourly_n * hour_ms;
    let mut hourly = vec![Counts::default(); hourly_n as usize];
    let mut overall = Counts::default();
    let mut per_project: BTreeMap<String, Counts> = BTreeMap::new();
    let mut health: BTreeMap<String, Health> = BTreeMap::new();
    let max_age_ms = ctx.routes.config().queue.max_age_secs * 1000;
    ctx.events
        .of_messages_since(since.saturating_sub(max_age_ms), |e| {
            if e.time_ms < since {
                return;
            }
            overall.add(e.kind);
            per_project
                .entry(e.project.clone())
                .or_default()
                .add(e.kind);
            if e.time_ms >= first_bucket {
                let i = ((e.time_ms - first_bucket) / hour_ms) as usize;
                if let Some(b) = hourly.get_mut(i) {
                    b.add(e.kind);
                }
            }
            if let Some(u) = &e.upstream {
                let h = health.entry(u.clone()).or_default();
                match e.kind {
                    EventKind::Relayed => {
                        h.last_success_ms = h.last_success_ms.max(Some(e.time_ms));
                    }
                    EventKind::Deferred | EventKind::Failed
                        if h.last_error_ms.is_none_or(|t| t <= e.time_ms) =>
                    {
                        h.last_error_ms = Some(e.time_ms);
                        h.last_error = e.reply.clone();
                    }
                    _ => {}
                }
            }
        })
        .map_err(err)?;

    let names = super::project_names(ctx)?;
    let mut ids: Vec<&String> = names.keys().collect();
    ids.extend(per_project.keys().filter(|k| !names.contains_key(*k)));
    let projects: Vec<Value> = ids
        .into_iter()
        .map(|id| {
            let mut v = per_project.get(id).copied().unwrap_or_default().json();
            v["project"] = json!(id);
            v["name"] = json!(names.get(id));
            v
        })
        .collect();

    let queue = ctx.queue.stats().map_err(err)?;
    let backoffs: BTreeMap<String, Option<u64>> = match &ctx.tester {
        Some(t) => t.router.backoffs().into_iter().collect(),
        None => ctx
            .routes
            .config()
            .upstreams
            .keys()
            .map(|k| (k.clone(), None))
            .collect(),
    };
    let mut upstream_names: Vec<String> = backoffs.keys().cloned().collect();
    upstream_names.extend(
        health
            .keys()
            .filter(|k| !backoffs.contains_key(*k))
            .cloned(),
    );
    let upstreams: Vec<Value> = upstream_names
        .iter()
        .map(|name| {
            let h = health.get(name);
            let throttled_until = backoffs.get(name).copied().flatten();
            json!({
                "name": name,
                "configured": backoffs.contains_key(name),
                "last_success_ms": h.and_then(|h| h.last_success_ms),
                "last_error_ms": h.and_then(|h| h.last_error_ms),
                "last_error": h.and_then(|h| h.last_error.clone()),
                "throttled_until_ms": throttled_until,
                "state": if throttled_until.is_some() { "throttled" } else {
                    match h {
                        Some(Health { last_success_ms: Some(s), last_error_ms: Some(e), .. }) if e > s => "failing",
                        Some(Health { last_success_ms: None, last_error_ms: Some(_), .. }) => "failing",
                        Some(Health { last_success_ms: Some(_), .. }) => "ok",
                        _ => "idle",
                    }
                },
            })
        })
        .collect();

    Ok(json!({
        "window": { "hours": req.hours, "since_ms": since, "until_ms": now },
        "overall": overall.json(),
        "projects": projects,
        "hourly": hourly.iter().enumerate().map(|(i, c)| {
            let mut v = c.json();
            v["start_ms"] = json!(first_bucket + i as u64 * hour_ms);
            v
        }).collect::<Vec<_>>(),
        "queue": {
            "depth": queue.scheduled,
            "oldest_received_ms": queue.oldest_received_ms,
            "oldest_age_secs": queue.oldest_received_ms.map(|t| now.saturating_sub(t) / 1000),
        },
        "upstreams": upstreams,
    }))
}
