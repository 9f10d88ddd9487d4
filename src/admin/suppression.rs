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
