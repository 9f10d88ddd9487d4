//! Acceptance: the one path every message takes from "received and authenticated" to "durable
//! in the queue", whether it came over SMTP (`data.rs`) or the HTTP send API (`send_api`).
//!
//! In order: hop count (mail loops), header From and originator headers owned by the project,
//! branding lookup, transform (trace headers, branding, From rewriting, DKIM last), a re-check
//! of the credentials (they may have been withdrawn while the message arrived), the rate
//! windows (consumed only now that nothing else can refuse it), enqueue — refunding the rate
//! if storing fails. A refusal is typed ([`Refusal`]); `reply.rs` turns it into an SMTP reply
//! and `send_api` into an HTTP status, so the two protocols cannot drift apart.
//!
//! Idempotency keys (`policy::idempotency`) are settled here too: the key header is always
//! removed from the message; an SMTP message's key is looked up before any work (a repeat
//! answers with the first message's id and queues nothing), and the key's record — the send
//! API's reservation, or the SMTP one — is written inside the commit that makes the message
//! durable. A sandbox project's message (one with any recipient that is not a simulated
//! `…@….smtp-relay.test` address) is captured (`queue::sandbox`) instead of queued.

use std::net::SocketAddr;

use super::Shared;
use super::auth::{Recheck, recheck};
use super::quota::{RateCheck, RateRefusal};
use crate::memory_budget::{MemoryBudget, Reservation};
use crate::policy::idempotency::{self, Check, Fingerprint, IdempotencyError, Outcome};
use crate::policy::limits::ProjectSession;
use crate::policy::projects::{Authenticated, ProjectMode, RegistryError};
use crate::policy::sender::{self, SenderError};
use crate::queue::QueueError;
use crate::queue::now_ms;
use crate::queue::spool::{MailParams, NewMessage, RcptParams, new_id};
use crate::transform::branding::SettingsError;
use crate::transform::dkim::Signing;
use crate::transform::{self, TransformContext, TransformError};

/// Who submits: the authenticated project and where it connects from.
pub struct Submitter<'a> {
    pub shared: &'a Shared,
    /// Refreshed by the credential re-check.
    pub auth: &'a mut Authenticated,
    /// The registry generation `auth` was last checked against.
    pub registry_generation: &'a mut u64,
    /// The project's limits (`None`: not limited).
    pub quota: Option<&'a ProjectSession>,
    pub peer: SocketAddr,
    /// The client's EHLO name (the HTTP API passes its own).
    pub helo: &'a str,
    pub tls: bool,
}

/// The send API's hold on an `Idempotency-Key`, completed in the commit of the request's last
/// message.
pub struct KeyCompletion<'a> {
    pub reservation: &'a idempotency::Reservation,
    /// Ids queued earlier by the same request (a batch), in order.
    pub earlier: &'a [String],
    pub batch: bool,
}

/// One message with its envelope, already checked recipient by recipient.
pub struct Submission<'a> {
    pub mail_from: String,
    pub mail_params: MailParams,
    pub recipients: Vec<String>,
    /// One per recipient, in the same order.
    pub rcpt_params: Vec<RcptParams>,
    pub message: Vec<u8>,
    /// The message's share of the memory budget, held until it is queued.
    pub memory: Reservation,
    /// HTTP: the request's idempotency key, to record with this message. `None` for SMTP,
    /// whose key (if any) is in the message header.
    pub idempotency: Option<KeyCompletion<'a>>,
}

/// Where an accepted message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// In the delivery queue.
    Queued,
    /// Kept in the sandbox of a sandbox project.
    Captured,
    /// A repeat of an idempotency key: the first message's id, nothing new stored.
    Replayed,
}

#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: String,
    pub disposition: Disposition,
}

