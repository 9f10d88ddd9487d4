//! `smtp-relay status`: the one report a sysadmin reads first — version, uptime, listeners,
//! the TLS certificate and its days to expiry, queue depth and oldest message, each
//! upstream's last success and last error, store health, and per-project outcomes over the
//! last hour.
//!
//! It describes the *running* server: the runtime half comes from [`crate::health`], which only
//! a serving process fills in, so the request is refused in a process that merely opened the
//! database (the CLI asks the server over the admin socket). The stored half (queue, store)
//! is read here with the same calls the metrics endpoint makes.

use serde_json::{Value, json};

use super::{AdminContext, AdminError, ErrorKind, err};
use crate::health;

fn secs(ms: u64) -> u64 {
    ms / 1000
}

pub fn report(ctx: &AdminContext) -> Result<Value, AdminError> {
    let Some((started_ms, uptime)) = health::started() else {
        return Err(AdminError::new(
            ErrorKind::Unavailable,
            "status describes a running server and none runs here: start `smtp-relay serve` \
             (or point --config at the running server's config)",
        ));
    };
    let now_s = secs(crate::queue::now_ms());

    let stats = ctx.queue.stats().map_err(err)?;
    let in_flight = crate::metrics::deliveries_in_flight();
    let oldest = stats.oldest_received_ms.map(secs);
    let queue = json!({
        "depth": stats.scheduled + in_flight,
        "scheduled": stats.scheduled,
        "in_flight": in_flight,
        "oldest_received": oldest,
        "oldest_age_secs": oldest.map(|t| now_s.saturating_sub(t)),
    });

    let store = ctx.queue.store();
    let failure = store.failure.get();
    let store_json = json!({
        "healthy": failure.is_none(),
        "failure": failure,
        "state_dir": store.state_dir().display().to_string(),
        "free_bytes": crate::store::free_bytes(store.state_dir()),
    });

    let tls = match health::certificate() {
        Some(Ok(c)) => json!({
            "file": c.file,
            "subject": c.subject,
            "not_after": c.not_after,
            "days_left": c.days_left(),
            "expiring_soon": c.expiring_soon(),
            "warn_days": health::CERT_WARN_DAYS,
        }),
        Some(Err(e)) => json!({ "error": e }),
        None => Value::Null,
    };

    let upstreams: Vec<Value> = health::upstreams()
        .into_iter()
        .map(|(name, u)| {
            json!({
                "name": name,
                "last_success": u.last_success_ms.map(secs),
                "last_error": u.last_error_ms.map(secs),
                "last_error_reply": u.last_error,
            })
        })
        .collect();

    // Names help the reader; a project deleted within the hour keeps its id only.
    let names = super::project_names(ctx)?;
    let projects: Vec<Value> = health::last_hour()
        .into_iter()
        .map(|(id, c)| {
            json!({
                "id": id,
                "name": names.get(&id),
                "accepted": c.accepted,
                "relayed": c.relayed,
                "deferred": c.deferred,
                "failed": c.failed,
            })
        })
        .collect();

    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "started": secs(started_ms),
        "uptime_secs": uptime.as_secs(),
        "listeners": health::listeners(),
        "tls": tls,
        "queue": queue,
        "store": store_json,
        "upstreams": upstreams,
        // Counted in memory since the start: shorter than an hour right after a restart.
        "last_hour": {
            "window_secs": uptime.as_secs().min(3600),
            "projects": projects,
        },
    }))
}
