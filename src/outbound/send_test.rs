//! `send-test`: one short message through the whole pipeline — sender policy, transform
//! (trace headers, branding and DKIM when configured, From rewriting), the project's route or
//! one named upstream — sent synchronously, like the "send test email" button of an admin
//! panel. It does not go through the queue: the answer is the upstream's reply, or why it
//! could not be delivered, in plain words.
//!
//! The running server runs it (it owns the pools, token caches and the database) when the CLI
//! reaches it over the admin socket; otherwise the CLI builds the same [`Tester`] in-process.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::RcptOutcome;
use super::routing::Router;
use crate::config::Config;
use crate::policy::projects::Registry;
use crate::policy::sender;
use crate::queue::spool::new_id;
use crate::queue::{Envelope, MessageState, RcptState, Recipient, now_ms};
use crate::transform::{self, TransformContext};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendTest {
    pub project: String,
    pub to: String,
    /// Only this upstream instead of the project's route.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Envelope and header sender; default `smtp-relay-test@<first project domain>`.
    #[serde(default)]
    pub from: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendTestError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
}

/// What `send-test` needs from the running pipeline.
pub struct Tester {
    pub config: Arc<Config>,
    pub registry: Registry,
    pub router: Arc<Router>,
    /// DKIM keys: the test message is signed like real mail.
    pub dkim: crate::transform::dkim_keys::DkimKeys,
    /// Project branding: the test message is branded like real mail.
    pub branding: crate::transform::branding::BrandingStore,
}

impl std::fmt::Debug for Tester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tester").finish_non_exhaustive()
    }
}

fn message(from: &str, to: &str, project: &str, id: &str) -> Vec<u8> {
    format!(
        "From: smtp-relay test <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: smtp-relay test message ({project})\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is a test message sent with `smtp-relay send-test` for project {project}.\r\n\
         If you can read it, the route from the relay to its upstream works.\r\n\
         \r\n\
         Test id: {id}\r\n"
    )
    .into_bytes()
}

impl Tester {
    pub async fn run(&self, req: &SendTest) -> Result<Value, SendTestError> {
        let project = self
            .registry
            .get(&req.project)
            .map_err(|e| SendTestError::Invalid(e.to_string()))?;
        let from = match &req.from {
            Some(f) => f.clone(),
            None => match project.domains.first() {
                Some(d) => format!("smtp-relay-test@{d}"),
                None => {
                    return Err(SendTestError::Invalid(format!(
                        "project {} has no domain to send from",
                        project.id
                    )));
                }
            },
        };
        sender::check_envelope_sender(&project, &from)
            .map_err(|e| SendTestError::Invalid(e.to_string()))?;
        if sender::address_domain(&req.to).is_none() {
            return Err(SendTestError::Invalid(format!(
                "{:?} is not a plain local@domain address",
                req.to
            )));
        }
        let routes = &self.router.routes;
        let names = match &req.upstream {
            Some(name) => {
                routes
                    .upstream(name)
                    .map_err(|e| SendTestError::Invalid(e.to_string()))?;
                vec![name.clone()]
            }
            None => routes.resolve(&project.id).names(),
        };
        let from_rewrite = names
            .first()
            .and_then(|n| self.config.upstreams.get(n))
            .and_then(|u| u.rewrite_address());
        let branding = self
            .branding
            .active(&project.id)
            .map_err(|e| SendTestError::Refused(format!("cannot load branding: {e}")))?;
        let id = new_id(now_ms());
        let ctx = TransformContext {
            message_id: &id,
            hostname: &self.config.server.hostname,
            helo: "send-test",
            mail_from: &from,
            client_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            tls: true,
            received_ms: now_ms(),
            branding: branding.as_deref(),
            from_rewrite,
            dkim: Some(transform::dkim::Signing {
                keys: &self.dkim,
                project: &project,
            }),
        };
        let bytes = transform::apply(&ctx, message(&from, &req.to, &project.id, &id))
            .map_err(|e| SendTestError::Refused(format!("transform failed: {e}")))?;
        let env = Envelope {
            id: id.clone(),
            project: project.id.clone(),
            mail_from: from.clone(),
            mail_params: Default::default(),
            recipients: vec![Recipient {
                address: req.to.clone(),
                state: RcptState::Pending,
                reply: None,
                params: Default::default(),
            }],
            size: bytes.len(),
            client_ip: "127.0.0.1".into(),
            received_ms: now_ms(),
            expires_ms: now_ms(),
            next_attempt_ms: now_ms(),
            attempts: 0,
            state: MessageState::Queued,
            upstream: None,
            last_reply: None,
            header_message_id: None,
            summary: Default::default(),
        };
        let routed = self
            .router
            .deliver_via(&names, &env, std::slice::from_ref(&req.to), &bytes)
            .await;
        let upstream = routed.upstream.clone().unwrap_or_default();
        tracing::info!(id = %id, project = %project.id, upstream = %upstream, reply = %routed.attempt.summary, "send-test");
        match routed.attempt.outcomes.first() {
            Some(RcptOutcome::Delivered(reply)) => Ok(json!({
                "id": id,
                "project": project.id,
                "from": from,
                "to": req.to,
                "upstream": upstream,
                "reply": reply,
                "path": routed.path,
            })),
            Some(RcptOutcome::Failed(reply)) => Err(SendTestError::Refused(format!(
                "refused by upstream {upstream}: {reply}"
            ))),
            Some(RcptOutcome::Deferred(reply)) if routed.path.len() > 1 => Err(
                SendTestError::Refused(format!("not delivered: {}", routed.path.join("; then "))),
            ),
            Some(RcptOutcome::Deferred(reply)) => {
                Err(SendTestError::Refused(match routed.upstream {
                    Some(u) => format!("not delivered through upstream {u}: {reply}"),
                    None => format!("not delivered: {}", routed.path.join("; ")),
                }))
            }
            None => Err(SendTestError::Refused("no outcome".into())),
        }
    }
}
