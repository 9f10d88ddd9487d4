//! Delivery events: what the relay learned about a message after it said `250`, named for
//! what it really knows (`relayed` means the upstream answered 250, not "in the inbox").
//!
//! The queue and delivery call [`stage`] with the events of an outcome *before* the group
//! commit that makes the outcome durable, so an event and the webhook deliveries it owes (one
//! `webhook_outbox` entry per subscribed endpoint) are on disk exactly when the outcome is:
//! neither a restart nor kill -9 loses one. Sending them is a separate task (`outbox.rs`), so
//! no SMTP reply ever waits on a webhook. Events are kept with the message log and shown by
//! `queue show`.

pub mod outbox;
pub mod webhooks;

use serde::{Deserialize, Serialize};

use crate::queue::{Envelope, now_ms};
use crate::store::{Store, StoreError, be64};

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "unknown event type `{0}` (known: accepted, relayed, deferred, failed, suppressed, rate_limited)"
    )]
    UnknownKind(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no webhook endpoint {0}")]
    NotFound(String),
}

impl From<sled::Error> for EventError {
    fn from(e: sled::Error) -> Self {
        EventError::Store(StoreError::Sled(e))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Stored durably and answered `250`.
    Accepted,
    /// The upstream answered `250` for these recipients (not a proof of inbox delivery).
    Relayed,
    /// A temporary failure; `next_attempt_ms` says when the relay tries again.
    Deferred,
    /// Refused permanently by the upstream, or expired (`reason` says which).
    Failed,
    /// Refused at RCPT (or by the send API) because the recipient is on the project's
    /// suppression list; no message was queued, so `message_id` is empty.
    Suppressed,
    /// Accepted, but held back by the project's limits (accept-and-delay mode).
    RateLimited,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Accepted,
        EventKind::Relayed,
        EventKind::Deferred,
        EventKind::Failed,
        EventKind::Suppressed,
        EventKind::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::Relayed => "relayed",
            EventKind::Deferred => "deferred",
            EventKind::Failed => "failed",
            EventKind::Suppressed => "suppressed",
            EventKind::RateLimited => "rate_limited",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = EventError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s.trim())
            .ok_or_else(|| EventError::UnknownKind(s.trim().to_string()))
    }
}

/// One event about one message. `id` is unique (the `webhook-id` receivers deduplicate on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The relay's queue id.
    pub message_id: String,
    pub project: String,
    /// The recipients this event is about.
    pub recipients: Vec<String>,
    pub time_ms: u64,
    /// Delivery attempts made so far (0 for `accepted`).
    pub attempt: u32,
    pub upstream: Option<String>,
    /// The SMTP reply code, when an upstream replied.
    pub code: Option<u16>,
    pub reply: Option<String>,
    /// `deferred`: when the next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<u64>,
    /// `failed`: `refused` or `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The app's own `Message-ID` header, when the message had one.
    pub header_message_id: Option<String>,
}

/// The tail of an event id: increasing within the process, so two events of one message in
/// the same millisecond (a simulated outcome right after `accepted`) keep their order in the
/// `message id \0 time ‖ event id` key; a random start keeps ids unique across restarts.
fn next_event_seq() -> u64 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: OnceLock<AtomicU64> = OnceLock::new();
    SEQ.get_or_init(|| AtomicU64::new(u64::from(rand::random::<u32>()) << 24))
        .fetch_add(1, Ordering::Relaxed)
}

impl Event {
    /// A new event about `env`, now, for `recipients`.
    pub fn new(kind: EventKind, env: &Envelope, recipients: Vec<String>) -> Event {
        let time_ms = now_ms();
        Event {
            id: format!("evt_{}{:016x}", env.id, next_event_seq()),
            kind,
            message_id: env.id.clone(),
            project: env.project.clone(),
            recipients,
            time_ms,
            attempt: env.attempts,
            upstream: env.upstream.clone(),
            code: None,
            reply: None,
            next_attempt_ms: None,
            reason: None,
            header_message_id: env.header_message_id.clone(),
        }
    }

