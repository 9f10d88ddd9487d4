//! Administrative operations — projects, tokens, domains, queue, log — in one place.
//!
//! sled lets only one process open the database, so the CLI cannot share it with a running
//! server. Instead the CLI sends an [`AdminRequest`] over the server's Unix socket
//! (`socket.rs`), and only when no server is running does it open the database itself.
//! Both paths end in [`execute`], so behaviour cannot drift between them.

pub mod branding_preview;
pub mod dkim;
pub mod domain;
pub mod error;
pub mod messages;
pub mod sandbox;
pub mod socket;
pub mod stats;
pub mod status;

use error::err;
pub use error::{AdminError, ErrorKind};
pub mod suppression;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::outbound::send_test::{SendTest, Tester};
use crate::policy::limits::{LimitOverride, Limiter};
use crate::policy::projects::{Project, Registry};
use crate::policy::routes::{Route, RouteTable};
use crate::queue::{Envelope, MessageLog, Queue};
use crate::transform::branding::{BrandingStore, BrandingUpdate};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    ProjectAdd {
        name: String,
        domains: Vec<String>,
        label: String,
        max_age_secs: Option<u64>,
    },
    ProjectList,
    ProjectShow {
        id: String,
    },
    ProjectEnable {
        id: String,
        enabled: bool,
    },
    ProjectDelete {
        id: String,
    },
    ProjectMaxAge {
        id: String,
        max_age_secs: Option<u64>,
    },
    /// Shows the project's sender policy; with `allow_foreign_sender`, sets it.
    ProjectSenderPolicy {
        id: String,
        #[serde(default)]
        allow_foreign_sender: Option<bool>,
    },
    /// Merges `set` into the project's limit override (dropping it first with `clear`);
    /// with neither, only shows. Answers like `ProjectShow`.
    ProjectLimits {
        id: String,
        #[serde(default)]
        set: LimitOverride,
        #[serde(default)]
        clear: bool,
    },
    TokenAdd {
        id: String,
        label: String,
    },
    TokenRevoke {
        id: String,
        token_id: String,
    },
    DomainAdd {
        id: String,
        domain: String,
    },
    DomainRemove {
        id: String,
        domain: String,
    },
    QueueList,
    QueueShow {
        id: String,
    },
    QueueRetry {
        id: String,
    },
    QueueDelete {
        id: String,
    },
    Log {
        project: Option<String>,
        limit: usize,
    },
    /// Shows the project's branding, or changes it when `update` is given.
    ProjectBranding {
        id: String,
        #[serde(default)]
        update: Option<BrandingUpdate>,
    },
    /// Shows the project's route; with `upstream`, sets it; with `clear`, back to the default.
    ProjectRoute {
        id: String,
        upstream: Option<String>,
        #[serde(default)]
        fallbacks: Vec<String>,
        #[serde(default)]
        clear: bool,
    },
    /// A project's suppressed recipients (`suppression.rs`).
    SuppressionList {
        project: String,
    },
    SuppressionAdd {
        project: String,
        address: String,
        #[serde(default)]
        reason: String,
    },
    SuppressionRemove {
        project: String,
        address: String,
    },
    /// Shows whether the project sends bounce messages; with `enabled`, sets it.
    ProjectBounces {
        id: String,
        #[serde(default)]
        enabled: Option<bool>,
    },
    /// One test message through the pipeline, synchronously (`execute_async` only).
    SendTest(SendTest),
    /// DKIM keys, DNS records and signing policy (`dkim.rs`).
    Dkim(dkim::DkimRequest),
    /// Looks up the domain's DKIM, SPF and DMARC records (`domain.rs`; `execute_async` only).
    DomainVerify {
        domain: String,
    },
    /// `DomainVerify` for every domain of a project, or of every project.
    DomainStatus {
        #[serde(default)]
        project: Option<String>,
    },
    /// A new admin token for the HTTP API (shown once).
    AdminTokenAdd {
        label: String,
        role: crate::policy::admin_tokens::Role,
    },
    AdminTokenList,
    AdminTokenRevoke {
        id: String,
    },
    /// A webhook endpoint for a project's events (`project: None`: every project's).
    WebhookAdd {
        project: Option<String>,
        url: String,
        events: Vec<String>,
    },
    WebhookList {
        #[serde(default)]
        project: Option<String>,
    },
    /// One endpoint with its recent delivery attempts.
    WebhookShow {
        id: String,
    },
    WebhookRemove {
        id: String,
    },
    /// Queues a signed `webhook.test` event for the endpoint.
    WebhookTest {
        id: String,
    },
    WebhookRotateSecret {
        id: String,
    },
    /// Turns a disabled endpoint on again.
    WebhookEnable {
        id: String,
    },
    /// The running server's status report (`status.rs`).
    Status,
    /// A sample mail branded by the real transform, with `changes` on top of the stored
    /// settings (nothing is stored; `branding_preview.rs`).
    BrandingPreview {
        id: String,
        #[serde(default)]
        changes: Option<BrandingUpdate>,
    },
    /// Counts over a time window, queue depth, upstream health (`stats.rs`).
    Stats(stats::StatsRequest),
    /// The message log with filters and a cursor, or one message in full (`messages.rs`).
    Messages(messages::MessagesRequest),
    /// `live` (mail is sent) or `sandbox` (mail is captured, `sandbox.rs`).
    ProjectMode {
        id: String,
        mode: crate::policy::projects::ProjectMode,
    },
    /// A project's captured messages, newest first.
    SandboxList {
        project: String,
        #[serde(default = "default_sandbox_limit")]
        limit: usize,
    },
    /// One captured message, with its text (`eml`).
    SandboxShow {
        id: String,
    },
    /// Sends one captured message to its real recipients (it enters the queue).
    SandboxRelease {
        id: String,
    },
    /// Drops every captured message of a project.
    SandboxClear {
        project: String,
    },
    /// Nodes, Redis and degraded state of cluster mode (`cluster/nodes.rs`).
    ClusterStatus,
}

