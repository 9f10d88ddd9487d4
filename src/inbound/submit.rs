//! Acceptance: the one path every message takes from "received and authenticated" to "durable
//! in the queue", whether it came over SMTP (`data.rs`) or the HTTP send API (`send_api`).
//!
//! In order: hop count (mail loops), header From and originator headers owned by the project,
//! branding lookup, transform (trace headers, branding, From rewriting, DKIM last), a re-check
//! of the credentials (they may have been withdrawn while the message arrived), the rate
//! windows (consumed only now that nothing else can refuse it), enqueue — refunding the rate
//! if storing fails. A refusal is typed ([`Refusal`]); `reply.rs` turns it into an SMTP reply
//! and `send_api` into an HTTP status, so the two protocols cannot drift apart.

use std::net::SocketAddr;

use super::Shared;
use super::auth::{Recheck, recheck};
use super::quota::{RateCheck, RateRefusal};
use crate::memory_budget::{MemoryBudget, Reservation};
use crate::policy::limits::ProjectSession;
use crate::policy::projects::{Authenticated, RegistryError};
use crate::policy::sender::{self, SenderError};
use crate::queue::QueueError;
use crate::queue::now_ms;
use crate::queue::spool::{Envelope, MailParams, NewMessage, RcptParams, new_id};
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

/// One message with its envelope, already checked recipient by recipient.
pub struct Submission {
    pub mail_from: String,
    pub mail_params: MailParams,
    pub recipients: Vec<String>,
    /// One per recipient, in the same order.
    pub rcpt_params: Vec<RcptParams>,
    pub message: Vec<u8>,
    /// The message's share of the memory budget, held until it is queued.
    pub memory: Reservation,
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
}

/// Takes one message through acceptance; `Ok` only once it is durable in the queue.
pub async fn submit(who: Submitter<'_>, sub: Submission) -> Result<Envelope, Refusal> {
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

    let branding = match shared.branding.active(&project_id) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(client = %peer, project = %project_id, error = %e, "cannot load branding");
            return Err(Refusal::Branding(e));
        }
    };
    let id = new_id(now_ms());
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
    };
    let queued = shared.queue.enqueue(new, &bytes).await;
    drop(bytes);
    drop(memory);
    match queued {
        Ok(env) => {
            crate::metrics::accepted(&env.project);
            tracing::info!(
                id = %env.id,
                project = %env.project,
                client = %peer,
                recipients = env.recipients.len(),
                size = env.size,
                "message queued"
            );
            Ok(env)
        }
        Err(e) => {
            rate.refund(count).await;
            tracing::error!(client = %peer, project = %project_id, error = %e, "cannot store message");
            Err(Refusal::Storage(e))
        }
    }
}
