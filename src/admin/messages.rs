//! The message log as the API and the panel read it: searching with filters and an opaque
//! cursor (newest first), and one message with everything known about it — envelope,
//! subject and header fields, size, and each delivery attempt with its upstream reply.
//!
//! Kept apart from `mod.rs` because the log has its own query shape; the CLI's `queue log`
//! keeps using the simpler `AdminRequest::Log`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::err;
use super::{AdminContext, AdminError, envelope_json};
use crate::events::EventKind;
use crate::queue::log::LogFilter;

/// Most messages on one page.
pub const MAX_PAGE: usize = 200;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum MessagesRequest {
    /// A page of the log, newest first; `cursor` is the previous page's `next_cursor`.
    Search {
        #[serde(default)]
        filter: LogFilter,
        #[serde(default)]
        cursor: Option<String>,
        limit: usize,
    },
    /// One message in full.
    Show { id: String },
}

/// An empty query parameter (`?state=` from a form) is no filter.
fn given(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The admin request for a message query, or the error naming the bad parameter.
pub fn message_search(q: MessageQueryParts) -> Result<MessagesRequest, AdminError> {
    let state = match given(q.state) {
        Some(st) => Some(
            serde_json::from_value::<crate::queue::MessageState>(json!(st)).map_err(|_| {
                AdminError::invalid(
                    "state",
                    format!(
                        "unknown state {st:?}: use queued, deferred, delivered, failed, \
                         expired or deleted"
                    ),
                )
            })?,
        ),
        None => None,
    };
    Ok(MessagesRequest::Search {
        filter: crate::queue::log::LogFilter {
            project: given(q.project),
            state,
            recipient: given(q.recipient),
            sender: given(q.sender),
            since_ms: q.since.map(|s| s.saturating_mul(1000)),
            until_ms: q.until.map(|s| s.saturating_mul(1000)),
            text: given(q.q),
        },
        cursor: given(q.cursor),
        limit: q.limit.unwrap_or(50),
    })
}

/// The query of a message search, shared by the API and the panel's filter form.
pub struct MessageQueryParts {
    pub project: Option<String>,
    pub state: Option<String>,
    pub recipient: Option<String>,
    pub sender: Option<String>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub q: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// The cursor names the last message of a page; it is opaque so that callers only pass it back.
fn encode_cursor(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(c: &str) -> Result<String, AdminError> {
    URL_SAFE_NO_PAD
        .decode(c.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            AdminError::invalid(
                "cursor",
                "not a cursor from this API (pass next_cursor back)",
            )
        })
}

pub fn execute(ctx: &AdminContext, req: MessagesRequest) -> Result<Value, AdminError> {
    match req {
        MessagesRequest::Search {
            filter,
            cursor,
            limit,
        } => {
            if limit == 0 || limit > MAX_PAGE {
                return Err(AdminError::invalid(
                    "limit",
                    format!("limit must be 1 to {MAX_PAGE}"),
                ));
            }
            if let (Some(a), Some(b)) = (filter.since_ms, filter.until_ms)
                && a >= b
            {
                return Err(AdminError::invalid("since", "since must be before until"));
            }
            let after = cursor.as_deref().map(decode_cursor).transpose()?;
            let page = ctx
                .log
                .search(&filter, after.as_deref(), limit)
                .map_err(err)?;
            Ok(json!({
                "messages": page.messages.iter().map(list_json).collect::<Vec<_>>(),
                "next_cursor": page.next_after.as_deref().map(encode_cursor),
            }))
        }
        MessagesRequest::Show { id } => {
            let Some(e) = ctx.log.get(&id).map_err(err)? else {
                return Err(AdminError::not_found(format!("no message {id}")));
            };
            let events = ctx.events.for_message(&id).map_err(err)?;
            let attempts: Vec<Value> = events
                .iter()
                .filter(|ev| {
                    matches!(
                        ev.kind,
                        EventKind::Relayed | EventKind::Deferred | EventKind::Failed
                    )
                })
                .map(|ev| {
                    json!({
                        "attempt": ev.attempt,
                        "time_ms": ev.time_ms,
                        // How long after acceptance: the queue's delay as the app saw it.
                        "after_ms": ev.time_ms.saturating_sub(e.received_ms),
                        "outcome": ev.kind.as_str(),
                        "upstream": ev.upstream,
                        "code": ev.code,
                        "reply": ev.reply,
                        "recipients": ev.recipients,
                        "next_attempt_ms": ev.next_attempt_ms,
                        "reason": ev.reason,
                    })
                })
                .collect();
            let mut v = envelope_json(&e);
            v["subject"] = json!(e.summary.subject);
            v["from"] = json!(e.summary.from);
            v["attempt_log"] = Value::Array(attempts);
            v["events"] = serde_json::to_value(&events).map_err(err)?;
            Ok(v)
        }
    }
}

/// A log entry for a list: the envelope without the header fields.
fn list_json(e: &crate::queue::Envelope) -> Value {
    let mut v = envelope_json(e);
    if let Some(o) = v.as_object_mut() {
        o.remove("summary");
    }
    v["subject"] = json!(e.summary.subject);
    v["from"] = json!(e.summary.from);
    v
}
