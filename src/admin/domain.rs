//! The domain verification operations (`domain verify`, `domain status`): gathers what the
//! relay will do for a domain — its DKIM keys, the upstreams of every route that carries its
//! mail — and hands it to [`crate::domain_check::verify`], which does the DNS lookups; and
//! the server's periodic re-check of every domain ([`recheck`]).

use std::time::Duration;

use serde_json::{Value, json};

use super::{AdminContext, AdminError, err};
use crate::domain_check::resolver::Dns;
use crate::domain_check::{Carrier, Report, Status, Verdict, verify};

/// The upstreams that may carry `domain`'s mail: every upstream of each owner's route, or of
/// the default route when no project owns the domain.
fn carriers(ctx: &AdminContext, domain: &str) -> Result<Vec<Carrier>, AdminError> {
    let config = ctx.routes.config();
    let mut routes = Vec::new();
    for p in ctx.registry.list().map_err(err)? {
        if p.domains.iter().any(|d| d == domain) {
            routes.push(ctx.routes.resolve(&p.id));
        }
    }
    if routes.is_empty() {
        routes.push(ctx.routes.default_route());
    }
    let mut out: Vec<Carrier> = Vec::new();
    for name in routes.iter().flat_map(|r| r.names()) {
        if out.iter().any(|c| c.name == name) {
            continue;
        }
        if let Some(u) = config.upstreams.get(&name) {
            out.push(Carrier {
                name,
                upstream: u.clone(),
            });
        }
    }
    Ok(out)
}

async fn one(ctx: &AdminContext, dns: &Dns, domain: &str) -> Result<Report, AdminError> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() || !domain.contains('.') {
        return Err(AdminError::invalid(
            "domain",
            format!("{domain:?} is not a domain name"),
        ));
    }
    let keys = ctx.dkim.list(Some(&domain)).map_err(err)?;
    let carriers = carriers(ctx, &domain)?;
    Ok(verify(dns, &domain, &keys, &carriers).await)
}

fn resolver(ctx: &AdminContext) -> Result<Dns, AdminError> {
    Dns::new(&ctx.routes.config().dns).map_err(err)
}

pub async fn verify_domain(ctx: &AdminContext, domain: &str) -> Result<Value, AdminError> {
    let dns = resolver(ctx)?;
    serde_json::to_value(one(ctx, &dns, domain).await?).map_err(err)
}

/// Every domain of `project`, or of every project; checked concurrently.
pub async fn status(ctx: &AdminContext, project: Option<&str>) -> Result<Value, AdminError> {
    serde_json::to_value(reports(ctx, project).await?).map_err(err)
}

async fn reports(ctx: &AdminContext, project: Option<&str>) -> Result<Vec<Report>, AdminError> {
    let mut domains: Vec<String> = match project {
        Some(id) => ctx.registry.get(id).map_err(err)?.domains,
        None => ctx
            .registry
            .list()
            .map_err(err)?
            .into_iter()
            .flat_map(|p| p.domains)
            .collect(),
    };
    domains.sort();
    domains.dedup();
    let dns = resolver(ctx)?;
    let mut set = tokio::task::JoinSet::new();
    for (i, d) in domains.into_iter().enumerate() {
        let (ctx, dns) = (ctx.clone(), dns.clone());
        set.spawn(async move { (i, one(&ctx, &dns, &d).await) });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        let (i, report) = r.map_err(|_| AdminError::internal("internal error"))?;
        out.push((i, report?));
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

/// The server's last check of each of `domains` (`project show`): verdict and time, or null.
pub fn last_json(ctx: &AdminContext, domains: &[String]) -> Value {
    let mut out = serde_json::Map::new();
    for d in domains {
        let v = match ctx.domain_reports.get(d) {
            Some(r) => json!({ "verdict": r.verdict, "checked_at": r.checked_at }),
            None => Value::Null,
        };
        out.insert(d.clone(), v);
    }
    Value::Object(out)
}

fn gauge(status: Status) -> i64 {
    match status {
        Status::Ok => 1,
        Status::Warning | Status::Error => 0,
        Status::CouldNotCheck => -1,
    }
}

/// The server's periodic re-check of every domain: every `every` (±10 %, the first within a
/// minute of startup), keeps the last report for `project show`, sets
/// `smtp_relay_domain_verified`, and logs a change of verdict.
pub async fn recheck(
    ctx: AdminContext,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut wait = every
        .min(Duration::from_secs(60))
        .mul_f64(rand::random_range(0.0..1.0));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        }
        wait = every.mul_f64(rand::random_range(0.9..1.1));
        let list = tokio::select! {
            r = reports(&ctx, None) => r,
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        };
        let list = match list {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "domain re-check failed");
                continue;
            }
        };
        for r in list {
            for check in ["dkim", "spf", "dmarc"] {
                crate::metrics::domain_verified(&r.domain, check, gauge(r.check_status(check)));
            }
            let all = match r.verdict {
                Verdict::Verified => 1,
                Verdict::CouldNotCheck => -1,
                Verdict::Partial | Verdict::Failing => 0,
            };
            crate::metrics::domain_verified(&r.domain, "all", all);
            let (domain, verdict) = (r.domain.clone(), r.verdict);
            match ctx.domain_reports.put(r) {
                Some(old) if old == verdict => {}
                Some(old) => {
                    let (from, to) = (old.as_str(), verdict.as_str());
                    if verdict == Verdict::Failing {
                        tracing::warn!(%domain, from, to, "domain verdict changed; see `smtp-relay domain verify {domain}`");
                    } else {
                        tracing::info!(%domain, from, to, "domain verdict changed");
                    }
                }
                None => tracing::info!(%domain, verdict = verdict.as_str(), "domain checked"),
            }
        }
    }
}
