//! The sandbox operations (`sandbox list|show|release|clear`): the admin side of
//! `queue::sandbox`, kept here so `admin/mod.rs` only dispatches.

use serde_json::{Value, json};

use super::{AdminContext, AdminError, ErrorKind, err};

pub fn list(ctx: &AdminContext, project: &str, limit: usize) -> Result<Value, AdminError> {
    let p = ctx.registry.get(project).map_err(err)?;
    Ok(json!({
        "project": p.id,
        "mode": p.mode.as_str(),
        "count": ctx.sandbox.count(project).map_err(err)?,
        "messages": ctx.sandbox.list(project, limit).map_err(err)?,
    }))
}

pub fn clear(ctx: &AdminContext, project: &str) -> Result<Value, AdminError> {
    ctx.registry.get(project).map_err(err)?;
    let removed = ctx.sandbox.clear(project).map_err(err)?;
    Ok(json!({ "project": project, "removed": removed }))
}

/// Releases one capture into the queue, with the project's maximum age (or the config's).
pub async fn release(ctx: &AdminContext, id: &str) -> Result<Value, AdminError> {
    let (env, _) = ctx.sandbox.get(id).map_err(err)?;
    let max_age = ctx
        .registry
        .get(&env.project)
        .ok()
        .and_then(|p| p.max_age_secs)
        .unwrap_or(ctx.default_max_age_secs);
    let queued = ctx.sandbox.release(id, max_age).await.map_err(err)?;
    Ok(json!({ "released": super::envelope_json(&queued) }))
}

/// [`release`] where no runtime runs (the CLI on the database, no server): a small one.
pub fn release_blocking(ctx: &AdminContext, id: &str) -> Result<Value, AdminError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AdminError::new(ErrorKind::Internal, e.to_string()))?
        .block_on(release(ctx, id))
}
