//! DATA: receive the message, check it, pass it through transform, and queue it.
//!
//! The `250` goes out only after the queue says the message is on disk. If storing fails the
//! client gets a 4xx and keeps the message — never a `250` for something we might lose.
//! The message counts against the project's rate windows just before it is queued.

use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Connection, DataOutcome};
use super::reply::{self, Reply};
use super::session::{Flow, Session};
use crate::memory_budget::MemoryBudget;
use crate::policy::sender;
use crate::queue::now_ms;
use crate::queue::spool::{NewMessage, new_id};
use crate::transform::dkim::Signing;
use crate::transform::{self, TransformContext};

impl Session {
    pub(super) async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
    ) -> Flow {
        let Some(auth) = self.auth.clone() else {
            return self.error(conn, &reply::AUTH_REQUIRED).await;
        };
        let Some(mail_from) = self.mail_from.clone() else {
            return self.error(conn, &reply::BAD_SEQUENCE_MAIL).await;
        };
        if self.rcpts.is_empty() {
            return self.error(conn, &reply::BAD_SEQUENCE_RCPT).await;
        }
        if conn.write_reply(&reply::START_DATA).await.is_err() {
            return Flow::Close;
        }
        let idle = self.shared.config.data_timeout();
        let max_size = self.message_limits().max_size;
        let queue = self.shared.queue.clone();
        let spill = move || queue.spill_file(max_size);
        let outcome = conn
            .read_data_spilling(max_size, idle, idle * 4, Some(&spill))
            .await;
        let body = match outcome {
            Ok(DataOutcome::Message(b)) => b,
            Ok(DataOutcome::NotStored(e)) => {
                self.reset_transaction();
                tracing::error!(client = %self.peer, project = %auth.project.id, error = %e, "cannot spool a large message");
                let r = Reply::from(&e);
                crate::metrics::rejected(&auth.project.id, &r);
                return self.send(conn, &r).await;
            }
            Ok(DataOutcome::TooLarge) => {
                self.reset_transaction();
                return self.error(conn, &reply::TOO_LARGE).await;
            }
            Ok(DataOutcome::LineTooLong) => {
                self.reset_transaction();
                return self.error(conn, &reply::LINE_TOO_LONG).await;
            }
            Err(e) => {
                tracing::warn!(client = %self.peer, project = %auth.project.id, error = %e, "DATA aborted");
                if let Some(r) = e.reply() {
                    crate::metrics::rejected(&auth.project.id, &r);
                    let _ = conn.write_reply(&r).await;
                }
                return Flow::Close;
            }
        };
        let rcpts = std::mem::take(&mut self.rcpts);
        let tx = std::mem::take(&mut self.tx);
        self.reset_transaction();

        // Held until the message is queued: a large one is in memory only under it.
        let size = body.len();
        let memory = match self.shared.memory.reserve(size, idle).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(client = %self.peer, project = %auth.project.id, error = %e, "large message refused");
                crate::metrics::rejected(&auth.project.id, &reply::MEMORY_BUSY);
                return self.send(conn, &reply::MEMORY_BUSY).await;
            }
        };
        let message = match body.into_vec().await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(client = %self.peer, project = %auth.project.id, error = %e, "cannot read back a spooled message");
                return self.send(conn, &reply::LOCAL_ERROR).await;
            }
        };

        let hops = transform::headers::received_count(&message);
        if hops > self.shared.config.server.max_received_headers {
            tracing::warn!(client = %self.peer, project = %auth.project.id, hops, "mail loop: too many Received fields");
            return self.error(conn, &reply::TOO_MANY_HOPS).await;
        }
        if let Err(e) = sender::check_header_from(&auth.project, &message)
            .and_then(|()| sender::check_originator_headers(&auth.project, &message))
        {
            tracing::warn!(client = %self.peer, project = %auth.project.id, error = %e, "header From refused");
            return self.error(conn, &Reply::from(&e)).await;
        }

        let branding = match self.shared.branding.active(&auth.project.id) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(client = %self.peer, project = %auth.project.id, error = %e, "cannot load branding");
                return self.send(conn, &Reply::from(&e)).await;
            }
        };
        let id = new_id(now_ms());
        let helo = self.helo.clone().unwrap_or_default();
        let ctx = TransformContext {
            message_id: &id,
            hostname: &self.shared.config.server.hostname,
            helo: &helo,
            mail_from: &mail_from,
            client_ip: self.peer.ip(),
            tls: self.tls,
            received_ms: now_ms(),
            branding: branding.as_deref(),
            from_rewrite: self.shared.routes.from_rewrite(&auth.project.id),
            dkim: Some(Signing {
                keys: &self.shared.dkim,
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
                tracing::warn!(id = %id, client = %self.peer, project = %auth.project.id, error = %e, "message refused by transform");
                return self.send(conn, &Reply::from(&e)).await;
            }
        };
        // The token or project may have been withdrawn while the message arrived.
        if let Some(flow) = self.revalidate(conn).await {
            return flow;
        }
        // Counted only now that nothing else can refuse it (but storage; refunded then).
        let recipients = rcpts.len();
        let not_before_ms = match self.consume_rate(recipients) {
            Ok(slot) => slot,
            Err(r) => return self.error(conn, &r).await,
        };
        let max_age = self.max_age_secs();
        let new = NewMessage {
            id,
            project: auth.project.id.clone(),
            mail_from,
            mail_params: tx.mail,
            recipients: rcpts,
            rcpt_params: tx.rcpts,
            client_ip: self.peer.ip().to_string(),
            max_age_secs: max_age,
            not_before_ms,
        };
        let queued = self.shared.queue.enqueue(new, &bytes).await;
        drop(bytes);
        drop(memory);
        match queued {
            Ok(env) => {
                self.accepted += 1;
                self.message_ids.push(env.id.clone());
                crate::metrics::accepted(&env.project);
                tracing::info!(
                    id = %env.id,
                    project = %env.project,
                    client = %self.peer,
                    recipients = env.recipients.len(),
                    size = env.size,
                    "message queued"
                );
                self.send(conn, &reply::queued(&env.id)).await
            }
            Err(e) => {
                self.refund_rate(recipients);
                tracing::error!(client = %self.peer, project = %auth.project.id, error = %e, "cannot store message");
                let r = Reply::from(&e);
                crate::metrics::rejected(&auth.project.id, &r);
                self.send(conn, &r).await
            }
        }
    }
}