/// Why an idempotency key stopped a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Empty or longer than 256 characters.
    Invalid,
    /// The first message with this key is still being accepted.
    InFlight,
    /// Used before for a different request.
    Mismatch,
    /// The key store cannot be read.
    Unavailable,
}

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("mail loop: {0} Received fields")]
    TooManyHops(usize),
    #[error("header From refused: {0}")]
    Sender(SenderError),
    #[error("cannot load branding: {0}")]
    Branding(SettingsError),
    #[error("message refused by transform: {0}")]
    Transform(TransformError),
    /// The token was revoked or the project disabled or deleted while the message arrived.
    #[error("credentials withdrawn: {0}")]
    Withdrawn(&'static str),
    #[error("registry unavailable: {0}")]
    Registry(RegistryError),
    #[error("rate limits: {0:?}")]
    Rate(RateRefusal),
    #[error("cannot store message: {0}")]
    Storage(QueueError),
    #[error("idempotency key: {0:?}")]
    Idempotency(KeyRefusal),
}

/// Takes one message through acceptance; `Ok` only once it is durable in the queue.
pub async fn submit(who: Submitter<'_>, sub: Submission<'_>) -> Result<Accepted, Refusal> {
    let Submitter {
        shared,
        auth,
        registry_generation,
        quota,
        peer,
        helo,
        tls,
    } = who;
    let Submission {
        mail_from,
        mail_params,
        recipients,
        rcpt_params,
        message,
        memory,
        idempotency: completion,
    } = sub;
    let project_id = auth.project.id.clone();
    let size = message.len();

    let hops = transform::headers::received_count(&message);
    if hops > shared.config.server.max_received_headers {
        tracing::warn!(client = %peer, project = %project_id, hops, "mail loop: too many Received fields");
        return Err(Refusal::TooManyHops(hops));
    }
    if let Err(e) = sender::check_header_from(&auth.project, &message)
        .and_then(|()| sender::check_originator_headers(&auth.project, &message))
    {
        tracing::warn!(client = %peer, project = %project_id, error = %e, "header From refused");
        return Err(Refusal::Sender(e));
    }
    // The key header never leaves the relay: transform's header step removes it.
    let header_key = idempotency::find_in_message(&message);
    let window_secs = shared.config.idempotency.window_secs;
    let mut own_key = None;
    if completion.is_none()
        && let Some(key) = header_key
    {
        match shared
            .idempotency
            .check_or_reserve_shared(&project_id, &key, Fingerprint::Any, window_secs, now_ms())
            .await
        {
            Ok(Check::Fresh(r)) => own_key = Some(r),
            Ok(Check::Replay(o)) => {
                let id = o.ids.into_iter().next().unwrap_or_default();
                tracing::info!(id = %id, project = %project_id, client = %peer, "idempotency key repeated: answered with the first message, nothing queued");
                return Ok(Accepted {
                    id,
                    disposition: Disposition::Replayed,
                });
            }
            Ok(Check::InFlight) => return Err(Refusal::Idempotency(KeyRefusal::InFlight)),
            Ok(Check::Mismatch) => return Err(Refusal::Idempotency(KeyRefusal::Mismatch)),
            Err(IdempotencyError::InvalidKey) => {
                return Err(Refusal::Idempotency(KeyRefusal::Invalid));
            }
            Err(IdempotencyError::Store(e)) => {
                tracing::error!(project = %project_id, error = %e, "idempotency keys unavailable");
                return Err(Refusal::Idempotency(KeyRefusal::Unavailable));
            }
        }
    }

    let branding = match shared.branding.active(&project_id) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(client = %peer, project = %project_id, error = %e, "cannot load branding");
            return Err(Refusal::Branding(e));
        }
    };
    let id = new_id(now_ms());
    // Taken before transform: the log shows the From the app wrote, not a rewritten one.
    let summary = crate::queue::summary::original(&message);
    let ctx = TransformContext {
        message_id: &id,
        hostname: &shared.config.server.hostname,
        helo,
        mail_from: &mail_from,
        client_ip: peer.ip(),
        tls,
        received_ms: now_ms(),
        branding: branding.as_deref(),
        from_rewrite: shared.routes.from_rewrite(&project_id),
        dkim: Some(Signing {
            keys: &shared.dkim,
            project: &auth.project,
        }),
    };
    // Branding and signing a large message take milliseconds per MiB: off the async
    // worker, so other sessions keep being served.
    let transformed = if MemoryBudget::is_large(size) {
        crate::run_blocking(|| transform::apply(&ctx, message))
    } else {
        transform::apply(&ctx, message)
    };
    let bytes = match transformed {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(id = %id, client = %peer, project = %project_id, error = %e, "message refused by transform");
            return Err(Refusal::Transform(e));
        }
    };
    // The token or project may have been withdrawn while the message arrived.
    match recheck(&shared.registry, auth, registry_generation) {
        Ok(()) => {}
        Err(Recheck::Withdrawn(why)) => return Err(Refusal::Withdrawn(why)),
        Err(Recheck::Unavailable(e)) => {
            tracing::error!(error = %e, "registry unavailable while re-checking a session");
            return Err(Refusal::Registry(e));
        }
    }
    let max_age_secs = auth
        .project
        .max_age_secs
        .unwrap_or(shared.config.queue.max_age_secs);
    let rate = RateCheck {
        limiter: &shared.limiter,
        quota,
        peer,
        max_age_secs,
    };
    // Counted only now that nothing else can refuse it (but storage; refunded then).
    let count = recipients.len();
    let not_before_ms = rate.consume(count).await.map_err(Refusal::Rate)?;
    let capture = auth.project.mode == ProjectMode::Sandbox
        && recipients
            .iter()
            .any(|r| crate::policy::simulated::outcome(r).is_none());
    let new = NewMessage {
        id,
        project: project_id.clone(),
        mail_from,
        mail_params,
        recipients,
        rcpt_params,
        client_ip: peer.ip().to_string(),
        max_age_secs,
        not_before_ms,
        summary,
    };
    // The key's record, written after the message and before its commit (module doc).
    let record_key = |id: &str| -> Result<(), sled::Error> {
        let (reservation, outcome) = match (&completion, &own_key) {
            (Some(c), _) => {
                let mut ids = c.earlier.to_vec();
                ids.push(id.to_string());
                (
                    c.reservation,
                    Outcome {
                        ids,
                        batch: c.batch,
                        errors: None,
                    },
                )
            }
            (None, Some(r)) => (
                r,
                Outcome {
                    ids: vec![id.to_string()],
                    batch: false,
                    errors: None,
                },
            ),
            (None, None) => return Ok(()),
        };
        shared.idempotency.complete(reservation, &outcome, now_ms())
    };
    let message_id = new.id.clone();
    let stored = if capture {
        shared
            .sandbox
            .capture(new, &bytes, shared.config.sandbox.max_messages, || {
                record_key(&message_id)
            })
            .await
            .map(|env| (env, Disposition::Captured))
            .map_err(|e| match e {
                crate::queue::sandbox::SandboxError::Queue(q) => q,
                other => QueueError::Store(crate::store::StoreError::Corrupt(other.to_string())),
            })
    } else {
        shared
            .queue
            .enqueue_with(new, &bytes, || record_key(&message_id))
            .await
            .map(|env| (env, Disposition::Queued))
    };
    drop(bytes);
    drop(memory);
    // Cluster mode: the record goes to Redis now that the message is durable here.
    if stored.is_ok()
        && let Some(r) = completion
            .as_ref()
            .map(|c| c.reservation)
            .or(own_key.as_ref())
    {
        shared.idempotency.share(r).await;
    }
    // Released only now: a repeat arriving meanwhile was told "in flight", not "new".
    drop(own_key);
    match stored {
        Ok((env, disposition)) => {
            crate::metrics::accepted(&env.project);
            tracing::info!(
                id = %env.id,
                project = %env.project,
                client = %peer,
                recipients = env.recipients.len(),
                size = env.size,
                "{}",
                if disposition == Disposition::Captured {
                    "message captured (sandbox project)"
                } else {
                    "message queued"
                }
            );
            Ok(Accepted {
                id: env.id,
                disposition,
            })
        }
        Err(e) => {
            rate.refund(count).await;
            tracing::error!(client = %peer, project = %project_id, error = %e, "cannot store message");
            Err(Refusal::Storage(e))
        }
    }
}
