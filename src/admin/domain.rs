//! The domain verification operations (`domain verify`, `domain status`): gathers what the
//! relay will do for a domain — its DKIM keys, the upstreams of every route that carries its
//! mail — and hands it to [`crate::domain_check::verify`], which does the DNS lookups.

use serde_json::Value;

use super::{AdminContext, AdminError, err};
use crate::domain_check::resolver::Dns;
use crate::domain_check::{Carrier, Report, verify};

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
        return Err(AdminError(format!("{domain:?} is not a domain name")));
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
        let (i, report) = r.map_err(|_| AdminError("internal error".into()))?;
        out.push((i, report?));
    }
    out.sort_by_key(|(i, _)| *i);
    serde_json::to_value(out.into_iter().map(|(_, r)| r).collect::<Vec<_>>()).map_err(err)
}