fn default_sandbox_limit() -> usize {
    100
}

impl AdminRequest {
    /// Whether the operation only reads: such a request never creates a database (the CLI
    /// refuses it on a state directory that has none, rather than showing an empty one).
    pub fn is_read_only(&self) -> bool {
        use AdminRequest::*;
        match self {
            ProjectList | ProjectShow { .. } | QueueList | QueueShow { .. } | Log { .. } => true,
            WebhookList { .. } | WebhookShow { .. } | Status => true,
            SandboxList { .. } | SandboxShow { .. } => true,
            ClusterStatus => true,
            ProjectLimits { set, clear, .. } => set.is_empty() && !clear,
            SuppressionList { .. } => true,
            ProjectBounces { enabled, .. } => enabled.is_none(),
            ProjectBranding { update, .. } => update.is_none(),
            ProjectRoute {
                upstream, clear, ..
            } => upstream.is_none() && !clear,
            SendTest(_) | DomainVerify { .. } | DomainStatus { .. } => true,
            Messages(_) | BrandingPreview { .. } | Stats(_) => true,
            Dkim(d) => matches!(
                d,
                dkim::DkimRequest::List { .. }
                    | dkim::DkimRequest::Dns { .. }
                    | dkim::DkimRequest::OnFailure {
                        on_failure: None,
                        ..
                    }
            ),
            _ => false,
        }
    }
}

/// What the operations need; built from the server's handles or from a directly opened store.
#[derive(Clone, Debug)]
pub struct AdminContext {
    pub registry: Registry,
    pub queue: Queue,
    pub log: MessageLog,
    pub branding: BrandingStore,
    /// Per-project limits: overrides, and the usage `project show` reports.
    pub limiter: Limiter,
    pub routes: RouteTable,
    /// Suppressed recipients, per project.
    pub suppression: crate::policy::suppression::Suppressions,
    /// Runs `send-test`; present where the delivery side is built (server, CLI send-test).
    pub tester: Option<std::sync::Arc<Tester>>,
    pub dkim: crate::transform::dkim_keys::DkimKeys,
    /// Tokens of the HTTP admin API.
    pub admin_tokens: crate::policy::admin_tokens::AdminTokens,
    /// Delivery events and webhook endpoints.
    pub events: crate::events::webhooks::WebhookAdmin,
    /// The server's last domain checks (empty where no server runs).
    pub domain_reports: crate::domain_check::LastReports,
    /// Captured mail of sandbox projects (`sandbox.rs`).
    pub sandbox: crate::queue::sandbox::Sandbox,
    /// `queue.max_age_secs`: the maximum age of a released sandbox message without its own.
    pub default_max_age_secs: u64,
    /// Cluster mode (a running server with `[cluster]`): registry writes go through it.
    pub cluster: Option<crate::cluster::Cluster>,
}

