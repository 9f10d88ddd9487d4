//! The suppression-list operations (`smtp-relay suppression …`, `/api/v1/projects/{id}/suppressions`):
//! thin wrappers that check the project exists and shape the answers, so the CLI, socket and
//! HTTP API print the same thing.

use serde_json::{Value, json};

use super::{AdminContext, AdminError, err};
use crate::policy::suppression::Entry;

fn entry_json(e: &Entry) -> Value {
    json!({
        "project": e.project,
        "address": e.address,
        "reason": e.reason,
        "source": e.source,
        "added_ms": e.added_ms,
        "expires_ms": e.expires_ms,
        "message_id": e.message_id,
    })
}

pub fn list(ctx: &AdminContext, project: &str) -> Result<Value, AdminError> {
    ctx.registry.get(project).map_err(err)?;
    let list = ctx.suppression.list(project).map_err(err)?;
    Ok(Value::Array(list.iter().map(entry_json).collect()))
}

pub fn add(
    ctx: &AdminContext,
    project: &str,
    address: &str,
    reason: &str,
) -> Result<Value, AdminError> {
    ctx.registry.get(project).map_err(err)?;
    let e = ctx.suppression.add(project, address, reason).map_err(err)?;
    Ok(entry_json(&e))
}

pub fn remove(ctx: &AdminContext, project: &str, address: &str) -> Result<Value, AdminError> {
    ctx.registry.get(project).map_err(err)?;
    let e = ctx.suppression.remove(project, address).map_err(err)?;
    Ok(entry_json(&e))
}

/// [`list`] with the entries shared through Redis (cluster mode).
pub async fn list_shared(ctx: &AdminContext, project: &str) -> Result<Value, AdminError> {
    ctx.registry.get(project).map_err(err)?;
    let list = ctx.suppression.list_shared(project).await.map_err(err)?;
    Ok(Value::Array(list.iter().map(entry_json).collect()))
}

/// [`add`], then the entry to Redis (cluster mode; a Redis failure leaves it on this node).
pub async fn add_shared(
    ctx: &AdminContext,
    project: String,
    address: String,
    reason: String,
) -> Result<Value, AdminError> {
    let e = crate::run_blocking(|| {
        ctx.registry.get(&project).map_err(err)?;
        ctx.suppression
            .add(&project, &address, &reason)
            .map_err(err)
    })?;
    if let Some(cluster) = ctx.suppression.cluster() {
        crate::policy::suppression::share_entries(cluster, std::slice::from_ref(&e)).await;
    }
    Ok(entry_json(&e))
}

/// [`remove`] from this node's tree and from Redis (cluster mode).
pub async fn remove_shared(
    ctx: &AdminContext,
    project: &str,
    address: &str,
) -> Result<Value, AdminError> {
    ctx.registry.get(project).map_err(err)?;
    let e = ctx
        .suppression
        .remove_shared(project, address)
        .await
        .map_err(err)?;
    Ok(entry_json(&e))
}