    /// An event about a submission refused before any message was queued (a suppressed
    /// recipient at RCPT or in the send API): `message_id` is empty.
    pub fn new_unqueued(kind: EventKind, project: &str, recipients: Vec<String>) -> Event {
        let time_ms = now_ms();
        Event {
            id: format!(
                "evt_{}",
                crate::queue::spool::new_id(time_ms) + &format!("{:08x}", rand::random::<u32>())
            ),
            kind,
            message_id: String::new(),
            project: project.to_string(),
            recipients,
            time_ms,
            attempt: 0,
            upstream: None,
            code: None,
            reply: None,
            next_attempt_ms: None,
            reason: None,
            header_message_id: None,
        }
    }

    /// Sets the reply and the code it starts with.
    pub fn with_reply(mut self, reply: Option<&str>) -> Event {
        self.code = reply.and_then(|r| r.get(..3)).and_then(|c| c.parse().ok());
        self.reply = reply.map(str::to_string);
        self
    }
}

fn event_key(e: &Event) -> Vec<u8> {
    let mut k = e.message_id.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&be64(e.time_ms));
    k.extend_from_slice(e.id.as_bytes());
    k
}

/// Writes `events` and the webhook deliveries they owe. Not durable by itself: the caller's
/// group commit (`Store::durable`) covers these writes with the outcome they report.
pub fn stage(store: &Store, events: &[Event]) -> Result<(), sled::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let endpoints = webhooks::Endpoints::load_enabled(store)?;
    for e in events {
        store
            .events
            .insert(event_key(e), serde_json::to_vec(e).unwrap_or_default())?;
        crate::metrics::event_recorded(e.kind.as_str());
        for ep in endpoints.iter().filter(|ep| ep.wants(e)) {
            outbox::push(store, &ep.id, &e.id, &webhooks::payload(e), now_ms())?;
        }
    }
    // No wake here: the caller wakes the worker after its flush, so a webhook never
    // announces an outcome that is not on disk yet.
    Ok(())
}

/// A message's events, oldest first.
pub fn for_message(store: &Store, message_id: &str) -> Result<Vec<Event>, EventError> {
    let mut prefix = message_id.as_bytes().to_vec();
    prefix.push(0);
    let mut out = Vec::new();
    for item in store.events.scan_prefix(prefix) {
        let (_, v) = item?;
        if let Ok(e) = serde_json::from_slice::<Event>(&v) {
            out.push(e);
        }
    }
    Ok(out)
}

/// Every event of the messages accepted at or after `first_ms` (message ids start with the
/// acceptance time, so this is a range scan), in key order, to `each`.
pub fn of_messages_since(
    store: &Store,
    first_ms: u64,
    mut each: impl FnMut(Event),
) -> Result<(), EventError> {
    let lower = format!("{:012x}", first_ms & 0xffff_ffff_ffff);
    for item in store.events.range(lower.as_bytes()..) {
        let (_, v) = item?;
        if let Ok(e) = serde_json::from_slice::<Event>(&v) {
            each(e);
        }
    }
    Ok(())
}

/// The app's `Message-ID` from the header section (mail-parser's `parse_headers` only; full
/// `parse()` is unsafe on hostile nesting, DESIGN.md Known traps).
pub fn header_message_id(bytes: &[u8]) -> Option<String> {
    let field = crate::transform::headers::only_fields(bytes, &["Message-ID"]);
    let msg = mail_parser::MessageParser::new().parse_headers(&field)?;
    msg.message_id()
        .map(|id| id.chars().filter(|c| !c.is_control()).take(998).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_print() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>().unwrap(), k);
        }
        assert!("delivered".parse::<EventKind>().is_err());
    }

    #[test]
    fn message_id_from_headers() {
        let m = b"From: a@b.test\r\nMessage-ID: <abc@app.test>\r\n\r\nbody\r\n";
        assert_eq!(header_message_id(m).as_deref(), Some("abc@app.test"));
        assert_eq!(header_message_id(b"From: a@b.test\r\n\r\nx"), None);
    }
}