/// Project id → name, ordered by id (stats and status label their per-project rows with it).
fn project_names(
    ctx: &AdminContext,
) -> Result<std::collections::BTreeMap<String, String>, AdminError> {
    Ok(ctx
        .registry
        .list()
        .map_err(err)?
        .into_iter()
        .map(|p| (p.id, p.name))
        .collect())
}

/// A project's maximum queue age has the same floor as `queue.max_age_secs`: below it a
/// message could expire before its first delivery attempt had a chance.
fn check_max_age(secs: Option<u64>) -> Result<(), AdminError> {
    match secs {
        Some(s) if s < crate::config::MIN_MAX_AGE_SECS => Err(AdminError::invalid(
            "max_age_secs",
            format!(
                "max age {s} s is too short: at least {} s, so that a message \
             gets at least one delivery attempt (no value: the config's queue.max_age_secs)",
                crate::config::MIN_MAX_AGE_SECS
            ),
        )),
        _ => Ok(()),
    }
}

/// A project as shown to admins: token digests are not shown.
pub fn project_json(p: &Project) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "domains": p.domains,
        "enabled": !p.disabled,
        "created": p.created,
        "max_age_secs": p.max_age_secs,
        "bounces": p.bounces,
        "allow_foreign_sender": p.allow_foreign_sender,
        "mode": p.mode.as_str(),
        "tokens": p.tokens.iter().map(|t| json!({
            "id": t.id, "label": t.label, "created": t.created,
        })).collect::<Vec<_>>(),
    })
}

/// A project's branding as shown to admins (`null` when never set up).
fn branding_json(ctx: &AdminContext, id: &str) -> Result<Value, AdminError> {
    Ok(ctx
        .branding
        .get(id)
        .map_err(err)?
        .map(|b| b.to_json())
        .unwrap_or(Value::Null))
}

/// `project_json` plus each limit and its current usage.
fn project_with_limits(ctx: &AdminContext, p: &Project) -> Result<Value, AdminError> {
    let mut v = project_json(p);
    let report = ctx.limiter.report(&p.id).map_err(err)?;
    v["limits"] = serde_json::to_value(report).map_err(err)?;
    Ok(v)
}

pub fn envelope_json(e: &Envelope) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

fn route_json(ctx: &AdminContext, id: &str) -> Result<Value, AdminError> {
    let own = ctx.routes.get(id).map_err(err)?;
    let route = own.clone().unwrap_or_else(|| ctx.routes.default_route());
    Ok(json!({
        "project": id,
        "upstream": route.upstream,
        "fallbacks": route.fallbacks,
        "default": own.is_none(),
    }))
}

/// Like [`execute`], plus the operations that wait on the network (`SendTest`).
pub async fn execute_async(ctx: &AdminContext, req: AdminRequest) -> Result<Value, AdminError> {
    match req {
        AdminRequest::SendTest(t) => match &ctx.tester {
            Some(tester) => tester.run(&t).await.map_err(err),
            None => Err(AdminError::unavailable("send-test is not available here")),
        },
        AdminRequest::DomainVerify { domain } => domain::verify_domain(ctx, &domain).await,
        AdminRequest::DomainStatus { project } => domain::status(ctx, project.as_deref()).await,
        AdminRequest::SandboxRelease { id } => sandbox::release(ctx, &id).await,
        AdminRequest::ClusterStatus => Ok(match &ctx.cluster {
            Some(c) => c.status().await,
            None => json!({ "clustered": false }),
        }),
        // Cluster mode: the list is written through to Redis and read with it
        // (admin/suppression.rs).
        AdminRequest::SuppressionList { project } if ctx.cluster.is_some() => {
            suppression::list_shared(ctx, &project).await
        }
        AdminRequest::SuppressionAdd {
            project,
            address,
            reason,
        } if ctx.cluster.is_some() => suppression::add_shared(ctx, project, address, reason).await,
        AdminRequest::SuppressionRemove { project, address } if ctx.cluster.is_some() => {
            suppression::remove_shared(ctx, &project, &address).await
        }
        other if ctx.cluster.is_some() && crate::cluster::is_registry_write(&other) => {
            let (c, ctx) = (ctx.cluster.clone(), ctx.clone());
            match c {
                Some(c) => c.write(move || execute(&ctx, other)).await.map_err(err)?,
                None => execute(&ctx, other),
            }
        }
        other => {
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || execute(&ctx, other))
                .await
                .map_err(|_| AdminError::internal("internal error"))?
        }
    }
}

pub fn execute(ctx: &AdminContext, req: AdminRequest) -> Result<Value, AdminError> {
    use AdminRequest::*;
    let r = &ctx.registry;
    Ok(match req {
        ProjectAdd {
            name,
            domains,
            label,
            max_age_secs,
        } => {
            check_max_age(max_age_secs)?;
            let (p, token) = r
                .create(&name, &domains, &label, max_age_secs)
                .map_err(err)?;
            let token_id = p.tokens.last().map(|t| t.id.clone()).unwrap_or_default();
            json!({ "project": project_json(&p), "token_id": token_id, "token": token.expose() })
        }
        ProjectList => Value::Array(r.list().map_err(err)?.iter().map(project_json).collect()),
        ProjectShow { id } => {
            let p = r.get(&id).map_err(err)?;
            let mut v = project_with_limits(ctx, &p)?;
            v["branding"] = branding_json(ctx, &id)?;
            v["domain_verification"] = domain::last_json(ctx, &p.domains);
            v
        }
        ProjectLimits { id, set, clear } => {
            let p = r.get(&id).map_err(err)?;
            if clear || !set.is_empty() {
                ctx.limiter.set_override(&id, &set, clear).map_err(err)?;
            }
            project_with_limits(ctx, &p)?
        }
        ProjectEnable { id, enabled } => project_json(&r.set_disabled(&id, !enabled).map_err(err)?),
        ProjectDelete { id } => {
            let p = r.delete(&id).map_err(err)?;
            ctx.limiter.forget(&id).map_err(err)?;
            // Its captured mail goes with it (nobody could release it any more).
            ctx.sandbox.clear(&id).map_err(err)?;
            project_json(&p)
        }
        ProjectMaxAge { id, max_age_secs } => {
            check_max_age(max_age_secs)?;
            project_json(&r.set_max_age(&id, max_age_secs).map_err(err)?)
        }
        ProjectSenderPolicy {
            id,
            allow_foreign_sender,
        } => project_json(&match allow_foreign_sender {
            Some(allow) => r.set_allow_foreign_sender(&id, allow).map_err(err)?,
            None => r.get(&id).map_err(err)?,
        }),
        TokenAdd { id, label } => {
            let (p, token) = r.add_token(&id, &label).map_err(err)?;
            let token_id = p.tokens.last().map(|t| t.id.clone()).unwrap_or_default();
            json!({ "project": project_json(&p), "token_id": token_id, "token": token.expose() })
        }
        TokenRevoke { id, token_id } => project_json(&r.revoke_token(&id, &token_id).map_err(err)?),
        DomainAdd { id, domain } => project_json(&r.add_domain(&id, &domain).map_err(err)?),
        DomainRemove { id, domain } => {
            let p = r.get(&id).map_err(err)?;
            let d = domain.trim().to_ascii_lowercase();
            if !p.domains.contains(&d) {
                return Err(AdminError::not_found(format!(
                    "project {id} has no domain {d} (its domains: {})",
                    p.domains.join(", ")
                )));
            }
            if p.domains.len() == 1 {
                return Err(AdminError::conflict(format!(
                    "{d} is the last domain of project {id}: a project must keep at least one \
                     (add the new one first, or disable the project)"
                )));
            }
            project_json(&r.remove_domain(&id, &domain).map_err(err)?)
        }
        QueueList => Value::Array(
            ctx.queue
                .list()
                .map_err(err)?
                .iter()
                .map(envelope_json)
                .collect(),
        ),
        QueueShow { id } => match ctx.log.get(&id).map_err(err)? {
            Some(e) => {
                let mut v = envelope_json(&e);
                v["events"] =
                    serde_json::to_value(ctx.events.for_message(&id).map_err(err)?).map_err(err)?;
                v
            }
            None => return Err(AdminError::not_found(format!("no message {id}"))),
        },
        QueueRetry { id } => envelope_json(&ctx.queue.retry_now(&id).map_err(err)?),
        QueueDelete { id } => envelope_json(&ctx.queue.delete(&id).map_err(err)?),
        ProjectBranding { id, update } => {
            r.get(&id).map_err(err)?;
            if let Some(u) = update {
                ctx.branding.update(&id, u).map_err(err)?;
            }
            branding_json(ctx, &id)?
        }
        Log { project, limit } => {
            let list = ctx.log.recent(project.as_deref(), limit).map_err(err)?;
            // A deleted project's messages stay in the log; a name never seen is a mistake.
            if let Some(p) = &project
                && list.is_empty()
            {
                r.get(p).map_err(err)?;
            }
            Value::Array(list.iter().map(envelope_json).collect())
        }
        ProjectRoute {
            id,
            upstream,
            fallbacks,
            clear,
        } => {
            r.get(&id).map_err(err)?;
            if clear {
                ctx.routes.clear(&id).map_err(err)?;
            } else if let Some(upstream) = upstream {
                let route = Route {
                    upstream,
                    fallbacks,
                };
                ctx.routes.set(&id, &route).map_err(err)?;
            }
            route_json(ctx, &id)?
        }
        SuppressionList { project } => suppression::list(ctx, &project)?,
        SuppressionAdd {
            project,
            address,
            reason,
        } => suppression::add(ctx, &project, &address, &reason)?,
        SuppressionRemove { project, address } => suppression::remove(ctx, &project, &address)?,
        ProjectBounces { id, enabled } => project_json(&match enabled {
            Some(on) => r.set_bounces(&id, on).map_err(err)?,
            None => r.get(&id).map_err(err)?,
        }),
        SendTest(_) | DomainVerify { .. } | DomainStatus { .. } => {
            return Err(AdminError::internal("this operation runs asynchronously"));
        }
        Dkim(req) => dkim::execute(ctx, req)?,
        AdminTokenAdd { label, role } => {
            let (info, token) = ctx.admin_tokens.create(&label, role).map_err(err)?;
            json!({ "admin_token": info, "token": token.expose() })
        }
        AdminTokenList => {
            serde_json::to_value(ctx.admin_tokens.list().map_err(err)?).map_err(err)?
        }
        AdminTokenRevoke { id } => {
            serde_json::to_value(ctx.admin_tokens.revoke(&id).map_err(err)?).map_err(err)?
        }
        WebhookAdd {
            project,
            url,
            events,
        } => {
            if let Some(p) = &project {
                r.get(p).map_err(err)?;
            }
            ctx.events.add(project, &url, &events).map_err(err)?
        }
        WebhookList { project } => ctx.events.list(project.as_deref()).map_err(err)?,
        WebhookShow { id } => ctx.events.show(&id).map_err(err)?,
        WebhookRemove { id } => ctx.events.remove(&id).map_err(err)?,
        WebhookTest { id } => ctx.events.test(&id).map_err(err)?,
        WebhookRotateSecret { id } => ctx.events.rotate_secret(&id).map_err(err)?,
        WebhookEnable { id } => ctx.events.enable(&id).map_err(err)?,
        Status => status::report(ctx)?,
        Messages(req) => messages::execute(ctx, req)?,
        Stats(req) => stats::execute(ctx, req)?,
        BrandingPreview { id, changes } => branding_preview::preview(ctx, &id, changes)?,
        ProjectMode { id, mode } => project_json(&r.set_mode(&id, mode).map_err(err)?),
        SandboxList { project, limit } => sandbox::list(ctx, &project, limit)?,
        SandboxShow { id } => ctx.sandbox.show(&id).map_err(err)?,
        SandboxRelease { id } => sandbox::release_blocking(ctx, &id)?,
        SandboxClear { project } => sandbox::clear(ctx, &project)?,
        // Only a running clustered server knows (`execute_async`); offline, no cluster.
        ClusterStatus => json!({ "clustered": false }),
    })
}
